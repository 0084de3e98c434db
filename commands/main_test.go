package commands

import (
	"os"
	"testing"

	"github.com/smsbatch/smsbatch/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

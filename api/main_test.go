package api

import (
	"os"
	"testing"

	"github.com/smsbatch/smsbatch/internal/pgtest"
)

// TestMain stops the throwaway PostgreSQL cluster the tests that need one
// started (none when TEST_DATABASE_URL names a server).
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

package httpprovider_test

import (
	"strings"
	"testing"

	"github.com/smsbatch/smsbatch/domain"
)

// The provider's own words are kept in the failure a recipient ends with: they
// must hold nothing the stores that show them cannot keep (PostgreSQL's text
// refuses U+0000).
func TestProviderMessageKeepsNoNUL(t *testing.T) {
	base := stub(t, 400, nil, `{"code":21999,"message":"bad\u0000thing","status":400}`)
	_, err := send(t, newProvider(t, base), "b1:0", okNumber)
	se := wantFailure(t, err, domain.CategoryUnknown, "21999")
	if strings.ContainsRune(se.Message, 0) {
		t.Fatalf("the failure's message keeps U+0000: %q", se.Message)
	}
}

package domain

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// Fuzz targets of the domain's parsers. `make fuzz` runs each for a while;
// `go test` runs their seeds as ordinary tests.

// NewTemplate either refuses a text with ErrInvalidTemplate or parses it into
// valid, distinct variable names; rendering each variable as its own placeholder
// gives a text that parses to the same variables and renders to itself.
func FuzzNewTemplate(f *testing.F) {
	for _, seed := range []string{
		"Hi {{name}}", "{{ a }}{{b}}{{a}}", "{{}}", "{{a", "a}}", "{{{a}}}", "{{a}} {{ b.c-d_e }}", "{{1a}}",
		"{{a b}}", "{{" + strings.Repeat("x", 65) + "}}", "é {{😀}}", "\xff{{a}}", "{{a}}\x00", "  ", "",
		"{{\ta\t}}", "{{{{a}}}}", strings.Repeat("{{v}}", 400),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		tmpl, err := NewTemplate(text, TemplateLimits{})
		if err != nil {
			if !errors.Is(err, ErrInvalidTemplate) {
				t.Fatalf("NewTemplate(%q): %v does not wrap ErrInvalidTemplate", text, err)
			}
			return
		}
		if !utf8.ValidString(text) || utf8.RuneCountInString(text) > DefaultTemplateLimits.MaxLength {
			t.Fatalf("NewTemplate(%q) accepted invalid UTF-8 or an overlong text", text)
		}
		vars := tmpl.Variables()
		if len(vars) > DefaultTemplateLimits.MaxVariables {
			t.Fatalf("%d variables", len(vars))
		}
		for i, v := range vars {
			if problem := checkVariableName(v); problem != "" || slices.Contains(vars[:i], v) {
				t.Fatalf("variable %q: %q, or given twice in %q", v, problem, vars)
			}
		}
		placeholders := make([]string, len(vars))
		for i, v := range vars {
			placeholders[i] = "{{" + v + "}}"
		}
		canonical := tmpl.Render(placeholders)
		again, err := NewTemplate(canonical, TemplateLimits{})
		if err != nil || !slices.Equal(again.Variables(), vars) || again.Render(placeholders) != canonical {
			t.Fatalf("%q renders as %q, which parses as %q, %v", text, canonical, again.Variables(), err)
		}
		// Missing values render as nothing, never panic.
		_ = tmpl.Render(nil)
		_ = tmpl.Render(placeholders[:len(placeholders)/2])
	})
}

// NormalizePhone either refuses a number with ErrInvalidPhone, echoing at most
// a clipped copy of it, or returns E.164 that normalises to itself.
func FuzzNormalizePhone(f *testing.F) {
	regions := []string{"US", "GB", "DE", "IN", "BR", ""}
	for _, seed := range []string{
		"+14155552671", "(415) 555-2671", "415.555.2671", "+1 500 555 0001", "+44 20 7946 0958", "020 7946 0958",
		"0044 20 7946 0958", "+49 30 123456", "+91 98765 43210", "+1415\x005552671", "+1415\xff5552671",
		"1-800-FLOWERS", "+1 415 555 2671 #12", "+", "", "+999 1234 5678", strings.Repeat("9", 40), "٤١٥٥٥٥٢٦٧١",
	} {
		for r := range regions {
			f.Add(seed, uint8(r))
		}
	}
	f.Fuzz(func(t *testing.T, raw string, r uint8) {
		region := regions[int(r)%len(regions)]
		e164, err := NormalizePhone(raw, region)
		if err != nil {
			if !errors.Is(err, ErrInvalidPhone) {
				t.Fatalf("NormalizePhone(%q, %q): %v does not wrap ErrInvalidPhone", raw, region, err)
			}
			if len(err.Error()) > 200 {
				t.Fatalf("error of %d bytes echoes the input", len(err.Error()))
			}
			return
		}
		if len(e164) < 3 || len(e164) > 16 || e164[0] != '+' || e164[1] == '0' || strings.Trim(e164[1:], "0123456789") != "" {
			t.Fatalf("NormalizePhone(%q, %q) = %q, not E.164", raw, region, e164)
		}
		for _, rg := range []string{"", region} {
			if again, err := NormalizePhone(e164, rg); err != nil || again != e164 {
				t.Fatalf("NormalizePhone(%q, %q) = %q; normalised again in %q: %q, %v", raw, region, e164, rg, again, err)
			}
		}
	})
}

// CheckText accepts exactly valid UTF-8 without control characters but newline
// and tab.
func FuzzCheckText(f *testing.F) {
	for _, seed := range []string{"", "Hi", "a\nb\tc", "\r", "\x00", "\x7f", "\u0085", "\xff", "\uFFFD", "\xed\xa0\x80", "😀"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool {
			return r < 0x20 && r != '\n' && r != '\t' || r >= 0x7f && r < 0xa0
		})
		if err := CheckText(s); (err == nil) != want {
			t.Fatalf("CheckText(%q) = %v, want ok %v", s, err, want)
		}
	})
}

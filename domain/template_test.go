package domain

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestNewTemplateParsesPlaceholders(t *testing.T) {
	name64 := "n" + strings.Repeat("x", 63)
	tests := []struct {
		name      string
		text      string
		variables []string
		vars      map[string]string
		rendered  string
	}{
		{
			name:      "one variable",
			text:      "Hi {{firstName}}, your code is ready.",
			variables: []string{"firstName"},
			vars:      map[string]string{"firstName": "Ada"},
			rendered:  "Hi Ada, your code is ready.",
		},
		{
			name:      "spaces and tabs inside braces, repeated variable",
			text:      "{{ firstName }} / {{\tfirstName\t}} / {{firstName}}",
			variables: []string{"firstName"},
			vars:      map[string]string{"firstName": "Ada"},
			rendered:  "Ada / Ada / Ada",
		},
		{
			name:      "distinct names in order of first appearance",
			text:      "{{b}}{{a}}{{b}}{{c}}",
			variables: []string{"b", "a", "c"},
			vars:      map[string]string{"a": "1", "b": "2", "c": "3"},
			rendered:  "2123",
		},
		{
			name:      "names with dots, dashes, digits and underscores",
			text:      "{{user.first-name}} {{_x9}} {{A_b.c-1}}",
			variables: []string{"user.first-name", "_x9", "A_b.c-1"},
			vars:      map[string]string{"user.first-name": "a", "_x9": "b", "A_b.c-1": "c"},
			rendered:  "a b c",
		},
		{
			name:     "no placeholders",
			text:     "Plain text, no variables.",
			rendered: "Plain text, no variables.",
		},
		{
			name:     "single braces and a lone closing pair are literal",
			text:     "Price {100} }} {x} {",
			rendered: "Price {100} }} {x} {",
		},
		{
			name:      "extra closing brace after a placeholder is literal",
			text:      "{{a}}}",
			variables: []string{"a"},
			vars:      map[string]string{"a": "A"},
			rendered:  "A}",
		},
		{
			name:      "non-ASCII text around placeholders",
			text:      "Héllo {{name}} 👋 ¿qué tal?",
			variables: []string{"name"},
			vars:      map[string]string{"name": "Zoë"},
			rendered:  "Héllo Zoë 👋 ¿qué tal?",
		},
		{
			name:      "placeholder only",
			text:      "{{body}}",
			variables: []string{"body"},
			vars:      map[string]string{"body": "everything"},
			rendered:  "everything",
		},
		{
			name:      "name of exactly 64 characters",
			text:      "{{" + name64 + "}}",
			variables: []string{name64},
			vars:      map[string]string{name64: "ok"},
			rendered:  "ok",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, err := NewTemplate(tt.text, DefaultTemplateLimits)
			if err != nil {
				t.Fatalf("NewTemplate(%q): %v", tt.text, err)
			}
			if got := tpl.Text(); got != tt.text {
				t.Errorf("Text() = %q, want %q", got, tt.text)
			}
			if got := tpl.Variables(); !slices.Equal(got, tt.variables) {
				t.Errorf("Variables() = %q, want %q", got, tt.variables)
			}
			if got := tpl.Render(tpl.Values(tt.vars)); got != tt.rendered {
				t.Errorf("Render(Values()) = %q, want %q", got, tt.rendered)
			}
			if got := tpl.Render(tpl.Values(tt.vars)); got != tt.rendered {
				t.Errorf("Render(Values()) = %q, want %q", got, tt.rendered)
			}
		})
	}
}

func TestNewTemplateRejects(t *testing.T) {
	manyVars := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "{{v%d}} ", i)
		}
		return b.String()
	}
	tests := []struct {
		name   string
		text   string
		limits TemplateLimits
		want   string // the error message contains this
	}{
		{name: "empty", text: "", want: "text is empty"},
		{name: "only whitespace", text: " \n\t ", want: "text is empty"},
		{name: "unclosed placeholder", text: "Hi {{name", want: `placeholder at offset 3: "{{" has no matching "}}"`},
		{name: "single closing brace", text: "Hi {{name}", want: `placeholder at offset 3: "{{" has no matching "}}"`},
		{name: "second placeholder unclosed", text: "{{a}} {{b", want: `placeholder at offset 6: "{{" has no matching "}}"`},
		{name: "opening braces inside a placeholder", text: "{{a {{b}}", want: `placeholder at offset 0: "{{" has no matching "}}"`},
		{name: "offset counts runes, not bytes", text: "é👋 {{a}} {{b", want: "placeholder at offset 9:"},
		{name: "empty placeholder", text: "Hi {{}}", want: "placeholder at offset 3: empty placeholder {{}}"},
		{name: "blank placeholder", text: "Hi {{  }}", want: "placeholder at offset 3: empty placeholder {{}}"},
		{name: "name starting with a digit", text: "{{1x}}", want: `placeholder at offset 0: invalid variable name "1x"`},
		{name: "name with a space", text: "x {{a b}}", want: `placeholder at offset 2: invalid variable name "a b"`},
		{name: "name starting with a dot", text: "{{.a}}", want: `invalid variable name ".a"`},
		{name: "name with non-ASCII letter", text: "{{prénom}}", want: `invalid variable name "prénom"`},
		{name: "triple braces", text: "{{{a}}}", want: `invalid variable name "{a"`},
		{name: "name longer than 64", text: "{{" + strings.Repeat("a", 65) + "}}", want: "is longer than 64 characters"},
		{name: "short name with non-ASCII letters is invalid, not long", text: "{{a" + strings.Repeat("é", 40) + "}}", want: "invalid variable name"},
		{name: "invalid UTF-8", text: "Hi \xff{{a}}", want: "not valid UTF-8"},
		{name: "longer than default limit", text: strings.Repeat("a", 1601), want: "text is 1601 characters long, at most 1600 allowed"},
		{name: "longer than custom limit", text: "Hello {{a}}", limits: TemplateLimits{MaxLength: 10}, want: "text is 11 characters long, at most 10 allowed"},
		{name: "more variables than default limit", text: manyVars(51), want: "more than 50 distinct variables"},
		{name: "more variables than custom limit", text: "{{a}}{{b}}{{a}}{{c}}", limits: TemplateLimits{MaxVariables: 2}, want: "more than 2 distinct variables"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewTemplate(tt.text, tt.limits)
			if err == nil {
				t.Fatalf("NewTemplate(%q) succeeded, want error containing %q", clip(tt.text, 40), tt.want)
			}
			if !errors.Is(err, ErrInvalidTemplate) {
				t.Errorf("error %v does not wrap ErrInvalidTemplate", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestNewTemplateLimitsAreInclusive(t *testing.T) {
	manyVars := ""
	for i := range 50 {
		manyVars += fmt.Sprintf("{{v%d}}", i)
	}
	tests := []struct {
		name string
		text string
	}{
		{name: "1600 runes, 3200 bytes", text: strings.Repeat("é", 1600)},
		{name: "50 distinct variables", text: manyVars},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewTemplate(tt.text, TemplateLimits{}); err != nil {
				t.Errorf("NewTemplate: %v", err)
			}
		})
	}
}

func TestTemplateRender(t *testing.T) {
	tpl := mustTemplate(t, "Hi {{first}} {{last}}, {{first}}!")
	tests := []struct {
		name   string
		values []string
		want   string
	}{
		{name: "all values", values: []string{"Ada", "Lovelace"}, want: "Hi Ada Lovelace, Ada!"},
		{name: "missing values render empty", values: []string{"Ada"}, want: "Hi Ada , Ada!"},
		{name: "no values", values: nil, want: "Hi  , !"},
		{name: "extra values are ignored", values: []string{"Ada", "L", "extra"}, want: "Hi Ada L, Ada!"},
		{name: "values are not parsed as placeholders", values: []string{"{{last}}", "x"}, want: "Hi {{last}} x, {{last}}!"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tpl.Render(tt.values); got != tt.want {
				t.Errorf("Render(%q) = %q, want %q", tt.values, got, tt.want)
			}
		})
	}
}

func TestTemplateVariablesIsACopy(t *testing.T) {
	tpl := mustTemplate(t, "{{a}} {{b}}")
	tpl.Variables()[0] = "changed"
	if got := tpl.Variables(); got[0] != "a" {
		t.Errorf("changing the slice Variables returned changed the template: %q", got)
	}
	if got := tpl.Render(tpl.Values(map[string]string{"a": "1", "b": "2"})); got != "1 2" {
		t.Errorf("Render(Values()) = %q, want %q", got, "1 2")
	}
}

func TestTemplateValues(t *testing.T) {
	tpl := mustTemplate(t, "{{b}} {{a}}")
	tests := []struct {
		name string
		vars map[string]string
		want []string
	}{
		{name: "in template order, unused dropped", vars: map[string]string{"a": "1", "b": "2", "unused": "x"}, want: []string{"2", "1"}},
		{name: "missing is empty", vars: map[string]string{"a": "1"}, want: []string{"", "1"}},
		{name: "nil map", vars: nil, want: []string{"", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tpl.Values(tt.vars); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Values(%v) = %q, want %q", tt.vars, got, tt.want)
			}
		})
	}
}

func TestTemplateCheckVariables(t *testing.T) {
	tpl := mustTemplate(t, "Hi {{firstName}}, code {{code}}")
	tests := []struct {
		name   string
		vars   map[string]string
		limits VariableLimits
		want   []FieldProblem
	}{
		{name: "all present", vars: map[string]string{"firstName": "Ada", "code": "42"}},
		{name: "unused variables are not a problem", vars: map[string]string{"firstName": "Ada", "code": "42", "city": "London"}},
		{name: "empty value is accepted", vars: map[string]string{"firstName": "", "code": "42"}},
		{
			name: "missing variable",
			vars: map[string]string{"code": "42"},
			want: []FieldProblem{{Field: "variables.firstName", Problem: "variable firstName is missing"}},
		},
		{
			name: "all missing, in template order",
			vars: nil,
			want: []FieldProblem{
				{Field: "variables.firstName", Problem: "variable firstName is missing"},
				{Field: "variables.code", Problem: "variable code is missing"},
			},
		},
		{name: "1024 runes is the default limit", vars: map[string]string{"firstName": strings.Repeat("é", 1024), "code": "1"}},
		{
			name: "over the default limit",
			vars: map[string]string{"firstName": strings.Repeat("a", 1025), "code": "1"},
			want: []FieldProblem{{Field: "variables.firstName", Problem: "variable firstName is longer than 1024 characters"}},
		},
		{
			name:   "over a custom limit",
			vars:   map[string]string{"firstName": "Ada", "code": "123456"},
			limits: VariableLimits{MaxValueLength: 5},
			want:   []FieldProblem{{Field: "variables.code", Problem: "variable code is longer than 5 characters"}},
		},
		{
			// "Hi , code " is 10 characters.
			name: "a message at the provider's limit",
			vars: map[string]string{"firstName": strings.Repeat("é", 1000), "code": strings.Repeat("1", 590)},
		},
		{
			name: "a message over the provider's limit",
			vars: map[string]string{"firstName": strings.Repeat("é", 1000), "code": strings.Repeat("1", 591)},
			want: []FieldProblem{{Field: "variables", Problem: "the message would be 1601 characters with these values, longer than the 1600 a message may have"}},
		},
		{
			name:   "over a custom message limit",
			vars:   map[string]string{"firstName": "Ada", "code": "42"},
			limits: VariableLimits{MaxMessageLength: 14},
			want:   []FieldProblem{{Field: "variables", Problem: "the message would be 15 characters with these values, longer than the 14 a message may have"}},
		},
		{
			name: "invalid UTF-8",
			vars: map[string]string{"firstName": "Ad\xffa", "code": "1"},
			want: []FieldProblem{{Field: "variables.firstName", Problem: "variable firstName is not valid UTF-8"}},
		},
		{
			name:   "several problems",
			vars:   map[string]string{"firstName": "\xc3", "unused": "\xff"},
			limits: VariableLimits{MaxValueLength: 1},
			want: []FieldProblem{
				{Field: "variables.firstName", Problem: "variable firstName is not valid UTF-8"},
				{Field: "variables.code", Problem: "variable code is missing"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tpl.CheckVariables(tt.vars, tt.limits)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("CheckVariables() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestZeroTemplateRendersEmpty(t *testing.T) {
	var tpl Template
	if got := tpl.Render([]string{"x"}); got != "" {
		t.Errorf("zero Template rendered %q", got)
	}
	if got := tpl.Variables(); len(got) != 0 {
		t.Errorf("zero Template has variables %q", got)
	}
}

func mustTemplate(t *testing.T, text string) Template {
	t.Helper()
	tpl, err := NewTemplate(text, DefaultTemplateLimits)
	if err != nil {
		t.Fatalf("NewTemplate(%q): %v", text, err)
	}
	return tpl
}

func BenchmarkRender(b *testing.B) {
	tpl, err := NewTemplate("Hi {{firstName}}, your order {{orderId}} ships on {{date}}. "+
		"Track it at https://example.com/t/{{orderId}} or reply STOP to opt out.", DefaultTemplateLimits)
	if err != nil {
		b.Fatal(err)
	}
	values := tpl.Values(map[string]string{"firstName": "Ada", "orderId": "A-102938", "date": "12 March"})
	b.ReportAllocs()
	for b.Loop() {
		_ = tpl.Render(values)
	}
}

func TestCheckText(t *testing.T) {
	for _, ok := range []string{"", "Hi Ada", "line one\nline two", "col\tcol", "é 😀 中文", "a literal \uFFFD is text", "\u2028 is a separator, not a control"} {
		if err := CheckText(ok); err != nil {
			t.Errorf("CheckText(%q) = %v, want nil", ok, err)
		}
	}
	tests := []struct{ text, want string }{
		{"Hi \x00", "control character U+0000 at character 3"},
		{"\r\n", "control character U+000D at character 0"},
		{"é\x1b[31m", "control character U+001B at character 1"},
		{"del\x7f", "U+007F"},
		{"c1\u0085", "U+0085"},
		{"bad \xff byte", "not valid UTF-8 at character 4"},
		{"cut \xe2\x82", "not valid UTF-8 at character 4"},
		{"\xed\xa0\x80 surrogate", "not valid UTF-8 at character 0"},
	}
	for _, tt := range tests {
		err := CheckText(tt.text)
		if !errors.Is(err, ErrInvalidText) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CheckText(%q) = %v, want ErrInvalidText saying %q", tt.text, err, tt.want)
		}
	}
}

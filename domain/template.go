package domain

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrInvalidTemplate is wrapped by every error NewTemplate returns, so the API layer
// can answer a bad template with a 4xx without parsing messages.
var ErrInvalidTemplate = errors.New("invalid template")

// ErrInvalidText is wrapped by every error CheckText returns.
var ErrInvalidText = errors.New("invalid text")

// CheckText reports whether s may go into a message: valid UTF-8, and no control
// character but newline and tab. A NUL, an escape sequence or a stray carriage
// return reaches a handset as garbage, or not at all, and is never what a
// campaign meant. The API checks template texts and variable values with it
// before anything is stored; NewTemplate does not, so that a batch stored before
// the rule existed still renders. Errors give the rune offset (0-based).
func CheckText(s string) error {
	i := 0
	for b, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[b:], "\uFFFD"):
			// A U+FFFD written as such is text; a byte that is not UTF-8 is not.
			return fmt.Errorf("%w: not valid UTF-8 at character %d", ErrInvalidText, i)
		case unicode.IsControl(r) && r != '\n' && r != '\t':
			return fmt.Errorf("%w: control character U+%04X at character %d; only newline and tab may appear", ErrInvalidText, r, i)
		}
		i++
	}
	return nil
}

// maxVariableNameLength bounds a placeholder's name, in bytes (names are ASCII).
const maxVariableNameLength = 64

// TemplateLimits bounds what NewTemplate accepts. A field that is zero or negative
// takes its value from DefaultTemplateLimits, so callers set only what they change.
type TemplateLimits struct {
	// MaxLength is the longest template text, in runes.
	MaxLength int
	// MaxVariables is the most distinct variables a template may use.
	MaxVariables int
}

// DefaultTemplateLimits are the limits the API enforces unless configured otherwise.
// 1600 characters is the longest message body Twilio and most other providers
// accept; 50 variables is far more than any real campaign uses.
var DefaultTemplateLimits = TemplateLimits{MaxLength: 1600, MaxVariables: 50}

func (l TemplateLimits) withDefaults() TemplateLimits {
	if l.MaxLength <= 0 {
		l.MaxLength = DefaultTemplateLimits.MaxLength
	}
	if l.MaxVariables <= 0 {
		l.MaxVariables = DefaultTemplateLimits.MaxVariables
	}
	return l
}

// VariableLimits bounds the values a recipient gives a template's variables. A
// field that is zero or negative takes its value from DefaultVariableLimits.
type VariableLimits struct {
	// MaxValueLength is the longest value of one variable, in runes.
	MaxValueLength int
	// MaxMessageLength is the longest message a recipient's values may render,
	// in runes: what the provider accepts (Twilio refuses a body over 1,600
	// characters, error 21617, for every attempt).
	MaxMessageLength int
}

// DefaultVariableLimits are the limits the API enforces unless configured otherwise.
var DefaultVariableLimits = VariableLimits{MaxValueLength: 1024, MaxMessageLength: 1600}

func (l VariableLimits) withDefaults() VariableLimits {
	if l.MaxValueLength <= 0 {
		l.MaxValueLength = DefaultVariableLimits.MaxValueLength
	}
	if l.MaxMessageLength <= 0 {
		l.MaxMessageLength = DefaultVariableLimits.MaxMessageLength
	}
	return l
}

// Template is a message text with {{name}} placeholders. It is parsed once, by
// NewTemplate, into alternating literal and variable parts, so that rendering one
// message per recipient is a few string copies: a batch renders it up to millions
// of times. A Template is immutable and safe for concurrent use.
type Template struct {
	text string
	// variables are the distinct names, in order of first appearance.
	variables []string
	// literals and slots interleave: literals[0], slots[0], literals[1], ...,
	// slots[n-1], literals[n]. slots[i] indexes variables.
	literals []string
	slots    []int
	// literalLen is the total byte length of literals, to size the output once;
	// literalRunes their length in runes, to check a message's.
	literalLen, literalRunes int
}

// NewTemplate parses text. A placeholder is {{name}}, optionally with spaces or tabs
// inside the braces ({{ name }}); a name starts with an ASCII letter or _ and goes
// on with ASCII letters, digits, _, . or -, up to 64 characters. Anything that looks
// like a placeholder but is not one is an error rather than literal text: a
// customer who typed {{first name}} wants to hear about it before a million people
// receive the braces. Errors give the rune offset (0-based) of the opening braces.
// A lone "}}" or single braces are literal text.
func NewTemplate(text string, limits TemplateLimits) (Template, error) {
	limits = limits.withDefaults()
	if !utf8.ValidString(text) {
		return Template{}, fmt.Errorf("%w: text is not valid UTF-8", ErrInvalidTemplate)
	}
	if strings.TrimSpace(text) == "" {
		return Template{}, fmt.Errorf("%w: text is empty", ErrInvalidTemplate)
	}
	if n := utf8.RuneCountInString(text); n > limits.MaxLength {
		return Template{}, fmt.Errorf("%w: text is %d characters long, at most %d allowed", ErrInvalidTemplate, n, limits.MaxLength)
	}

	t := Template{text: text}
	index := map[string]int{}
	pos := 0 // byte offset of the text not yet parsed
	for {
		open := strings.Index(text[pos:], "{{")
		if open < 0 {
			break
		}
		open += pos
		inner := open + 2
		end := strings.Index(text[inner:], "}}")
		// A second "{{" before the closing braces means the first one was never
		// closed: report that one, not a strange name spanning both.
		if end < 0 || strings.Contains(text[inner:inner+end], "{{") {
			return Template{}, placeholderError(text, open, `"{{" has no matching "}}"`)
		}
		end += inner
		name := strings.Trim(text[inner:end], " \t")
		if problem := checkVariableName(name); problem != "" {
			return Template{}, placeholderError(text, open, problem)
		}
		slot, seen := index[name]
		if !seen {
			if len(t.variables) == limits.MaxVariables {
				return Template{}, fmt.Errorf("%w: more than %d distinct variables", ErrInvalidTemplate, limits.MaxVariables)
			}
			slot = len(t.variables)
			index[name] = slot
			t.variables = append(t.variables, name)
		}
		t.literals = append(t.literals, text[pos:open])
		t.slots = append(t.slots, slot)
		pos = end + 2
	}
	t.literals = append(t.literals, text[pos:])
	for _, l := range t.literals {
		t.literalLen += len(l)
		t.literalRunes += utf8.RuneCountInString(l)
	}
	return t, nil
}

func placeholderError(text string, byteOffset int, problem string) error {
	return fmt.Errorf("%w: placeholder at offset %d: %s", ErrInvalidTemplate, utf8.RuneCountInString(text[:byteOffset]), problem)
}

// checkVariableName returns what is wrong with name, or "" if nothing is. It does
// by hand what [A-Za-z_][A-Za-z0-9_.-]* would, without a regexp.
func checkVariableName(name string) string {
	if name == "" {
		return "empty placeholder {{}}: put a variable name between the braces"
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' ||
			i > 0 && ('0' <= c && c <= '9' || c == '.' || c == '-')
		if !ok {
			return fmt.Sprintf("invalid variable name %q: a name starts with a letter or _ and contains only letters, digits, _, . and -", clip(name, 32))
		}
	}
	// Checked after the characters: a valid name is ASCII, so bytes are characters.
	if len(name) > maxVariableNameLength {
		return fmt.Sprintf("variable name %q is longer than %d characters", clip(name, 32), maxVariableNameLength)
	}
	return ""
}

// clip shortens s to at most n runes, so error messages never echo huge input.
func clip(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j] + "…"
		}
		i++
	}
	return s
}

// Text returns the template text as given to NewTemplate.
func (t Template) Text() string { return t.text }

// Variables returns the distinct variable names, in order of first appearance.
// The slice is a copy the caller may keep or change.
func (t Template) Variables() []string {
	return append([]string(nil), t.variables...)
}

// Render returns the message for one recipient. values[i] is the value of
// Variables()[i] (as Values returns them); a missing value renders as "". Values are
// inserted as given, never parsed, so a value containing "{{x}}" stays literal.
func (t Template) Render(values []string) string {
	if len(t.slots) == 0 {
		return t.text
	}
	size := t.literalLen
	for _, s := range t.slots {
		if s < len(values) {
			size += len(values[s])
		}
	}
	var b strings.Builder
	b.Grow(size)
	for i, s := range t.slots {
		b.WriteString(t.literals[i])
		if s < len(values) {
			b.WriteString(values[s])
		}
	}
	b.WriteString(t.literals[len(t.slots)])
	return b.String()
}

// Values returns the values of the template's variables, in Variables() order,
// taken from vars; variables the template does not use are dropped, which is all a
// batch needs to store per recipient. A missing name gives "": run CheckVariables
// first to refuse such input.
func (t Template) Values(vars map[string]string) []string {
	values := make([]string, len(t.variables))
	for i, name := range t.variables {
		values[i] = vars[name]
	}
	return values
}

// CheckVariables reports what is wrong with one recipient's variables, in the order
// of Variables(), or nil if nothing is: a variable the template uses but vars lacks,
// a value that is not valid UTF-8, a value longer than limits allow, values
// that make the message longer than limits allow (Field "variables"). A variable
// present with an empty value is accepted: the caller chose to send nothing there.
// Variables the template does not use are ignored (Values drops them).
//
// Each problem's Field is relative to the recipient ("variables.firstName"); the API
// layer prefixes where the recipient sits in the request ("recipients[3].").
func (t Template) CheckVariables(vars map[string]string, limits VariableLimits) []FieldProblem {
	limits = limits.withDefaults()
	var problems []FieldProblem
	for _, name := range t.variables {
		field := "variables." + name
		v, ok := vars[name]
		switch {
		case !ok:
			problems = append(problems, FieldProblem{Field: field, Problem: fmt.Sprintf("variable %s is missing", name)})
		case !utf8.ValidString(v):
			problems = append(problems, FieldProblem{Field: field, Problem: fmt.Sprintf("variable %s is not valid UTF-8", name)})
		case utf8.RuneCountInString(v) > limits.MaxValueLength:
			problems = append(problems, FieldProblem{Field: field, Problem: fmt.Sprintf("variable %s is longer than %d characters", name, limits.MaxValueLength)})
		}
	}
	if len(t.slots) > 0 {
		n := t.literalRunes
		for _, slot := range t.slots {
			n += utf8.RuneCountInString(vars[t.variables[slot]])
		}
		if n > limits.MaxMessageLength {
			problems = append(problems, FieldProblem{Field: "variables", Problem: fmt.Sprintf(
				"the message would be %d characters with these values, longer than the %d a message may have", n, limits.MaxMessageLength)})
		}
	}
	return problems
}

package domain

import (
	"fmt"
	"unicode/utf8"
)

// MaxNameLength bounds a batch's name, in characters: enough for a campaign's
// title and a date, short enough for a list's column.
const MaxNameLength = 200

// CheckName reports what is wrong with a batch's name: the text rules of
// CheckText, and at most MaxNameLength characters. The empty name is no name.
func CheckName(name string) error {
	if err := CheckText(name); err != nil {
		return err
	}
	if n := utf8.RuneCountInString(name); n > MaxNameLength {
		return fmt.Errorf("%w: %d characters, at most %d", ErrInvalidText, n, MaxNameLength)
	}
	return nil
}

// RetryName is the name of a batch that retries the failed recipients of a
// batch named name (or, without a name, of batch id), within MaxNameLength.
func RetryName(name, id string) string {
	if name == "" {
		name = id
	}
	out := "Retry of " + name
	if utf8.RuneCountInString(out) <= MaxNameLength {
		return out
	}
	r := []rune(out)
	return string(r[:MaxNameLength-1]) + "…"
}

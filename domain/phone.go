package domain

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/nyaruka/phonenumbers"
)

// ErrInvalidPhone is wrapped by every error NormalizePhone returns for a number it
// refuses, so callers can tell bad input from a misconfigured default region.
var ErrInvalidPhone = errors.New("invalid phone number")

// maxPhoneLength bounds the raw input, in runes. The longest E.164 number is 16
// characters; 32 leaves room for spaces, dashes and parentheses, and keeps a
// pasted paragraph out of the parser and out of error messages.
const maxPhoneLength = 32

// NormalizePhone parses raw as a phone number and returns it in E.164
// ("+14155552671"). A number without a country code is read as a number of
// defaultRegion (an ISO 3166 code such as "US", any case; "" means every number
// must start with + or the region's international prefix). The number must be valid
// for its region, not just the right length, so that it fails here, before it is
// stored, rather than later at the provider.
//
// Twilio's test numbers (+1 500 555 xxxx) are accepted as long as they have the
// right length, whatever the metadata of the phonenumbers library says: the SMS
// simulator answers them as Twilio does, and tests and demos rely on them.
//
// Refused, wrapping ErrInvalidPhone: empty input, input longer than 32 characters,
// letters (vanity numbers such as 1-800-FLOWERS are not what a recipient list
// means), control characters inside the number, extensions (an SMS cannot reach
// one), unknown country codes and numbers that are not valid. An unknown non-empty defaultRegion is a configuration error
// (check it at start with ValidRegion) and does not wrap ErrInvalidPhone.
func NormalizePhone(raw string, defaultRegion string) (string, error) {
	region := strings.ToUpper(defaultRegion)
	if region != "" && !ValidRegion(region) {
		return "", fmt.Errorf("normalize phone: unknown default region %q", clip(defaultRegion, 8))
	}
	s := strings.TrimSpace(raw)
	if cleanE164(s) {
		return s, nil
	}
	return normalizeParsed(s, region)
}

// normalizeParsed is NormalizePhone through phonenumbers.Parse, for s trimmed
// and region upper case and valid (or ""). cleanE164 answers for most uploaded
// numbers without it.
func normalizeParsed(s, region string) (string, error) {
	switch {
	case s == "":
		return "", fmt.Errorf("%w: empty", ErrInvalidPhone)
	case !utf8.ValidString(s):
		return "", fmt.Errorf("%w: not valid UTF-8", ErrInvalidPhone)
	case utf8.RuneCountInString(s) > maxPhoneLength:
		return "", phoneError(s, fmt.Sprintf("longer than %d characters", maxPhoneLength))
	case strings.ContainsFunc(s, unicode.IsLetter):
		return "", phoneError(s, "contains letters")
	case strings.ContainsFunc(s, unicode.IsControl):
		// The parser skips what is not a digit, so "+1415\x005550100" would
		// otherwise pass as a clean number.
		return "", phoneError(s, "contains a control character")
	}

	n, err := phonenumbers.Parse(s, region)
	if err != nil {
		switch {
		case errors.Is(err, phonenumbers.ErrInvalidCountryCode) && region == "" && !strings.HasPrefix(s, "+"):
			return "", phoneError(s, "no country code: start the number with +")
		case errors.Is(err, phonenumbers.ErrInvalidCountryCode):
			return "", phoneError(s, "unknown country code")
		case errors.Is(err, phonenumbers.ErrTooShortNSN), errors.Is(err, phonenumbers.ErrTooShortAfterIDD):
			return "", phoneError(s, "too short")
		default:
			return "", phoneError(s, "not a phone number")
		}
	}
	if n.GetExtension() != "" {
		return "", phoneError(s, "has an extension")
	}
	if isTwilioTestNumber(n) {
		return phonenumbers.Format(n, phonenumbers.E164), nil
	}
	switch phonenumbers.IsPossibleNumberWithReason(n) {
	case phonenumbers.IS_POSSIBLE:
	case phonenumbers.TOO_SHORT, phonenumbers.IS_POSSIBLE_LOCAL_ONLY:
		return "", phoneError(s, "too short")
	case phonenumbers.TOO_LONG:
		return "", phoneError(s, "too long")
	case phonenumbers.INVALID_COUNTRY_CODE:
		return "", phoneError(s, "unknown country code")
	default:
		return "", phoneError(s, "wrong length")
	}
	if !validNumber(n) {
		cc := int(n.GetCountryCode())
		if region != "" && cc == phonenumbers.GetCountryCodeForRegion(region) {
			return "", phoneError(s, "not a valid number for region "+region)
		}
		return "", phoneError(s, fmt.Sprintf("not a valid number for country code +%d", cc))
	}
	e164 := phonenumbers.Format(n, phonenumbers.E164)
	if len(e164)-1 > maxE164Digits {
		// The metadata of some countries (Germany's) allows longer numbers
		// than E.164 does; no provider takes them.
		return "", phoneError(s, fmt.Sprintf("too long: more than the %d digits E.164 allows", maxE164Digits))
	}
	return e164, nil
}

// maxE164Digits is the most digits an E.164 number has, country code included.
const maxE164Digits = 15

// isTwilioTestNumber reports whether n is in Twilio's test range, +1 500 555 xxxx.
// Leading zeros are digits of the number ("+1 0500 555 0006" has eleven), not
// of the range.
func isTwilioTestNumber(n *phonenumbers.PhoneNumber) bool {
	nn := n.GetNationalNumber()
	return n.GetCountryCode() == 1 && !n.GetItalianLeadingZero() && nn >= 500_555_0000 && nn <= 500_555_9999
}

func phoneError(s, reason string) error {
	return fmt.Errorf("%w %q: %s", ErrInvalidPhone, clip(s, maxPhoneLength), reason)
}

// ValidRegion reports whether region (an ISO 3166 code such as "US", any case) is
// one NormalizePhone can read national numbers for. Check the configured default
// region with it at start.
func ValidRegion(region string) bool {
	return phonenumbers.GetSupportedRegions()[strings.ToUpper(region)]
}

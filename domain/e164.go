package domain

import (
	"regexp"
	"strings"
	"sync"

	"github.com/nyaruka/phonenumbers"
)

// cleanE164 reports whether NormalizePhone, through the library, would return s
// itself for s, whatever the default region: s is "+" and the digits of a valid
// number that the library keeps as they are. Uploads give numbers this way;
// phonenumbers.Parse spends most of its time on patterns (extensions, separators,
// international prefixes) that such a string cannot contain.
//
// It follows Parse step by step for "+" and ASCII digits, and answers false
// wherever that path could do something other than split off the country code:
// an unknown country code or one starting with 0 (Parse then retries without the
// plus), a national number the national prefix pattern matches (Parse may strip
// or rewrite it), a length IsPossibleNumberWithReason does not call IS_POSSIBLE,
// a number validNSN refuses, more digits than E.164 allows. false only means the
// library decides; it is never a refusal. TestCleanE164AgreesWithTheLibrary and
// FuzzCleanE164 hold it to that.
func cleanE164(s string) bool {
	if len(s) < 4 || len(s) > 1+maxE164Digits || s[0] != '+' || s[1] == '0' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	// extractCountryCode: the shortest prefix of one to three digits that is
	// a calling code.
	codes := callingCodes()
	cc, nsn := 0, ""
	for i := 2; i <= 4 && i < len(s); i++ {
		cc = cc*10 + int(s[i-1]-'0')
		if codes[cc] != nil {
			nsn = s[i:]
			break
		}
	}
	if nsn == "" {
		return false
	}
	c := codes[cc]
	if len(nsn) < phonenumbers.MIN_LENGTH_FOR_NSN || !c.possible[len(nsn)] {
		return false
	}
	if c.nationalPrefix != nil && c.nationalPrefix.MatchString(nsn) {
		return false
	}
	// The national number keeps its leading zeros (setItalianLeadingZeros),
	// so the national significant number is nsn and E.164 is s.
	if cc == 1 && isTwilioTestNSN(nsn) {
		return true
	}
	return validNSN(int32(cc), nsn)
}

// isTwilioTestNSN is isTwilioTestNumber for a +1 number's national significant
// number: ten digits without a leading zero from 500 555 0000 to 500 555 9999.
func isTwilioTestNSN(nsn string) bool {
	return len(nsn) == 10 && strings.HasPrefix(nsn, "500555")
}

// callingCodeRules are what cleanE164 needs of one country calling code, from
// the metadata Parse and IsPossibleNumberWithReason use for it: its main
// region's, or its non-geographic entity's.
type callingCodeRules struct {
	// nationalPrefix is the national prefix for parsing, anchored at the
	// start; nil when the metadata has none.
	nationalPrefix *regexp.Regexp
	// possible[n] tells whether IsPossibleNumberWithReason answers
	// IS_POSSIBLE for a national significant number of n digits.
	possible [phonenumbers.MAX_LENGTH_FOR_NSN + 1]bool
}

// callingCodes holds the rules of every calling code the library knows, by
// code (at most three digits); nil for the others.
var callingCodes = sync.OnceValue(func() *[1000]*callingCodeRules {
	coll, err := phonenumbers.MetadataCollection()
	if err != nil {
		panic("phone number metadata: " + err.Error()) // embedded in the library
	}
	regions := map[string]*phonenumbers.PhoneMetadata{}
	nonGeo := map[int32]*phonenumbers.PhoneMetadata{}
	for _, m := range coll.GetMetadata() {
		if m.GetId() == nonGeoRegion {
			nonGeo[m.GetCountryCode()] = m
		} else {
			regions[m.GetId()] = m
		}
	}
	var codes [1000]*callingCodeRules
	for cc := range phonenumbers.GetSupportedCallingCodes() {
		if cc <= 0 || cc >= len(codes) {
			continue // cannot be three digits: cleanE164 never sees it
		}
		// Parse and IsPossibleNumberWithReason take the main region's
		// metadata (getMetadataForRegionOrCallingCode).
		m := regions[phonenumbers.GetRegionCodeForCountryCode(cc)]
		if phonenumbers.GetRegionCodeForCountryCode(cc) == nonGeoRegion {
			m = nonGeo[int32(cc)]
		}
		c := &callingCodeRules{}
		codes[cc] = c
		if m == nil {
			// Known but without metadata: no length is possible here, so
			// the library's own path decides.
			continue
		}
		if p := m.GetNationalPrefixForParsing(); p != "" {
			c.nationalPrefix = regexp.MustCompile("^(?:" + p + ")")
		}
		// IsPossibleNumberWithReason depends on the number's length alone
		// (testNumberLength); asking it about one number of each length is
		// asking it about all of them.
		code := int32(cc)
		for n := phonenumbers.MIN_LENGTH_FOR_NSN; n <= phonenumbers.MAX_LENGTH_FOR_NSN; n++ {
			nn := uint64(pow10u(n - 1))
			num := &phonenumbers.PhoneNumber{CountryCode: &code, NationalNumber: &nn}
			c.possible[n] = phonenumbers.IsPossibleNumberWithReason(num) == phonenumbers.IS_POSSIBLE
		}
	}
	return &codes
})

func pow10u(n int) uint64 {
	p := uint64(1)
	for range n {
		p *= 10
	}
	return p
}

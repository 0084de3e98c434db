package domain

import (
	"regexp"
	"slices"
	"sync"

	"github.com/nyaruka/phonenumbers"
)

// validNumber is phonenumbers.IsValidNumber: the same metadata and the same
// rules, with each pattern compiled once and matched once. The library builds
// every pattern's text again and matches it twice on each call, and tests the
// number against each kind of line in turn where validity needs only one to
// match; that was half of a large upload's time. TestValidNumberAgreesWithTheLibrary
// and FuzzValidNumber hold the two to the same answers.
func validNumber(n *phonenumbers.PhoneNumber) bool {
	return validNSN(n.GetCountryCode(), phonenumbers.GetNationalSignificantNumber(n))
}

// validNSN is validNumber of the number with country code cc and national
// significant number nsn (leading zeros included).
func validNSN(cc int32, nsn string) bool {
	r := numberRules()
	regions := phonenumbers.GetRegionCodesForCountryCode(int(cc))
	var region string
	switch len(regions) {
	case 0:
		return false
	case 1:
		region = regions[0]
	default:
		region = r.regionFor(nsn, regions)
	}
	// IsValidNumberForRegion.
	if region == nonGeoRegion {
		rr := r.nonGeo[cc]
		return rr != nil && rr.valid(nsn)
	}
	rr := r.regions[region]
	return rr != nil && rr.countryCode == cc && rr.valid(nsn)
}

// nonGeoRegion is the region code of non-geographic numbers (+800, +883...).
const nonGeoRegion = "001"

// regionFor is GetRegionCodeForNumber's choice among the regions that share
// a country code: the first whose leading digits match, or, without leading
// digits, whose patterns take the number.
func (r *compiledRules) regionFor(nsn string, regions []string) string {
	for _, region := range regions {
		rr := r.regions[region]
		if rr == nil {
			continue
		}
		if rr.leading != nil {
			if rr.leading.MatchString(nsn) {
				return region
			}
		} else if rr.valid(nsn) {
			return region
		}
	}
	return ""
}

// compiledRules are the library's metadata with every pattern compiled.
type compiledRules struct {
	regions map[string]*regionRules
	nonGeo  map[int32]*regionRules
}

// regionRules are one region's (or one non-geographic code's) patterns.
type regionRules struct {
	countryCode int32
	leading     *regexp.Regexp // nil: the region has no leading digits
	general     numberDesc
	// kinds are the kinds of line of the library's getNumberTypeHelper, the
	// likeliest first: a number is valid when the general description and one
	// of them take it.
	kinds []numberDesc
}

func (r *regionRules) valid(nsn string) bool {
	if !r.general.takes(nsn) {
		return false
	}
	for _, d := range r.kinds {
		if d.takes(nsn) {
			return true
		}
	}
	return false
}

// numberDesc is isNumberMatchingDesc: the possible lengths, when listed, and
// the whole-number pattern.
type numberDesc struct {
	lengths []int32
	re      *regexp.Regexp
}

func (d numberDesc) takes(nsn string) bool {
	if len(d.lengths) > 0 && !slices.Contains(d.lengths, int32(len(nsn))) {
		return false
	}
	return d.re.MatchString(nsn)
}

var numberRules = sync.OnceValue(func() *compiledRules {
	coll, err := phonenumbers.MetadataCollection()
	if err != nil {
		panic("phone number metadata: " + err.Error()) // embedded in the library
	}
	r := &compiledRules{regions: map[string]*regionRules{}, nonGeo: map[int32]*regionRules{}}
	for _, m := range coll.GetMetadata() {
		rr := &regionRules{countryCode: m.GetCountryCode(), general: compileDesc(m.GetGeneralDesc())}
		if ld := m.GetLeadingDigits(); ld != "" {
			rr.leading = regexp.MustCompile("^(?:" + ld + ")")
		}
		kinds := []*phonenumbers.PhoneNumberDesc{m.GetFixedLine()}
		if !m.GetSameMobileAndFixedLinePattern() {
			kinds = append(kinds, m.GetMobile())
		}
		kinds = append(kinds, m.GetTollFree(), m.GetPremiumRate(), m.GetSharedCost(), m.GetVoip(),
			m.GetPersonalNumber(), m.GetPager(), m.GetUan(), m.GetVoicemail())
		for _, d := range kinds {
			if d.GetNationalNumberPattern() != "" {
				rr.kinds = append(rr.kinds, compileDesc(d))
			}
		}
		if m.GetId() == nonGeoRegion {
			r.nonGeo[m.GetCountryCode()] = rr
		} else {
			r.regions[m.GetId()] = rr
		}
	}
	return r
})

func compileDesc(d *phonenumbers.PhoneNumberDesc) numberDesc {
	return numberDesc{lengths: d.GetPossibleLength(), re: regexp.MustCompile("^(?:" + d.GetNationalNumberPattern() + ")$")}
}

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
		rr := r.nonGeo[cc].get()
		return rr != nil && rr.valid(nsn)
	}
	rr := r.regions[region].get()
	return rr != nil && rr.countryCode == cc && rr.valid(nsn)
}

// nonGeoRegion is the region code of non-geographic numbers (+800, +883...).
const nonGeoRegion = "001"

// regionFor is GetRegionCodeForNumber's choice among the regions that share
// a country code: the first whose leading digits match, or, without leading
// digits, whose patterns take the number.
func (r *compiledRules) regionFor(nsn string, regions []string) string {
	for _, region := range regions {
		rr := r.regions[region].get()
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

// compiledRules are the library's metadata by region, each region's patterns
// compiled the first time a number of it is checked: compiled all at once they
// held 15 MB of the heap, about a quarter of a busy instance's live heap, which
// every collection marks, for the few regions a deployment sends to.
type compiledRules struct {
	regions map[string]*lazyRegion
	nonGeo  map[int32]*lazyRegion
}

// lazyRegion compiles one region's patterns once, on first use.
type lazyRegion struct {
	once  sync.Once
	meta  *phonenumbers.PhoneMetadata
	rules *regionRules
}

// get returns the region's rules, compiling them the first time; nil for an
// unknown region (a nil lazyRegion).
func (l *lazyRegion) get() *regionRules {
	if l == nil {
		return nil
	}
	l.once.Do(func() { l.rules = compileRegion(l.meta) })
	return l.rules
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
	r := &compiledRules{regions: map[string]*lazyRegion{}, nonGeo: map[int32]*lazyRegion{}}
	for _, m := range coll.GetMetadata() {
		if m.GetId() == nonGeoRegion {
			r.nonGeo[m.GetCountryCode()] = &lazyRegion{meta: m}
		} else {
			r.regions[m.GetId()] = &lazyRegion{meta: m}
		}
	}
	return r
})

// compileRegion compiles the patterns of one region's metadata.
func compileRegion(m *phonenumbers.PhoneMetadata) *regionRules {
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
	return rr
}

func compileDesc(d *phonenumbers.PhoneNumberDesc) numberDesc {
	return numberDesc{lengths: d.GetPossibleLength(), re: regexp.MustCompile("^(?:" + d.GetNationalNumberPattern() + ")$")}
}

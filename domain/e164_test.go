package domain

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nyaruka/phonenumbers"
)

// sortedRegions are the default regions the differential tests rotate
// through, "" (no default region) first.
func sortedRegions() []string {
	regions := []string{""}
	for r := range phonenumbers.GetSupportedRegions() {
		regions = append(regions, r)
	}
	slices.Sort(regions[1:])
	return regions
}

// agreeE164 fails t when cleanE164 answers for s and the library's path, under
// region, does not give s itself. When cleanE164 does not answer, NormalizePhone
// is the library's path. It reports whether cleanE164 answered.
func agreeE164(t testing.TB, s, region string) bool {
	t.Helper()
	if !cleanE164(s) {
		return false
	}
	if want, err := normalizeParsed(s, region); want != s || err != nil {
		t.Fatalf("cleanE164(%q), but the library's path in %q gives %q, %v", s, region, want, err)
	}
	if got, err := NormalizePhone(s, region); got != s || err != nil {
		t.Fatalf("cleanE164(%q), but NormalizePhone in %q gives %q, %v", s, region, got, err)
	}
	return true
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Every region's example numbers of every kind of line in E.164, each with
// each digit changed, one dropped and one or two added, and random digits after
// every calling code (leading zeros, too short, too long) and after codes that
// do not exist, give the same answer with the fast path as through the
// library, under default regions taken in turn. Most valid example numbers
// take the fast path.
func TestCleanE164AgreesWithTheLibrary(t *testing.T) {
	regions := sortedRegions()
	next, answered := 0, 0
	check := func(s string) bool {
		next++
		if agreeE164(t, s, regions[next%len(regions)]) {
			answered++
			return true
		}
		return false
	}
	var examples []string
	for _, region := range regions[1:] {
		for _, kind := range kindsOfLine {
			if n := phonenumbers.GetExampleNumberForType(region, kind); n != nil {
				examples = append(examples, phonenumbers.Format(n, phonenumbers.E164))
			}
		}
	}
	for cc := range phonenumbers.GetSupportedGlobalNetworkCallingCodes() {
		if n := phonenumbers.GetExampleNumberForNonGeoEntity(cc); n != nil {
			examples = append(examples, phonenumbers.Format(n, phonenumbers.E164))
		}
	}
	if len(examples) < 1000 {
		t.Fatalf("only %d example numbers: the metadata did not load", len(examples))
	}
	valid, fast, checked := 0, 0, 0
	slow := map[string]int{} // calling codes of valid examples the library decided
	for _, ex := range examples {
		if _, err := normalizeParsed(ex, ""); err == nil {
			valid++
			if check(ex) {
				fast++
			} else {
				n, _ := phonenumbers.Parse(ex, "")
				slow["+"+strconv.Itoa(int(n.GetCountryCode()))]++
			}
		} else {
			check(ex)
		}
		// Parse's choices (the calling code, a national prefix, leading
		// zeros) hang on the first digits; validity on all of them is
		// TestValidNumberAgreesWithTheLibrary's.
		digits := ex[1:]
		for i := range digits {
			if i < 6 {
				for d := byte('0'); d <= '9'; d++ {
					if d != digits[i] {
						check("+" + digits[:i] + string(d) + digits[i+1:])
						checked++
					}
				}
			}
			check("+" + digits[:i] + digits[i+1:])
			checked++
		}
		for _, more := range []string{"0", "7", "12"} {
			check(ex + more)
			check("+" + digits[:1] + more + digits[1:])
			checked += 2
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	codes := []int{0, 999, 1000, 9, 42, 801}
	for cc := range phonenumbers.GetSupportedCallingCodes() {
		codes = append(codes, cc)
	}
	slices.Sort(codes)
	for _, cc := range codes {
		prefix := "+" + strconv.Itoa(cc)
		for n := range 16 {
			for range 12 {
				var b strings.Builder
				b.WriteString(prefix)
				for range n {
					b.WriteByte(byte('0' + rng.IntN(10)))
				}
				check(b.String())
				checked++
			}
		}
	}
	if fast < valid*8/10 {
		t.Fatalf("only %d of %d valid example numbers took the fast path; the library decided for %v", fast, valid, slow)
	}
	t.Logf("%d example numbers (%d valid, %d of them through the fast path; the library decided for %v), %d variants and random numbers (%d through the fast path) agree",
		len(examples), valid, fast, slow, checked, answered-fast)
}

// FuzzCleanE164 holds NormalizePhone to the library's answer, number or error
// message, for "+", a calling code and digits (or any bytes, when raw), under
// any default region.
func FuzzCleanE164(f *testing.F) {
	f.Add(uint16(1), []byte("4155550100"), uint8(0), false)
	f.Add(uint16(1), []byte("5005550006"), uint8(1), false)
	f.Add(uint16(1), []byte("14155550100"), uint8(0), false)
	f.Add(uint16(39), []byte("0212345678"), uint8(2), false)
	f.Add(uint16(44), []byte("07400123456"), uint8(3), false)
	f.Add(uint16(54), []byte("91123456789"), uint8(4), false)
	f.Add(uint16(49), []byte("1512345678901"), uint8(5), false)
	f.Add(uint16(800), []byte("12345678"), uint8(6), false)
	f.Add(uint16(999), []byte("12345678"), uint8(7), false)
	f.Add(uint16(0), []byte("4155550100"), uint8(8), false)
	f.Add(uint16(1), []byte(" 415 555 0100"), uint8(9), true)
	regions := sortedRegions()
	f.Fuzz(func(t *testing.T, cc uint16, national []byte, region uint8, raw bool) {
		if len(national) > 40 {
			return
		}
		digits := slices.Clone(national)
		if !raw {
			for i, b := range digits {
				digits[i] = '0' + b%10
			}
		}
		s, rg := "+"+strconv.Itoa(int(cc)%1000)+string(digits), regions[int(region)%len(regions)]
		agreeE164(t, s, rg)
		got, gotErr := NormalizePhone(s, rg)
		want, wantErr := normalizeParsed(strings.TrimSpace(s), rg)
		if got != want || errText(gotErr) != errText(wantErr) {
			t.Fatalf("NormalizePhone(%q, %q) = %q, %v; the library's path: %q, %v", s, rg, got, gotErr, want, wantErr)
		}
	})
}

package domain

import (
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/nyaruka/phonenumbers"
)

// kindsOfLine are every PhoneNumberType an example number exists for.
var kindsOfLine = []phonenumbers.PhoneNumberType{
	phonenumbers.FIXED_LINE, phonenumbers.MOBILE, phonenumbers.TOLL_FREE, phonenumbers.PREMIUM_RATE,
	phonenumbers.SHARED_COST, phonenumbers.VOIP, phonenumbers.PERSONAL_NUMBER, phonenumbers.PAGER,
	phonenumbers.UAN, phonenumbers.VOICEMAIL,
}

// agree fails t when validNumber and the library disagree on n.
func agree(t testing.TB, n *phonenumbers.PhoneNumber) {
	t.Helper()
	if got, want := validNumber(n), phonenumbers.IsValidNumber(n); got != want {
		t.Fatalf("+%d %s (leading zeros %v/%d): validNumber %v, the library %v", n.GetCountryCode(),
			phonenumbers.GetNationalSignificantNumber(n), n.GetItalianLeadingZero(), n.GetNumberOfLeadingZeros(), got, want)
	}
}

// Every region's example numbers of every kind of line, and each of them with
// each digit changed, one dropped and one added, are judged as the library
// judges them; so are random numbers under every country code.
func TestValidNumberAgreesWithTheLibrary(t *testing.T) {
	var examples []*phonenumbers.PhoneNumber
	for region := range phonenumbers.GetSupportedRegions() {
		for _, kind := range kindsOfLine {
			if n := phonenumbers.GetExampleNumberForType(region, kind); n != nil {
				examples = append(examples, n)
			}
		}
	}
	for cc := range phonenumbers.GetSupportedGlobalNetworkCallingCodes() {
		if n := phonenumbers.GetExampleNumberForNonGeoEntity(cc); n != nil {
			examples = append(examples, n)
		}
	}
	if len(examples) < 1000 {
		t.Fatalf("only %d example numbers: the metadata did not load", len(examples))
	}
	valid, checked := 0, 0
	for _, ex := range examples {
		agree(t, ex)
		if validNumber(ex) {
			valid++
		}
		digits := strconv.FormatUint(ex.GetNationalNumber(), 10)
		var variants []string
		for i := range digits {
			for d := '0'; d <= '9'; d++ {
				variants = append(variants, digits[:i]+string(d)+digits[i+1:])
			}
		}
		variants = append(variants, digits[:len(digits)-1], digits+"0", digits+"7")
		for _, v := range variants {
			nn, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				continue
			}
			n := &phonenumbers.PhoneNumber{CountryCode: ex.CountryCode, NationalNumber: &nn,
				ItalianLeadingZero: ex.ItalianLeadingZero, NumberOfLeadingZeros: ex.NumberOfLeadingZeros}
			agree(t, n)
			checked++
		}
	}
	if valid < len(examples)*9/10 {
		t.Fatalf("only %d of %d example numbers valid", valid, len(examples))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	codes := []int{0, 999, 1000}
	for cc := range phonenumbers.GetSupportedCallingCodes() {
		codes = append(codes, cc)
	}
	for range 200_000 {
		cc := int32(codes[rng.IntN(len(codes))])
		nn := rng.Uint64N(uint64(pow10(4 + rng.IntN(13))))
		agree(t, &phonenumbers.PhoneNumber{CountryCode: &cc, NationalNumber: &nn})
		checked++
	}
	t.Logf("%d example numbers (%d valid), %d variants and random numbers agree", len(examples), valid, checked)
}

func pow10(n int) int64 {
	p := int64(1)
	for range n {
		p *= 10
	}
	return p
}

// FuzzValidNumber holds validNumber to the library's answer for any number.
func FuzzValidNumber(f *testing.F) {
	f.Add(uint16(1), uint64(4155550100), false)
	f.Add(uint16(44), uint64(7400123456), false)
	f.Add(uint16(39), uint64(212345678), true)
	f.Add(uint16(800), uint64(12345678), false)
	f.Fuzz(func(t *testing.T, cc uint16, nn uint64, leadingZero bool) {
		code := int32(cc)
		n := &phonenumbers.PhoneNumber{CountryCode: &code, NationalNumber: &nn}
		if leadingZero {
			n.ItalianLeadingZero = &leadingZero
		}
		agree(t, n)
	})
}

func BenchmarkValidNumber(b *testing.B) {
	n, err := phonenumbers.Parse("+14155550123", "")
	if err != nil {
		b.Fatal(err)
	}
	b.Run("library", func(b *testing.B) {
		for b.Loop() {
			phonenumbers.IsValidNumber(n)
		}
	})
	b.Run("compiled", func(b *testing.B) {
		for b.Loop() {
			validNumber(n)
		}
	})
}

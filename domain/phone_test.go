package domain

import (
	"errors"
	"strings"
	"sync"
	"testing"
)

func TestNormalizePhone(t *testing.T) {
	tests := []struct {
		name   string
		raw    string
		region string
		want   string
	}{
		{name: "US national with parentheses", raw: "(415) 555-2671", region: "US", want: "+14155552671"},
		{name: "US national with dashes", raw: "415-555-2671", region: "US", want: "+14155552671"},
		{name: "US digits only", raw: "4155552671", region: "US", want: "+14155552671"},
		{name: "US with trunk prefix 1", raw: "1 415 555 2671", region: "US", want: "+14155552671"},
		{name: "US international format", raw: "+1 415 555 2671", region: "US", want: "+14155552671"},
		{name: "already E.164", raw: "+14155552671", region: "US", want: "+14155552671"},
		{name: "surrounding whitespace", raw: "  +1 415 555 2671\n", region: "US", want: "+14155552671"},
		{name: "dots", raw: "415.555.2671", region: "US", want: "+14155552671"},
		{name: "UK number with + from a US default", raw: "+44 20 7946 0958", region: "US", want: "+442079460958"},
		{name: "UK number with US international prefix 011", raw: "011 44 20 7946 0958", region: "US", want: "+442079460958"},
		{name: "UK number with UK international prefix 00 from GB", raw: "0044 20 7946 0958", region: "GB", want: "+442079460958"},
		{name: "UK national from GB", raw: "020 7946 0958", region: "GB", want: "+442079460958"},
		{name: "German national from DE", raw: "030 12345678", region: "DE", want: "+493012345678"},
		{name: "German international from US", raw: "+49 30 12345678", region: "US", want: "+493012345678"},
		{name: "German mobile from DE", raw: "0151 23456789", region: "DE", want: "+4915123456789"},
		{name: "lowercase region", raw: "030 12345678", region: "de", want: "+493012345678"},
		{name: "no region, international number", raw: "+1 415 555 2671", region: "", want: "+14155552671"},
		{name: "Twilio test: invalid number", raw: "+15005550001", region: "US", want: "+15005550001"},
		{name: "Twilio test: cannot route", raw: "+15005550002", region: "US", want: "+15005550002"},
		{name: "Twilio test: no international permission", raw: "+15005550003", region: "US", want: "+15005550003"},
		{name: "Twilio test: blocked", raw: "+15005550004", region: "US", want: "+15005550004"},
		{name: "Twilio test: valid", raw: "+15005550006", region: "US", want: "+15005550006"},
		{name: "Twilio test: not SMS-capable", raw: "+15005550009", region: "US", want: "+15005550009"},
		{name: "Twilio test, national format", raw: "(500) 555-0006", region: "US", want: "+15005550006"},
		{name: "Twilio test from another region", raw: "+1 500 555 0006", region: "DE", want: "+15005550006"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizePhone(tt.raw, tt.region)
			if err != nil {
				t.Fatalf("NormalizePhone(%q, %q): %v", tt.raw, tt.region, err)
			}
			if got != tt.want {
				t.Errorf("NormalizePhone(%q, %q) = %q, want %q", tt.raw, tt.region, got, tt.want)
			}
		})
	}
}

func TestNormalizePhoneRejects(t *testing.T) {
	tests := []struct {
		name   string
		raw    string
		region string
		want   string // the error message contains this
	}{
		{name: "empty", raw: "", region: "US", want: "invalid phone number: empty"},
		{name: "whitespace", raw: "   ", region: "US", want: "invalid phone number: empty"},
		{name: "letters", raw: "abc", region: "US", want: `invalid phone number "abc": contains letters`},
		{name: "vanity number", raw: "1-800-FLOWERS", region: "US", want: "contains letters"},
		{name: "extension written out", raw: "+1 415 555 2671 ext 12", region: "US", want: "contains letters"},
		{name: "extension with #", raw: "+1 415 555 2671 #12", region: "US", want: "has an extension"},
		{name: "33 characters", raw: "+1 415 555 2671 " + strings.Repeat("1", 17), region: "US", want: "longer than 32 characters"},
		{name: "invalid UTF-8", raw: "+1415\xff5552671", region: "US", want: "not valid UTF-8"},
		{name: "NUL inside", raw: "+1415\x005552671", region: "US", want: "contains a control character"},
		{name: "escape inside", raw: "+1 415 \x1b555 2671", region: "US", want: "contains a control character"},
		{name: "DEL inside", raw: "+1415\x7f5552671", region: "US", want: "contains a control character"},
		{name: "punctuation only", raw: "+", region: "US", want: "not a phone number"},
		{name: "too short", raw: "+1 415", region: "US", want: "too short"},
		{name: "seven digits without area code", raw: "555-1234", region: "US", want: "too short"},
		{name: "too long for the country", raw: "+1 415 555 26711", region: "US", want: "too long"},
		{name: "unknown country code", raw: "+999 1234 5678", region: "US", want: "unknown country code"},
		{name: "no country code and no region", raw: "415 555 2671", region: "", want: "no country code"},
		{name: "US area code 555 does not exist", raw: "(555) 123-4567", region: "US", want: "not a valid number for region US"},
		{name: "invalid number of another country", raw: "+44 11 1111 1111", region: "US", want: "not a valid number for country code +44"},
		{name: "00 is not the international prefix from the US", raw: "0044 20 7946 0958", region: "US", want: "invalid phone number"},
		{name: "valid for Germany but longer than E.164", raw: "20100000000 0000", region: "DE", want: "more than the 15 digits E.164 allows"},
		{name: "Twilio range needs ten digits", raw: "+1 500 555 000", region: "US", want: "too short"},
		{name: "Twilio range with a leading zero", raw: "+1 0500 555 0006", region: "US", want: "too long"},
		{name: "Twilio range after leading zeros", raw: "+1 0000 500 555 0000", region: "US", want: "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizePhone(tt.raw, tt.region)
			if err == nil {
				t.Fatalf("NormalizePhone(%q, %q) = %q, want error containing %q", tt.raw, tt.region, got, tt.want)
			}
			if !errors.Is(err, ErrInvalidPhone) {
				t.Errorf("error %v does not wrap ErrInvalidPhone", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestNormalizePhoneNeverEchoesHugeInput(t *testing.T) {
	raw := strings.Repeat("9", 10_000)
	_, err := NormalizePhone(raw, "US")
	if err == nil {
		t.Fatal("NormalizePhone accepted 10000 digits")
	}
	if len(err.Error()) > 120 {
		t.Errorf("error message is %d bytes long: %.200q", len(err.Error()), err)
	}
}

func TestNormalizePhoneUnknownRegionIsAConfigurationError(t *testing.T) {
	_, err := NormalizePhone("4155552671", "XX")
	if err == nil {
		t.Fatal("NormalizePhone accepted region XX")
	}
	if errors.Is(err, ErrInvalidPhone) {
		t.Errorf("an unknown region is not the number's fault, but error %v wraps ErrInvalidPhone", err)
	}
}

func TestNormalizePhoneConcurrently(t *testing.T) {
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if got, err := NormalizePhone("030 12345678", "DE"); err != nil || got != "+493012345678" {
					t.Errorf("NormalizePhone = %q, %v", got, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestValidRegion(t *testing.T) {
	tests := []struct {
		region string
		want   bool
	}{
		{"US", true},
		{"DE", true},
		{"GB", true},
		{"us", true},
		{"", false},
		{"ZZ", false},
		{"XX", false},
		{"001", false},
		{"USA", false},
	}
	for _, tt := range tests {
		if got := ValidRegion(tt.region); got != tt.want {
			t.Errorf("ValidRegion(%q) = %v, want %v", tt.region, got, tt.want)
		}
	}
}

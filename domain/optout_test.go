package domain

import (
	"encoding/json"
	"testing"
	"time"
)

func TestReadKeyword(t *testing.T) {
	for _, c := range []struct {
		body   string
		action KeywordAction
		word   string
	}{
		{"STOP", KeywordOptOut, "STOP"},
		{"stop", KeywordOptOut, "STOP"},
		{"  Stop \n", KeywordOptOut, "STOP"},
		{"\tstopall", KeywordOptOut, "STOPALL"},
		{"unsubscribe", KeywordOptOut, "UNSUBSCRIBE"},
		{"Cancel", KeywordOptOut, "CANCEL"},
		{"end", KeywordOptOut, "END"},
		{"QUIT", KeywordOptOut, "QUIT"},
		{"start", KeywordOptIn, "START"},
		{"Yes", KeywordOptIn, "YES"},
		{"UNSTOP ", KeywordOptIn, "UNSTOP"},
		{"stop please", KeywordNone, ""},
		{"STOP!", KeywordNone, ""},
		{"s t o p", KeywordNone, ""},
		{"ſtop", KeywordNone, ""},
		{"HELP", KeywordNone, ""},
		{"", KeywordNone, ""},
		{"stopp", KeywordNone, ""},
	} {
		if a, w := ReadKeyword(c.body); a != c.action || w != c.word {
			t.Errorf("ReadKeyword(%q) = %v %q, want %v %q", c.body, a, w, c.action, c.word)
		}
	}
}

func TestOptOutChangeRoundTrips(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []OptOutChange{
		{OptedOut: true, Tenant: "acme", Phone: "+14155550100", Source: OptOutByKeyword, Keyword: "STOP", At: at},
		{OptedOut: false, Tenant: "acme", Phone: "+14155550100", Source: OptOutByAPI, By: "acme/1a2b", At: at},
	} {
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeOptOutChange(c.EventType(), data)
		if err != nil {
			t.Fatal(err)
		}
		if got != c {
			t.Errorf("round trip: %+v, want %+v", got, c)
		}
	}
	if _, err := DecodeOptOutChange("BatchCreated", []byte(`{}`)); err == nil {
		t.Error("another event type decoded as an opt-out")
	}
}

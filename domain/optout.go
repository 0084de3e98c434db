package domain

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Opt-outs: each tenant keeps a suppression list, the numbers that asked not to
// be sent to. It lives in one stream per tenant, optouts-<tenant>, as
// NumberOptedOut and NumberOptedIn events appended at the stream's expected
// revision, so that every instance agrees on its order. Numbers are E.164.

// OptOutStreamPrefix starts the name of a tenant's opt-out stream.
const OptOutStreamPrefix = "optouts-"

// OptOutStream is the stream of tenant's opt-out list.
func OptOutStream(tenant string) string { return OptOutStreamPrefix + tenant }

// OptOutSource says how a number came on or off a list.
type OptOutSource string

const (
	// OptOutByKeyword: the recipient texted a keyword such as STOP or START.
	OptOutByKeyword OptOutSource = "keyword"
	// OptOutByAPI: someone changed the list through the API or the dashboard.
	OptOutByAPI OptOutSource = "api"
)

// Stored type names of the opt-out events.
const (
	TypeNumberOptedOut = "NumberOptedOut"
	TypeNumberOptedIn  = "NumberOptedIn"
)

// OptOutChange records a number going on a tenant's list (OptedOut, stored as
// NumberOptedOut) or coming off it (NumberOptedIn).
type OptOutChange struct {
	// OptedOut is the event's type, not part of its payload.
	OptedOut bool         `json:"-"`
	Tenant   string       `json:"tenant"`
	Phone    string       `json:"phone"`
	Source   OptOutSource `json:"source"`
	// Keyword is the word the recipient sent, for OptOutByKeyword.
	Keyword string `json:"keyword,omitempty"`
	// By names who changed the list through the API (an API key's ID).
	By string    `json:"by,omitempty"`
	At time.Time `json:"at"`
}

// EventType is the stored type name of c.
func (c OptOutChange) EventType() string {
	if c.OptedOut {
		return TypeNumberOptedOut
	}
	return TypeNumberOptedIn
}

// DecodeOptOutChange rebuilds an opt-out event from its stored type and payload.
func DecodeOptOutChange(eventType string, data []byte) (OptOutChange, error) {
	var c OptOutChange
	switch eventType {
	case TypeNumberOptedOut:
		c.OptedOut = true
	case TypeNumberOptedIn:
	default:
		return OptOutChange{}, fmt.Errorf("decode opt-out event: unknown type %q", eventType)
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return OptOutChange{}, fmt.Errorf("decode %s: %w", eventType, err)
	}
	return c, nil
}

// InboundChangeID is the event ID of the change an inbound message (the
// provider's message ID) makes to tenant's list: the store refuses it a second
// time, so a replayed STOP is recorded once, even after a START since.
func InboundChangeID(tenant, messageID string) string {
	return uuid.NewSHA1(inboundChanges, []byte(tenant+"\x00"+messageID)).String()
}

var inboundChanges = uuid.MustParse("0c7f5d0e-2a4b-4f31-9a57-3d1e8b6c2f90")

// KeywordAction is what an inbound message asks of the opt-out list.
type KeywordAction int

const (
	// KeywordNone: the message is not a keyword; it changes nothing.
	KeywordNone KeywordAction = iota
	// KeywordOptOut: STOP and its synonyms.
	KeywordOptOut
	// KeywordOptIn: START and its synonyms.
	KeywordOptIn
)

// keywords are Twilio's default opt-out and opt-in keywords.
var keywords = map[string]KeywordAction{
	"STOP": KeywordOptOut, "STOPALL": KeywordOptOut, "UNSUBSCRIBE": KeywordOptOut,
	"CANCEL": KeywordOptOut, "END": KeywordOptOut, "QUIT": KeywordOptOut,
	"START": KeywordOptIn, "YES": KeywordOptIn, "UNSTOP": KeywordOptIn,
}

// ReadKeyword reads an inbound message's body as Twilio reads opt-out keywords:
// the keyword alone, in any case, with surrounding whitespace ignored ("stop",
// " STOP\n"; not "stop please" nor "STOP!"). It returns the action and the
// keyword in upper case; KeywordNone and "" for any other message.
func ReadKeyword(body string) (KeywordAction, string) {
	word := strings.TrimSpace(body)
	if len(word) > len("UNSUBSCRIBE") {
		return KeywordNone, ""
	}
	// ASCII only: strings.ToUpper would turn the long s of "ſtop" into STOP.
	for i := 0; i < len(word); i++ {
		if c := word[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return KeywordNone, ""
		}
	}
	word = strings.ToUpper(word)
	if action, ok := keywords[word]; ok {
		return action, word
	}
	return KeywordNone, ""
}

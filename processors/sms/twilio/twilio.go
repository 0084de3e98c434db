// Package twilio holds the parts of Twilio's wire protocol that smsbatch's http
// provider, the simulator and the API's webhooks share: the request signature
// Twilio puts on every webhook (X-Twilio-Signature), the status callback URL
// smsbatch asks for with each message, and the message statuses a callback
// reports. It has no state and does no I/O.
package twilio

import (
	"crypto/hmac"
	"crypto/sha1" // Twilio signs with HMAC-SHA1: the choice is Twilio's
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader is the header Twilio signs its webhook requests in.
const SignatureHeader = "X-Twilio-Signature"

// The webhook routes of the API, under the instance's public base URL.
const (
	// StatusCallbackPath receives a message's status changes (delivery receipts).
	StatusCallbackPath = "/api/webhooks/sms/status"
	// InboundPath receives the messages recipients send to a provider number.
	InboundPath = "/api/webhooks/sms/inbound"
)

// Signature returns the X-Twilio-Signature of a POST of form to fullURL, as
// Twilio computes it: the URL, followed by each parameter's name and value
// (names sorted in byte order, a repeated name's values sorted too, no
// delimiters), signed with HMAC-SHA1 keyed with the auth token, in base64.
func Signature(authToken, fullURL string, form url.Values) string {
	names := make([]string, 0, len(form))
	for name := range form {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(fullURL)
	for _, name := range names {
		values := append([]string(nil), form[name]...)
		sort.Strings(values)
		for _, v := range values {
			b.WriteString(name)
			b.WriteString(v)
		}
	}
	mac := hmac.New(sha1.New, []byte(authToken))
	mac.Write([]byte(b.String()))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// ValidSignature reports whether sig is the signature of a POST of form to
// fullURL. Like Twilio's own helper libraries it accepts the signature of the
// URL with its port and without it (Twilio signs https://host/... or
// https://host:443/... depending on how the URL was written), and it compares
// in constant time. An empty token or signature is never valid.
func ValidSignature(authToken, fullURL string, form url.Values, sig string) bool {
	if authToken == "" || sig == "" {
		return false
	}
	valid := false
	for _, u := range portVariants(fullURL) {
		// Every variant is computed, so the time taken says nothing about which one matched.
		if hmac.Equal([]byte(Signature(authToken, u, form)), []byte(sig)) {
			valid = true
		}
	}
	return valid
}

// portVariants returns fullURL without its port and with it (the scheme's
// default port when it names none).
func portVariants(fullURL string) []string {
	u, err := url.Parse(fullURL)
	if err != nil || u.Host == "" {
		return []string{fullURL}
	}
	host, port := u.Hostname(), u.Port()
	if strings.Contains(host, ":") {
		host = "[" + host + "]" // IPv6
	}
	without, with := *u, *u
	without.Host = host
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	with.Host = net.JoinHostPort(u.Hostname(), port)
	return []string{without.String(), with.String()}
}

// Message statuses a status callback reports (MessageStatus). Only delivered,
// undelivered and failed are final for delivery: "sent" means a carrier took
// the message, and stays final only for carriers that send no receipts.
const (
	StatusQueued      = "queued"
	StatusSending     = "sending"
	StatusSent        = "sent"
	StatusDelivered   = "delivered"
	StatusUndelivered = "undelivered"
	StatusFailed      = "failed"
)

// Receipt tells what a callback's MessageStatus means for delivery: final is
// false for statuses on the way (queued, sending, sent, and any status Twilio
// adds later); for a final one, delivered says whether the message reached
// the handset.
func Receipt(status string) (delivered, final bool) {
	switch status {
	case StatusDelivered:
		return true, true
	case StatusUndelivered, StatusFailed:
		return false, true
	}
	return false, false
}

// deliveryErrors are the messages of Twilio's delivery error codes (30001 to
// 30010), which a status callback carries as ErrorCode without a text.
var deliveryErrors = map[string]string{
	"30001": "Queue overflow",
	"30002": "Account suspended",
	"30003": "Unreachable destination handset",
	"30004": "Message blocked",
	"30005": "Unknown destination handset",
	"30006": "Landline or unreachable carrier",
	"30007": "Message filtered by the carrier",
	"30008": "Unknown error",
	"30009": "Missing segment",
	"30010": "Message price exceeds max price",
}

// DeliveryErrorMessage explains a delivery error code; "" for a code it does
// not know.
func DeliveryErrorMessage(code string) string { return deliveryErrors[code] }

// The query parameters of a status callback URL.
const (
	paramBatch  = "b"
	paramIndex  = "i"
	paramSentAt = "s"
)

// StatusCallbackURL is the URL smsbatch asks the provider to report message
// batchID:index's status to: the instance's public base URL (scheme, host and
// any path prefix a proxy adds), the status route, and the batch, index and
// send time (Unix milliseconds) as query parameters. The provider signs the
// whole URL with each callback, so the values in it can be trusted and no
// lookup by the provider's message ID is needed.
func StatusCallbackURL(publicURL, batchID string, index int, sentAt time.Time) string {
	q := url.Values{}
	q.Set(paramBatch, batchID)
	q.Set(paramIndex, strconv.Itoa(index))
	q.Set(paramSentAt, strconv.FormatInt(sentAt.UnixMilli(), 10))
	return strings.TrimRight(publicURL, "/") + StatusCallbackPath + "?" + q.Encode()
}

// Message names the message a status callback is about, as its URL says.
type Message struct {
	BatchID string
	Index   int
	// SentAt is when the message was handed to the provider.
	SentAt time.Time
}

// ErrNotACallback is wrapped by ParseStatusCallback's errors.
var ErrNotACallback = errors.New("not a status callback URL of smsbatch")

// ParseStatusCallback reads the message a status callback URL's query names.
func ParseStatusCallback(q url.Values) (Message, error) {
	m := Message{BatchID: q.Get(paramBatch)}
	if m.BatchID == "" {
		return Message{}, fmt.Errorf("%w: no batch", ErrNotACallback)
	}
	index, err := strconv.Atoi(q.Get(paramIndex))
	if err != nil || index < 0 {
		return Message{}, fmt.Errorf("%w: index %q", ErrNotACallback, q.Get(paramIndex))
	}
	m.Index = index
	ms, err := strconv.ParseInt(q.Get(paramSentAt), 10, 64)
	if err != nil || ms <= 0 {
		return Message{}, fmt.Errorf("%w: send time %q", ErrNotACallback, q.Get(paramSentAt))
	}
	m.SentAt = time.UnixMilli(ms).UTC()
	return m, nil
}

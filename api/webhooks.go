package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/processors/sms/twilio"
)

// Webhooks configures the routes the SMS provider calls: delivery receipts
// (POST /api/webhooks/sms/status) and inbound messages (POST
// /api/webhooks/sms/inbound). They take no API key: the provider's signature
// (X-Twilio-Signature, keyed with the account's auth token) authenticates them.
type Webhooks struct {
	// PublicURL is the base URL the provider calls this instance at (scheme,
	// host and any path prefix a proxy strips). A signature is checked against
	// it followed by the request's path and query, since a proxy changes the
	// scheme and host the request arrives with. Required.
	PublicURL string
	// AuthToken is the provider account's auth token. Required; secret: it is
	// in no log and no answer.
	AuthToken string
	// InboundNumbers maps a provider number (E.164: the To of an inbound
	// message) to the tenant whose opt-out list its keywords change. A message
	// to a number it does not name is acknowledged and logged.
	InboundNumbers map[string]string
}

// Validate reports what is missing.
func (w *Webhooks) Validate() error {
	var errs []error
	if w.PublicURL == "" {
		errs = append(errs, errors.New("missing Webhooks.PublicURL"))
	}
	if w.AuthToken == "" {
		errs = append(errs, errors.New("missing Webhooks.AuthToken"))
	}
	for number, tenant := range w.InboundNumbers {
		if !strings.HasPrefix(number, "+") || tenant == "" {
			errs = append(errs, fmt.Errorf("inbound number %q: want an E.164 number and a tenant", number))
		}
	}
	return errors.Join(errs...)
}

// maxWebhookBytes bounds a webhook's form: Twilio's are well under 4 KiB.
const maxWebhookBytes = 64 << 10

// emptyTwiML is the answer to a webhook: Twilio reads an inbound message's
// answer as TwiML, and an empty Response sends no reply (Twilio answers the
// opt-out keywords itself).
const emptyTwiML = `<?xml version="1.0" encoding="UTF-8"?><Response></Response>`

func acknowledge(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(emptyTwiML))
}

// signedForm reads a webhook's form and checks its signature, answering 400 or
// 403 itself when it fails. A replayed request is signed like the original:
// what it asks is recorded once, by the event IDs its effects derive.
func (s *server) signedForm(w http.ResponseWriter, r *http.Request) (map[string][]string, bool) {
	r.Body = http.MaxBytesReader(w, r.Body, maxWebhookBytes)
	if err := r.ParseForm(); err != nil {
		if tooLarge := (*http.MaxBytesError)(nil); errors.As(err, &tooLarge) {
			writeError(w, r, s.log, domain.Errorf(domain.ETOOLARGE, "the body is over %d bytes", maxWebhookBytes))
			return nil, false
		}
		writeError(w, r, s.log, domain.Errorf(domain.EMALFORMED, "the body is not a form"))
		return nil, false
	}
	target := r.RequestURI
	if !strings.HasPrefix(target, "/") {
		target = r.URL.RequestURI() // an absolute-form request line
	}
	full := strings.TrimRight(s.cfg.Webhooks.PublicURL, "/") + target
	if !twilio.ValidSignature(s.cfg.Webhooks.AuthToken, full, r.PostForm, r.Header.Get(twilio.SignatureHeader)) {
		s.log.WarnContext(r.Context(), "webhook refused: missing or wrong signature", "path", r.URL.Path,
			"signed", r.Header.Get(twilio.SignatureHeader) != "")
		writeJSON(w, http.StatusForbidden, errorBody{Error: errorPayload{Code: "forbidden",
			Message: "missing or wrong " + twilio.SignatureHeader + ": the request must be signed with the provider's auth token over " +
				"the public URL it was sent to"}})
		return nil, false
	}
	return r.PostForm, true
}

// statusCallback records a delivery receipt. Statuses on the way (queued,
// sent...) are acknowledged and change nothing. A callback for a batch or
// index that does not exist is acknowledged (200) and logged rather than
// refused: it is signed, so it comes from the provider, which cannot fix it
// by trying again (some providers retry every non-2xx for days), and an
// operator sees it in the log.
func (s *server) statusCallback(w http.ResponseWriter, r *http.Request) {
	form, ok := s.signedForm(w, r)
	if !ok {
		return
	}
	status := first(form, "MessageStatus")
	delivered, final := twilio.Receipt(status)
	if !final {
		acknowledge(w)
		return
	}
	m, err := twilio.ParseStatusCallback(r.URL.Query())
	if err != nil {
		s.log.WarnContext(r.Context(), "status callback ignored: its URL names no message", "err", err)
		acknowledge(w)
		return
	}
	code := first(form, "ErrorCode")
	recorded, tenant, err := s.cfg.Commands.RecordReceipt(r.Context(), commands.RecordReceipt{
		BatchID: m.BatchID, Index: m.Index, Delivered: delivered, ProviderID: first(form, "MessageSid"),
		SentAt: m.SentAt, Code: code, Message: twilio.DeliveryErrorMessage(code),
	})
	switch {
	case domain.ErrorCode(err) == domain.ENOTFOUND:
		s.log.WarnContext(r.Context(), "status callback ignored: no such message", "batch", m.BatchID, "index", m.Index, "status", status)
		acknowledge(w)
		return
	case err != nil:
		writeError(w, r, s.log, err) // 5xx: a provider that retries will try again
		return
	}
	s.log.DebugContext(r.Context(), "delivery receipt", "tenant", tenant, "batch", m.BatchID, "index", m.Index,
		"status", status, "recorded", recorded)
	acknowledge(w)
}

// inbound reads an inbound message's opt-out keywords (STOP, START and their
// synonyms) and changes the list of the tenant its provider number belongs to.
// Any other message, and one to a number no tenant has, is acknowledged.
func (s *server) inbound(w http.ResponseWriter, r *http.Request) {
	form, ok := s.signedForm(w, r)
	if !ok {
		return
	}
	tenant, mapped := s.inboundTenant(first(form, "To"))
	if !mapped {
		s.log.WarnContext(r.Context(), "inbound message to a number no tenant has: set --inbound-numbers", "to", first(form, "To"))
		acknowledge(w)
		return
	}
	action, keyword := domain.ReadKeyword(first(form, "Body"))
	if action == domain.KeywordNone {
		acknowledge(w)
		return
	}
	from, err := domain.NormalizePhone(first(form, "From"), s.cfg.DefaultRegion)
	if err != nil {
		s.log.WarnContext(r.Context(), "inbound keyword from a number that is not one", "tenant", tenant, "keyword", keyword, "err", err)
		acknowledge(w)
		return
	}
	cmd := commands.ChangeOptOut{Tenant: tenant, Phone: from, OptOut: action == domain.KeywordOptOut,
		Source: domain.OptOutByKeyword, Keyword: keyword}
	if sid := first(form, "MessageSid"); sid != "" {
		cmd.EventID = domain.InboundChangeID(tenant, sid)
	}
	changed, err := s.cfg.OptOuts.Commands.Change(r.Context(), cmd)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	s.log.InfoContext(r.Context(), "inbound keyword", "tenant", tenant, "keyword", keyword, "changed", changed)
	acknowledge(w)
}

// inboundTenant is the tenant of a provider number. Twilio sends it in E.164,
// as it is configured; a number the phone metadata would refuse (a 555
// test number) still maps.
func (s *server) inboundTenant(to string) (string, bool) {
	to = strings.TrimSpace(to)
	if tenant, ok := s.cfg.Webhooks.InboundNumbers[to]; ok {
		return tenant, true
	}
	if n, err := domain.NormalizePhone(to, s.cfg.DefaultRegion); err == nil {
		tenant, ok := s.cfg.Webhooks.InboundNumbers[n]
		return tenant, ok
	}
	return "", false
}

func first(form map[string][]string, name string) string {
	if v := form[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

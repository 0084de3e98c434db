// Package httpprovider sends SMS through a Twilio-compatible REST API: Twilio itself,
// or the simulator's HTTP server (simulator.NewServer) when the wire matters in a
// test. It owns the mapping from Twilio's answers to smsbatch's error categories.
//
// The auth token never leaves this package except in the Authorization header: it is
// in no error, no URL and no printed Config.
package httpprovider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/processors/sms"
	"github.com/smsbatch/smsbatch/processors/sms/twilio"
)

// IdempotencyHeader carries the message's idempotency key, under Twilio's name.
const IdempotencyHeader = "I-Twilio-Idempotency-Token"

// DefaultTimeout bounds one Send when Config.Timeout is 0.
const DefaultTimeout = 10 * time.Second

// maxResponseBytes bounds what is read of an answer; Twilio's are a few hundred bytes.
const maxResponseBytes = 64 << 10

// maxMessageLen bounds the provider's explanation kept in an *sms.Error.
const maxMessageLen = 300

// Config configures a Provider.
type Config struct {
	// BaseURL is the API's scheme and host, e.g. https://api.twilio.com or the
	// simulator server's URL. Required; it must not carry credentials.
	BaseURL string
	// AccountSID is the account messages are sent from. Required.
	AccountSID string
	// AuthToken authenticates AccountSID. Required. Secret: it is sent only in the
	// Authorization header and never appears in errors or in Config's String.
	AuthToken string
	// From is the sender number or ID. Optional: Twilio then needs a messaging
	// service, the simulator needs nothing.
	From string
	// Timeout bounds one Send, from request to the last byte of the answer.
	// Default DefaultTimeout.
	Timeout time.Duration
	// HTTPClient sends the requests. Optional; the default one does not follow
	// redirects, so that a redirect cannot take the credentials elsewhere.
	HTTPClient *http.Client
	// PublicURL is the base URL the provider reaches this instance at (scheme,
	// host and any path prefix of a proxy), e.g. https://sms.example.com.
	// Optional: when set, every message asks for status callbacks (Twilio's
	// StatusCallback) at twilio.StatusCallbackURL, which names the message and
	// its send time; when empty, none are asked for.
	PublicURL string
}

// MaxIdleConns is how many idle connections to the provider the default
// client keeps.
const MaxIdleConns = 512

func (c *Config) setDefaults() {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.HTTPClient == nil {
		// Many batches send at once, each up to five in flight, all to one
		// host: keep their connections for the next send rather than the
		// default transport's two (a new connection, and over HTTPS a new
		// handshake, per send otherwise).
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns = MaxIdleConns
		t.MaxIdleConnsPerHost = MaxIdleConns
		c.HTTPClient = &http.Client{
			Transport:     t,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
}

// Validate reports every problem with c at once. It names fields, never their values.
func (c Config) Validate() error {
	var errs []error
	if c.BaseURL == "" {
		errs = append(errs, errors.New("BaseURL is required"))
	} else if u, err := url.Parse(c.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The value is left out: a mistyped URL could hold anything.
		errs = append(errs, errors.New("BaseURL must be an absolute http or https URL"))
	} else if u.User != nil {
		errs = append(errs, errors.New("BaseURL must not contain credentials; use AccountSID and AuthToken"))
	}
	if c.AccountSID == "" {
		errs = append(errs, errors.New("AccountSID is required"))
	}
	if c.AuthToken == "" {
		errs = append(errs, errors.New("AuthToken is required"))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("negative Timeout %s", c.Timeout))
	}
	if c.PublicURL != "" {
		if err := CheckPublicURL(c.PublicURL); err != nil {
			errs = append(errs, fmt.Errorf("PublicURL: %w", err))
		}
	}
	return errors.Join(errs...)
}

// CheckPublicURL refuses a public base URL that cannot be the start of a
// callback URL: it must be an absolute http or https URL without credentials,
// query or fragment.
func CheckPublicURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return errors.New("must be an absolute http or https URL, such as https://sms.example.com")
	case u.User != nil:
		return errors.New("must not contain credentials")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return errors.New("must not have a query or a fragment")
	}
	return nil
}

// String describes c without the token, so that printing a Config is safe.
func (c Config) String() string {
	return fmt.Sprintf("httpprovider.Config{BaseURL: %q, AccountSID: %q, AuthToken: %s, From: %q, Timeout: %s, PublicURL: %q}",
		redactURL(c.BaseURL), c.AccountSID, redacted(c.AuthToken), c.From, c.Timeout, c.PublicURL)
}

// GoString keeps %#v from printing the token.
func (c Config) GoString() string { return c.String() }

// LogValue keeps slog from printing the token.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("base_url", redactURL(c.BaseURL)),
		slog.String("account_sid", c.AccountSID),
		slog.String("auth_token", redacted(c.AuthToken)),
		slog.String("from", c.From),
		slog.Duration("timeout", c.Timeout),
		slog.String("public_url", c.PublicURL),
	)
}

func redacted(secret string) string {
	if secret == "" {
		return "(unset)"
	}
	return "(redacted)"
}

func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}

// Provider is an sms.Provider that posts to a Twilio-compatible Messages endpoint.
// It is safe for concurrent use.
type Provider struct {
	cfg      Config
	endpoint string
}

var _ sms.Provider = (*Provider)(nil)

// New checks cfg and returns a Provider. It does not contact the API.
func New(cfg Config) (*Provider, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("httpprovider: invalid config: %w", err)
	}
	endpoint := strings.TrimRight(cfg.BaseURL, "/") +
		"/2010-04-01/Accounts/" + url.PathEscape(cfg.AccountSID) + "/Messages.json"
	return &Provider{cfg: cfg, endpoint: endpoint}, nil
}

// String describes p without the token.
func (p *Provider) String() string { return "httpprovider.Provider(" + p.cfg.String() + ")" }

// Send posts msg with the idempotency key in IdempotencyHeader and, with a
// PublicURL, a StatusCallback naming msg's batch, index and this moment as its
// send time. An answer the API
// explains is returned as *sms.Error (see errorFor for the mapping). A request that
// got no answer returns the transport's error, wrapped, for sms.Classify: a deadline
// (Config.Timeout or ctx's) is a timeout, a refused or broken connection makes the
// provider unavailable.
//
// Receipt.Duplicate is set when the API answers 200 rather than 201, as the simulator
// does for a key it has seen; Twilio answers a replay like the original, so with
// Twilio it stays false.
func (p *Provider) Send(ctx context.Context, msg sms.Message) (sms.Receipt, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()

	form := url.Values{}
	form.Set("To", msg.To)
	form.Set("Body", msg.Body)
	if p.cfg.From != "" {
		form.Set("From", p.cfg.From)
	}
	if p.cfg.PublicURL != "" && msg.BatchID != "" {
		form.Set("StatusCallback", twilio.StatusCallbackURL(p.cfg.PublicURL, msg.BatchID, msg.Index, time.Now()))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return sms.Receipt{}, fmt.Errorf("httpprovider: build request: %w", stripURL(err))
	}
	req.SetBasicAuth(p.cfg.AccountSID, p.cfg.AuthToken)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "smsbatch-httpprovider")
	if msg.IdempotencyKey != "" {
		req.Header.Set(IdempotencyHeader, msg.IdempotencyKey)
	}

	req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { sms.Departed(ctx) },
	}))
	resp, err := p.cfg.HTTPClient.Do(req)
	if err != nil {
		err = stripURL(err)
		var netErr net.Error
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || (errors.As(err, &netErr) && netErr.Timeout()) {
			return sms.Receipt{}, fmt.Errorf("httpprovider: send: %w", err)
		}
		// Whatever else the transport met (a refused, reset or closed
		// connection, a TLS failure) says the provider could not be reached or
		// did not answer, nothing about the recipient: an outage, which holds
		// the batches and fails nobody, never an unknown error that uses up
		// attempts and fails the whole campaign.
		return sms.Receipt{}, &sms.Error{Category: domain.CategoryProviderUnavailable, Code: "network",
			Message: "the provider could not be reached or did not answer: " + p.sanitize(err.Error())}
	}
	defer resp.Body.Close()
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))

	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// The provider took the message: whatever became of the rest of its
		// answer (cut off, cut by the timeout, without a sid), it is sent.
		// Sending it again would be a second SMS, billed, as providers ignore
		// the key. A whole answer that is not the API's JSON is another
		// server's (a proxy's page, a wrong URL): nothing was sent, and the
		// provider is as good as unreachable.
		var m struct {
			SID string `json:"sid"`
		}
		if readErr == nil && json.Unmarshal(body, &m) != nil {
			return sms.Receipt{}, &sms.Error{Category: domain.CategoryProviderUnavailable, Code: strconv.Itoa(resp.StatusCode),
				Message: fmt.Sprintf("the answer (HTTP %d, %s) is not the provider's API: check the provider's URL", resp.StatusCode, p.sanitize(resp.Header.Get("Content-Type")))}
		}
		return sms.Receipt{ProviderID: m.SID, Duplicate: resp.StatusCode == http.StatusOK}, nil
	}
	if readErr != nil {
		// A refusal cut off mid-answer: its reason is lost; the message may go
		// again (the provider said no, so nothing was sent).
		return sms.Receipt{}, fmt.Errorf("httpprovider: read answer: %w", stripURL(readErr))
	}
	return sms.Receipt{}, p.errorFor(resp, body, time.Now())
}

// twilioCodes are the Twilio error codes that say something about the recipient,
// with messages of our own: Twilio's name the number, which would keep the error
// analytics from grouping them.
var twilioCodes = map[int]struct {
	category domain.ErrorCategory
	message  string
}{
	21211: {domain.CategoryInvalidNumber, "The 'To' number is not a valid phone number."},
	21217: {domain.CategoryInvalidNumber, "The 'To' number does not appear to be valid."},
	21401: {domain.CategoryInvalidNumber, "The 'To' number is not a valid phone number."},
	21612: {domain.CategoryUnroutable, "The 'To' number cannot be reached: there is no route to it."},
	// The account may not send to that country: a closed route, which retrying will
	// not open.
	21408: {domain.CategoryUnroutable, "Permission to send an SMS has not been enabled for the region of the 'To' number."},
	21610: {domain.CategoryBlocked, "The 'To' number has opted out of messages from this sender (replied STOP)."},
	21614: {domain.CategoryNotSMSCapable, "The 'To' number is not a mobile number and cannot receive SMS."},
	// The sender's queue holds more than Twilio sends in 10 hours at its rate:
	// the provider's rate limit, not the recipient's fault.
	21611: {domain.CategoryRateLimited, "The 'From' number has more messages queued than the provider accepts; sending slows down."},
}

// queueFullHold is how long a batch holds after Twilio's 21611 (no Retry-After).
const queueFullHold = 30 * time.Second

// errorFor maps a non-2xx answer to an *sms.Error:
//
//   - 429: rate_limited, RetryAfter from the Retry-After header (seconds or a date).
//   - 401, 403, 404: provider_unavailable. The account, token or URL is wrong; that is
//     no fault of the recipient, and failing the message as invalid would be a lie.
//     Retrying will not help until an operator fixes the configuration, and the
//     attempt limit bounds the cost; the message says which.
//   - 5xx: provider_unavailable, RetryAfter from the header if there is one.
//   - 4xx with a code in twilioCodes: that code's category.
//   - any other answer: unknown, which is retried. A 4xx we cannot read may be about
//     the request rather than the recipient, and giving up on a message that would
//     have gone through is the worse mistake (see domain.ErrorCategory.Retryable).
func (p *Provider) errorFor(resp *http.Response, body []byte, now time.Time) *sms.Error {
	var apiErr struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	_ = json.Unmarshal(body, &apiErr) // a body that is not Twilio's leaves the zero values
	code := strconv.Itoa(resp.StatusCode)
	if apiErr.Code != 0 {
		code = strconv.Itoa(apiErr.Code)
	}
	status := resp.StatusCode

	switch {
	case status == http.StatusTooManyRequests:
		return &sms.Error{
			Category:   domain.CategoryRateLimited,
			Code:       code,
			Message:    "the provider is rate limiting requests",
			RetryAfter: retryAfter(resp.Header.Get("Retry-After"), now),
		}
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return &sms.Error{
			Category: domain.CategoryProviderUnavailable,
			Code:     code,
			Message:  fmt.Sprintf("the provider refused the credentials (HTTP %d); check the account SID and auth token", status),
		}
	case status == http.StatusNotFound:
		return &sms.Error{
			Category: domain.CategoryProviderUnavailable,
			Code:     code,
			Message:  "the provider does not know the account or the endpoint (HTTP 404); check the base URL and account SID",
		}
	case status >= 500:
		return &sms.Error{
			Category:   domain.CategoryProviderUnavailable,
			Code:       code,
			Message:    fmt.Sprintf("the provider failed (HTTP %d)", status),
			RetryAfter: retryAfter(resp.Header.Get("Retry-After"), now),
		}
	}
	if known, ok := twilioCodes[apiErr.Code]; ok && status >= 400 {
		e := &sms.Error{Category: known.category, Code: code, Message: known.message}
		if known.category == domain.CategoryRateLimited {
			e.RetryAfter = max(retryAfter(resp.Header.Get("Retry-After"), now), queueFullHold)
		}
		return e
	}
	msg := p.sanitize(apiErr.Message)
	if msg == "" {
		msg = "the provider gave no explanation"
	}
	return &sms.Error{
		Category: domain.CategoryUnknown,
		Code:     code,
		Message:  fmt.Sprintf("the provider refused the message (HTTP %d): %s", status, msg),
	}
}

// sanitize makes a provider's own words safe to keep: bounded, on one line, and
// without the token should a misbehaving server echo it.
func (p *Provider) sanitize(s string) string {
	s = strings.ReplaceAll(s, p.cfg.AuthToken, "(redacted)")
	// Control characters (U+0000 among them, which PostgreSQL's text
	// refuses) become spaces, folded with the others below.
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxMessageLen {
		s = strings.ToValidUTF8(s[:maxMessageLen], "") + "..."
	}
	return s
}

// retryAfter reads a Retry-After header: delay-seconds or an HTTP date. It returns 0
// when the header is absent or unreadable, and never a negative duration.
func retryAfter(h string, now time.Time) time.Duration {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0
	}
	// Absurd values are clamped, as seconds or as a date.
	const maxWait = 24 * time.Hour
	if secs, err := strconv.ParseInt(h, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(maxWait/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil {
		if d := t.Sub(now); d > 0 {
			return min(d, maxWait)
		}
	}
	return 0
}

// stripURL drops the request URL from a transport error, keeping its cause for
// sms.Classify. The URL holds no secret, but errors are shown to users and the
// account path is nobody's business there.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", strings.ToLower(ue.Op), ue.Err)
	}
	return err
}

package simulator

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"unicode/utf8"

	"golang.org/x/time/rate"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/processors/sms"
)

// IdempotencyHeader is the request header that carries a message's idempotency key.
const IdempotencyHeader = "I-Twilio-Idempotency-Token"

// MessagesPath is the pattern of the one endpoint the server answers, as Twilio
// spells it.
const MessagesPath = "/2010-04-01/Accounts/{AccountSid}/Messages.json"

// maxBodyRunes is Twilio's limit on one message's body.
const maxBodyRunes = 1600

// maxRequestBytes bounds a request body: far above any valid form, far below harm.
const maxRequestBytes = 64 << 10

// ServerConfig configures the HTTP face of a Simulator.
type ServerConfig struct {
	// AccountSID is the account the server answers for, and the basic-auth user name.
	// Required.
	AccountSID string
	// AuthToken is the basic-auth password. Required: an empty one would let an empty
	// password in.
	AuthToken string

	// RateLimit is how many requests per second the whole server accepts before it
	// answers 429. 0, the default, turns limiting off.
	RateLimit float64
	// RateBurst is how many requests may arrive at once within RateLimit. Default:
	// one second's worth, RateLimit rounded up.
	RateBurst int

	// Logger reports failures that are the server's own (the outbox could not be
	// written). Default: discard.
	Logger *slog.Logger
}

func (c *ServerConfig) setDefaults() {
	if c.RateLimit > 0 && c.RateBurst == 0 {
		c.RateBurst = int(math.Ceil(c.RateLimit))
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with c at once. It never repeats the token.
func (c ServerConfig) Validate() error {
	var errs []error
	if c.AccountSID == "" {
		errs = append(errs, errors.New("AccountSID is required"))
	}
	if c.AuthToken == "" {
		errs = append(errs, errors.New("AuthToken is required"))
	}
	// The negated comparison also rejects NaN.
	if !(c.RateLimit >= 0) || math.IsInf(c.RateLimit, 0) {
		errs = append(errs, fmt.Errorf("RateLimit %v must be a finite number >= 0", c.RateLimit))
	}
	if c.RateBurst < 0 {
		errs = append(errs, fmt.Errorf("negative RateBurst %d", c.RateBurst))
	}
	return errors.Join(errs...)
}

// server answers Twilio's "create a message" call by sending through a Simulator.
type server struct {
	sim     *Simulator
	cfg     ServerConfig
	limiter *rate.Limiter // nil when RateLimit is 0
}

// NewServer returns a handler that speaks the part of Twilio's REST API smsbatch
// uses, so that the HTTP provider can be run against the simulator:
//
//	POST /2010-04-01/Accounts/{AccountSid}/Messages.json
//
// with basic auth, a form-encoded To, From (optional), Body and StatusCallback
// (optional), and the idempotency key in the I-Twilio-Idempotency-Token header
// (without it nothing is deduplicated). When the Simulator has a Callbacks.Delay,
// an accepted message's delivery is reported to its StatusCallback, signed with
// AuthToken as Twilio signs with the account's token (21609 for a StatusCallback
// that is not an http or https URL).
// A new message is answered 201 with Twilio's message JSON; a repeated key 200 with
// the first message's sid. Failures are Twilio's JSON errors: 401 (code 20003) for
// bad credentials, 400 with Twilio's code for the test numbers, 429 (20429, with
// Retry-After) above RateLimit, 503 (20500) for a simulated transient failure.
//
// The handler does not own sim: closing sim is the caller's business.
func NewServer(sim *Simulator, cfg ServerConfig) (http.Handler, error) {
	if sim == nil {
		return nil, errors.New("simulator: NewServer: nil Simulator")
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("simulator: invalid server config: %w", err)
	}
	s := &server{sim: sim, cfg: cfg}
	if cfg.RateLimit > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(cfg.RateLimit), cfg.RateBurst)
	}
	mux := http.NewServeMux()
	// No method in the pattern: a GET on the path is Twilio's JSON 405, not a 404.
	mux.HandleFunc(MessagesPath, s.createMessage)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, apiError{Status: http.StatusNotFound, Code: 20404, Message: "The requested resource was not found"})
	})
	return mux, nil
}

// apiError is Twilio's error body.
type apiError struct {
	Code     int    `json:"code"`
	Message  string `json:"message"`
	MoreInfo string `json:"more_info"`
	Status   int    `json:"status"`
}

// messageResource is the part of Twilio's message resource smsbatch reads (sid), with
// enough around it to look familiar.
type messageResource struct {
	SID        string `json:"sid"`
	AccountSID string `json:"account_sid"`
	To         string `json:"to"`
	From       string `json:"from"`
	Body       string `json:"body"`
	Status     string `json:"status"`
	Direction  string `json:"direction"`
	APIVersion string `json:"api_version"`
	URI        string `json:"uri"`
}

func (s *server) createMessage(w http.ResponseWriter, r *http.Request) {
	// Credentials come first, as at Twilio: nothing else is said to a stranger.
	user, pass, ok := r.BasicAuth()
	if !ok || !equal(user, s.cfg.AccountSID) || !equal(pass, s.cfg.AuthToken) {
		w.Header().Set("WWW-Authenticate", `Basic realm="Twilio API"`)
		writeError(w, apiError{Status: http.StatusUnauthorized, Code: 20003, Message: "Authenticate"})
		return
	}
	if r.PathValue("AccountSid") != s.cfg.AccountSID {
		writeError(w, apiError{Status: http.StatusNotFound, Code: 20404, Message: "The requested resource was not found"})
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, apiError{Status: http.StatusMethodNotAllowed, Code: 20004, Message: "Method not allowed"})
		return
	}
	// With RecordEveryCall every call of the account is recorded, whatever
	// its answer: one refused here, before any send, is a call all the same.
	start := s.sim.cfg.Clock().UTC()
	refuse := func(to, outcome string, e apiError) {
		s.sim.RecordCall(Call{Key: r.Header.Get(IdempotencyHeader), To: to, Start: start, End: s.sim.cfg.Clock().UTC(), Outcome: outcome})
		writeError(w, e)
	}
	if s.limiter != nil && !s.limiter.Allow() {
		w.Header().Set("Retry-After", strconv.Itoa(s.retryAfter()))
		refuse("", string(domain.CategoryRateLimited), apiError{Status: http.StatusTooManyRequests, Code: 20429, Message: "Too Many Requests"})
		return
	}

	r.Body = http.MaxBytesReader(w, r.Body, maxRequestBytes)
	if err := r.ParseForm(); err != nil {
		// 20400 follows the HTTP-derived codes 20404, 20429 and 20500.
		refuse("", OutcomeRefused, apiError{Status: http.StatusBadRequest, Code: 20400, Message: "The request body is not a valid form"})
		return
	}
	msg := sms.Message{
		IdempotencyKey: r.Header.Get(IdempotencyHeader),
		To:             r.PostForm.Get("To"),
		Body:           r.PostForm.Get("Body"),
	}
	switch {
	case msg.To == "":
		refuse(msg.To, OutcomeRefused, twilioError(21604, "A 'To' phone number is required."))
		return
	case msg.Body == "":
		refuse(msg.To, OutcomeRefused, twilioError(21602, "Message body is required."))
		return
	case utf8.RuneCountInString(msg.Body) > maxBodyRunes:
		refuse(msg.To, OutcomeRefused, twilioError(21617, "The concatenated message body exceeds the 1600 character limit."))
		return
	}

	cb := callbackTo{url: r.PostForm.Get("StatusCallback"), token: s.cfg.AuthToken, accountSID: s.cfg.AccountSID, from: r.PostForm.Get("From")}
	if cb.url != "" {
		if u, err := url.Parse(cb.url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			refuse(msg.To, OutcomeRefused, twilioError(21609, "The StatusCallback URL is not a valid URL."))
			return
		}
	}
	receipt, err := s.sim.send(r.Context(), msg, s.sim.cfg.Clock().UTC(), cb)
	if err != nil {
		s.writeSendError(w, r, err)
		return
	}
	status := http.StatusCreated
	if receipt.Duplicate {
		status = http.StatusOK
	}
	writeJSON(w, status, messageResource{
		SID:        receipt.ProviderID,
		AccountSID: s.cfg.AccountSID,
		To:         msg.To,
		From:       r.PostForm.Get("From"),
		Body:       msg.Body,
		Status:     "queued",
		Direction:  "outbound-api",
		APIVersion: "2010-04-01",
		URI:        "/2010-04-01/Accounts/" + s.cfg.AccountSID + "/Messages/" + receipt.ProviderID + ".json",
	})
}

// retryAfter is how many whole seconds until the limiter takes a request
// again, at least 1: below one request a second that is longer than a second,
// and a client that waits what it is told must not be refused again.
func (s *server) retryAfter() int {
	missing := 1 - s.limiter.Tokens()
	return max(1, int(math.Ceil(missing/s.cfg.RateLimit)))
}

// categoryStatus is the HTTP status a simulator failure of each category is
// answered with.
var categoryStatus = map[domain.ErrorCategory]int{
	domain.CategoryInvalidNumber:       http.StatusBadRequest,
	domain.CategoryUnroutable:          http.StatusBadRequest,
	domain.CategoryBlocked:             http.StatusBadRequest,
	domain.CategoryNotSMSCapable:       http.StatusBadRequest,
	domain.CategoryRateLimited:         http.StatusTooManyRequests,
	domain.CategoryProviderUnavailable: http.StatusServiceUnavailable,
	domain.CategoryTimeout:             http.StatusGatewayTimeout,
	domain.CategoryUnknown:             http.StatusInternalServerError,
}

func (s *server) writeSendError(w http.ResponseWriter, r *http.Request, err error) {
	var se *sms.Error
	switch {
	case errors.As(err, &se):
		status, ok := categoryStatus[se.Category]
		if !ok {
			status = http.StatusInternalServerError
		}
		if status >= 500 {
			// Twilio does not explain its outages.
			writeError(w, apiError{Status: status, Code: 20500, Message: "Internal Server Error"})
			return
		}
		code, convErr := strconv.Atoi(se.Code)
		if convErr != nil {
			code = 20000 + status // the HTTP-derived form, for a code that is not Twilio's
		}
		writeError(w, twilioError(code, se.Message).withStatus(status))
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		// The client left during the latency; nobody reads this answer.
		writeError(w, apiError{Status: http.StatusServiceUnavailable, Code: 20500, Message: "Internal Server Error"})
	default:
		if !errors.Is(err, ErrClosed) {
			s.cfg.Logger.ErrorContext(r.Context(), "simulator server: send failed", slog.Any("error", err))
		}
		writeError(w, apiError{Status: http.StatusServiceUnavailable, Code: 20500, Message: "Internal Server Error"})
	}
}

// twilioError is a 400 with Twilio's code and its documentation link.
func twilioError(code int, message string) apiError {
	return apiError{
		Status:   http.StatusBadRequest,
		Code:     code,
		Message:  message,
		MoreInfo: "https://www.twilio.com/docs/errors/" + strconv.Itoa(code),
	}
}

func (e apiError) withStatus(status int) apiError {
	e.Status = status
	return e
}

func writeError(w http.ResponseWriter, e apiError) {
	if e.MoreInfo == "" {
		e.MoreInfo = "https://www.twilio.com/docs/errors/" + strconv.Itoa(e.Code)
	}
	writeJSON(w, e.Status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client hung up; there is nobody to tell
}

// equal compares in constant time, so that response timing does not reveal how much
// of a credential was right.
func equal(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

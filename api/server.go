// Package api is smsbatch's HTTP interface: the chi router, the REST handlers for
// batch commands and queries and for the tenants' opt-out lists, API-key
// authentication with per-key rate limits, the SMS provider's signed webhooks
// (delivery receipts, inbound keywords), the mapping of application errors to
// HTTP answers, the WebSocket transport of the live updates (package live holds
// the hub) with its tickets, and (in api/web)
// the embedded dashboard.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/go-chi/httprate"

	"github.com/smsbatch/smsbatch/api/web"
	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/live"
	"github.com/smsbatch/smsbatch/processors/sms/twilio"
	"github.com/smsbatch/smsbatch/projections"
)

// Limits bound what one request may ask for. They are documented in the README.
type Limits struct {
	// MaxBodyBytes bounds a request body; default 64 MiB.
	MaxBodyBytes int64
	// MaxRecipients bounds the recipients of one batch; default 1,000,000.
	MaxRecipients int
	// Template bounds the template text and its variables.
	Template domain.TemplateLimits
	// Variables bounds each variable's value.
	Variables domain.VariableLimits
	// MaxDetails bounds the per-field problems reported in one error; default 100.
	MaxDetails int
}

func (l *Limits) setDefaults() {
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = 64 << 20
	}
	if l.MaxRecipients <= 0 {
		l.MaxRecipients = 1_000_000
	}
	if l.MaxDetails <= 0 {
		l.MaxDetails = 100
	}
}

// RateLimit bounds requests per Window. A zero field takes its default (which
// differs per use, see Config); negative Requests turns the limit off.
type RateLimit struct {
	Requests int
	Window   time.Duration
}

func (l *RateLimit) setDefaults(requests int, window time.Duration) {
	if l.Requests == 0 {
		l.Requests = requests
	}
	if l.Window <= 0 {
		l.Window = window
	}
}

// Timeouts bound how long one connection may hold the server. A zero field takes
// its default.
type Timeouts struct {
	// Read bounds reading a request, headers and body; default 30s. Headers get
	// at most 10s of it. A batch upload's body is bounded by UploadLimits.MinRate
	// instead, so that a large upload arriving at a steady rate is never cut off.
	Read time.Duration
	// Write bounds the time from the end of a request's headers to the end of
	// its answer; default 30s. A batch upload's answer gets it from when the
	// batch is stored. WebSocket connections are not bounded by it.
	Write time.Duration
	// Idle bounds how long a kept-alive connection may wait for its next
	// request; default 60s.
	Idle time.Duration
}

func (t *Timeouts) setDefaults() {
	if t.Read <= 0 {
		t.Read = 30 * time.Second
	}
	if t.Write <= 0 {
		t.Write = 30 * time.Second
	}
	if t.Idle <= 0 {
		t.Idle = time.Minute
	}
}

// Waiter is told the position of a command's last event and returns once the read
// models include it, so that a client reads its own writes.
type Waiter interface {
	WaitFor(ctx context.Context, pos eventstore.Position) error
}

// Config configures the HTTP interface.
type Config struct {
	// Commands runs batch commands (required).
	Commands *commands.Handlers
	// ReadModels answers queries (required).
	ReadModels projections.Store
	// Projections is waited on after a command (required).
	Projections Waiter
	// Keys authenticates callers (required).
	Keys *Keyring
	// DefaultRegion is the region of phone numbers given without a country code; default "US".
	DefaultRegion string
	Limits        Limits
	// RateLimit bounds requests per API key; default 600 per minute.
	RateLimit RateLimit
	// AuthFailures bounds failed authentications per client address (the
	// connection's, not a header's): past it, the address gets 429 whatever key
	// it sends until the window has passed. Default 10 per minute.
	AuthFailures RateLimit
	// Uploads bounds batch uploads (POST /api/batch).
	Uploads UploadLimits
	// Timeouts bound connections; NewServer applies them.
	Timeouts Timeouts
	// SpoolDir holds the temporary files a batch upload is validated through;
	// default os.TempDir(). Give the service a directory of its own and clean it
	// at start with CleanSpoolDir.
	SpoolDir string
	// Metrics serves /metrics to authenticated callers; nil answers 404.
	Metrics http.Handler
	// Ready reports whether the service can answer; nil means always.
	Ready func() error
	// ReadYourWrites bounds how long a command waits for the read models; default 2s.
	ReadYourWrites time.Duration
	Logger         *slog.Logger
	// NewID makes batch IDs; default UUIDv7 (time-ordered).
	NewID func() (string, error)
	// Started, when set, is told of every batch a request started or resumed
	// (revision: that of its BatchStarted or BatchResumed event), so that sending
	// begins at once instead of when the event subscription delivers the event.
	Started func(ctx context.Context, batchID string, revision uint64)
	// Live pushes batch changes over WebSocket (GET /api/ws, GET
	// /api/batch/{id}/ws, POST /api/ws/ticket); nil leaves those routes out.
	Live *live.Hub
	// WebSocket tunes the connections of Live; Tickets the tickets browsers
	// connect with.
	WebSocket WebSocket
	Tickets   Tickets
	// OptOuts serves the tenants' opt-out lists (/api/optouts); nil leaves
	// those routes out, and the inbound webhook with them.
	OptOuts *OptOuts
	// Webhooks receives the SMS provider's callbacks (/api/webhooks/sms/...);
	// nil leaves those routes out.
	Webhooks *Webhooks
}

// WebSocket tunes the live-update connections.
type WebSocket struct {
	// PingInterval is how often an idle connection is pinged; default 20s.
	PingInterval time.Duration
	// PongWait is how long a client may stay silent (no pong) before it is
	// dropped; default 60s. Must exceed PingInterval.
	PongWait time.Duration
	// WriteWait bounds one write to a client; default 10s.
	WriteWait time.Duration
}

func (c *WebSocket) setDefaults() {
	if c.PingInterval <= 0 {
		c.PingInterval = 20 * time.Second
	}
	if c.PongWait <= 0 {
		c.PongWait = 60 * time.Second
	}
	if c.WriteWait <= 0 {
		c.WriteWait = 10 * time.Second
	}
}

func (c *Config) setDefaults() {
	if c.DefaultRegion == "" {
		c.DefaultRegion = "US"
	}
	c.Limits.setDefaults()
	c.RateLimit.setDefaults(600, time.Minute)
	c.AuthFailures.setDefaults(10, time.Minute)
	c.Uploads.setDefaults()
	c.Timeouts.setDefaults()
	c.WebSocket.setDefaults()
	if c.ReadYourWrites <= 0 {
		c.ReadYourWrites = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.NewID == nil {
		c.NewID = newBatchID
	}
}

// Validate reports every missing setting.
func (c Config) Validate() error {
	var errs []error
	if c.Commands == nil {
		errs = append(errs, errors.New("missing Commands"))
	}
	if c.ReadModels == nil {
		errs = append(errs, errors.New("missing ReadModels"))
	}
	if c.Projections == nil {
		errs = append(errs, errors.New("missing Projections"))
	}
	if c.Keys == nil || c.Keys.Len() == 0 {
		errs = append(errs, errors.New("missing Keys: at least one API key is needed"))
	}
	if c.DefaultRegion != "" && !domain.ValidRegion(c.DefaultRegion) {
		errs = append(errs, fmt.Errorf("DefaultRegion %q is not a known region", c.DefaultRegion))
	}
	if w := c.WebSocket; w.PingInterval > 0 && w.PongWait > 0 && w.PongWait <= w.PingInterval {
		errs = append(errs, errors.New("WebSocket.PongWait must be longer than PingInterval"))
	}
	if err := c.Tickets.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.OptOuts != nil && (c.OptOuts.List == nil || c.OptOuts.Commands == nil) {
		errs = append(errs, errors.New("OptOuts needs List and Commands"))
	}
	if c.Webhooks != nil {
		errs = append(errs, c.Webhooks.Validate())
		if len(c.Webhooks.InboundNumbers) > 0 && c.OptOuts == nil {
			errs = append(errs, errors.New("Webhooks.InboundNumbers needs OptOuts"))
		}
	}
	return errors.Join(errs...)
}

type server struct {
	cfg Config
	log *slog.Logger
	// uploads counts the uploads running per API key.
	uploads *uploadSlots
	// authFailures counts failed authentications per client address; nil: no limit.
	authFailures *authFailures
	tickets      *ticketBook
}

// NewServer returns the HTTP server of the whole API, with cfg's timeouts.
func NewServer(cfg Config) (*http.Server, error) {
	h, err := NewHandler(cfg)
	if err != nil {
		return nil, err
	}
	cfg.setDefaults()
	t := cfg.Timeouts
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: min(t.Read, 10*time.Second),
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
		// A long answer (an export) sizes its connection's send buffer.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}, nil
}

// connKey holds a request's connection in its context (NewServer).
type connKey struct{}

// NewHandler returns the HTTP handler of the whole API; NewServer serves it with
// the configured timeouts.
func NewHandler(cfg Config) (http.Handler, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("api config: %w", err)
	}
	if err := cfg.Tickets.setDefaults(); err != nil {
		return nil, fmt.Errorf("api config: %w", err)
	}
	s := &server{cfg: cfg, log: cfg.Logger, uploads: newUploadSlots(cfg.Uploads.PerKey),
		authFailures: newAuthFailures(cfg.AuthFailures),
		tickets:      &ticketBook{cfg: cfg.Tickets, used: make(map[string]time.Time)}}

	r := chi.NewRouter()
	r.Use(middleware.RequestID, s.recoverer)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, s.log, domain.Errorf(domain.ENOTFOUND, "no such endpoint"))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		// A 405 says which methods the resource has (RFC 9110, 15.5.6);
		// chi lists them only for its own 405 handler.
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			if r.Match(chi.NewRouteContext(), m, req.URL.Path) {
				w.Header().Add("Allow", m)
			}
		}
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: errorPayload{Code: "method_not_allowed", Message: "method not allowed"}})
	})

	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	r.Get("/readyz", s.readyz)
	// The API's description holds no data: clients generate code from it.
	r.Get("/api/openapi.json", serveOpenAPI)
	// The dashboard holds no data: the browser calls the API with the key.
	ui := web.Handler()
	r.Handle("/", ui)
	r.Handle("/static/*", ui)

	perKey := func(next http.Handler) http.Handler { return next }
	if cfg.RateLimit.Requests > 0 {
		perKey = httprate.LimitBy(cfg.RateLimit.Requests, cfg.RateLimit.Window,
			func(r *http.Request) (string, error) {
				p, _ := PrincipalFrom(r.Context())
				return p.KeyID, nil
			},
			httprate.WithLimitHandler(func(w http.ResponseWriter, r *http.Request) {
				writeError(w, r, s.log, domain.Errorf(domain.ERATELIMITED, "too many requests for this API key; retry after the time in Retry-After"))
			}),
		)
	}
	r.Group(func(r chi.Router) {
		r.Use(s.authenticate, perKey)
		// Metrics hold no tenant's data but are not a health check: a scraper
		// sends a key like any client (Prometheus: authorization.credentials).
		if cfg.Metrics != nil {
			r.Handle("/metrics", cfg.Metrics)
		}
		r.Post("/api/batch", s.createBatch)
		r.Get("/api/batch", s.listBatches)
		r.Get("/api/batch/{id}", s.getBatch)
		r.Get("/api/batch/{id}/analytics", s.getAnalytics)
		r.Get("/api/batch/{id}/errors", s.getErrors)
		r.Get("/api/batch/{id}/recipients", s.getRecipients)
		if cfg.Live == nil {
			r.Get("/api/batch/{id}/export.csv", s.exportCSV)
		}
		r.Post("/api/v2/batch/{id}/retry-failed", s.retryFailed)
		r.Post("/api/v2/batch/{id}/schedule", s.reschedule)
		r.Post("/api/v2/batch/{id}/pause", s.act(s.cfg.Commands.PauseBatch))
		r.Post("/api/v2/batch/{id}/resume", s.act(s.cfg.Commands.ResumeBatch))
		r.Post("/api/v2/batch/{id}/start", s.act(s.cfg.Commands.StartBatch))
		r.Post("/api/v2/batch/{id}/cancel", s.act(s.cfg.Commands.CancelBatch))
		if cfg.Live != nil {
			r.Post("/api/ws/ticket", s.issueTicket)
		}
		if cfg.OptOuts != nil {
			r.Get("/api/optouts", s.listOptOuts)
			r.Post("/api/optouts", s.addOptOut)
			r.Get("/api/optouts/{phoneNumber}", s.getOptOut)
			r.Delete("/api/optouts/{phoneNumber}", s.removeOptOut)
		}
	})
	if cfg.Webhooks != nil {
		// No API key: the provider's signature authenticates these, and the
		// batch or the provider number they name gives the tenant.
		r.Post(twilio.StatusCallbackPath, s.statusCallback)
		if cfg.OptOuts != nil {
			r.Post(twilio.InboundPath, s.inbound)
		}
	}
	if cfg.Live != nil {
		// Outside the group above: a browser's WebSocket cannot send the bearer
		// header, so these also take a ticket from POST /api/ws/ticket.
		r.Group(func(r chi.Router) {
			r.Use(s.authenticateLive)
			r.Get("/api/ws", s.liveAll)
			r.Get("/api/batch/{id}/ws", s.liveBatch)
			// A browser downloads the export by a link, which cannot carry the
			// bearer header either.
			r.With(perKey).Get("/api/batch/{id}/export.csv", s.exportCSV)
		})
	}
	return r, nil
}

func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": err.Error()})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// recoverer answers a panic with a 500 and logs it; the server keeps running.
func (s *server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				writeError(w, r, s.log, fmt.Errorf("panic: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

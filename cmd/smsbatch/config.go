package main

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/smsbatch/smsbatch/api"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/processors/sms/httpprovider"
)

// Config is every setting of `smsbatch serve`. Each is a flag and an SMSBATCH_
// environment variable; the flag wins. The README's configuration table lists them.
type Config struct {
	Addr          string
	DataDir       string
	EventStore    string
	EventStoreURL string
	ReadStore     string
	ReadStoreURL  string
	NATSURL       string
	NATSNamespace string
	// NATSConcurrency bounds the work messages one instance handles at once.
	NATSConcurrency int
	APIKeys         string
	DefaultRegion   string
	LogLevel        string
	LogFormat       string

	Rates         domain.Rates
	RateUnlimited bool
	MaxInFlight   int
	Slice         time.Duration
	SendTimeout   time.Duration
	MaxAttempts   int
	BackoffInit   time.Duration
	BackoffMax    time.Duration
	StallTimeout  time.Duration
	// TenantMaxRate caps the messages a second of all of a tenant's batches.
	TenantMaxRate float64
	// BreakerThreshold and BreakerProbeAfter tune the provider's circuit breaker.
	BreakerThreshold  int
	BreakerProbeAfter time.Duration

	SMSProvider   string
	SMSURL        string
	SMSAccountSID string
	SMSFrom       string
	// SMSAuthToken comes from SMSBATCH_SMS_AUTH_TOKEN only: a flag would show
	// in the process list.
	SMSAuthToken string
	// WSTicketSecret signs WebSocket tickets; instances behind one load balancer
	// need the same one. From SMSBATCH_WS_TICKET_SECRET only; empty: random.
	WSTicketSecret string
	SimRateLimit   float64

	// PublicURL is the base URL the SMS provider reaches this instance at: the
	// http provider asks for delivery receipts there, and the webhooks check
	// signatures against it. Empty: no receipts asked for (the built-in
	// simulator then reports to the listen address).
	PublicURL string
	// InboundNumbers maps provider numbers to tenants for inbound keywords:
	// "+15551230000=acme,+15551230001=globex".
	InboundNumbers string
	// SimReceiptDelay is how long the simulator waits before reporting a
	// message's delivery; 0 sends no receipts.
	SimReceiptDelay time.Duration

	SimLatency     time.Duration
	SimJitter      time.Duration
	SimFailureRate float64
	SimSeed        int64
	// SimRecordEveryCall makes the simulator ignore idempotency keys and write
	// every call to sim-calls.jsonl: tests see real duplicates.
	SimRecordEveryCall bool

	HTTPRateLimit  int
	HTTPRateWindow time.Duration
	MaxBodyBytes   int64
	MaxRecipients  int

	// HTTP server limits: see api.Timeouts, api.UploadLimits and
	// api.Config.AuthFailures. On the command line 0 turns a limit off.
	HTTPReadTimeout   time.Duration
	HTTPWriteTimeout  time.Duration
	HTTPIdleTimeout   time.Duration
	UploadMinRate     int64
	UploadRateWindow  time.Duration
	UploadsPerKey     int
	AuthFailureLimit  int
	AuthFailureWindow time.Duration

	ShutdownTimeout time.Duration
}

// settings registers flags whose values, when not given on the command line,
// come from their environment variables. A flag's default shown by --help is
// the built-in one, never the variable's value: that may be an API key or a
// URL with a password, and --help (or any mistyped flag) prints defaults to
// stderr, the container's log.
type settings struct {
	fs   *flag.FlagSet
	env  func(string) string
	vars []envVar
}

// envVar is a flag's environment variable and how to set the flag from it.
type envVar struct {
	flag, name string
	set        func(string) error
}

func (s *settings) register(name, env string, set func(string) error) {
	s.vars = append(s.vars, envVar{flag: name, name: env, set: set})
}

// fromEnv sets every flag of fs not given on the command line from its
// variable, when set: the flag wins, and a variable it overrides is not read.
func (s *settings) fromEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	for _, v := range s.vars {
		if given[v.flag] {
			continue
		}
		if val := s.env(v.name); val != "" {
			if err := v.set(val); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s %w", v.name, shown(val), err))
			}
		}
	}
	return errors.Join(errs...)
}

func (s *settings) str(p *string, name, env, def, usage string) {
	s.fs.StringVar(p, name, def, usage+" (env "+env+")")
	s.register(name, env, func(v string) error { *p = v; return nil })
}

func (s *settings) dur(p *time.Duration, name, env string, def time.Duration, usage string) {
	s.fs.DurationVar(p, name, def, usage+" (env "+env+")")
	s.register(name, env, func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return errors.New("is not a duration such as 500ms or 2s")
		}
		*p = d
		return nil
	})
}

func (s *settings) int(p *int, name, env string, def int, usage string) {
	s.fs.IntVar(p, name, def, usage+" (env "+env+")")
	s.register(name, env, func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return errors.New("is not a whole number")
		}
		*p = n
		return nil
	})
}

func (s *settings) int64(p *int64, name, env string, def int64, usage string) {
	s.fs.Int64Var(p, name, def, usage+" (env "+env+")")
	s.register(name, env, func(v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return errors.New("is not a whole number")
		}
		*p = n
		return nil
	})
}

func (s *settings) float(p *float64, name, env string, def float64, usage string) {
	s.fs.Float64Var(p, name, def, usage+" (env "+env+")")
	s.register(name, env, func(v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return errors.New("is not a number")
		}
		*p = f
		return nil
	})
}

func (s *settings) bool(p *bool, name, env string, def bool, usage string) {
	s.fs.BoolVar(p, name, def, usage+" (env "+env+")")
	s.register(name, env, func(v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("is not true or false")
		}
		*p = b
		return nil
	})
}

// ParseConfig reads the serve settings from args and the environment.
func ParseConfig(args []string, env func(string) string) (Config, error) {
	c, rest, err := parseConfig("smsbatch serve", args, env)
	if err == nil && len(rest) > 0 {
		err = fmt.Errorf("unexpected arguments: %s", strings.Join(rest, " "))
	}
	if err == nil {
		err = c.unselected()
	}
	return c, err
}

// unselected refuses a URL given for a backend serve does not use: the
// operator meant it, and ignoring it would, say, run a campaign through the
// built-in simulator (every message "sent", none received) or keep the data
// in local files.
func (c Config) unselected() error {
	var errs []error
	if c.SMSURL != "" && c.SMSProvider != "http" {
		errs = append(errs, fmt.Errorf("--sms-url (SMSBATCH_SMS_URL) is set, but the sms provider is %s, which would not use it: set --sms-provider http (SMSBATCH_SMS_PROVIDER)", c.SMSProvider))
	}
	if c.EventStoreURL != "" && c.EventStore == "bolt" {
		errs = append(errs, errors.New("--event-store-url (SMSBATCH_EVENT_STORE_URL) is set, but the event store is bolt, which would not use it: set --event-store postgres or kurrent"))
	}
	if c.ReadStoreURL != "" && c.ReadStore != "postgres" {
		errs = append(errs, fmt.Errorf("--read-store-url (SMSBATCH_READ_STORE_URL) is set, but the read store is %s, which would not use it: set --read-store postgres", c.ReadStore))
	}
	return errors.Join(errs...)
}

// simulatorFlags are the settings `smsbatch simulator` uses: its --help lists
// these only. The others keep their defaults (or SMSBATCH_ variables).
var simulatorFlags = []string{"addr", "data-dir", "sms-account-sid", "sim-rate-limit", "sim-latency", "sim-jitter",
	"sim-failure-rate", "sim-seed", "sim-receipt-delay", "sim-record-every-call", "log-level", "log-format"}

// parseConfig reads every setting and returns the arguments after the flags.
// With only, the command line takes those flags alone.
func parseConfig(name string, args []string, env func(string) string, only ...string) (Config, []string, error) {
	var c Config
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	s := &settings{fs: fs, env: env}
	s.str(&c.Addr, "addr", "SMSBATCH_ADDR", "127.0.0.1:8080", "HTTP listen address")
	s.str(&c.DataDir, "data-dir", "SMSBATCH_DATA_DIR", "./data", "directory of the embedded event store and read models, the dev API key and the simulator outbox")
	s.str(&c.EventStore, "event-store", "SMSBATCH_EVENT_STORE", "bolt", "event store: bolt (embedded file in the data directory), postgres or kurrent")
	s.str(&c.EventStoreURL, "event-store-url", "SMSBATCH_EVENT_STORE_URL", "", "URL of the event store: postgres://user@host:5432/db or esdb://host:2113?tls=false")
	s.str(&c.ReadStore, "read-store", "SMSBATCH_READ_STORE", "bolt", "read-model store: bolt (embedded file in the data directory), postgres, or memory (rebuilt from the events at every start; tests)")
	s.str(&c.ReadStoreURL, "read-store-url", "SMSBATCH_READ_STORE_URL", "", "PostgreSQL URL of the read models; default the event store's URL")
	s.str(&c.NATSURL, "nats-url", "SMSBATCH_NATS_URL", "", "NATS URL (JetStream) for the work messages; empty runs them in-process (GoChannel)")
	s.str(&c.NATSNamespace, "nats-namespace", "SMSBATCH_NATS_NAMESPACE", "", "prefix of the NATS streams and subjects, for several deployments on one server")
	s.int(&c.NATSConcurrency, "nats-concurrency", "SMSBATCH_NATS_CONCURRENCY", 4096, "batches one instance works at once over NATS")
	s.str(&c.APIKeys, "api-keys", "SMSBATCH_API_KEYS", "", "API keys as tenant:key,tenant:key; empty creates a dev key in the data directory")
	s.str(&c.DefaultRegion, "default-region", "SMSBATCH_DEFAULT_REGION", "US", "region of phone numbers given without a country code")
	s.str(&c.LogLevel, "log-level", "SMSBATCH_LOG_LEVEL", "info", "debug, info, warn or error")
	s.str(&c.LogFormat, "log-format", "SMSBATCH_LOG_FORMAT", "text", "text or json")
	s.float(&c.Rates.High, "rate-high", "SMSBATCH_RATE_HIGH", domain.DefaultRates.High, "messages per second of high-priority batches")
	s.float(&c.Rates.Normal, "rate-normal", "SMSBATCH_RATE_NORMAL", domain.DefaultRates.Normal, "messages per second of normal-priority batches")
	s.float(&c.Rates.Low, "rate-low", "SMSBATCH_RATE_LOW", domain.DefaultRates.Low, "messages per second of low-priority batches")
	s.bool(&c.RateUnlimited, "rate-unlimited", "SMSBATCH_RATE_UNLIMITED", false, "lift the per-batch rate limit (benchmarks)")
	s.int(&c.MaxInFlight, "max-in-flight", "SMSBATCH_MAX_IN_FLIGHT", 5, "messages of one batch handed to the provider without an answer")
	s.dur(&c.Slice, "work-slice", "SMSBATCH_WORK_SLICE", 2*time.Second, "how long one work message sends for")
	s.dur(&c.SendTimeout, "send-timeout", "SMSBATCH_SEND_TIMEOUT", 5*time.Second, "time limit of one call to the SMS provider")
	s.int(&c.MaxAttempts, "max-attempts", "SMSBATCH_MAX_ATTEMPTS", 5, "tries of one message for retryable failures")
	s.dur(&c.BackoffInit, "backoff-initial", "SMSBATCH_BACKOFF_INITIAL", 500*time.Millisecond, "wait before the first retry (doubles each time, ±50% jitter)")
	s.dur(&c.BackoffMax, "backoff-max", "SMSBATCH_BACKOFF_MAX", 30*time.Second, "longest wait between retries")
	s.float(&c.TenantMaxRate, "tenant-max-rate", "SMSBATCH_TENANT_MAX_RATE", 0, "messages per second of all of one tenant's batches together, across instances (0: off)")
	s.int(&c.BreakerThreshold, "breaker-threshold", "SMSBATCH_BREAKER_THRESHOLD", 5, "sends failing in a row on the provider's side (down, unreachable, timeout, 429) before sending is held")
	s.dur(&c.BreakerProbeAfter, "breaker-probe-after", "SMSBATCH_BREAKER_PROBE_AFTER", 5*time.Second, "how long sending is held before one probe send")
	s.dur(&c.StallTimeout, "stall-timeout", "SMSBATCH_STALL_TIMEOUT", 15*time.Second, "a processing batch without progress for this long is picked up again")
	s.str(&c.SMSProvider, "sms-provider", "SMSBATCH_SMS_PROVIDER", "simulator", "simulator (built in) or http (a Twilio-style REST API)")
	s.str(&c.SMSURL, "sms-url", "SMSBATCH_SMS_URL", "", "base URL of the http provider, e.g. https://api.twilio.com or a standalone simulator")
	s.str(&c.SMSAccountSID, "sms-account-sid", "SMSBATCH_SMS_ACCOUNT_SID", "", "account SID of the http provider (and of the standalone simulator)")
	s.str(&c.SMSFrom, "sms-from", "SMSBATCH_SMS_FROM", "", "sender number or ID of the http provider")
	c.SMSAuthToken = env("SMSBATCH_SMS_AUTH_TOKEN")
	c.WSTicketSecret = env("SMSBATCH_WS_TICKET_SECRET")
	s.str(&c.PublicURL, "public-url", "SMSBATCH_PUBLIC_URL", "", "base URL the SMS provider reaches this instance at, e.g. https://sms.example.com: delivery receipts are asked for there and webhook signatures checked against it")
	s.str(&c.InboundNumbers, "inbound-numbers", "SMSBATCH_INBOUND_NUMBERS", "", "provider numbers whose inbound STOP/START change a tenant's opt-out list: +15551230000=acme,+15551230001=globex")
	s.dur(&c.SimReceiptDelay, "sim-receipt-delay", "SMSBATCH_SIM_RECEIPT_DELAY", time.Second, "simulator: mean wait before a message's delivery receipt (each from half to 1.5 times it); 0 sends none")
	s.float(&c.SimRateLimit, "sim-rate-limit", "SMSBATCH_SIM_RATE_LIMIT", 0, "standalone simulator: requests per second before it answers 429 (0: off)")
	s.dur(&c.SimLatency, "sim-latency", "SMSBATCH_SIM_LATENCY", 50*time.Millisecond, "simulator: mean latency of a send")
	s.dur(&c.SimJitter, "sim-jitter", "SMSBATCH_SIM_JITTER", 0, "simulator: latency varies by up to this much either way")
	s.float(&c.SimFailureRate, "sim-failure-rate", "SMSBATCH_SIM_FAILURE_RATE", 0, "simulator: share of attempts that fail transiently, 0 to 1")
	s.int64(&c.SimSeed, "sim-seed", "SMSBATCH_SIM_SEED", 1, "simulator: seed of the transient failures")
	s.bool(&c.SimRecordEveryCall, "sim-record-every-call", "SMSBATCH_SIM_RECORD_EVERY_CALL", false, "simulator: ignore idempotency keys, as Twilio's Messages API does, and record every call with its times in sim-calls.jsonl")
	s.int(&c.HTTPRateLimit, "http-rate-limit", "SMSBATCH_HTTP_RATE_LIMIT", 600, "API requests per key per window; 0 or less disables")
	s.dur(&c.HTTPRateWindow, "http-rate-window", "SMSBATCH_HTTP_RATE_WINDOW", time.Minute, "window of the API rate limit")
	s.int64(&c.MaxBodyBytes, "max-body-bytes", "SMSBATCH_MAX_BODY_BYTES", 64<<20, "largest request body")
	s.int(&c.MaxRecipients, "max-recipients", "SMSBATCH_MAX_RECIPIENTS", 1_000_000, "most recipients in one batch")
	s.dur(&c.HTTPReadTimeout, "http-read-timeout", "SMSBATCH_HTTP_READ_TIMEOUT", 30*time.Second, "time to read a request, headers and body (a batch upload's body: see --upload-min-rate)")
	s.dur(&c.HTTPWriteTimeout, "http-write-timeout", "SMSBATCH_HTTP_WRITE_TIMEOUT", 30*time.Second, "time to answer a request once its headers are read (a batch upload's: once it is stored)")
	s.dur(&c.HTTPIdleTimeout, "http-idle-timeout", "SMSBATCH_HTTP_IDLE_TIMEOUT", time.Minute, "how long a kept-alive connection may wait for its next request")
	s.int64(&c.UploadMinRate, "upload-min-rate", "SMSBATCH_UPLOAD_MIN_RATE", 4096, "slowest a batch upload may arrive, in bytes per second over --upload-rate-window; 0 disables")
	s.dur(&c.UploadRateWindow, "upload-rate-window", "SMSBATCH_UPLOAD_RATE_WINDOW", 20*time.Second, "span the upload rate is measured over")
	s.int(&c.UploadsPerKey, "uploads-per-key", "SMSBATCH_UPLOADS_PER_KEY", 64, "batch uploads one API key may run at once; 0 disables")
	s.int(&c.AuthFailureLimit, "auth-failure-limit", "SMSBATCH_AUTH_FAILURE_LIMIT", 10, "failed authentications per client address per window before it gets 429; 0 disables")
	s.dur(&c.AuthFailureWindow, "auth-failure-window", "SMSBATCH_AUTH_FAILURE_WINDOW", time.Minute, "window of the failed-authentication limit")
	s.dur(&c.ShutdownTimeout, "shutdown-timeout", "SMSBATCH_SHUTDOWN_TIMEOUT", 30*time.Second, "how long shutdown waits for requests and in-flight sends")
	if len(only) > 0 {
		fs = subset(fs, only)
	}
	if err := fs.Parse(args); err != nil {
		return c, nil, err
	}
	if err := s.fromEnv(fs); err != nil {
		return c, nil, err
	}
	if c.ReadStore == "postgres" && c.ReadStoreURL == "" && c.EventStore == "postgres" {
		c.ReadStoreURL = c.EventStoreURL // one database for both
	}
	return c, fs.Args(), c.Validate()
}

// subset returns a flag set of fs's flags named in names, set into the same
// variables.
func subset(fs *flag.FlagSet, names []string) *flag.FlagSet {
	out := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	for _, name := range names {
		if f := fs.Lookup(name); f != nil {
			out.Var(f.Value, f.Name, f.Usage)
		}
	}
	return out
}

// shown quotes a setting's value for an error message, unless it may hold a
// secret: a URL (with a password, say, put in the wrong variable), anything
// with an @, or a long value is not repeated.
func shown(v string) string {
	if strings.Contains(v, "://") || strings.Contains(v, "@") || len(v) > 64 {
		return "(a value not shown: it may hold a secret)"
	}
	return strconv.Quote(v)
}

// Validate reports settings that cannot work.
func (c Config) Validate() error {
	var errs []error
	if err := c.Rates.Validate(); err != nil {
		errs = append(errs, err)
	}
	if !domain.ValidRegion(c.DefaultRegion) {
		errs = append(errs, fmt.Errorf("default region %s is not a known region code", shown(c.DefaultRegion)))
	}
	if c.MaxInFlight < 1 {
		errs = append(errs, errors.New("max in flight must be at least 1"))
	}
	if c.NATSConcurrency < 1 {
		errs = append(errs, errors.New("nats concurrency must be at least 1"))
	}
	if c.TenantMaxRate < 0 {
		errs = append(errs, errors.New("tenant max rate must be 0 (off) or positive"))
	}
	if c.MaxAttempts < 1 {
		errs = append(errs, errors.New("max attempts must be at least 1"))
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"http read timeout", c.HTTPReadTimeout}, {"http write timeout", c.HTTPWriteTimeout}, {"http idle timeout", c.HTTPIdleTimeout},
		{"upload rate window", c.UploadRateWindow}, {"auth failure window", c.AuthFailureWindow}, {"http rate window", c.HTTPRateWindow}} {
		if d.d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive", d.name))
		}
	}
	if c.SimFailureRate < 0 || c.SimFailureRate > 1 {
		errs = append(errs, errors.New("simulator failure rate must be between 0 and 1"))
	}
	if c.SimReceiptDelay < 0 {
		errs = append(errs, errors.New("simulator receipt delay must not be negative"))
	}
	if c.PublicURL != "" {
		if err := httpprovider.CheckPublicURL(c.PublicURL); err != nil {
			errs = append(errs, fmt.Errorf("public URL: %w", err))
		}
	}
	if numbers, err := parseInboundNumbers(c.InboundNumbers); err != nil {
		errs = append(errs, err)
	} else if len(numbers) > 0 && c.PublicURL == "" && c.SMSProvider != "simulator" {
		errs = append(errs, errors.New("inbound numbers need --public-url (SMSBATCH_PUBLIC_URL): the provider's signatures are checked against it"))
	}
	switch c.EventStore {
	case "bolt":
	case "postgres", "kurrent":
		if c.EventStoreURL == "" {
			errs = append(errs, fmt.Errorf("event store %s needs --event-store-url (SMSBATCH_EVENT_STORE_URL)", c.EventStore))
		}
	default:
		errs = append(errs, fmt.Errorf("event store %s: want bolt, postgres or kurrent", shown(c.EventStore)))
	}
	switch c.ReadStore {
	case "bolt", "memory":
	case "postgres":
		if c.ReadStoreURL == "" {
			errs = append(errs, errors.New("read store postgres needs --read-store-url (SMSBATCH_READ_STORE_URL) or a postgres event store URL"))
		}
	default:
		errs = append(errs, fmt.Errorf("read store %s: want bolt, postgres or memory", shown(c.ReadStore)))
	}
	if c.WSTicketSecret != "" && len(c.WSTicketSecret) < 32 {
		errs = append(errs, errors.New("SMSBATCH_WS_TICKET_SECRET must be at least 32 characters"))
	}
	switch c.SMSProvider {
	case "simulator":
	case "http":
		if c.SMSURL == "" || c.SMSAccountSID == "" || c.SMSAuthToken == "" {
			errs = append(errs, errors.New("sms provider http needs --sms-url, --sms-account-sid and SMSBATCH_SMS_AUTH_TOKEN"))
		}
	default:
		errs = append(errs, fmt.Errorf("sms provider %s: want simulator or http", shown(c.SMSProvider)))
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log format %s: want text or json", shown(c.LogFormat)))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log level %s: want debug, info, warn or error", shown(c.LogLevel)))
	}
	return errors.Join(errs...)
}

// parseInboundNumbers reads "+15551230000=acme,+15551230001=globex". A number
// is written in E.164 as the provider sends it; it is not checked against the
// phone metadata (test numbers such as 555 ones are fine).
func parseInboundNumbers(s string) (map[string]string, error) {
	out := map[string]string{}
	for i, pair := range strings.Split(s, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		number, tenant, ok := strings.Cut(pair, "=")
		number, tenant = strings.TrimSpace(number), strings.TrimSpace(tenant)
		digits, plus := strings.CutPrefix(number, "+")
		if !ok || tenant == "" || !plus || len(digits) < 2 || len(digits) > 15 || strings.Trim(digits, "0123456789") != "" || digits[0] == '0' {
			return nil, fmt.Errorf("inbound numbers, entry %d: want +<E.164 number>=<tenant>, e.g. +15551230000=acme", i+1)
		}
		if other, dup := out[number]; dup && other != tenant {
			return nil, fmt.Errorf("inbound numbers: %s is given to %s and %s", number, other, tenant)
		}
		out[number] = tenant
	}
	return out, nil
}

// apiLimits sets the HTTP server's limits of a, as the settings give them: here 0
// (or less) turns a limit off, where in api.Config zero means the default.
func (c Config) apiLimits(a *api.Config) {
	a.Limits = api.Limits{MaxBodyBytes: c.MaxBodyBytes, MaxRecipients: c.MaxRecipients}
	a.RateLimit = api.RateLimit{Requests: off(c.HTTPRateLimit), Window: c.HTTPRateWindow}
	a.AuthFailures = api.RateLimit{Requests: off(c.AuthFailureLimit), Window: c.AuthFailureWindow}
	a.Uploads = api.UploadLimits{MinRate: off(c.UploadMinRate), RateWindow: c.UploadRateWindow, PerKey: off(c.UploadsPerKey)}
	a.Timeouts = api.Timeouts{Read: c.HTTPReadTimeout, Write: c.HTTPWriteTimeout, Idle: c.HTTPIdleTimeout}
	a.SpoolDir = c.spoolDir()
}

// off maps a limit of 0 or less, "off" on the command line, to api's "off".
func off[T int | int64](n T) T {
	if n <= 0 {
		return -1
	}
	return n
}

// spoolDir holds the temporary files of uploads in progress: under the data
// directory, which is the service's own, so that what a crash leaves there can be
// removed at start.
func (c Config) spoolDir() string { return filepath.Join(c.DataDir, "uploads") }

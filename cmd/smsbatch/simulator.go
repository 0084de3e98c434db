package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/processors/sms"
	"github.com/smsbatch/smsbatch/processors/sms/httpprovider"
	"github.com/smsbatch/smsbatch/processors/sms/simulator"
	"github.com/smsbatch/smsbatch/processors/sms/twilio"
)

// newSimulator opens the simulator with its outbox in the data directory. cb
// says where its delivery receipts go (the delay is cfg's).
func newSimulator(cfg Config, logger *slog.Logger, cb simulator.Callbacks) (*simulator.Simulator, error) {
	cb.Delay = cfg.SimReceiptDelay
	sim, err := simulator.New(simulator.Config{
		OutboxPath:           filepath.Join(cfg.DataDir, "sim-outbox.jsonl"),
		Latency:              cfg.SimLatency,
		LatencyJitter:        cfg.SimJitter,
		TransientFailureRate: cfg.SimFailureRate,
		Seed:                 cfg.SimSeed,
		RecordEveryCall:      cfg.SimRecordEveryCall,
		CallsPath:            filepath.Join(cfg.DataDir, "sim-calls.jsonl"),
		Callbacks:            cb,
		Logger:               logger,
	})
	if err != nil {
		return nil, fmt.Errorf("sms simulator: %w", err)
	}
	return sim, nil
}

// openProvider returns the configured SMS provider and what closes it. hooks
// are this instance's webhooks: where delivery receipts are asked for (none
// when its public URL is empty) and, for the built-in simulator, the token it
// signs them with.
func openProvider(cfg Config, logger *slog.Logger, hooks webhooks) (sms.Provider, io.Closer, error) {
	if cfg.SMSProvider == "http" {
		p, err := httpprovider.New(httpprovider.Config{
			BaseURL: cfg.SMSURL, AccountSID: cfg.SMSAccountSID, AuthToken: cfg.SMSAuthToken,
			From: cfg.SMSFrom, Timeout: cfg.SendTimeout, PublicURL: hooks.publicURL,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("sms provider: %w", err)
		}
		return p, io.NopCloser(nil), nil
	}
	account := cfg.SMSAccountSID
	if account == "" {
		account = "ACsimulator"
	}
	sim, err := newSimulator(cfg, logger, simulator.Callbacks{
		PublicURL: hooks.publicURL, AuthToken: hooks.token, AccountSID: account, Deliver: hooks.deliver,
	})
	if err != nil {
		return nil, nil, err
	}
	return sim, sim, nil
}

// webhooks is where the provider reaches this instance and the token its
// requests are signed with. With deliver, the built-in simulator hands its
// receipts over in-process instead.
type webhooks struct {
	publicURL, token string
	deliver          func(context.Context, []simulator.Receipt) error
}

// recordReceipts records the built-in simulator's receipts as the status
// webhook would, a batch's together: without a public URL set, nothing but
// this instance hears them, and a webhook request a message would cost
// more than the send.
func recordReceipts(cmds *commands.Handlers, logger *slog.Logger) func(context.Context, []simulator.Receipt) error {
	return func(ctx context.Context, rs []simulator.Receipt) error {
		in := make([]commands.RecordReceipt, len(rs))
		for i, r := range rs {
			in[i] = commands.RecordReceipt{BatchID: r.BatchID, Index: r.Index, Delivered: r.Delivered,
				ProviderID: r.ProviderID, SentAt: r.SentAt, Code: r.Code, Message: twilio.DeliveryErrorMessage(r.Code)}
		}
		_, missing, err := cmds.RecordReceipts(ctx, in)
		if missing > 0 {
			logger.WarnContext(ctx, "simulator receipts ignored: no such message", "receipts", missing)
		}
		return err
	}
}

// webhooksFor returns the configured public URL and the provider's token. The
// built-in simulator reports to the instance's own listen address when no
// public URL is set, signed with the configured token or, without one, a token
// of this run's: it signs in-process, so nothing else needs to know it.
func webhooksFor(cfg Config, listenAddr string) (webhooks, error) {
	h := webhooks{publicURL: cfg.PublicURL, token: cfg.SMSAuthToken}
	if cfg.SMSProvider != "simulator" {
		return h, nil
	}
	if h.publicURL == "" {
		host, port, err := net.SplitHostPort(listenAddr)
		if err != nil {
			return h, fmt.Errorf("listen address %s: %w", listenAddr, err)
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			host = "127.0.0.1" // listening everywhere: reach it here
		}
		h.publicURL = "http://" + net.JoinHostPort(host, port)
	}
	if h.token == "" {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return h, err
		}
		h.token = hex.EncodeToString(b)
	}
	return h, nil
}

// runSimulator serves the simulator's Twilio-style API until ctx is done, so that
// several instances share one provider and one outbox.
func runSimulator(ctx context.Context, cfg Config, out io.Writer) error {
	logger := newLogger(cfg, out)
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if cfg.SMSAccountSID == "" || cfg.SMSAuthToken == "" {
		return errors.New("the simulator needs --sms-account-sid and SMSBATCH_SMS_AUTH_TOKEN (the credentials clients must send)")
	}
	// Receipts go to each request's StatusCallback, signed with the token the
	// server checks clients' credentials against, as Twilio signs with the
	// account's.
	sim, err := newSimulator(cfg, logger, simulator.Callbacks{})
	if err != nil {
		return err
	}
	defer sim.Close()
	handler, err := simulator.NewServer(sim, simulator.ServerConfig{
		AccountSID: cfg.SMSAccountSID, AuthToken: cfg.SMSAuthToken, RateLimit: cfg.SimRateLimit, Logger: logger,
	})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	logger.Info("sms simulator is serving", "url", "http://"+l.Addr().String(), "outbox", filepath.Join(cfg.DataDir, "sim-outbox.jsonl"))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

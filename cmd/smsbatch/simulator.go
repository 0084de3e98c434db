package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/smsbatch/smsbatch/processors/sms"
	"github.com/smsbatch/smsbatch/processors/sms/httpprovider"
	"github.com/smsbatch/smsbatch/processors/sms/simulator"
)

// newSimulator opens the simulator with its outbox in the data directory.
func newSimulator(cfg Config, logger *slog.Logger) (*simulator.Simulator, error) {
	sim, err := simulator.New(simulator.Config{
		OutboxPath:           filepath.Join(cfg.DataDir, "sim-outbox.jsonl"),
		Latency:              cfg.SimLatency,
		LatencyJitter:        cfg.SimJitter,
		TransientFailureRate: cfg.SimFailureRate,
		Seed:                 cfg.SimSeed,
		RecordEveryCall:      cfg.SimRecordEveryCall,
		CallsPath:            filepath.Join(cfg.DataDir, "sim-calls.jsonl"),
		Logger:               logger,
	})
	if err != nil {
		return nil, fmt.Errorf("sms simulator: %w", err)
	}
	return sim, nil
}

// openProvider returns the configured SMS provider and what closes it.
func openProvider(cfg Config, logger *slog.Logger) (sms.Provider, io.Closer, error) {
	if cfg.SMSProvider == "http" {
		p, err := httpprovider.New(httpprovider.Config{
			BaseURL: cfg.SMSURL, AccountSID: cfg.SMSAccountSID, AuthToken: cfg.SMSAuthToken,
			From: cfg.SMSFrom, Timeout: cfg.SendTimeout,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("sms provider: %w", err)
		}
		return p, io.NopCloser(nil), nil
	}
	sim, err := newSimulator(cfg, logger)
	if err != nil {
		return nil, nil, err
	}
	return sim, sim, nil
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
	sim, err := newSimulator(cfg, logger)
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

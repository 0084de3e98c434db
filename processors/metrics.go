package processors

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the send processor's Prometheus metrics.
type Metrics struct {
	Sent           prometheus.Counter
	Failed         *prometheus.CounterVec
	AttemptsFailed *prometheus.CounterVec
	RateLimitWaits prometheus.Counter
	InFlight       prometheus.Gauge
	// ProviderCircuitOpen is 1 while the provider's circuit breaker holds sends.
	ProviderCircuitOpen prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg when it is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "smsbatch_messages_sent_total", Help: "Messages the provider accepted.",
		}),
		Failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "smsbatch_messages_failed_total", Help: "Messages failed for good, by error category.",
		}, []string{"category"}),
		AttemptsFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "smsbatch_send_attempts_failed_total", Help: "Send attempts that failed and will be retried, by error category.",
		}, []string{"category"}),
		RateLimitWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "smsbatch_rate_limit_waits_total", Help: "Times a batch waited because the provider answered 429.",
		}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "smsbatch_messages_in_flight", Help: "Messages handed to the provider without an answer yet.",
		}),
		ProviderCircuitOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "smsbatch_provider_circuit_open", Help: "1 while failures on the provider's side hold sending (open or probing), else 0.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Sent, m.Failed, m.AttemptsFailed, m.RateLimitWaits, m.InFlight, m.ProviderCircuitOpen)
	}
	return m
}

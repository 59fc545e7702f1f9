package xds

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the server's Prometheus metrics, on their own registry so
// tests can run several servers in one process.
type Metrics struct {
	Registry           *prometheus.Registry
	connected          *prometheus.GaugeVec
	pushes             *prometheus.CounterVec
	pushLatency        *prometheus.HistogramVec
	nacks              *prometheus.CounterVec
	translationSeconds prometheus.Histogram
	debounceSeconds    prometheus.Histogram
	watchedObjects     *prometheus.GaugeVec
	skippedObjects     prometheus.Gauge
	denied             *prometheus.CounterVec
}

// NewMetrics registers every metric.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spoke_connected_envoys", Help: "Envoy ADS streams open, by role.",
		}, []string{"role"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spoke_xds_pushes_total", Help: "xDS responses sent, by resource type.",
		}, []string{"type"}),
		pushLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "spoke_xds_push_latency_seconds", Help: "From a snapshot being set to its response being sent, by type.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spoke_xds_nacks_total", Help: "xDS NACKs received from Envoys, by resource type.",
		}, []string{"type"}),
		translationSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "spoke_translation_seconds", Help: "Time to translate an update and set the snapshots.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		debounceSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "spoke_debounce_wait_seconds", Help: "From the first change of a burst to its translation starting.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 12),
		}),
		watchedObjects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spoke_watched_objects", Help: "Kubernetes objects the sources hold, by kind.",
		}, []string{"kind"}),
		skippedObjects: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "spoke_skipped_objects", Help: "Objects (or parts) left out of the config in the last update; see the server log.",
		}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spoke_xds_denied_total", Help: "xDS clients or requests refused, by reason (client_certificate, unauthenticated, identity_mismatch, no_role, resource_not_allowed).",
		}, []string{"reason"}),
	}
	m.Registry.MustRegister(m.denied, m.connected, m.pushes, m.pushLatency, m.nacks, m.translationSeconds,
		m.debounceSeconds, m.watchedObjects, m.skippedObjects,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) observeObjects(counts map[string]int) {
	for kind, n := range counts {
		m.watchedObjects.WithLabelValues(kind).Set(float64(n))
	}
}

// Package metrics defines the server's Prometheus metrics in one place, so
// their names and help texts can be read together. The packages that count
// things (xds, status) receive a *Metrics; this package imports nothing of
// spoke's.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the server's Prometheus metrics, on their own registry so
// tests can run several servers in one process.
type Metrics struct {
	Registry           *prometheus.Registry
	Connected          *prometheus.GaugeVec
	StreamsOpened      prometheus.Counter
	StreamsClosed      prometheus.Counter
	Pushes             *prometheus.CounterVec
	PushLatency        *prometheus.HistogramVec
	Nacks              *prometheus.CounterVec
	TranslationSeconds prometheus.Histogram
	DebounceSeconds    prometheus.Histogram
	WatchedObjects     *prometheus.GaugeVec
	SkippedObjects     prometheus.Gauge
	RefusedPodAddrs    prometheus.Gauge
	SourceRefused      prometheus.Gauge
	Denied             *prometheus.CounterVec
	RefusedConnections *prometheus.CounterVec
	Tunnels            *prometheus.GaugeVec
	NodesWithoutTunnel prometheus.Gauge
	TunnelRefusals     *prometheus.CounterVec
}

// New registers every metric.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spoke_connected_envoys", Help: "Envoy ADS streams open, by role.",
		}, []string{"role"}),
		StreamsOpened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spoke_xds_streams_opened_total", Help: "ADS streams opened, refused ones included: a rate far above the number of Envoys means Envoys reconnect in a loop.",
		}),
		StreamsClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spoke_xds_streams_closed_total", Help: "ADS streams closed, for whatever reason; opened minus closed is the streams open now, identified or not.",
		}),
		Pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spoke_xds_pushes_total", Help: "xDS responses sent, by resource type.",
		}, []string{"type"}),
		PushLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "spoke_xds_push_latency_seconds", Help: "From a change of an Envoy's config (made while it was connected) to that Envoy's ACK of it, by type; (re)connections are not counted.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"type"}),
		Nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spoke_xds_nacks_total", Help: "xDS NACKs received from Envoys, by resource type.",
		}, []string{"type"}),
		TranslationSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "spoke_translation_seconds", Help: "Time to translate an update and set the snapshots.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		DebounceSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "spoke_debounce_wait_seconds", Help: "From the first change of a burst to its translation starting.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 12),
		}),
		WatchedObjects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spoke_watched_objects", Help: "Kubernetes objects the sources hold, by kind.",
		}, []string{"kind"}),
		SkippedObjects: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "spoke_skipped_objects", Help: "Objects (or parts) left out of the config in the last update; see the server log.",
		}),
		RefusedPodAddrs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "spoke_refused_pod_addresses", Help: "Pod addresses refused in the last update because their node may not own them (special addresses, a Service range, outside the node's pod CIDRs); spoke status lists them.",
		}),
		SourceRefused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "spoke_source_refused", Help: "1 while the cluster source's current input is refused (a cluster file without nodes, unreadable or unparsable): the last good config is served; spoke status and /readyz say why.",
		}),
		Denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spoke_xds_denied_total", Help: "xDS clients or requests refused, by reason (client_certificate, unauthenticated, identity_mismatch, no_role, resource_not_allowed, unknown_type).",
		}, []string{"reason"}),
		RefusedConnections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spoke_xds_connections_refused_total", Help: "xDS TCP connections closed at accept for breaking a cap, by cap (total, per_source).",
		}, []string{"cap"}),
		Tunnels: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spoke_tunnels", Help: "Tunnels each node holds at the apiserver proxy beside this server (--apiserver-proxy-admin).",
		}, []string{"node"}),
		NodesWithoutTunnel: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "spoke_nodes_without_tunnel", Help: "Nodes of the cluster holding no tunnel at the apiserver proxy beside this server.",
		}),
		TunnelRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spoke_tunnel_refusals_total", Help: "Tunnel connections the apiserver proxy beside this server refused, by class (tls, identity, malformed, incomplete); see spoke status for each node's last one.",
		}, []string{"class"}),
	}
	m.Registry.MustRegister(m.Tunnels, m.NodesWithoutTunnel, m.TunnelRefusals, m.RefusedConnections, m.Denied, m.Connected, m.StreamsOpened, m.StreamsClosed, m.Pushes, m.PushLatency, m.Nacks, m.TranslationSeconds,
		m.DebounceSeconds, m.WatchedObjects, m.SkippedObjects, m.RefusedPodAddrs, m.SourceRefused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Every labelled series of a known label set exists from the start, at
	// zero, so alerts can use rate() before the first event (status creates
	// those whose label values it defines).
	for _, r := range DenyReasons {
		m.Denied.WithLabelValues(r)
	}
	for _, c := range ConnectionCaps {
		m.RefusedConnections.WithLabelValues(c)
	}
	return m
}

// Reasons xDS clients or requests are denied (spoke_xds_denied_total).
const (
	DeniedClientCertificate  = "client_certificate"
	DeniedUnauthenticated    = "unauthenticated"
	DeniedIdentityMismatch   = "identity_mismatch"
	DeniedNoRole             = "no_role"
	DeniedResourceNotAllowed = "resource_not_allowed"
	DeniedUnknownType        = "unknown_type"
)

// The caps of the xDS port (spoke_xds_connections_refused_total).
const (
	CapTotal     = "total"
	CapPerSource = "per_source"
)

// The label values of the labelled series, each created at zero by New.
var (
	DenyReasons = []string{DeniedClientCertificate, DeniedUnauthenticated, DeniedIdentityMismatch,
		DeniedNoRole, DeniedResourceNotAllowed, DeniedUnknownType}
	ConnectionCaps = []string{CapTotal, CapPerSource}
)

// ObserveObjects sets the watched-object gauge per kind.
func (m *Metrics) ObserveObjects(counts map[string]int) {
	for kind, n := range counts {
		m.WatchedObjects.WithLabelValues(kind).Set(float64(n))
	}
}

// WatchExpiry exports seconds until expiry() as
// spoke_certificate_expiry_seconds{certificate=name}, read at each scrape
// (absent while expiry is zero: nothing issued yet).
func (m *Metrics) WatchExpiry(name string, expiry func() time.Time) {
	desc := prometheus.NewDesc("spoke_certificate_expiry_seconds",
		"Seconds until a certificate expires, by certificate (tunnel_ca: the CA that signs tunnel and serving certificates; xds_serving: the xDS port's current certificate, renewed on its own).",
		nil, prometheus.Labels{"certificate": name})
	m.Registry.MustRegister(expiryCollector{desc: desc, expiry: expiry})
}

type expiryCollector struct {
	desc   *prometheus.Desc
	expiry func() time.Time
}

func (c expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c expiryCollector) Collect(ch chan<- prometheus.Metric) {
	if at := c.expiry(); !at.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, time.Until(at).Seconds())
	}
}

package model

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Settings are the operator's choices that shape the generated config. Every
// field has a default (DefaultSettings); a config file overrides only what it names.
type Settings struct {
	// ClusterID is the reverse-tunnel cluster id every node proxy announces. The
	// apiserver proxy sends Service traffic to it, which spreads over all connected
	// nodes. It must differ from every node name.
	ClusterID string `json:"clusterID"`
	// TenantID is the reverse-tunnel tenant id (Envoy 1.40 requires one).
	TenantID string `json:"tenantID"`
	// TunnelPort is the apiserver proxy's TCP port for tunnel handshakes.
	// The default, 18003, sits beside the server's ports (18000-18002) and
	// clear of Konnectivity's (8132 for agents, 8133, 8134), so both run side
	// by side while a cluster moves from one to the other.
	TunnelPort uint32 `json:"tunnelPort"`
	// APIServerProxyName is the DNS SAN of the apiserver proxy's serving
	// certificate; node proxies send it as SNI and accept no other name.
	APIServerProxyName string `json:"apiServerProxyName"`
	// TunnelListenAddress is the address the apiserver proxy binds the tunnel port on.
	TunnelListenAddress string `json:"tunnelListenAddress"`
	// TunnelsPerEndpoint is how many tunnels each node proxy worker keeps to each
	// apiserver proxy. Node workers x this must be >= the apiserver proxy's
	// workers; at twice that, each apiserver-proxy worker holds a spare for
	// each node, so a tunnel that drops costs no CONNECT (a worker with one
	// tunnel refuses CONNECTs to the node until the node re-dials, ~1.5-2.5 s).
	TunnelsPerEndpoint uint32 `json:"tunnelsPerEndpoint"`
	// EgressSocketPath is the Unix socket the apiserver's EgressSelectorConfiguration names.
	EgressSocketPath string `json:"egressSocketPath"`
	// EgressSocketMode is the file mode of that socket: only the apiserver may use it.
	EgressSocketMode uint32 `json:"egressSocketMode"`
	// APIServerEndpoints, when set, replaces the EndpointSlices of default/kubernetes
	// as the list of apiserver proxies ("IP" or "IP:port"; port defaults to TunnelPort).
	APIServerEndpoints []string `json:"apiServerEndpoints,omitempty"`
	// ServiceCIDRs are Service ranges node proxies accept as a whole, in
	// addition to the networking.k8s.io/v1 ServiceCIDR objects (clusters
	// without that API list their --service-cluster-ip-range here).
	ServiceCIDRs []string `json:"serviceCIDRs,omitempty"`
	// AllowPodAddresses are ranges of special addresses (loopback,
	// link-local) accepted as pod addresses. Only for test topologies where
	// every node and pod lives on one host's loopback (the e2e suite, the
	// local demo); empty in any real cluster, where a pod claiming such an
	// address is refused (a CONNECT to it would reach the node proxy's own
	// host).
	AllowPodAddresses []string `json:"allowPodAddresses,omitempty"`
	// PodRouting is "auto" (octet-aligned pod CIDRs become one prefix route per
	// node on the apiserver proxy, the rest per pod IP) or "per-pod".
	PodRouting string `json:"podRouting"`
	// ConnectTimeout bounds every upstream TCP connect: the apiserver has no deadline
	// on its CONNECT, so spoke must fail fast.
	ConnectTimeout Duration `json:"connectTimeout"`
	// RequestHeadersTimeout bounds how long a client of the egress socket may
	// take to send its CONNECT (or stay silent after connecting): a stuck
	// client must not hold a connection forever. It ends once the headers
	// are in: an established stream is never cut by it.
	RequestHeadersTimeout Duration `json:"requestHeadersTimeout"`
	// EgressMaxConnections caps the apiserver's concurrent CONNECTs (one per
	// connection): each open `kubectl logs -f`, exec or port-forward is one.
	EgressMaxConnections uint64 `json:"egressMaxConnections"`
	// NodeMaxStreams caps the streams the apiserver proxy carries to one
	// node (its kubelet and its pods) at once: streams held to one node
	// (logs -f, exec, port-forward) never take the whole egress budget, so
	// other nodes and Services keep answering.
	NodeMaxStreams uint32 `json:"nodeMaxStreams"`
	// ServiceMaxStreams caps the streams to Services (webhooks, aggregated
	// APIs) at once: a runaway webhook client cannot take the egress budget
	// from the nodes, nor the nodes' streams from it (see NodeMaxStreams).
	ServiceMaxStreams uint32 `json:"serviceMaxStreams"`
	// TunnelHandshakeTimeout bounds a tunnel connection's TLS handshake and
	// its tunnel handshake request on the apiserver proxy: connections that
	// never finish them are closed, so a flood of them cannot pile up.
	TunnelHandshakeTimeout Duration `json:"tunnelHandshakeTimeout"`
	// KeepaliveInterval is the HTTP/2 PING interval on tunnels (both sides).
	KeepaliveInterval Duration `json:"keepaliveInterval"`
	// KeepaliveTimeout is how long a PING may go unanswered before the tunnel is closed.
	KeepaliveTimeout Duration `json:"keepaliveTimeout"`
	// TunnelStreamWindow is the HTTP/2 initial stream window (bytes) of the
	// CONNECT streams inside tunnels, both sides: how much of one stream may
	// be in flight in a tunnel. 0: Envoy's default (256 MiB). Default 1 MiB
	// (see DefaultSettings): a tunnel's connection window (256 MiB) then
	// holds 256 stalled streams before a new one waits.
	TunnelStreamWindow uint32 `json:"tunnelStreamWindow"`
	// TunnelConnectionWindow is the HTTP/2 initial connection window (bytes)
	// of a tunnel, both sides. 0: Envoy's default (256 MiB).
	TunnelConnectionWindow uint32 `json:"tunnelConnectionWindow"`
	// TunnelBufferLimit is Envoy's per-connection buffer limit (bytes) on
	// tunnel connections, both sides, and on the node proxy's connections to
	// its targets (how much of a stream Envoy reads at once). 0: Envoy's
	// default (1 MiB). Default 224 KiB, with TunnelUnsentLimit: see
	// DefaultSettings.
	TunnelBufferLimit uint32 `json:"tunnelBufferLimit"`
	// TunnelUnsentLimit is TCP_NOTSENT_LOWAT on tunnel sockets, both sides:
	// the unsent bytes the kernel queues per tunnel. Bytes queued there are
	// in front of every new stream's first frame; above this Envoy keeps
	// them in its own buffers, where its flow control sees them. It leaves
	// bytes in flight alone, so long-distance throughput is unchanged.
	// 0: the kernel's default (no limit). Default 32 KiB.
	TunnelUnsentLimit uint32 `json:"tunnelUnsentLimit"`
	// Secrets names the SDS secrets the generated TLS contexts reference.
	Secrets SecretNames `json:"secrets"`
}

// SecretNames are the SDS names of the tunnel TLS material.
type SecretNames struct {
	// TunnelCA validates tunnel peers on both sides.
	TunnelCA string `json:"tunnelCA"`
	// NodeCertificate is the node proxy's client certificate (DNS SAN = node name).
	NodeCertificate string `json:"nodeCertificate"`
	// APIServerCertificate is the apiserver proxy's serving certificate.
	APIServerCertificate string `json:"apiServerCertificate"`
}

// Pod routing modes.
const (
	PodRoutingAuto   = "auto"
	PodRoutingPerPod = "per-pod"
)

// DefaultSettings returns the documented defaults.
func DefaultSettings() Settings {
	return Settings{
		ClusterID:              "spoke-nodes",
		TenantID:               "spoke",
		TunnelPort:             18003,
		TunnelListenAddress:    "0.0.0.0",
		APIServerProxyName:     "spoke-apiserver-proxy",
		TunnelsPerEndpoint:     4,
		EgressSocketPath:       "/var/run/spoke/egress.sock",
		EgressSocketMode:       0o600,
		PodRouting:             PodRoutingAuto,
		ConnectTimeout:         Duration(2 * time.Second),
		RequestHeadersTimeout:  Duration(10 * time.Second),
		TunnelHandshakeTimeout: Duration(10 * time.Second),
		EgressMaxConnections:   10000,
		NodeMaxStreams:         1000,
		ServiceMaxStreams:      1000,
		KeepaliveInterval:      Duration(10 * time.Second),
		KeepaliveTimeout:       Duration(5 * time.Second),
		// The knee of the latency/throughput curve (make bench-curve,
		// examples/settings.yaml): Envoy's default buffers' throughput
		// within the noise, a quarter of their set-up p99 beside bulk.
		TunnelBufferLimit: 229376,
		TunnelUnsentLimit: 32768,
		// With Envoy's 256 MiB, one slowly read stream (a `logs -f` into a
		// slow terminal) could take a tunnel's whole connection window, and
		// new CONNECTs through that tunnel got no byte for 10 s
		// (e2e/TestSlowReadersDoNotStallNewStreams); 1 MiB cost no
		// measured throughput (796 / 811 MB/s on 1 / 16 streams).
		TunnelStreamWindow: 1 << 20,
		Secrets: SecretNames{
			TunnelCA:             "spoke-tunnel-ca",
			NodeCertificate:      "spoke-tunnel-node",
			APIServerCertificate: "spoke-tunnel-apiserver",
		},
	}
}

// LoadSettings reads a YAML or JSON settings file over the defaults. Unknown
// fields are errors, so a typo never silently falls back to a default.
func LoadSettings(path string) (Settings, error) {
	s := DefaultSettings()
	if path == "" {
		return s, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("read settings: %w", err)
	}
	if s, err = ApplySettings(s, raw); err != nil {
		return s, fmt.Errorf("settings file %s: %w", path, err)
	}
	return s, nil
}

// ApplySettings reads YAML or JSON settings over s and validates the result.
// Unknown fields are errors, so a typo never silently falls back to s.
func ApplySettings(s Settings, raw []byte) (Settings, error) {
	if err := yaml.UnmarshalStrict(raw, &s); err != nil {
		return s, fmt.Errorf("%w (examples/settings.yaml lists every field)", err)
	}
	return s, s.Validate()
}

// Validate reports the first setting that would produce config Envoy rejects
// or that would route wrongly.
func (s *Settings) Validate() error {
	for field, id := range map[string]string{"clusterID": s.ClusterID, "tenantID": s.TenantID} {
		if err := ValidTunnelID(id); err != nil {
			return fmt.Errorf("%s %q: %w", field, id, err)
		}
	}
	switch {
	case s.TunnelPort == 0 || s.TunnelPort > 65535:
		return fmt.Errorf("tunnelPort %d: must be 1-65535", s.TunnelPort)
	case s.APIServerProxyName == "":
		return fmt.Errorf("apiServerProxyName must be set")
	case s.TunnelsPerEndpoint == 0:
		return fmt.Errorf("tunnelsPerEndpoint must be at least 1")
	case !strings.HasPrefix(s.EgressSocketPath, "/"):
		return fmt.Errorf("egressSocketPath %q: must be an absolute path", s.EgressSocketPath)
	case s.EgressSocketMode > 0o777:
		return fmt.Errorf("egressSocketMode %o: must be a file mode such as 0600 (decimal 384)", s.EgressSocketMode)
	case s.EgressSocketMode&0o077 != 0:
		return fmt.Errorf("egressSocketMode %04o (decimal %d): gives group or others access to the CONNECT socket, through which any local process could reach every node; use 0600 (decimal 384) or 0400", s.EgressSocketMode, s.EgressSocketMode)
	case s.PodRouting != PodRoutingAuto && s.PodRouting != PodRoutingPerPod:
		return fmt.Errorf("podRouting %q: must be %q or %q", s.PodRouting, PodRoutingAuto, PodRoutingPerPod)
	case s.ConnectTimeout <= 0:
		return fmt.Errorf("connectTimeout must be positive")
	case s.RequestHeadersTimeout <= 0:
		return fmt.Errorf("requestHeadersTimeout must be positive")
	case s.EgressMaxConnections < 2 || s.EgressMaxConnections > math.MaxUint32:
		return fmt.Errorf("egressMaxConnections %d: must be 2-%d", s.EgressMaxConnections, uint32(math.MaxUint32))
	case s.NodeMaxStreams == 0 || uint64(s.NodeMaxStreams) >= s.EgressMaxConnections:
		return fmt.Errorf("nodeMaxStreams %d: must be at least 1 and below egressMaxConnections (%d), or one node could take every stream", s.NodeMaxStreams, s.EgressMaxConnections)
	case s.ServiceMaxStreams == 0 || uint64(s.ServiceMaxStreams) >= s.EgressMaxConnections:
		return fmt.Errorf("serviceMaxStreams %d: must be at least 1 and below egressMaxConnections (%d), or Services could take every stream", s.ServiceMaxStreams, s.EgressMaxConnections)
	case s.TunnelHandshakeTimeout <= 0:
		return fmt.Errorf("tunnelHandshakeTimeout must be positive")
	case s.KeepaliveInterval <= 0 || s.KeepaliveTimeout <= 0:
		return fmt.Errorf("keepaliveInterval and keepaliveTimeout must be positive")
	case !validWindow(s.TunnelStreamWindow) || !validWindow(s.TunnelConnectionWindow):
		return fmt.Errorf("tunnelStreamWindow %d, tunnelConnectionWindow %d: each must be 0 (Envoy's default) or %d-%d bytes (HTTP/2's window range, as Envoy accepts it)",
			s.TunnelStreamWindow, s.TunnelConnectionWindow, minHTTP2Window, maxHTTP2Window)
	case s.TunnelConnectionWindow != 0 && uint64(s.TunnelConnectionWindow) < connectionWindowStreams*uint64(s.effectiveBufferLimit()):
		return fmt.Errorf("tunnelConnectionWindow %d: must be 0 (Envoy's default) or at least %d x the tunnel buffer limit (%d): every stream of a tunnel shares that window, and small ones stall the tunnel (measured with Envoy 1.40: 1 MiB stalled new CONNECTs, 2 MiB delayed them by seconds)",
			s.TunnelConnectionWindow, connectionWindowStreams, connectionWindowStreams*uint64(s.effectiveBufferLimit()))
	case s.Secrets.TunnelCA == "" || s.Secrets.NodeCertificate == "" || s.Secrets.APIServerCertificate == "":
		return fmt.Errorf("secrets: every secret name must be set")
	}
	if _, err := netip.ParseAddr(s.TunnelListenAddress); err != nil {
		return fmt.Errorf("tunnelListenAddress %q: %w", s.TunnelListenAddress, err)
	}
	for _, raw := range s.ServiceCIDRs {
		if _, err := ParseServiceRange(raw); err != nil {
			return fmt.Errorf("serviceCIDRs: %w", err)
		}
	}
	for _, raw := range s.AllowPodAddresses {
		if _, err := netip.ParsePrefix(raw); err != nil {
			return fmt.Errorf("allowPodAddresses: %q is not a CIDR: %w", raw, err)
		}
	}
	for _, ep := range s.APIServerEndpoints {
		if _, err := ParseEndpoint(ep, s.TunnelPort); err != nil {
			return fmt.Errorf("apiServerEndpoints: %w", err)
		}
	}
	return nil
}

// connectionWindowStreams sizes the smallest connection window accepted, in
// buffer limits: 1 MiB (one default buffer) stalled tunnels, 2 MiB delayed
// CONNECTs by seconds, 4 and 16 MiB worked (make bench-datapath). The
// likely cause, not proven: unread data of streams whose readers are slow
// holds the window all streams share.
const connectionWindowStreams = 16

// envoyDefaultBufferLimit is Envoy's per_connection_buffer_limit_bytes default.
const envoyDefaultBufferLimit = 1 << 20

func (s Settings) effectiveBufferLimit() uint32 {
	if s.TunnelBufferLimit == 0 {
		return envoyDefaultBufferLimit
	}
	return s.TunnelBufferLimit
}

// The HTTP/2 window sizes Envoy accepts (RFC 9113 6.9.2 bounds them above;
// Envoy's Http2ProtocolOptions, below).
const (
	minHTTP2Window = 65535
	maxHTTP2Window = 2147483647
)

func validWindow(w uint32) bool { return w == 0 || w >= minHTTP2Window && w <= maxHTTP2Window }

// ValidTunnelID checks an id against the rc:// address grammar
// (rc://node:cluster:tenant@upstream:count): non-empty, no ':' '@' or '/'.
func ValidTunnelID(id string) error {
	if id == "" {
		return fmt.Errorf("must not be empty")
	}
	if i := strings.IndexAny(id, ":@/ "); i >= 0 {
		return fmt.Errorf("contains %q, which the reverse-tunnel address rc://node:cluster:tenant@... cannot carry", id[i])
	}
	return nil
}

// ParseEndpoint parses "IP" or "IP:port" ("[v6]:port" for IPv6).
func ParseEndpoint(s string, defaultPort uint32) (Endpoint, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return Endpoint{}, fmt.Errorf("endpoint %q: port 0", s)
		}
		return Endpoint{Addr: ap.Addr().Unmap(), Port: uint32(ap.Port())}, nil
	}
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: want IP or IP:port", s)
	}
	return Endpoint{Addr: addr.Unmap(), Port: defaultPort}, nil
}

// Duration is a time.Duration written as "2s" in settings files.
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Duration(d).String() + `"`), nil
}

// UnmarshalJSON reads a Go duration string such as "500ms".
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %s: %w", b, err)
	}
	*d = Duration(v)
	return nil
}

// String prints the duration as Go does ("750ms").
func (d Duration) String() string { return time.Duration(d).String() }

package status

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/metrics"
	"github.com/spokeproxy/spoke/translator"
)

// Refusal is one tunnel connection the apiserver proxy refused.
type Refusal struct {
	At time.Time `json:"at"`
	// Class is tls, identity or incomplete (see classify).
	Class  string `json:"class"`
	Reason string `json:"reason"`
	From   string `json:"from"` // the connection's source address
}

// Refusal classes, also the reason label of spoke_tunnel_refusals_total.
const (
	RefusedTLS        = "tls"        // the TLS handshake failed (untrusted, expired, no certificate)
	RefusedIdentity   = "identity"   // the handshake claimed another node, cluster or tenant than allowed
	RefusedIncomplete = "incomplete" // closed before the tunnel handshake finished (silent, too slow)
	RefusedMalformed  = "malformed"  // answered 400: not a tunnel handshake, or a tunnel header missing or wrong
)

// RefusalClasses are every class, each a series at zero from the start.
var RefusalClasses = []string{RefusedTLS, RefusedIdentity, RefusedIncomplete, RefusedMalformed}

// maxUnattributed bounds the refusals kept for sources no node owns: a
// scanner or flood must not grow the server's memory.
const maxUnattributed = 100

// HandshakeLog receives the gRPC access log of the apiserver proxy's tunnel
// handshake listener (one entry per tunnel connection, when it ends) and
// keeps each node's last refusal with its reason. Only the apiserver proxy
// beside this server may send it: it is served on the local socket only,
// and each stream's identity is checked.
type HandshakeLog struct {
	Metrics *metrics.Metrics
	Log     logrus.FieldLogger
	// NodeWithAddress names the node that owns ip, or "": a connection that
	// failed TLS carries no certificate name, only its source address.
	NodeWithAddress func(ip netip.Addr) string
	// IsNode says whether a name is a node of the cluster: a refusal naming
	// anything else is kept by source address, whose count is bounded, so
	// made-up certificate names cannot grow the server's memory.
	IsNode func(name string) bool

	mu           sync.Mutex
	byNode       map[string]Refusal
	unattributed map[string]Refusal // by source IP
}

// StreamAccessLogs implements the AccessLogService.
func (h *HandshakeLog) StreamAccessLogs(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	id, err := auth.Authenticate(stream.Context())
	if err != nil || id.Proxy.Role != translator.RoleAPIServer {
		return grpcstatus.Error(codes.PermissionDenied, "only the apiserver proxy beside this server sends its handshake log")
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&accesslogv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		if msg.GetIdentifier() != nil && msg.GetIdentifier().GetLogName() != translator.HandshakeLogName {
			continue
		}
		for _, e := range msg.GetTcpLogs().GetLogEntry() {
			h.observe(e)
		}
	}
}

// observe records e when it is a refusal.
func (h *HandshakeLog) observe(e *accesslogdatav3.TCPAccessLogEntry) {
	node, r, refused := h.classify(e)
	h.Log.WithFields(logrus.Fields{"node": node, "from": r.From, "refused": refused, "class": r.Class}).Debug("tunnel handshake log entry")
	if !refused {
		return
	}
	h.Metrics.TunnelRefusals.WithLabelValues(r.Class).Inc()
	h.mu.Lock()
	defer h.mu.Unlock()
	if node != "" && h.IsNode != nil && !h.IsNode(node) {
		node = ""
	}
	if node == "" {
		if h.unattributed == nil {
			h.unattributed = map[string]Refusal{}
		}
		source := addressIP(e.GetCommonProperties().GetDownstreamRemoteAddress()) // not the port: one entry per host
		if _, ok := h.unattributed[source]; !ok && len(h.unattributed) >= maxUnattributed {
			return // counted, not kept
		}
		h.unattributed[source] = r
		return
	}
	if h.byNode == nil {
		h.byNode = map[string]Refusal{}
	}
	if prev, ok := h.byNode[node]; !ok || prev.Reason != r.Reason {
		h.Log.WithFields(logrus.Fields{"node": node, "from": r.From, "class": r.Class}).Warn("tunnel refused: " + r.Reason)
	}
	h.byNode[node] = r
}

// classify says whose tunnel e was and why it was refused. The
// reverse_tunnel filter writes the node id it was offered and its verdict
// ("validation_failed" when refused, with 403) into dynamic metadata; a TLS
// failure happens before it runs. Envoy's entry names the peer certificate
// by subject only, and spoke's tunnel certificates carry the node as CN.
func (h *HandshakeLog) classify(e *accesslogdatav3.TCPAccessLogEntry) (node string, r Refusal, refused bool) {
	common := e.GetCommonProperties()
	r.At, r.From = common.GetStartTime().AsTime(), addressText(common.GetDownstreamRemoteAddress())
	verdict := common.GetMetadata().GetFilterMetadata()[translator.HandshakeMetadata].GetFields()
	result, claimed := verdict["validation_result"].GetStringValue(), verdict["node_id"].GetStringValue()
	certified := peerName(common.GetTlsProperties())
	switch {
	case strings.Contains(result, "fail") || result == "denied":
		r.Class, r.Reason = RefusedIdentity, "handshake refused (403): the tunnel claimed node "+quote(claimed)+
			" but its certificate names "+quote(certified)+" (or its cluster or tenant id is not this cluster's)"
	case result != "":
		return "", r, false // a tunnel that was accepted, and has now ended
	case common.GetDownstreamTransportFailureReason() != "":
		r.Class, r.Reason = RefusedTLS, "TLS handshake failed: "+common.GetDownstreamTransportFailureReason()+
			" (the node and this proxy do not trust each other's certificate: another tunnel CA, expired, or none)"
	default:
		r.Class, r.Reason = unfinished(e.GetConnectionProperties())
	}
	node = certified
	if node == "" && h.NodeWithAddress != nil {
		if ip, err := netip.ParseAddr(addressIP(common.GetDownstreamRemoteAddress())); err == nil {
			node = h.NodeWithAddress(ip.Unmap())
		}
	}
	return node, r, true
}

// Refusals returns the last refusal of each node, and those of sources no
// node owns under "?<source IP>".
func (h *HandshakeLog) Refusals() map[string]Refusal {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]Refusal, len(h.byNode)+len(h.unattributed))
	for n, r := range h.byNode {
		out[n] = r
	}
	for from, r := range h.unattributed {
		out["?"+from] = r
	}
	return out
}

// SortedRefusalKeys lists the keys of refusals, latest first.
func SortedRefusalKeys(refusals map[string]Refusal) []string {
	keys := make([]string, 0, len(refusals))
	for k := range refusals {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if !refusals[keys[i]].At.Equal(refusals[keys[j]].At) {
			return refusals[keys[i]].At.After(refusals[keys[j]].At)
		}
		return keys[i] < keys[j]
	})
	return keys
}

// peerName is the peer certificate's DNS SAN, else its CN.
func peerName(tls *accesslogdatav3.TLSProperties) string {
	peer := tls.GetPeerCertificateProperties()
	for _, san := range peer.GetSubjectAltName() {
		if dns := san.GetDns(); dns != "" {
			return dns
		}
	}
	for _, part := range strings.Split(peer.GetSubject(), ",") {
		if cn, ok := strings.CutPrefix(strings.TrimSpace(part), "CN="); ok {
			return cn
		}
	}
	return ""
}

func addressIP(a *corev3.Address) string { return a.GetSocketAddress().GetAddress() }

func addressText(a *corev3.Address) string {
	sa := a.GetSocketAddress()
	if sa == nil {
		return ""
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10))
}

// unfinished tells a handshake the filter answered without a verdict (400:
// Envoy counts the bytes of its answer) from one that never finished; the
// byte counts are those of the handshake's HTTP, inside TLS.
func unfinished(c *accesslogdatav3.ConnectionProperties) (class, reason string) {
	switch {
	case c.GetReceivedBytes() > 0 && c.GetSentBytes() > 0:
		return RefusedMalformed, "handshake request refused (400): not a tunnel handshake, or an x-envoy-reverse-tunnel header (node, cluster or tenant id, upstream cluster name) missing or not this cluster's"
	case c.GetReceivedBytes() > 0:
		return RefusedIncomplete, "closed before its tunnel handshake finished (part of the request sent, the rest not within tunnelHandshakeTimeout, or the peer gave up)"
	}
	return RefusedIncomplete, "closed before its tunnel handshake finished (nothing sent within tunnelHandshakeTimeout, or the peer gave up)"
}

// maxClaimShown bounds a claimed id in a refusal (the longest DNS name):
// a handshake may claim kilobytes.
const maxClaimShown = 253

func quote(s string) string {
	if s == "" {
		return "(none)"
	}
	if len(s) > maxClaimShown {
		return fmt.Sprintf("%q... (%d bytes, cut)", s[:maxClaimShown], len(s))
	}
	return strconv.Quote(s)
}

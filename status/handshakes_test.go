package status

import (
	"fmt"
	"net/netip"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spokeproxy/spoke/metrics"
	"github.com/spokeproxy/spoke/translator"
)

// entry is a handshake log entry as Envoy 1.40 sends it (field shapes seen
// in e2e/TestStatusShowsLastTunnelRefusalPerNode).
func entry(from, subject, verdict, claimed, tlsFailure string) *accesslogdatav3.TCPAccessLogEntry {
	common := &accesslogdatav3.AccessLogCommon{
		StartTime: timestamppb.Now(),
		DownstreamRemoteAddress: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: from, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40000},
		}}},
		DownstreamTransportFailureReason: tlsFailure,
	}
	if subject != "" {
		common.TlsProperties = &accesslogdatav3.TLSProperties{PeerCertificateProperties: &accesslogdatav3.TLSProperties_CertificateProperties{Subject: subject}}
	}
	if verdict != "" {
		md, _ := structpb.NewStruct(map[string]any{"validation_result": verdict, "node_id": claimed})
		common.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{translator.HandshakeMetadata: md}}
	}
	return &accesslogdatav3.TCPAccessLogEntry{CommonProperties: common}
}

// TestHandshakeLogClassifiesAndFilesRefusals: accepted tunnels are not
// refusals; a 403 is filed under the certificate's node, a TLS failure
// (no certificate) under the node owning the source address or under the
// address; sources no node owns are kept up to a bound, and all counted.
func TestHandshakeLogClassifiesAndFilesRefusals(t *testing.T) {
	m := metrics.New()
	owners := map[netip.Addr]string{netip.MustParseAddr("10.0.0.7"): "node-c"}
	nodes := map[string]bool{"node-a": true, "node-c": true}
	h := &HandshakeLog{Metrics: m, Log: logrus.New(), NodeWithAddress: func(ip netip.Addr) string { return owners[ip] },
		IsNode: func(n string) bool { return nodes[n] }}
	h.observe(entry("10.0.0.5", "CN=node-a", "allowed", "node-a", ""))
	h.observe(entry("10.0.0.5", "CN=node-a,O=spoke", "validation_failed", "node-b", ""))
	h.observe(entry("10.0.0.7", "", "", "", "TLS_error:CERTIFICATE_VERIFY_FAILED"))
	h.observe(entry("192.0.2.9", "", "", "", ""))
	got := h.Refusals()
	if _, ok := got["node-a"]; !ok || got["node-a"].Class != RefusedIdentity {
		t.Errorf("the 403 should be filed under node-a (its certificate): %+v", got)
	}
	if got["node-c"].Class != RefusedTLS {
		t.Errorf("the TLS failure from node-c's address should be filed under node-c: %+v", got)
	}
	if got["?192.0.2.9"].Class != RefusedIncomplete {
		t.Errorf("a silent source no node owns should be kept under its address: %+v", got)
	}
	if len(got) != 3 {
		t.Errorf("an accepted tunnel was taken for a refusal: %+v", got)
	}
	for i := 0; i < 2*maxUnattributed; i++ { // silent sources, and made-up certificate names
		h.observe(entry(fmt.Sprintf("198.51.%d.%d", i/250, i%250), "", "", "", ""))
		h.observe(entry(fmt.Sprintf("203.0.%d.%d", i/250, i%250), fmt.Sprintf("CN=fake-%d", i), "validation_failed", "x", ""))
	}
	if n := len(h.Refusals()); n > maxUnattributed+2 {
		t.Errorf("%d refusals kept after a flood from %d addresses and names; want at most %d", n, 4*maxUnattributed, maxUnattributed+2)
	}
	if c := testutil.ToFloat64(m.TunnelRefusals.WithLabelValues(RefusedIncomplete)); c != float64(1+2*maxUnattributed) {
		t.Errorf("incomplete refusals counted %v, want %d", c, 1+2*maxUnattributed)
	}
}

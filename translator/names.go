// Package translator turns the model into Envoy resources for the two spoke
// roles. Everything here is a pure function of (model.Cluster, model.Settings):
// the same input always gives the same resources in the same order.
//
// Only translator builds Envoy protos. It imports no gRPC, no client-go and
// nothing of spoke's runtime (sources, xds, auth, pki, status): it can run
// offline (`spoke translate`) and be tested with golden files alone.
package translator

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// Resource names. They are stable across versions: Envoy keys state (and the
// reverse-tunnel listener its tunnels) by name.
const (
	// apiserver proxy
	EgressListener     = "apiserver-egress"
	EgressRoute        = "apiserver-egress"
	HandshakeListener  = "tunnel-handshake"
	ServiceTunnels     = "services" // the cluster of Service streams; each node has its own (NodeTunnels)
	routeMetadataSpace = "spoke"
	routeMetadataHost  = "host_id"

	// node proxy
	NodeTunnelRoute   = "node-tunnel"
	APIServerProxies  = "apiserver-proxies" // the endpoints (EDS) and stat name of the clusters tunnels are dialed through (DialCluster)
	KubeletCluster    = "kubelet"
	OriginalDstTarget = "connect-original-dst"
)

// AdminAddress is where every spoke Envoy's admin listens (the bootstraps
// bind it there, on a port chosen at start): a node proxy never routes a
// CONNECT to it, whatever a pod or setting claims.
const AdminAddress = "127.0.0.1"

// XDSCluster is the bootstrap cluster that reaches the spoke server; the
// apiserver proxy also sends its tunnel handshake log through it.
const XDSCluster = "spoke-xds"

// HandshakeLogName names the gRPC access log of the tunnel handshake
// listener, and HandshakeMetadata the namespace where the reverse_tunnel
// filter writes the node id a handshake claimed and whether it was allowed.
const (
	HandshakeLogName  = "spoke-tunnel-handshakes"
	HandshakeMetadata = "envoy.filters.network.reverse_tunnel"
)

// HostIDFormat is the reverse_connection cluster's host_id_format: the node
// (or, for Services, the tunnel cluster id) chosen by the matched route. Route
// metadata is used because request_headers_to_add runs after host selection.
const HostIDFormat = "%METADATA(ROUTE:" + routeMetadataSpace + ":" + routeMetadataHost + ")%"

// NodeIDFromCertificate binds a tunnel handshake's claimed node id to the single
// DNS SAN of the verified client certificate.
const NodeIDFromCertificate = "%DOWNSTREAM_PEER_DNS_SAN%"

// NodeTunnels names the apiserver proxy's cluster of the streams to node:
// one per node, so that each node has its own stream cap (nodeMaxStreams).
func NodeTunnels(node string) string { return "node/" + node }

// altStatName is a cluster's name in Envoy's stats when it holds dots
// (which separate stat name parts there, and node names may hold): '_'
// instead, which DNS names do not allow, so two nodes never share one.
func altStatName(cluster string) string {
	if !strings.Contains(cluster, ".") {
		return "" // the name itself
	}
	return strings.ReplaceAll(cluster, ".", "_")
}

// DialCluster names the node proxy's cluster that tunnel n (1-based) of
// each worker is dialed through: one per tunnel, so that Envoy counts each
// tunnel's failed dials on its own (reverseTunnelListeners).
func DialCluster(n int) string { return fmt.Sprintf("%s/%d", APIServerProxies, n) }

// reverseTunnelListenerName names the node proxy's rc:// listener after its
// address: Envoy cannot change a listener's address in place, so a new address
// must arrive as a new listener.
func reverseTunnelListenerName(address string) string {
	sum := sha256.Sum256([]byte(address))
	return "reverse-tunnel-" + hex.EncodeToString(sum[:])[:10]
}

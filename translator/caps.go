package translator

import (
	"fmt"
	"math"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/spokeproxy/spoke/translator/model"
)

// Stream caps. Envoy's default circuit breakers (1,024 requests, pending
// requests and connections per cluster) stopped every CONNECT of the
// apiserver proxy once 1,024 streams were open anywhere, so every cluster of
// both roles gets thresholds of its own:
//
//   - apiserver proxy, reverse-tunnels: node targets (DEFAULT priority) may
//     hold egressMaxConnections - serviceMaxStreams streams, Services (HIGH
//     priority, a budget of their own) serviceMaxStreams, so streams held to
//     nodes never starve webhooks and aggregated APIs. Beyond a budget Envoy
//     refuses at once: 503, response flag UO, a body naming the cap.
//   - node proxy, kubelet and connect-original-dst: thresholds that every
//     apiserver proxy's budgets together cannot reach. A CONNECT the node
//     terminates is a TCP stream, for which Envoy enforces no request cap
//     (measured with Envoy 1.40: 21 streams beside max_requests 20 all got
//     200) and queues, with no deadline, a stream beyond the connection cap
//     when its target's pool already has connections: a cap there would
//     hang the apiserver's dial instead of refusing it.
//
// No route retries, so no retry may run (max_retries 0).

// CapStatus is what a CONNECT gets when a stream cap is reached.
const CapStatus = 503

// tunnelPoolMaxConnections bounds the tunnels the apiserver proxy's pools
// use: it accepts at most 50,000 connections (spoke bootstrap
// --max-connections, tunnels included), so this is never the limit.
const tunnelPoolMaxConnections = 50000

// nodeStreamBudget is how many streams the apiserver proxy carries to nodes
// (their kubelets and pods) at once.
func nodeStreamBudget(s model.Settings) uint32 {
	return uint32(s.EgressMaxConnections) - s.ServiceMaxStreams
}

// reverseTunnelCaps splits the apiserver proxy's streams into the nodes'
// budget (DEFAULT priority) and the Services' (HIGH).
func reverseTunnelCaps(s model.Settings) *clusterv3.CircuitBreakers {
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{
		streamThresholds(corev3.RoutingPriority_DEFAULT, nodeStreamBudget(s), tunnelPoolMaxConnections),
		streamThresholds(corev3.RoutingPriority_HIGH, s.ServiceMaxStreams, tunnelPoolMaxConnections),
	}}
}

// nodeTargetCaps lets a node proxy cluster carry everything the apiserver
// proxies may send it: each of them at most egressMaxConnections streams.
// Each stream is a TCP connection of its own.
func nodeTargetCaps(c *model.Cluster, s model.Settings) *clusterv3.CircuitBreakers {
	streams := s.EgressMaxConnections * uint64(max(1, len(c.APIServerEndpoints)))
	limit := uint32(min(streams, math.MaxUint32))
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{
		streamThresholds(corev3.RoutingPriority_DEFAULT, limit, limit),
	}}
}

func streamThresholds(p corev3.RoutingPriority, streams, connections uint32) *clusterv3.CircuitBreakers_Thresholds {
	return &clusterv3.CircuitBreakers_Thresholds{
		Priority:           p,
		MaxRequests:        wrapperspb.UInt32(streams),
		MaxPendingRequests: wrapperspb.UInt32(streams),
		MaxConnections:     wrapperspb.UInt32(connections),
		MaxRetries:         wrapperspb.UInt32(0),
		TrackRemaining:     true, // remaining_rq in the stats: how close each budget is
	}
}

// capReply answers a CONNECT refused by a stream cap (UO) with CapStatus
// and a body naming the cap.
func capReply(body string) *hcmv3.ResponseMapper {
	return &hcmv3.ResponseMapper{
		Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{
			ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: []string{"UO"}},
		}},
		StatusCode: wrapperspb.UInt32(CapStatus),
		Body:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: body}},
	}
}

// apiServerCapReply says the apiserver proxy is at one of its budgets.
func apiServerCapReply(s model.Settings) *hcmv3.ResponseMapper {
	return capReply(fmt.Sprintf("spoke: the apiserver proxy carries its cap of streams: %d to nodes (egressMaxConnections - serviceMaxStreams) or %d to Services (serviceMaxStreams); see docs/operations.md\n",
		nodeStreamBudget(s), s.ServiceMaxStreams))
}

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
//   - apiserver proxy: each node's cluster (node/<name>) may hold
//     nodeMaxStreams streams, the Services' cluster serviceMaxStreams, and
//     the egress listener egressMaxConnections in all. Streams held to one
//     node never stop other nodes nor Services. Beyond a cap Envoy refuses
//     at once: 503, response flag UO, a body naming the cap. A cluster per
//     node because Envoy 1.40 has no per-host stream cap (per-host
//     thresholds cap connections only, and the streams of a node share its
//     HTTP/2 tunnels).
//   - node proxy, kubelet and connect-original-dst: thresholds that every
//     apiserver proxy's cap for this node together cannot reach. A CONNECT
//     the node terminates is a TCP stream, for which Envoy enforces no
//     request cap (measured with Envoy 1.40: 21 streams beside max_requests
//     20 all got 200) and queues, with no deadline, a stream beyond the
//     connection cap when its target's pool already has connections: a cap
//     there would hang the apiserver's dial instead of refusing it.
//
// No route retries, so no retry may run (max_retries 0).

// CapStatus is what a CONNECT gets when a stream cap is reached.
const CapStatus = 503

// tunnelPoolMaxConnections bounds the tunnels the apiserver proxy's pools
// use: it accepts at most 50,000 connections (spoke bootstrap
// --max-connections, tunnels included), so this is never the limit.
const tunnelPoolMaxConnections = 50000

// tunnelCaps holds the streams of one apiserver proxy cluster to streams.
func tunnelCaps(streams uint32) *clusterv3.CircuitBreakers {
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{
		streamThresholds(streams, tunnelPoolMaxConnections),
	}}
}

// nodeTargetCaps lets a node proxy cluster carry everything the apiserver
// proxies may send this node: each of them at most nodeMaxStreams streams.
// Each stream is a TCP connection of its own.
func nodeTargetCaps(c *model.Cluster, s model.Settings) *clusterv3.CircuitBreakers {
	streams := uint64(s.NodeMaxStreams) * uint64(max(1, len(c.APIServerEndpoints)))
	limit := uint32(min(streams, math.MaxUint32))
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{
		streamThresholds(limit, limit),
	}}
}

func streamThresholds(streams, connections uint32) *clusterv3.CircuitBreakers_Thresholds {
	return &clusterv3.CircuitBreakers_Thresholds{
		Priority:           corev3.RoutingPriority_DEFAULT,
		MaxRequests:        wrapperspb.UInt32(streams),
		MaxPendingRequests: wrapperspb.UInt32(streams),
		MaxConnections:     wrapperspb.UInt32(connections),
		// Only streams that reached no target are retried (nodeRetry): as many may
		// be retried at once as may be open.
		MaxRetries:     wrapperspb.UInt32(streams),
		TrackRemaining: true, // remaining_rq in the stats: how close each cap is
	}
}

// apiServerCapReply answers a CONNECT refused by a stream cap (UO) with
// CapStatus and a body naming the cap: the cluster it was for (node/<name>
// or services) and the caps' sizes.
func apiServerCapReply(s model.Settings) *hcmv3.ResponseMapper {
	body := fmt.Sprintf("spoke: %%UPSTREAM_CLUSTER_RAW%% carries its cap of streams at this apiserver proxy (nodeMaxStreams %d for a node, serviceMaxStreams %d for Services); see docs/operations.md\n",
		s.NodeMaxStreams, s.ServiceMaxStreams)
	return &hcmv3.ResponseMapper{
		Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{
			ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: []string{"UO"}},
		}},
		StatusCode: wrapperspb.UInt32(CapStatus),
		BodyFormatOverride: &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_TextFormatSource{
			TextFormatSource: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: body}},
		}},
	}
}

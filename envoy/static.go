package envoy

import (
	"fmt"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	downstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/bootstrap/reverse_tunnel/downstream_socket_interface/v3"
	upstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/bootstrap/reverse_tunnel/upstream_socket_interface/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/spokeproxy/spoke/translator"
)

// MaxTunnelsPerNode caps the tunnels one node may hold on each worker of an
// apiserver proxy (the handshake filter enables the cap). A node proxy keeps
// tunnelsPerEndpoint (4) per worker of its own; 64 leaves room for large
// nodes and still stops one node from exhausting the apiserver proxy. Envoy
// counts a tunnel once its handshake is answered, so a burst of handshakes
// read together can go past the cap; a node at the cap gets no more
// (e2e/TestTunnelsPerNodeAreCapped, docs/operations.md).
const MaxTunnelsPerNode = 64

// Re-dialing tunnels: the node proxy re-checks every TunnelMaintainInterval
// (plus a little jitter) for apiserver proxies it holds too few tunnels to,
// and retries each tunnel's failed dials on a 1 s, 2 s, 4 s ... schedule
// capped at TunnelMaxReconnectBackoff (each tunnel has an rc:// listener of
// its own, which is where Envoy counts failures: translator's
// reverseTunnelListeners). Measured (e2e, 2 cores):
//
//   - a killed apiserver proxy started again at once: back after p50 0.47 s,
//     p99 1.29 s over 20 restarts (TestRestartedApiserverProxyReachesNodesQuickly);
//     after a failed re-dial round, 1.0-1.1 s after the new proxy started
//     (TestApiserverProxyBackSoonAfterAFailedRedial; 9.3 s when one listener
//     held the 4 tunnels).
//   - a dead endpoint: tried at 0, ~1.5, 4.5, 9, 18 s, then every ~11.5 s:
//     22-24 attempts a minute per node once backed off (about 2,000 a second
//     from 5,000 nodes); 84 a minute with a 2 s cap, 7 with 30 s
//     (TestDeadEndpointRedialsBackOff). After an outage, tunnels come back
//     within the cap (plus the interval) of the proxy's return.
//
// 10 s bounds the fleet's rate at a dead endpoint to under a third of what
// 2 s drew, and keeps a crashed proxy's nodes back within ~12 s of its return.
const (
	TunnelMaintainInterval    = 1500 * time.Millisecond
	TunnelMaxReconnectBackoff = 10 * time.Second
)

// TunnelHandshakeResponseTimeout is how long a node proxy waits for the
// apiserver proxy's answer to a tunnel handshake once its connection is open
// (Envoy's default, set here so tests and docs name one value). It is longer
// than the apiserver proxy's own bound on a handshake (tunnelHandshakeTimeout,
// 10 s by default), so a slow but working apiserver proxy decides. Measured
// (e2e, TestFrozenApiserverProxyDegradesToSlower): against an apiserver proxy
// that does not run at all, each tunnel tries once per ~16 s (this timeout,
// then Envoy's back-off), and a handshake left waiting when it runs again is
// answered at once; at 1% of a core either proxy still handshakes in ~1 s.
const TunnelHandshakeResponseTimeout = 15 * time.Second

// ReverseTunnelExtension returns the bootstrap extension a role needs: it
// cannot arrive over xDS (docs/envoy.md).
func ReverseTunnelExtension(role translator.Role) *corev3.TypedExtensionConfig {
	if role == translator.RoleNode {
		return &corev3.TypedExtensionConfig{
			Name: "envoy.bootstrap.reverse_tunnel.downstream_socket_interface",
			TypedConfig: mustAny(&downstreamv3.DownstreamReverseConnectionSocketInterface{
				StatPrefix:          "reverse_tunnel_initiator",
				EnableDetailedStats: true,
				MaintainInterval:    durationpb.New(TunnelMaintainInterval),
				MaxReconnectBackoff: durationpb.New(TunnelMaxReconnectBackoff),
				HttpHandshake: &downstreamv3.DownstreamReverseConnectionSocketInterface_HttpHandshakeConfig{
					HandshakeTimeout: durationpb.New(TunnelHandshakeResponseTimeout),
				},
			}),
		}
	}
	return &corev3.TypedExtensionConfig{
		Name: "envoy.bootstrap.reverse_tunnel.upstream_socket_interface",
		TypedConfig: mustAny(&upstreamv3.UpstreamReverseConnectionSocketInterface{
			StatPrefix:            "reverse_tunnel_responder",
			MaxConnectionsPerNode: MaxTunnelsPerNode,
			EnableDetailedStats:   true,
		}),
	}
}

// StaticBootstrap turns translated resources into a self-contained bootstrap
// with no xDS server: RDS becomes inline route configs, EDS becomes load
// assignments and SDS references point at the given static secrets. Used to
// have a real Envoy load (or run) exactly what the translator produced.
func StaticBootstrap(role translator.Role, nodeID string, res translator.Resources, secrets []*tlsv3.Secret, adminPort uint32) (*bootstrapv3.Bootstrap, error) {
	routes := map[string]*routev3.RouteConfiguration{}
	for _, rc := range res.Routes {
		routes[rc.Name] = rc
	}
	endpoints := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, e := range res.Endpoints {
		endpoints[e.ClusterName] = e
	}
	b := &bootstrapv3.Bootstrap{
		Node:                &corev3.Node{Id: nodeID, Cluster: translator.ServiceCluster(role)},
		BootstrapExtensions: []*corev3.TypedExtensionConfig{ReverseTunnelExtension(role)},
		StaticResources:     &bootstrapv3.Bootstrap_StaticResources{Secrets: secrets},
		OverloadManager:     OverloadManager(0, DefaultMaxHeap(role)),
		DeferredStatOptions: deferredStats(role),
		Admin: &bootstrapv3.Admin{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: translator.AdminAddress, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: adminPort},
		}}}},
	}
	for _, l := range res.Listeners {
		l, err := inlineRoutes(proto.Clone(l).(*listenerv3.Listener), routes)
		if err != nil {
			return nil, err
		}
		if err := staticSecrets(l.FilterChains[0].TransportSocket); err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		b.StaticResources.Listeners = append(b.StaticResources.Listeners, l)
	}
	for _, c := range res.Clusters {
		c := proto.Clone(c).(*clusterv3.Cluster)
		if c.GetType() == clusterv3.Cluster_EDS {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
			c.LoadAssignment = endpoints[translator.EDSServiceName(c)]
			c.EdsClusterConfig = nil
		}
		if err := staticSecrets(c.TransportSocket); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		b.StaticResources.Clusters = append(b.StaticResources.Clusters, c)
	}
	if role == translator.RoleAPIServer {
		b.StaticResources.Clusters = append(b.StaticResources.Clusters, noXDSServer())
	}
	return b, nil
}

// noXDSServer stands in for the xDS cluster, with no endpoint: the
// handshake listener's gRPC access log names it, and without a server its
// entries are dropped.
func noXDSServer() *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 XDSCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment:       &endpointv3.ClusterLoadAssignment{ClusterName: XDSCluster},
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(http2Only(nil))}
	return c
}

func inlineRoutes(l *listenerv3.Listener, routes map[string]*routev3.RouteConfiguration) (*listenerv3.Listener, error) {
	for _, fc := range l.FilterChains {
		for _, f := range fc.Filters {
			hcm := new(hcmv3.HttpConnectionManager)
			if !f.GetTypedConfig().MessageIs(hcm) {
				continue
			}
			if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
				return nil, err
			}
			name := hcm.GetRds().GetRouteConfigName()
			rc, ok := routes[name]
			if !ok {
				return nil, fmt.Errorf("listener %s: route config %q missing", l.Name, name)
			}
			hcm.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc}
			f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}
		}
	}
	return l, nil
}

// staticSecrets drops the ADS config source from every SDS reference, which
// makes Envoy look the name up among the bootstrap's static secrets.
func staticSecrets(ts *corev3.TransportSocket) error {
	if ts == nil {
		return nil
	}
	msg, common, err := translator.UnpackTLS(ts)
	if err != nil {
		return err
	}
	for _, s := range common.TlsCertificateSdsSecretConfigs {
		s.SdsConfig = nil
	}
	if s := common.GetValidationContextSdsSecretConfig(); s != nil {
		s.SdsConfig = nil
	}
	if s := common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); s != nil {
		s.SdsConfig = nil
	}
	ts.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(msg)}
	return nil
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic("envoy: marshal " + string(proto.MessageName(m)) + ": " + err.Error())
	}
	return a
}

package envoy

import (
	"fmt"
	"net"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/spokeproxy/spoke/translator"
)

// XDSCluster is the bootstrap cluster that reaches the spoke server.
const XDSCluster = "spoke-xds"

// BootstrapOptions describe one Envoy's static bootstrap.
type BootstrapOptions struct {
	Role translator.Role
	// NodeID is the node name for node proxies; any stable id for apiserver proxies.
	NodeID string
	// XDSAddress is the spoke server's gRPC address, host:port (host may be a DNS name).
	XDSAddress string
	// AdminPort is the admin API port; admin listens on 127.0.0.1 only.
	AdminPort uint32
	// Delta selects incremental xDS (DELTA_GRPC) instead of state-of-the-world.
	Delta bool
	// MaxDownstreamConnections caps accepted connections (overload manager).
	MaxDownstreamConnections uint64
}

// Bootstrap returns the static bootstrap of a role: node identity, ADS to the
// spoke server, the role's reverse-tunnel extension (it cannot come over xDS),
// admin on localhost, and a connection cap. Everything else comes over ADS.
func Bootstrap(o BootstrapOptions) (*bootstrapv3.Bootstrap, error) {
	if o.NodeID == "" {
		return nil, fmt.Errorf("node id is empty: for a node proxy pass the node name (--node-name, e.g. from the downward API spec.nodeName)")
	}
	host, portText, err := net.SplitHostPort(o.XDSAddress)
	if err != nil {
		return nil, fmt.Errorf("xds address %q: want host:port: %w", o.XDSAddress, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("xds address %q: bad port", o.XDSAddress)
	}
	apiType := corev3.ApiConfigSource_GRPC
	if o.Delta {
		apiType = corev3.ApiConfigSource_DELTA_GRPC
	}
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	return &bootstrapv3.Bootstrap{
		Node:                &corev3.Node{Id: o.NodeID, Cluster: translator.ServiceCluster(o.Role)},
		BootstrapExtensions: []*corev3.TypedExtensionConfig{ReverseTunnelExtension(o.Role)},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:                   apiType,
				TransportApiVersion:       corev3.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
				}}},
			},
			LdsConfig: ads,
			CdsConfig: ads,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{xdsCluster(host, uint32(port))}},
		Admin: &bootstrapv3.Admin{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: o.AdminPort},
		}}}},
		OverloadManager: connectionCap(o.MaxDownstreamConnections),
	}, nil
}

// xdsCluster reaches the server over HTTP/2 with keepalive, so a dead server
// is noticed and Envoy reconnects (keeping its last config meanwhile).
func xdsCluster(host string, port uint32) *clusterv3.Cluster {
	protocol := &httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{
				ConnectionKeepalive: &corev3.KeepaliveSettings{Interval: durationpb.New(15 * time.Second), Timeout: durationpb.New(5 * time.Second)},
			}},
		}},
	}
	return &clusterv3.Cluster{
		Name:                 XDSCluster,
		ConnectTimeout:       durationpb.New(2 * time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(protocol),
		},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: XDSCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
					}}},
				}},
			}}}},
		},
	}
}

func connectionCap(max uint64) *overloadv3.OverloadManager {
	if max == 0 {
		max = 50000
	}
	return &overloadv3.OverloadManager{ResourceMonitors: []*overloadv3.ResourceMonitor{{
		Name: "envoy.resource_monitors.global_downstream_max_connections",
		ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: mustAny(
			&connlimitv3.DownstreamConnectionsConfig{MaxActiveDownstreamConnections: int64(max)},
		)},
	}}}
}

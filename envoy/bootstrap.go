package envoy

import (
	"cmp"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	fixedheapv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/fixed_heap/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"sigs.k8s.io/yaml"

	"github.com/spokeproxy/spoke/translator"
)

// XDSCluster is the bootstrap cluster that reaches the spoke server.
const XDSCluster = translator.XDSCluster

// BootstrapOptions describe one Envoy's static bootstrap.
type BootstrapOptions struct {
	Role translator.Role
	// NodeID is the node name for node proxies; any stable id for apiserver proxies.
	NodeID string
	// XDSAddresses are the gRPC addresses of the spoke server replicas,
	// host:port, for node proxies (over TLS unless Insecure). A host may be a
	// DNS name; every address it resolves to is a replica (a headless
	// Service). The ADS stream goes to one of them, and to another when it
	// breaks: the replicas serve identical versions for identical input.
	XDSAddresses []string
	// XDSSocket is the server's Unix socket, for the apiserver proxy (the
	// socket's file mode is its credential); it replaces XDSAddresses.
	XDSSocket string
	// TLS authenticates a node proxy to the server and the server to it.
	TLS *XDSClientTLS
	// Insecure connects to XDSAddresses in plaintext (spoke serve --insecure-xds).
	Insecure bool
	// AdminPort is the admin API port; admin listens on 127.0.0.1 only.
	AdminPort uint32
	// Delta selects incremental xDS (DELTA_GRPC) instead of state-of-the-world.
	Delta bool
	// MaxDownstreamConnections caps accepted connections (overload manager).
	MaxDownstreamConnections uint64
	// MaxHeapBytes is the overload manager's heap limit; 0: DefaultMaxHeap.
	MaxHeapBytes uint64
}

// XDSClientTLS is how a node proxy reaches the server over TLS.
type XDSClientTLS struct {
	// SDSDir holds the file-based SDS resources naming the client
	// certificate files and the server CA file (see WriteSDSFiles); Envoy
	// watches them and those files, so a kubelet rotation is picked up
	// without restart.
	SDSDir string
	// ServerName must be a DNS SAN of the server's certificate.
	ServerName string
}

// The file-based SDS secrets of the bootstrap's xDS cluster, one per file
// (Envoy's file SDS takes exactly one secret per file): the client
// certificate and the CA that signs the server's certificate.
const (
	ClientCertificateName = "spoke-xds-client"
	ServerCAName          = "spoke-xds-server-ca"
	ClientSDSFile         = "xds-client-sds.yaml"
	ServerCASDSFile       = "xds-server-ca-sds.yaml"
)

// Bootstrap returns the static bootstrap of a role: node identity, ADS to the
// spoke server (TLS with a rotating client certificate for node proxies, a
// Unix socket for the apiserver proxy), the role's reverse-tunnel extension
// (it cannot come over xDS), admin on localhost, and a connection cap.
// Everything else comes over ADS.
func Bootstrap(o BootstrapOptions) (*bootstrapv3.Bootstrap, error) {
	if o.NodeID == "" {
		return nil, fmt.Errorf("node id is empty: for a node proxy pass the node name (--node-name, e.g. from the downward API spec.nodeName)")
	}
	xds, err := xdsCluster(o)
	if err != nil {
		return nil, err
	}
	apiType := corev3.ApiConfigSource_GRPC
	if o.Delta {
		apiType = corev3.ApiConfigSource_DELTA_GRPC
	}
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	b := &bootstrapv3.Bootstrap{
		Node:                &corev3.Node{Id: o.NodeID, Cluster: translator.ServiceCluster(o.Role)},
		BootstrapExtensions: []*corev3.TypedExtensionConfig{ReverseTunnelExtension(o.Role)},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:                   apiType,
				TransportApiVersion:       corev3.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster, RetryPolicy: xdsRetry()},
				}}},
			},
			LdsConfig: ads,
			CdsConfig: ads,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{xds}},
		Admin: &bootstrapv3.Admin{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: translator.AdminAddress, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: o.AdminPort},
		}}}},
		OverloadManager: OverloadManager(o.MaxDownstreamConnections, cmp.Or(o.MaxHeapBytes, DefaultMaxHeap(o.Role))),
	}
	b.DeferredStatOptions = deferredStats(o.Role)
	return b, nil
}

// deferredStats makes the apiserver proxy create a cluster's traffic stats
// at its first stream: it has a cluster per node, most of which never carry
// one, and their stats would otherwise be much of its memory per node
// (make bench-config).
func deferredStats(role translator.Role) *bootstrapv3.Bootstrap_DeferredStatOptions {
	if role != translator.RoleAPIServer {
		return nil
	}
	return &bootstrapv3.Bootstrap_DeferredStatOptions{EnableDeferredCreationStats: true}
}

// Re-connecting to the spoke server: Envoy's default back-off (500 ms
// doubling to 30 s) left node proxies up to 30 s without a server that had
// long come back. Capped at 2 s, a restarted server has every Envoy back
// within about that; attempts against a server that is down cost a refused
// TCP connection each.
const (
	xdsRetryBase = 250 * time.Millisecond
	xdsRetryMax  = 2 * time.Second
)

func xdsRetry() *corev3.RetryPolicy {
	return &corev3.RetryPolicy{RetryBackOff: &corev3.BackoffStrategy{
		BaseInterval: durationpb.New(xdsRetryBase), MaxInterval: durationpb.New(xdsRetryMax),
	}}
}

// xdsCluster reaches the server over HTTP/2 with keepalive, so a dead server
// is noticed and Envoy reconnects (keeping its last config meanwhile).
func xdsCluster(o BootstrapOptions) (*clusterv3.Cluster, error) {
	addresses, dnsResolved, err := xdsAddresses(o)
	if err != nil {
		return nil, err
	}
	var endpoints []*endpointv3.LbEndpoint
	for _, a := range addresses {
		endpoints = append(endpoints, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: a}}})
	}
	protocol := http2Only(&corev3.Http2ProtocolOptions{
		ConnectionKeepalive: &corev3.KeepaliveSettings{Interval: durationpb.New(15 * time.Second), Timeout: durationpb.New(5 * time.Second)},
	})
	discovery := clusterv3.Cluster_STATIC
	if dnsResolved {
		discovery = clusterv3.Cluster_STRICT_DNS
	}
	c := &clusterv3.Cluster{
		Name:                 XDSCluster,
		ConnectTimeout:       durationpb.New(2 * time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: discovery},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(protocol),
		},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: XDSCluster,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: endpoints}},
		},
	}
	if o.TLS != nil {
		c.TransportSocket = &corev3.TransportSocket{
			Name:       "envoy.transport_sockets.tls",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(xdsClientTLS(*o.TLS))},
		}
	}
	return c, nil
}

// http2Only makes a cluster speak HTTP/2 (gRPC) with options o.
func http2Only(o *corev3.Http2ProtocolOptions) *httpv3.HttpProtocolOptions {
	if o == nil {
		o = &corev3.Http2ProtocolOptions{}
	}
	return &httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: o},
		}},
	}
}

// xdsAddresses are the Unix socket (apiserver proxy) or the host:port of
// each replica (node proxy: TLS required unless Insecure); dnsResolved when
// a host is a name.
func xdsAddresses(o BootstrapOptions) (addresses []*corev3.Address, dnsResolved bool, err error) {
	if o.XDSSocket != "" {
		if o.TLS != nil {
			return nil, false, fmt.Errorf("the xDS socket needs no TLS: the socket's file mode is the credential")
		}
		return []*corev3.Address{{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: o.XDSSocket}}}}, false, nil
	}
	if o.TLS == nil && !o.Insecure {
		return nil, false, fmt.Errorf("xDS over TCP needs TLS (a client certificate and the server's CA), or the explicit insecure mode of a development server")
	}
	if len(o.XDSAddresses) == 0 {
		return nil, false, fmt.Errorf("no xds address: give the host:port of each spoke server replica (or one DNS name for all)")
	}
	for _, raw := range o.XDSAddresses {
		host, portText, err := net.SplitHostPort(raw)
		if err != nil {
			return nil, false, fmt.Errorf("xds address %q: want host:port: %w", raw, err)
		}
		port, err := strconv.ParseUint(portText, 10, 16)
		if err != nil || port == 0 {
			return nil, false, fmt.Errorf("xds address %q: bad port", raw)
		}
		addresses = append(addresses, &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
		}}})
		dnsResolved = dnsResolved || net.ParseIP(host) == nil
	}
	return addresses, dnsResolved, nil
}

// xdsClientTLS presents the client certificate and trusts the server CA,
// both from file-based SDS (re-read when the files change), and checks the
// server's certificate name; ALPN h2 because gRPC servers require it.
func xdsClientTLS(t XDSClientTLS) *tlsv3.UpstreamTlsContext {
	fileSDS := func(file string) *corev3.ConfigSource {
		return &corev3.ConfigSource{
			ResourceApiVersion: corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_PathConfigSource{PathConfigSource: &corev3.PathConfigSource{
				Path:             filepath.Join(t.SDSDir, file),
				WatchedDirectory: &corev3.WatchedDirectory{Path: t.SDSDir},
			}},
		}
	}
	return &tlsv3.UpstreamTlsContext{
		Sni: t.ServerName,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams: &tlsv3.TlsParameters{
				TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
				TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
			},
			AlpnProtocols:                  []string{"h2"},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: ClientCertificateName, SdsConfig: fileSDS(ClientSDSFile)}},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlsv3.CertificateValidationContext{
					MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
						SanType: tlsv3.SubjectAltNameMatcher_DNS,
						Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: t.ServerName}},
					}},
				},
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: ServerCAName, SdsConfig: fileSDS(ServerCASDSFile)},
			}},
		},
	}
}

// clientCertificateSecret is the client certificate read from files (a
// kubelet keeps cert and key in one file, kubelet-client-current.pem, a
// symlink it swaps on rotation; Envoy watches the parent directories and
// re-reads them).
func clientCertificateSecret(certFile, keyFile string) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: ClientCertificateName,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: certFile}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: keyFile}},
		}},
	}
}

// serverCASecret trusts the CA in serverCAFile for the server's certificate.
func serverCASecret(serverCAFile string) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: ServerCAName,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: serverCAFile}},
		}},
	}
}

// WriteSDSFiles writes the two file-based SDS resources into dir,
// atomically (Envoy watches the directory). The paths must be absolute:
// Envoy refuses relative ones and the proxy would get no config.
func WriteSDSFiles(dir, certFile, keyFile, serverCAFile string) error {
	for _, p := range []string{certFile, keyFile, serverCAFile} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("file-based SDS needs absolute paths, got %q (Envoy refuses relative ones)", p)
		}
	}
	for file, secret := range map[string]*tlsv3.Secret{
		ClientSDSFile:   clientCertificateSecret(certFile, keyFile),
		ServerCASDSFile: serverCASecret(serverCAFile),
	} {
		raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(&discoveryv3.DiscoveryResponse{Resources: []*anypb.Any{mustAny(secret)}})
		if err != nil {
			return err
		}
		if raw, err = yaml.JSONToYAML(raw); err != nil {
			return err
		}
		path := filepath.Join(dir, file)
		if err := os.WriteFile(path+".tmp", raw, 0o644); err != nil {
			return fmt.Errorf("write the SDS file %s: %w", path, err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			return err
		}
	}
	return nil
}

// Default heap limits of the overload manager, by role: the apiserver proxy
// holds tunnels of every node (at 5,000 nodes x 4 tunnels, ~90 MiB measured
// idle; with HTTP/2 windows in use, a few hundred MiB) and a cluster per node
// (~250 MiB at 5,000, make bench-config), a node proxy only its own. Set the
// container memory limit above them: Envoy sheds load before the kernel
// kills it.
const (
	DefaultAPIServerProxyHeap = 1 << 30
	DefaultNodeProxyHeap      = 256 << 20
)

// DefaultMaxHeap is the heap limit of a role.
func DefaultMaxHeap(role translator.Role) uint64 {
	if role == translator.RoleAPIServer {
		return DefaultAPIServerProxyHeap
	}
	return DefaultNodeProxyHeap
}

// OverloadManager caps accepted connections (0: 50,000) and watches the
// heap against maxHeap: at 90% Envoy returns free memory to the system, at
// 95% it answers new requests with 503 and stops accepting connections, so
// established tunnels and streams keep their memory.
func OverloadManager(maxConnections, maxHeap uint64) *overloadv3.OverloadManager {
	if maxConnections == 0 {
		maxConnections = 50000
	}
	const heap = "envoy.resource_monitors.fixed_heap"
	trigger := func(threshold float64) []*overloadv3.Trigger {
		return []*overloadv3.Trigger{{Name: heap, TriggerOneof: &overloadv3.Trigger_Threshold{Threshold: &overloadv3.ThresholdTrigger{Value: threshold}}}}
	}
	return &overloadv3.OverloadManager{
		RefreshInterval: durationpb.New(250 * time.Millisecond),
		ResourceMonitors: []*overloadv3.ResourceMonitor{{
			Name: "envoy.resource_monitors.global_downstream_max_connections",
			ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: mustAny(
				&connlimitv3.DownstreamConnectionsConfig{MaxActiveDownstreamConnections: int64(maxConnections)},
			)},
		}, {
			Name:       heap,
			ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: mustAny(&fixedheapv3.FixedHeapConfig{MaxHeapSizeBytes: maxHeap})},
		}},
		Actions: []*overloadv3.OverloadAction{
			{Name: "envoy.overload_actions.shrink_heap", Triggers: trigger(0.90)},
			{Name: "envoy.overload_actions.stop_accepting_requests", Triggers: trigger(0.95)},
		},
		LoadshedPoints: []*overloadv3.LoadShedPoint{{Name: "envoy.load_shed_points.tcp_listener_accept", Triggers: trigger(0.95)}},
	}
}

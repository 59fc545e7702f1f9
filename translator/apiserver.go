package translator

import (
	"net/netip"
	"sort"
	"sync"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"

	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	revconnv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/reverse_connection/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	revtunnelv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/reverse_tunnel/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/spokeproxy/spoke/translator/model"
)

// APIServerProxy builds the config of the Envoy beside kube-apiserver: the
// egress socket that takes the apiserver's CONNECTs, the listener that accepts
// node tunnels, and the clusters that send each stream into a tunnel: one
// per node (its own stream cap) and one for Services.
func (t *Translator) APIServerProxy() Resources {
	s := t.settings
	plan := t.egressPlan()
	routes, routeVersion := egressRoutes(plan)
	clusters, clusterVersion := tunnelClusters(plan, s)
	return Resources{
		Listeners:      sortedListeners(handshakeListener(s), egressListener(s)),
		Routes:         []*routev3.RouteConfiguration{routes},
		Clusters:       clusters,
		Secrets:        sortedStrings(s.Secrets.APIServerCertificate, s.Secrets.TunnelCA),
		RouteVersion:   routeVersion,
		ClusterVersion: clusterVersion,
	}
}

// tunnelClusters are the node targets' clusters, in the plan's (name)
// order, then the Services' one; version is their content hash, from each
// cluster's own (reused node targets do not marshal theirs again).
func tunnelClusters(plan []*tunnelTargets, s model.Settings) (clusters []*clusterv3.Cluster, version string) {
	digests := make([]string, 0, len(plan)+1)
	for _, p := range plan {
		if p.cluster != ServiceTunnels { // a node's own cluster
			c, digest := p.tunnelCluster()
			clusters = append(clusters, c)
			digests = append(digests, digest)
		}
	}
	services := tunnelCluster(ServiceTunnels, s.ServiceMaxStreams, s)
	clusters = append(clusters, services)
	digests = append(digests, ContentHash([]*clusterv3.Cluster{services}))
	return clusters, ContentHash[*clusterv3.Cluster](nil, digests...)
}

// egressListener accepts the apiserver's HTTP/1.1 CONNECTs on a Unix socket
// whose mode keeps every other local user out.
func egressListener(s model.Settings) *listenerv3.Listener {
	hcm := connectHCM("apiserver_egress", EgressRoute, s)
	hcm.CodecType = hcmv3.HttpConnectionManager_HTTP1
	// The apiserver sends its CONNECT as soon as it connects, one per
	// connection: a client that has not finished its headers, or has sent
	// nothing, by then is stuck or hostile. Neither timer runs once the
	// stream is established, so a quiet `kubectl logs -f` is never cut.
	hcm.RequestHeadersTimeout = dur(s.RequestHeadersTimeout)
	hcm.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: dur(s.RequestHeadersTimeout)}
	// The apiserver's CONNECT is about 50 bytes; nothing legitimate is near 8 KiB.
	hcm.MaxRequestHeadersKb = wrapperspb.UInt32(egressMaxRequestHeadersKiB)
	hcm.LocalReplyConfig = noTunnelReply()
	hcm.LocalReplyConfig.Mappers = append(hcm.LocalReplyConfig.Mappers, apiServerCapReply(s))
	return &listenerv3.Listener{
		Name: EgressListener,
		Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{
			Path: s.EgressSocketPath, Mode: s.EgressSocketMode,
		}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{egressConnectionLimit(s), hcmFilter(hcm)}}},
	}
}

const egressMaxRequestHeadersKiB = 8

// NoTunnelStatus is what the apiserver gets for a CONNECT whose target's
// node holds no tunnel at this apiserver proxy, so that its error says which
// of spoke's refusals it met: 404, no node owns the target; 502, the owning
// node has no tunnel here; 503 (from the node proxy), the node could not
// reach the target.
const NoTunnelStatus = 502

// noTunnelReply turns the reverse-connection cluster's failure to find a
// tunnel (Envoy marks it an upstream connection failure, UF; UH for a
// cluster id with no node) into NoTunnelStatus with a body that says so.
func noTunnelReply() *hcmv3.LocalReplyConfig {
	return &hcmv3.LocalReplyConfig{Mappers: []*hcmv3.ResponseMapper{{
		Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{
			ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: []string{"UF", "UH"}},
		}},
		StatusCode: wrapperspb.UInt32(NoTunnelStatus),
		Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{
			InlineString: "spoke: the node that owns this target holds no tunnel to this apiserver proxy (see spoke status)\n",
		}},
	}}}
}

// egressConnectionLimit closes connections beyond EgressMaxConnections at
// once (one CONNECT each): a runaway client cannot take the proxy's memory.
func egressConnectionLimit(s model.Settings) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name: "envoy.filters.network.connection_limit",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(&connlimitv3.ConnectionLimit{
			StatPrefix: "apiserver_egress", MaxConnections: wrapperspb.UInt64(s.EgressMaxConnections),
		})},
	}
}

// egressRoutes maps every CONNECT target to the tunnel that may carry it: a
// virtual host per node (its addresses on any port, its host names, its pods)
// and one for Service ClusterIP:port pairs, which any node can take. A target
// in none of them matches no route and gets 404 at once: never a guess.
//
// version is the content hash of the route configuration, computed from
// each virtual host's own hash: those of reused node targets are not
// marshalled again (5,000 virtual hosts take ~20 ms to marshal).
func egressRoutes(plan []*tunnelTargets) (rc *routev3.RouteConfiguration, version string) {
	rc = &routev3.RouteConfiguration{Name: EgressRoute}
	version = ContentHash([]*routev3.RouteConfiguration{rc}) // before the hosts
	digests := make([]string, 0, len(plan)+1)
	digests = append(digests, version)
	for _, p := range plan {
		vh, digest := p.virtualHost()
		digests = append(digests, digest)
		rc.VirtualHosts = append(rc.VirtualHosts, vh)
	}
	return rc, ContentHash[*routev3.RouteConfiguration](nil, digests...)
}

// tunnelTargets is one virtual host of the egress routes before it becomes a
// proto: which CONNECT targets go into which tunnel, through which cluster.
type tunnelTargets struct {
	name, hostID, cluster string
	domains               []string
	retry                 func() *routev3.RetryPolicy // when a CONNECT is sent again
	settings              *model.Settings             // for a node's own cluster (tunnelCluster)

	once   sync.Once
	vh     *routev3.VirtualHost
	digest string

	clusterOnce   sync.Once
	clusterProto  *clusterv3.Cluster
	clusterDigest string
}

// virtualHost builds the proto and its content hash once: a Translator
// reusing another's node targets (ReuseNodeTargets) reuses both.
func (tt *tunnelTargets) virtualHost() (*routev3.VirtualHost, string) {
	tt.once.Do(func() {
		tt.vh = tunnelVirtualHost(tt.name, tt.domains, tt.hostID, tt.cluster, tt.retry())
		tt.digest = ContentHash([]*routev3.VirtualHost{tt.vh})
	})
	return tt.vh, tt.digest
}

// tunnelCluster builds a node target's cluster and its content hash once,
// as virtualHost does.
func (tt *tunnelTargets) tunnelCluster() (*clusterv3.Cluster, string) {
	tt.clusterOnce.Do(func() {
		tt.clusterProto = tunnelCluster(tt.cluster, tt.settings.NodeMaxStreams, *tt.settings)
		tt.clusterDigest = ContentHash([]*clusterv3.Cluster{tt.clusterProto})
	})
	return tt.clusterProto, tt.clusterDigest
}

// nodeTargets is the per-node part of the egress plan: it reads the nodes
// and the pods outside their prefix routes, never the Services.
func nodeTargets(c *model.Cluster, s model.Settings) []*tunnelTargets {
	prefixes := RoutablePodPrefixes(c, s)
	var plan []*tunnelTargets
	for _, n := range c.Nodes {
		domains := newDomainSet()
		for _, ip := range n.IPs {
			domains.add(ipAnyPort(ip.Addr))
		}
		for _, h := range n.HostNames {
			domains.add(nameAnyPort(h))
		}
		for _, p := range prefixes[n.Name] {
			d, _ := prefixDomain(p)
			domains.add(d)
		}
		for _, pod := range c.PodsOn(n.Name) {
			for _, ip := range pod.IPs {
				if !CoveredBy(prefixes[n.Name], ip) {
					domains.add(ipAnyPort(ip))
				}
			}
		}
		if !domains.empty() {
			plan = append(plan, &tunnelTargets{
				name: "node/" + n.Name, hostID: n.Name, cluster: NodeTunnels(n.Name),
				domains: domains.sorted(), retry: nodeRetry, settings: &s,
			})
		}
	}
	return plan
}

// serviceTargets routes every Service ClusterIP:port into the tunnel of any
// node (the tunnel cluster id), through the Services' cluster.
func serviceTargets(c *model.Cluster, s model.Settings) []*tunnelTargets {
	if services := serviceDomains(c); !services.empty() {
		return []*tunnelTargets{{name: "services", hostID: s.ClusterID, cluster: ServiceTunnels, domains: services.sorted(), retry: serviceRetry}}
	}
	return nil
}

// tunnelVirtualHost forwards CONNECT for domains, unterminated, through
// cluster into the tunnel of hostID (a node name, or the tunnel cluster id
// for "any node"), sending a CONNECT again as retry says.
func tunnelVirtualHost(name string, domains []string, hostID, cluster string, retry *routev3.RetryPolicy) *routev3.VirtualHost {
	route := connectRoute(name, cluster, &routev3.RouteAction_UpgradeConfig{UpgradeType: "CONNECT"})
	route.Metadata = stringMetadata(routeMetadataSpace, routeMetadataHost, hostID)
	route.GetRoute().RetryPolicy = retry
	return &routev3.VirtualHost{Name: name, Domains: domains, Routes: []*routev3.Route{route}}
}

// serviceRetry is nodeRetry plus a 503 from the node proxy (its
// connect to the ClusterIP failed: nothing reached the Service), retried
// with back-off for about a second and a half. kube-proxy programs a new
// Service, or its new endpoints, on each node at its own pace (iptables
// mode syncs at most once a second), and Service streams go through any
// node's tunnel: a webhook that just answered through one node can be
// refused at another for that moment (seen in the upstream webhook specs
// on kind). A Service that stays unreachable is reported that much later.
func serviceRetry() *routev3.RetryPolicy {
	return &routev3.RetryPolicy{
		RetryOn:              notReachedRetryOn + ",retriable-status-codes",
		RetriableStatusCodes: []uint32{503},
		NumRetries:           wrapperspb.UInt32(4),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
			BaseInterval: durationpb.New(250 * time.Millisecond),
			MaxInterval:  durationpb.New(time.Second),
		},
	}
}

// notReachedRetryOn is what nodeRetry and serviceRetry both send again: a
// CONNECT that reached no target.
const notReachedRetryOn = "refused-stream,connect-failure,reset"

// nodeRetry sends a CONNECT to a node again, through another of its
// tunnels, when nothing of it reached the node's target:
//   - refused-stream: the node's Envoy refused the stream unprocessed
//     (REFUSED_STREAM, or above the last stream id of a GOAWAY): a node proxy
//     that ends a tunnel with GOAWAY (draining, or its HTTP/2 codec's reset
//     bucket, docs/envoy.md);
//   - connect-failure: the tunnel taken for a new HTTP/2 connection failed
//     its inner TLS handshake, or no idle tunnel was left;
//   - reset: the tunnel carrying the stream ended before the node proxy
//     answered.
//
// In a DaemonSet roll the old pod's Envoy exits at SIGTERM and closes its
// tunnels under the streams being set up on them: without these, each such
// CONNECT failed (503 or 502) while the new pod's tunnels stood by. All
// three are safe for a CONNECT: the apiserver sends nothing before the 200,
// so the target got at most a TCP connection, closed with the tunnel. A
// stream that was answered is never sent again.
func nodeRetry() *routev3.RetryPolicy {
	return &routev3.RetryPolicy{
		RetryOn: notReachedRetryOn,
		// The old pod holds TunnelsPerEndpoint (4 by default) tunnels per
		// apiserver proxy: a CONNECT may meet them all.
		NumRetries: wrapperspb.UInt32(4),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{
			BaseInterval: durationpb.New(time.Millisecond),
			MaxInterval:  durationpb.New(10 * time.Millisecond),
		},
	}
}

func serviceDomains(c *model.Cluster) *domainSet {
	domains := newDomainSet()
	for _, svc := range c.Services {
		for _, ip := range svc.ClusterIPs {
			for _, port := range svc.Ports {
				domains.add(ipPort(ip, port))
			}
		}
	}
	return domains
}

// RoutablePodPrefixes returns, per node, the pod CIDRs that may be routed as one
// wildcard domain: octet-aligned (see prefixDomain) and overlapping no other
// node's CIDR. The pods of other CIDRs are routed one IP at a time, so only
// their changes touch the apiserver proxy's routes. It reads c.Nodes only.
func RoutablePodPrefixes(c *model.Cluster, s model.Settings) map[string][]netip.Prefix {
	out := map[string][]netip.Prefix{}
	if s.PodRouting != model.PodRoutingAuto {
		return out
	}
	shared := prefixesSharedByNodes(c)
	for _, n := range c.Nodes {
		for _, p := range n.PodCIDRs {
			if _, ok := prefixDomain(p); ok && !shared[p] {
				out[n.Name] = append(out[n.Name], p)
			}
		}
	}
	return out
}

// prefixesSharedByNodes finds pod CIDRs that overlap a CIDR of another node.
// CIDRs overlap only by nesting, so looking up every shorter prefix of each
// CIDR finds all pairs in O(CIDRs x address bits).
func prefixesSharedByNodes(c *model.Cluster) map[netip.Prefix]bool {
	owners := map[netip.Prefix]string{}
	shared := map[netip.Prefix]bool{}
	for _, n := range c.Nodes {
		for _, p := range n.PodCIDRs {
			if owner, ok := owners[p]; ok && owner != n.Name {
				shared[p] = true
			}
			owners[p] = n.Name
		}
	}
	for _, n := range c.Nodes {
		for _, p := range n.PodCIDRs {
			for bits := 0; bits < p.Bits(); bits++ {
				parent := netip.PrefixFrom(p.Addr(), bits).Masked()
				if owner, ok := owners[parent]; ok && owner != n.Name {
					shared[p], shared[parent] = true, true
				}
			}
		}
	}
	return shared
}

// CoveredBy reports whether ip lies in one of prefixes.
func CoveredBy(prefixes []netip.Prefix, ip netip.Addr) bool { return model.CoveredBy(prefixes, ip) }

// handshakeListener accepts tunnel handshakes from node proxies over mTLS. The
// handshake's node id must equal the certificate's single DNS SAN, its cluster
// and tenant ids the configured ones. The upstream cluster it names is not
// checked (Envoy takes one exact name): a node dials each tunnel through a
// cluster of its own (DialCluster), and the name grants nothing.
func handshakeListener(s model.Settings) *listenerv3.Listener {
	tunnel := &revtunnelv3.ReverseTunnel{
		PingInterval:     dur(s.KeepaliveInterval),
		HandshakeTimeout: dur(s.TunnelHandshakeTimeout),
		// A node may hold at most the bootstrap's max_connections_per_node
		// tunnels per worker here, whatever count its rc:// address asks for.
		EnableConnectionLimit: true,
		Validation: &revtunnelv3.Validation{
			NodeIdFormat:    NodeIDFromCertificate,
			ClusterIdFormat: s.ClusterID,
			TenantIdFormat:  s.TenantID,
			// node_id and validation_result, for the handshake log
			EmitDynamicMetadata:      true,
			DynamicMetadataNamespace: HandshakeMetadata,
		},
	}
	tls := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams:                      tls13(),
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(s.Secrets.APIServerCertificate)},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
				ValidationContextSdsSecretConfig: sdsSecret(s.Secrets.TunnelCA),
			},
		},
	}
	return &listenerv3.Listener{
		Name:          HandshakeListener,
		Address:       socketAddress(s.TunnelListenAddress, s.TunnelPort),
		SocketOptions: tunnelSocketOptions(s, corev3.SocketOption_STATE_LISTENING),
		AccessLog:     []*accesslogv3.AccessLog{handshakeLog()},
		FilterChains: []*listenerv3.FilterChain{{
			TransportSocket:               tlsTransportSocket(tls),
			TransportSocketConnectTimeout: dur(s.TunnelHandshakeTimeout),
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.reverse_tunnel",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(tunnel)},
			}},
		}},
	}
}

// handshakeLog sends one entry per tunnel connection (at its end: refused,
// timed out or, for an accepted tunnel, closed) to the spoke server beside
// this proxy, which keeps each node's last refusal and its reason.
func handshakeLog() *accesslogv3.AccessLog {
	return &accesslogv3.AccessLog{
		Name: "envoy.access_loggers.tcp_grpc",
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: typed(&grpclogv3.TcpGrpcAccessLogConfig{
			CommonConfig: &grpclogv3.CommonGrpcAccessLogConfig{
				LogName: HandshakeLogName,
				GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
				}},
				TransportApiVersion: corev3.ApiVersion_V3,
			},
		})},
	}
}

// tunnelCluster sends each stream over HTTP/2 into a tunnel of the host its
// route names (route metadata, see HostIDFormat), at most maxStreams at once.
// The tunnel's own TLS ends with the handshake (Envoy then uses the raw
// socket), so the HTTP/2 inside gets a second TLS layer: this end is its
// client, with the apiserver proxy's certificate, and accepts only a
// tunnel-CA certificate.
func tunnelCluster(name string, maxStreams uint32, s model.Settings) *clusterv3.Cluster {
	protocol := &httpv3.HttpProtocolOptions{
		CommonHttpProtocolOptions: tunnelConnectionOptions(),
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: http2Options(s)},
		}},
	}
	return &clusterv3.Cluster{
		Name:                          name,
		AltStatName:                   altStatName(name),
		CircuitBreakers:               tunnelCaps(maxStreams),
		ConnectTimeout:                dur(s.ConnectTimeout),
		PerConnectionBufferLimitBytes: optionalUint32(s.TunnelBufferLimit),
		LbPolicy:                      clusterv3.Cluster_CLUSTER_PROVIDED,
		ClusterDiscoveryType: &clusterv3.Cluster_ClusterType{ClusterType: &clusterv3.Cluster_CustomClusterType{
			Name: "envoy.clusters.reverse_connection",
			TypedConfig: typed(&revconnv3.ReverseConnectionClusterConfig{
				CleanupInterval: durationpb.New(60e9),
				HostIdFormat:    HostIDFormat,
			}),
		}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(protocol),
		},
		TransportSocket: tlsTransportSocket(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams:                      tls13(),
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(s.Secrets.APIServerCertificate)},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
				ValidationContextSdsSecretConfig: sdsSecret(s.Secrets.TunnelCA),
			},
		}}),
	}
}

func sortedListeners(ls ...*listenerv3.Listener) []*listenerv3.Listener {
	sort.Slice(ls, func(i, j int) bool { return ls[i].Name < ls[j].Name })
	return ls
}

func sortedStrings(xs ...string) []string {
	sort.Strings(xs)
	return xs
}

// PodCovered says whether every IP of pod lies in prefixes (its node's
// routable pod prefixes): the apiserver proxy then needs nothing of it.
func PodCovered(prefixes []netip.Prefix, pod model.Pod) bool {
	for _, ip := range pod.IPs {
		if !CoveredBy(prefixes, ip) {
			return false
		}
	}
	return true
}

// APIServerAffected says whether ch may change the apiserver proxy's config:
// nodes added, removed or re-addressed, Services, or a pod IP outside its
// node's prefix routes (such IPs get routes of their own). prefixes are the
// RoutablePodPrefixes of the nodes, which only a NodeSet change changes.
// With octet-aligned pod CIDRs, pod churn never touches the apiserver proxy.
func APIServerAffected(ch model.Changes, prefixes map[string][]netip.Prefix) bool {
	return ch.Shared || APIServerNodesAffected(ch, prefixes)
}

// APIServerNodesAffected is APIServerAffected for the per-node part of the
// apiserver proxy's routes: when it is false, a Translator may reuse the
// last one's node targets (ReuseNodeTargets).
func APIServerNodesAffected(ch model.Changes, prefixes map[string][]netip.Prefix) bool {
	if ch.Initial || ch.NodeSet {
		return true
	}
	for _, a := range ch.PodIPs {
		if !CoveredBy(prefixes[a.Node], a.IP) {
			return true
		}
	}
	return false
}

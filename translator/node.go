package translator

import (
	"fmt"
	"net/netip"
	"sort"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/spokeproxy/spoke/translator/model"
)

// UnknownNodeError says the requested node is not in the model.
type UnknownNodeError struct{ Node string }

func (e UnknownNodeError) Error() string {
	return fmt.Sprintf("node %q is not in the cluster (or was skipped, see the warnings): check the name with `kubectl get nodes`", e.Node)
}

// NodeProxy builds the config of one node's Envoy: the rc:// listener that
// keeps tunnels to every apiserver proxy, and routes that terminate CONNECT
// only for this node's kubelet, this node's pods and Service ClusterIP:port
// pairs. Nothing about other nodes is in it.
func (t *Translator) NodeProxy(nodeName string) (Resources, error) {
	node, ok := t.cluster.Node(nodeName)
	if !ok {
		return Resources{}, UnknownNodeError{Node: nodeName}
	}
	return t.NodeProxyOf(node, t.cluster.PodsOn(nodeName)), nil
}

// NodeProxyOf is NodeProxy for a node and its pods held outside the
// Translator's cluster (the server's incremental store); Services and
// apiserver endpoints still come from the cluster, built once per Translator.
func (t *Translator) NodeProxyOf(node *model.Node, pods []model.Pod) Resources {
	c, s := t.cluster, t.settings
	clusters := append(dialClusters(s), originalDstCluster(c, s))
	if kc := kubeletCluster(c, node, s); kc != nil {
		clusters = append(clusters, kc)
	}
	sortClusters(clusters)
	return Resources{
		Listeners: reverseTunnelListeners(node.Name, s),
		Routes:    []*routev3.RouteConfiguration{t.nodeRoutes(node, pods)},
		Clusters:  clusters,
		Endpoints: []*endpointv3.ClusterLoadAssignment{apiServerEndpoints(c)},
		Secrets:   sortedStrings(s.Secrets.NodeCertificate, s.Secrets.TunnelCA),
	}
}

// ReverseTunnelAddress is the rc:// address that makes Envoy dial one tunnel
// per worker to each host of a cluster:
// rc://node:cluster:tenant@upstream-cluster:1.
func ReverseTunnelAddress(node string, s model.Settings, upstream string) string {
	return fmt.Sprintf("rc://%s:%s:%s@%s:1", node, s.ClusterID, s.TenantID, upstream)
}

// reverseTunnelListeners keeps tunnelsPerEndpoint tunnels per worker to each
// apiserver proxy as that many rc:// listeners of one tunnel each, each
// through a cluster of its own (dialClusters), rather than one listener
// asking for them all. Envoy backs off a host's re-dials by the failures its
// listener counted (1 s, 2 s, 4 s ...), so one listener of 4 tunnels waited
// ~8 s after a single failed round, e.g. when it re-dialed a restarted
// apiserver proxy a moment before the new one listened. Alone, each tunnel
// retries after 1 s, then 2 s, 4 s ... up to the cap (docs/envoy.md).
// Listeners need distinct rc:// addresses, hence a cluster per tunnel.
func reverseTunnelListeners(node string, s model.Settings) []*listenerv3.Listener {
	listeners := make([]*listenerv3.Listener, s.TunnelsPerEndpoint)
	for i := range listeners {
		listeners[i] = reverseTunnelListener(ReverseTunnelAddress(node, s, DialCluster(i+1)), s)
	}
	return listeners
}

// The node proxy is the HTTP/2 server of its tunnels, and nghttp2 (Envoy
// 1.40's codec) ends a server connection with GOAWAY INTERNAL_ERROR once its
// peer has sent more RST_STREAMs than a token bucket allows (1,000, then 33
// a second: the Rapid Reset defence). Every CONNECT whose apiserver side
// closes first ends with the apiserver proxy resetting its stream, so a
// tunnel carrying more than ~33 short CONNECTs a second ended, with every
// stream on it, after ~1,000 of them (measured: a tunnel every ~1,000
// set-ups beside bulk, cutting bulk streams and slowing the rest). The peer
// is the apiserver proxy, authenticated by the tunnel CA, whose streams per
// node are capped (nodeMaxStreams): the bucket is set where only a runaway
// peer reaches it (e2e/TestSetupChurnBesideBulkFailsNothing).
const (
	tunnelStreamResetBurst = 100000
	tunnelStreamResetRate  = 10000 // per second, per tunnel
)

// tunnelServerHTTP2Options are the tunnel's HTTP/2 settings on the node
// proxy, the server side: http2Options and the stream reset bucket.
func tunnelServerHTTP2Options(s model.Settings) *corev3.Http2ProtocolOptions {
	o := http2Options(s)
	o.StreamResetBurst = wrapperspb.UInt64(tunnelStreamResetBurst)
	o.StreamResetRate = wrapperspb.UInt64(tunnelStreamResetRate)
	return o
}

func reverseTunnelListener(address string, s model.Settings) *listenerv3.Listener {
	hcm := connectHCM("node_tunnel", NodeTunnelRoute, s)
	hcm.CodecType = hcmv3.HttpConnectionManager_HTTP2
	hcm.Http2ProtocolOptions = tunnelServerHTTP2Options(s)
	hcm.CommonHttpProtocolOptions = tunnelConnectionOptions()
	return &listenerv3.Listener{
		Name:                          reverseTunnelListenerName(address),
		PerConnectionBufferLimitBytes: optionalUint32(s.TunnelBufferLimit),
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address:       address,
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0},
			ResolverName:  "envoy.resolvers.reverse_connection",
		}}},
		FilterChains: []*listenerv3.FilterChain{{
			Filters:         []*listenerv3.Filter{hcmFilter(hcm)},
			TransportSocket: tunnelDataTLS(s),
		}},
	}
}

// tunnelDataTLS is the server end of the second TLS layer inside each
// tunnel (the handshake's TLS does not cover the data): this node's tunnel
// certificate, and only the apiserver proxy's certificate is accepted.
func tunnelDataTLS(s model.Settings) *corev3.TransportSocket {
	return tlsTransportSocket(&tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams:                      tls13(),
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(s.Secrets.NodeCertificate)},
			ValidationContextType:          apiServerProxyValidation(s),
		},
	})
}

// apiServerProxyValidation accepts a tunnel-CA certificate naming the
// apiserver proxy, and nothing else.
func apiServerProxyValidation(s model.Settings) *tlsv3.CommonTlsContext_CombinedValidationContext {
	return &tlsv3.CommonTlsContext_CombinedValidationContext{
		CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tlsv3.CertificateValidationContext{
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
					SanType: tlsv3.SubjectAltNameMatcher_DNS,
					Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s.APIServerProxyName}},
				}},
			},
			ValidationContextSdsSecretConfig: sdsSecret(s.Secrets.TunnelCA),
		},
	}
}

// nodeRoutes terminates CONNECT for this node's own targets. Kubelet targets
// (any of its addresses or host names, kubelet port only) go to the kubelet
// cluster; pods (any port), hostNetwork pods (the node's addresses, on the
// TCP ports they declare) and Services (their ports) to the original
// destination named by the CONNECT target. Everything else gets 404.
func (t *Translator) nodeRoutes(node *model.Node, nodePods []model.Pod) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: NodeTunnelRoute}
	kubelet := newDomainSet()
	if _, ok := node.KubeletIP(); ok {
		for _, ip := range node.IPs {
			kubelet.add(ipPort(ip.Addr, node.KubeletPort))
		}
		for _, h := range node.HostNames {
			kubelet.add(namePort(h, node.KubeletPort))
		}
	}
	pods, hostNetwork := newDomainSet(), newDomainSet()
	for _, pod := range nodePods {
		for _, ip := range pod.IPs {
			if !isAdminAddress(ip) {
				pods.add(ipAnyPort(ip))
			}
		}
		for _, port := range pod.HostPorts {
			for _, ip := range node.IPs {
				if port != node.KubeletPort && !isAdminAddress(ip.Addr) { // the kubelet virtual host has it
					hostNetwork.add(ipPort(ip.Addr, port))
				}
			}
		}
	}
	for _, vh := range append([]*routev3.VirtualHost{
		terminatingVirtualHost("kubelet", kubelet, KubeletCluster),
		terminatingVirtualHost("pods", pods, OriginalDstTarget),
		terminatingVirtualHost("host-network-pods", hostNetwork, OriginalDstTarget),
	}, t.nodeServicesVirtualHosts()...) {
		if vh != nil {
			rc.VirtualHosts = append(rc.VirtualHosts, vh)
		}
	}
	return rc
}

// adminAddress is AdminAddress parsed.
var adminAddress = netip.MustParseAddr(AdminAddress)

// isAdminAddress guards the node proxy's own admin: the model refuses
// loopback pod addresses, but a setting (allowPodAddresses) may open them
// for test topologies, and the admin's port is chosen at start, so no
// port of that address may be a target. (The kubelet's own port there
// cannot be the admin's.)
func isAdminAddress(ip netip.Addr) bool { return ip == adminAddress }

// terminatingVirtualHost ends CONNECT for domains here and opens TCP through cluster.
func terminatingVirtualHost(name string, domains *domainSet, cluster string) *routev3.VirtualHost {
	return connectVirtualHost(name, domains, connectRoute(name, cluster, &routev3.RouteAction_UpgradeConfig{
		UpgradeType:   "CONNECT",
		ConnectConfig: &routev3.RouteAction_UpgradeConfig_ConnectConfig{},
	}))
}

// dialClusters are the clusters the node's tunnels are dialed through,
// one per tunnel a worker keeps to each apiserver proxy. They share one
// endpoint list (EDS service apiserver-proxies) and one stat name
// (cluster.apiserver-proxies.*), so they read as one cluster in Envoy's stats.
func dialClusters(s model.Settings) []*clusterv3.Cluster {
	clusters := make([]*clusterv3.Cluster, s.TunnelsPerEndpoint)
	for i := range clusters {
		clusters[i] = dialCluster(DialCluster(i+1), s)
	}
	return clusters
}

// dialCluster lists every apiserver proxy as its own endpoint (EDS): its
// rc:// listener keeps a tunnel to each host, so no replica is left without
// a tunnel to this node.
func dialCluster(name string, s model.Settings) *clusterv3.Cluster {
	tls := &tlsv3.UpstreamTlsContext{
		Sni: s.APIServerProxyName,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams:                      tls13(),
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(s.Secrets.NodeCertificate)},
			ValidationContextType:          apiServerProxyValidation(s),
		},
	}
	return &clusterv3.Cluster{
		Name:        name,
		AltStatName: APIServerProxies,
		// It carries one tunnel per worker per apiserver proxy, never a
		// stream of its own: Envoy's default thresholds, written out, leave
		// room for 1,024 apiserver proxies.
		CircuitBreakers:      &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{streamThresholds(1024, 1024)}},
		ConnectTimeout:       dur(s.ConnectTimeout),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: APIServerProxies},
		TransportSocket:      tlsTransportSocket(tls),
		UpstreamBindConfig:   tunnelBindConfig(s),
	}
}

// tunnelBindConfig carries the tunnel socket options to the tunnels this
// node proxy dials; it binds no source address.
func tunnelBindConfig(s model.Settings) *corev3.BindConfig {
	options := tunnelSocketOptions(s, corev3.SocketOption_STATE_PREBIND)
	if options == nil {
		return nil
	}
	return &corev3.BindConfig{SocketOptions: options}
}

func apiServerEndpoints(c *model.Cluster) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: APIServerProxies}
	var lbs []*endpointv3.LbEndpoint
	for _, ep := range c.APIServerEndpoints {
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: socketAddress(ep.Addr.String(), ep.Port),
		}}})
	}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

// kubeletCluster dials this node's own kubelet at its first InternalIP (or
// ExternalIP), whatever address or host name the CONNECT named: an ExternalIP
// behind NAT may not be reachable from the node itself. nil without an IP.
func kubeletCluster(c *model.Cluster, node *model.Node, s model.Settings) *clusterv3.Cluster {
	ip, ok := node.KubeletIP()
	if !ok {
		return nil
	}
	return &clusterv3.Cluster{
		Name:                          KubeletCluster,
		CircuitBreakers:               nodeTargetCaps(c, s),
		ConnectTimeout:                dur(s.ConnectTimeout),
		PerConnectionBufferLimitBytes: optionalUint32(s.TunnelBufferLimit),
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: KubeletCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: socketAddress(ip.String(), node.KubeletPort),
				}},
			}}}},
		},
	}
}

// originalDstCluster opens TCP to the IP:port in the CONNECT's :authority. Only
// routes whose domains list this node's pods and Service pairs lead here.
func originalDstCluster(c *model.Cluster, s model.Settings) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                          OriginalDstTarget,
		CircuitBreakers:               nodeTargetCaps(c, s),
		ConnectTimeout:                dur(s.ConnectTimeout),
		PerConnectionBufferLimitBytes: optionalUint32(s.TunnelBufferLimit),
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:                      clusterv3.Cluster_CLUSTER_PROVIDED,
		LbConfig: &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{
			UseHttpHeader:  true,
			HttpHeaderName: ":authority",
		}},
	}
}

func sortClusters(cs []*clusterv3.Cluster) {
	sort.Slice(cs, func(i, j int) bool { return cs[i].Name < cs[j].Name })
}

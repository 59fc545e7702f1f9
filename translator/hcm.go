package translator

import (
	"sort"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/spokeproxy/spoke/translator/model"
)

// connectHCM is the HTTP connection manager both roles use: CONNECT enabled,
// routes from RDS (so route changes never drain the listener or its tunnels),
// no stream idle timeout (an idle `kubectl logs -f` is not dead; dead tunnels
// are found by HTTP/2 keepalive instead).
func connectHCM(statPrefix, routeName string, s model.Settings) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StatPrefix: statPrefix,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: routeName,
			ConfigSource:    ads(),
		}},
		UpgradeConfigs:    []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "CONNECT"}},
		StreamIdleTimeout: durationpb.New(0),
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&routerv3.Router{})},
		}},
	}
}

func hcmFilter(hcm *hcmv3.HttpConnectionManager) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name:       "envoy.filters.network.http_connection_manager",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(hcm)},
	}
}

// connectVirtualHost is one virtual host with one CONNECT route; nil when
// there is no domain (Envoy rejects a virtual host without domains).
func connectVirtualHost(name string, domains *domainSet, route *routev3.Route) *routev3.VirtualHost {
	if domains.empty() {
		return nil
	}
	return &routev3.VirtualHost{Name: name, Domains: domains.sorted(), Routes: []*routev3.Route{route}}
}

// connectRoute matches CONNECT requests and sends them to cluster with no
// timeouts: the streams live as long as a `kubectl exec` or a log follow.
func connectRoute(name, cluster string, upgrade *routev3.RouteAction_UpgradeConfig) *routev3.Route {
	return &routev3.Route{
		Name: name,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_ConnectMatcher_{
			ConnectMatcher: &routev3.RouteMatch_ConnectMatcher{},
		}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
			Timeout:          durationpb.New(0),
			IdleTimeout:      durationpb.New(0),
			UpgradeConfigs:   []*routev3.RouteAction_UpgradeConfig{upgrade},
		}},
	}
}

// domainSet collects virtual-host domains without duplicates (Envoy rejects a
// route configuration that repeats one) and returns them sorted.
type domainSet struct{ m map[string]struct{} }

func newDomainSet() *domainSet { return &domainSet{m: map[string]struct{}{}} }

func (d *domainSet) add(domain string) { d.m[domain] = struct{}{} }

func (d *domainSet) empty() bool { return len(d.m) == 0 }

func (d *domainSet) sorted() []string {
	out := make([]string, 0, len(d.m))
	for k := range d.m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

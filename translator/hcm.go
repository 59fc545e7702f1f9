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

func connectMatch() *routev3.RouteMatch {
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_ConnectMatcher_{
		ConnectMatcher: &routev3.RouteMatch_ConnectMatcher{},
	}}
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

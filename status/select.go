package status

import (
	"fmt"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/spokeproxy/spoke/translator"
)

// DumpTypes are the --type values of spoke config dump.
var DumpTypes = []string{"listeners", "routes", "clusters", "endpoints", "secrets", "bootstrap"}

// Select keeps the resources of one type (all when typ is ""), and of
// those, the ones named name (all when ""). A route configuration matches
// by its own name or by one of its virtual hosts' (node/NAME, services),
// keeping only the matching virtual hosts: the apiserver proxy's one route
// configuration holds a virtual host per node.
func Select(r translator.Resources, typ, name string) (translator.Resources, error) {
	var out translator.Resources
	switch typ {
	case "":
		out = r
	case "listeners":
		out.Listeners = r.Listeners
	case "routes":
		out.Routes = r.Routes
	case "clusters":
		out.Clusters = r.Clusters
	case "endpoints":
		out.Endpoints = r.Endpoints
	default:
		return out, fmt.Errorf("type %q: use one of %v", typ, DumpTypes)
	}
	if name == "" {
		return out, nil
	}
	return translator.Resources{
		Listeners: named(out.Listeners, name, (*listenerv3.Listener).GetName),
		Clusters:  named(out.Clusters, name, (*clusterv3.Cluster).GetName),
		Endpoints: named(out.Endpoints, name, (*endpointv3.ClusterLoadAssignment).GetClusterName),
		Routes:    routesNamed(out.Routes, name),
		Secrets:   namedStrings(out.Secrets, name),
	}, nil
}

// named keeps the items whose nameOf is name.
func named[T any](items []T, name string, nameOf func(T) string) []T {
	return slices.DeleteFunc(slices.Clone(items), func(it T) bool { return nameOf(it) != name })
}

func namedStrings(items []string, name string) []string {
	for _, it := range items {
		if it == name {
			return []string{it}
		}
	}
	return nil
}

// routesNamed keeps the route configurations named name whole, and of the
// others only their virtual hosts named name.
func routesNamed(routes []*routev3.RouteConfiguration, name string) []*routev3.RouteConfiguration {
	var out []*routev3.RouteConfiguration
	for _, rc := range routes {
		if rc.GetName() == name {
			out = append(out, rc)
			continue
		}
		var hosts []*routev3.VirtualHost
		for _, vh := range rc.GetVirtualHosts() {
			if vh.GetName() == name {
				hosts = append(hosts, vh)
			}
		}
		if len(hosts) > 0 {
			part := proto.Clone(rc).(*routev3.RouteConfiguration)
			part.VirtualHosts = hosts
			out = append(out, part)
		}
	}
	return out
}

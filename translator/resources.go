package translator

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// Resources is everything one Envoy receives over xDS, each list sorted by name.
// Secrets lists the SDS names the resources reference; their content is issued
// by the server, never by the translator.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	Secrets   []string
	// RouteVersion, when set, is the content hash of Routes, computed from
	// cached parts: the server uses it instead of hashing Routes again.
	RouteVersion string
	// ClusterVersion is the same for Clusters.
	ClusterVersion string
}

// Role says which kind of Envoy a set of resources is for.
type Role string

const (
	RoleAPIServer Role = "apiserver"
	RoleNode      Role = "node"
)

package translator

import (
	"bytes"
	"encoding/json"
	"fmt"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

// DumpVersions are the version_info of each section of a ConfigDump.
type DumpVersions struct{ Listeners, Clusters, Endpoints, Routes, Secrets string }

// TypeVersions are the xDS versions of each type of r, the ones spoke serve
// stamps, so an offline translation (spoke translate) compares with what is
// served. Secrets get none here: their served version hashes their key
// material, which a translation does not have.
func TypeVersions(r Resources) DumpVersions {
	return DumpVersions{
		Listeners: ContentHash(r.Listeners),
		Clusters:  cachedOrHash(r.ClusterVersion, r.Clusters),
		Endpoints: ContentHash(r.Endpoints),
		Routes:    cachedOrHash(r.RouteVersion, r.Routes),
	}
}

// Of is the version of typeURL's section ("" for an unknown type).
func (v DumpVersions) Of(typeURL string) string {
	switch typeURL {
	case resourcev3.ListenerType:
		return v.Listeners
	case resourcev3.RouteType:
		return v.Routes
	case resourcev3.ClusterType:
		return v.Clusters
	case resourcev3.EndpointType:
		return v.Endpoints
	case resourcev3.SecretType:
		return v.Secrets
	}
	return ""
}

// cachedOrHash is the version the translator cached for a type, or else
// the content hash of its resources.
func cachedOrHash[T proto.Message](cached string, items []T) string {
	if cached != "" {
		return cached
	}
	return ContentHash(items)
}

// ConfigDump wraps resources in Envoy's admin ConfigDump, the shape of an
// Envoy's /config_dump, with every resource dynamic (as if received over xDS).
// Secrets carry only their names: key material is never part of a dump.
func ConfigDump(r Resources, v DumpVersions) *adminv3.ConfigDump {
	version := v.Listeners
	listeners := &adminv3.ListenersConfigDump{VersionInfo: version}
	for _, l := range r.Listeners {
		listeners.DynamicListeners = append(listeners.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
			Name:        l.Name,
			ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: version, Listener: typed(l)},
		})
	}
	version = v.Clusters
	clusters := &adminv3.ClustersConfigDump{VersionInfo: version}
	for _, c := range r.Clusters {
		clusters.DynamicActiveClusters = append(clusters.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{
			VersionInfo: version, Cluster: typed(c),
		})
	}
	version = v.Routes
	routes := &adminv3.RoutesConfigDump{}
	for _, rc := range r.Routes {
		routes.DynamicRouteConfigs = append(routes.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{
			VersionInfo: version, RouteConfig: typed(rc),
		})
	}
	version = v.Endpoints
	endpoints := &adminv3.EndpointsConfigDump{}
	for _, e := range r.Endpoints {
		endpoints.DynamicEndpointConfigs = append(endpoints.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{
			VersionInfo: version, EndpointConfig: typed(e),
		})
	}
	version = v.Secrets
	secrets := &adminv3.SecretsConfigDump{}
	for _, name := range r.Secrets {
		secrets.DynamicActiveSecrets = append(secrets.DynamicActiveSecrets, &adminv3.SecretsConfigDump_DynamicSecret{
			Name: name, VersionInfo: version, Secret: typed(&tlsv3.Secret{Name: name}),
		})
	}
	return &adminv3.ConfigDump{Configs: []*anypb.Any{
		typed(listeners), typed(clusters), typed(endpoints), typed(routes), typed(secrets),
	}}
}

// Marshal renders a config dump as "yaml" or "json". protojson deliberately
// varies its whitespace between runs, so the JSON is re-indented (and the YAML
// re-serialized with sorted keys) to keep output byte-for-byte reproducible.
func Marshal(dump *adminv3.ConfigDump, format string) ([]byte, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(dump)
	if err != nil {
		return nil, fmt.Errorf("render config dump: %w", err)
	}
	switch format {
	case "json":
		var compact, out bytes.Buffer
		if err := json.Compact(&compact, raw); err != nil {
			return nil, err
		}
		if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
			return nil, err
		}
		out.WriteByte('\n')
		return out.Bytes(), nil
	case "yaml":
		return yaml.JSONToYAML(raw)
	default:
		return nil, fmt.Errorf("output format %q: use yaml or json", format)
	}
}

package translator

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
)

type validator interface{ ValidateAll() error }

// Check runs the proto validation go-control-plane generates on every resource
// (the rules Envoy itself enforces) and verifies that every reference resolves:
// listeners to route configs, routes to clusters, EDS clusters to endpoints,
// TLS contexts to the listed secrets.
func Check(r Resources) error {
	var errs []error
	for _, m := range r.all() {
		if err := m.(validator).ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", proto.MessageName(m), err))
		}
	}
	errs = append(errs, r.checkReferences()...)
	return errors.Join(errs...)
}

func (r Resources) all() []proto.Message {
	var out []proto.Message
	for _, l := range r.Listeners {
		out = append(out, l)
	}
	for _, rc := range r.Routes {
		out = append(out, rc)
	}
	for _, c := range r.Clusters {
		out = append(out, c)
	}
	for _, e := range r.Endpoints {
		out = append(out, e)
	}
	return out
}

func (r Resources) checkReferences() []error {
	var errs []error
	routes, clusters, endpoints, secrets := set[string]{}, set[string]{}, set[string]{}, set[string]{}
	for _, rc := range r.Routes {
		routes.add(rc.Name)
	}
	for _, c := range r.Clusters {
		clusters.add(c.Name)
	}
	for _, e := range r.Endpoints {
		endpoints.add(e.ClusterName)
	}
	for _, s := range r.Secrets {
		secrets.add(s)
	}
	for _, l := range r.Listeners {
		for _, fc := range l.FilterChains {
			errs = append(errs, checkSecrets("listener "+l.Name, fc.TransportSocket, secrets)...)
			for _, f := range fc.Filters {
				hcm := new(hcmv3.HttpConnectionManager)
				if f.GetTypedConfig().MessageIs(hcm) {
					if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
						errs = append(errs, fmt.Errorf("listener %s: %w", l.Name, err))
					} else if name := hcm.GetRds().GetRouteConfigName(); !routes.has(name) {
						errs = append(errs, fmt.Errorf("listener %s: route config %q is not generated", l.Name, name))
					}
				}
			}
		}
	}
	for _, rc := range r.Routes {
		domains := set[string]{}
		for _, vh := range rc.VirtualHosts {
			for _, d := range vh.Domains {
				if domains.has(d) {
					errs = append(errs, fmt.Errorf("route config %s: domain %q appears twice", rc.Name, d))
				}
				domains.add(d)
			}
			for _, rt := range vh.Routes {
				if c := rt.GetRoute().GetCluster(); !clusters.has(c) {
					errs = append(errs, fmt.Errorf("route config %s, virtual host %s: cluster %q is not generated", rc.Name, vh.Name, c))
				}
			}
		}
	}
	for _, c := range r.Clusters {
		if c.GetType() == clusterv3.Cluster_EDS && !endpoints.has(EDSServiceName(c)) {
			errs = append(errs, fmt.Errorf("cluster %s: its endpoints (EDS %s) are not generated", c.Name, EDSServiceName(c)))
		}
		errs = append(errs, checkSecrets("cluster "+c.Name, c.TransportSocket, secrets)...)
	}
	return errs
}

// EDSServiceName is the endpoint resource an EDS cluster asks for: its
// service_name when set, else its own name.
func EDSServiceName(c *clusterv3.Cluster) string {
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.Name
}

func checkSecrets(owner string, ts *corev3.TransportSocket, secrets set[string]) []error {
	if ts == nil {
		return nil
	}
	_, common, err := UnpackTLS(ts)
	if err != nil {
		return []error{fmt.Errorf("%s: %w", owner, err)}
	}
	names := []string{common.GetValidationContextSdsSecretConfig().GetName(),
		common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName()}
	for _, sds := range common.TlsCertificateSdsSecretConfigs {
		names = append(names, sds.GetName())
	}
	var errs []error
	for _, n := range names {
		if n != "" && !secrets.has(n) {
			errs = append(errs, fmt.Errorf("%s: secret %q is not listed", owner, n))
		}
	}
	return errs
}

// UnpackTLS decodes a TLS transport socket (downstream or upstream) and
// returns the decoded context with its CommonTlsContext.
func UnpackTLS(ts *corev3.TransportSocket) (proto.Message, *tlsv3.CommonTlsContext, error) {
	down, up := new(tlsv3.DownstreamTlsContext), new(tlsv3.UpstreamTlsContext)
	switch {
	case ts.GetTypedConfig().UnmarshalTo(down) == nil:
		return down, down.CommonTlsContext, nil
	case ts.GetTypedConfig().UnmarshalTo(up) == nil:
		return up, up.CommonTlsContext, nil
	}
	return nil, nil, fmt.Errorf("transport socket %q is not TLS", ts.GetName())
}

// ContentHash hashes messages (deterministically marshalled, each length-
// prefixed so boundaries cannot shift) and extra strings. The server uses it
// for per-type xDS versions (TypeVersions), translate for the dump's.
func ContentHash[T proto.Message](items []T, extra ...string) string {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	var n [8]byte
	for _, it := range items {
		b, err := opts.Marshal(it)
		if err != nil {
			panic(fmt.Sprintf("translator: marshal %T for a content hash: %v", it, err))
		}
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	for _, s := range extra {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

type set[T comparable] map[T]struct{}

func (s set[T]) add(v T)      { s[v] = struct{}{} }
func (s set[T]) has(v T) bool { _, ok := s[v]; return ok }

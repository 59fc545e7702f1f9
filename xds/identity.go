// Package xds is spoke's runtime: it turns cluster updates into per-Envoy
// snapshots and serves them over ADS (state-of-the-world and delta), tracks
// what each Envoy has ACKed or NACKed, and exposes health, metrics and a debug
// API. Only this package imports go-control-plane's cache and server.
package xds

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/spokeproxy/spoke/translator"
)

// APIServerKey is the snapshot key all apiserver proxies share.
const APIServerKey = "apiserver"

// Proxy identifies the config an Envoy receives: its role, and for node proxies
// its node name. Key is the snapshot cache key ("apiserver", "node/NAME").
type Proxy struct {
	Role translator.Role
	Node string
}

// Key is the snapshot cache key of the proxy.
func (p Proxy) Key() string {
	if p.Role == translator.RoleAPIServer {
		return APIServerKey
	}
	return "node/" + p.Node
}

// ParseProxy reads "apiserver" or "node/NAME" (the form `spoke config dump
// --proxy` takes).
func ParseProxy(s string) (Proxy, error) {
	if s == APIServerKey {
		return Proxy{Role: translator.RoleAPIServer}, nil
	}
	if name, ok := strings.CutPrefix(s, "node/"); ok && name != "" {
		return Proxy{Role: translator.RoleNode, Node: name}, nil
	}
	return Proxy{}, fmt.Errorf(`proxy %q: want "apiserver" or "node/NAME"`, s)
}

// proxyOf maps a connecting Envoy's claim to its proxy by node.cluster, which
// `spoke bootstrap` sets ("spoke-node" with node.id = node name, or
// "spoke-apiserver"). The Tracker refuses every request whose claim differs
// from the stream's authenticated identity (auth.go), so the claim can key
// the snapshot cache.
func proxyOf(node *corev3.Node) (Proxy, error) {
	switch node.GetCluster() {
	case translator.ServiceCluster(translator.RoleNode):
		if node.GetId() == "" {
			return Proxy{}, fmt.Errorf("node proxy without node id: set node.id to the node name (spoke bootstrap --node-name)")
		}
		return Proxy{Role: translator.RoleNode, Node: node.GetId()}, nil
	case translator.ServiceCluster(translator.RoleAPIServer):
		return Proxy{Role: translator.RoleAPIServer}, nil
	default:
		return Proxy{}, fmt.Errorf("Envoy %q names no spoke role: node.cluster is %q, want %q or %q (use spoke bootstrap)",
			node.GetId(), node.GetCluster(), translator.ServiceCluster(translator.RoleNode), translator.ServiceCluster(translator.RoleAPIServer))
	}
}

// nodeHash keys the snapshot cache by proxy (the claim, checked against the
// identity before go-control-plane sees the request); an Envoy with no role
// gets the empty key, which never holds a snapshot.
type nodeHash struct{}

func (nodeHash) ID(node *corev3.Node) string {
	p, err := proxyOf(node)
	if err != nil {
		return ""
	}
	return p.Key()
}

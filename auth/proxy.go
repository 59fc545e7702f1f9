// Package auth decides who an Envoy is. A node proxy is the node its
// verified kubelet client certificate names (CN system:node:<name>,
// O system:nodes); a stream on the server's local Unix socket is the
// apiserver proxy; plaintext TCP exists only in the explicit insecure mode.
// Proxy names the config an Envoy receives and is the key everything else
// (snapshots, status) uses.
//
// auth reads certificates and the Envoy node an xDS request names; it never
// builds Envoy resources and never imports the Kubernetes client.
package auth

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

// ProxyOf maps a connecting Envoy's claim to its proxy by node.cluster, which
// `spoke bootstrap` sets ("spoke-node" with node.id = node name, or
// "spoke-apiserver"). The status tracker refuses every request whose claim
// differs from the stream's authenticated identity, so the claim can key the
// snapshot cache.
func ProxyOf(node *corev3.Node) (Proxy, error) {
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

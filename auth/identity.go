package auth

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/spokeproxy/spoke/translator"
)

// Kubelet client certificates name their node this way (the Node
// authorizer's convention): CN system:node:<name>, O system:nodes.
const (
	nodeCommonNamePrefix = "system:node:"
	nodesOrganization    = "system:nodes"
)

// Identity is what an xDS client proved it is; it decides the role and the
// node whose config the client gets, whatever the client claims.
type Identity struct {
	Proxy Proxy
	// Insecure: plaintext development mode; the proxy is the Envoy's own
	// unverified claim.
	Insecure bool
	// Subject says, for logs, how the identity was established.
	Subject string
}

// nodeOfCertificate maps a kubelet client certificate to its node name.
func nodeOfCertificate(c *x509.Certificate) (string, error) {
	name, ok := strings.CutPrefix(c.Subject.CommonName, nodeCommonNamePrefix)
	if !ok || name == "" || !slices.Contains(c.Subject.Organization, nodesOrganization) {
		return "", fmt.Errorf("client certificate %q names no node: want CN %s<node name> and O %s (a kubelet client certificate)",
			c.Subject, nodeCommonNamePrefix, nodesOrganization)
	}
	return name, nil
}

// Authenticate derives a stream's identity from its connection: the local
// Unix socket is the apiserver proxy (the socket's file mode admits only
// it); a TLS connection is the node its verified certificate names; a
// plaintext TCP connection exists only in the explicit insecure mode.
func Authenticate(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, errors.New("no peer information on the stream")
	}
	if p.Addr != nil && p.Addr.Network() == "unix" {
		return Identity{Proxy: Proxy{Role: translator.RoleAPIServer}, Subject: "local xDS socket"}, nil
	}
	switch info := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		if len(info.State.PeerCertificates) == 0 {
			return Identity{}, errors.New("TLS connection without a client certificate")
		}
		leaf := info.State.PeerCertificates[0]
		name, err := nodeOfCertificate(leaf)
		if err != nil {
			return Identity{}, err
		}
		return Identity{Proxy: Proxy{Role: translator.RoleNode, Node: name}, Subject: leaf.Subject.String()}, nil
	case nil:
		return Identity{Insecure: true, Subject: "plaintext (insecure mode)"}, nil
	default:
		return Identity{}, fmt.Errorf("unexpected transport security %T", info)
	}
}

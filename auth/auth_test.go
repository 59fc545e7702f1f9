package auth

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/translator"
)

func TestProxyKeysRoundTrip(t *testing.T) {
	for _, p := range []Proxy{{Role: translator.RoleAPIServer}, {Role: translator.RoleNode, Node: "worker-1"}} {
		back, err := ParseProxy(p.Key())
		if err != nil || back != p {
			t.Errorf("%+v -> %q -> %+v, %v", p, p.Key(), back, err)
		}
	}
	for _, bad := range []string{"", "node/", "node", "worker-1", "apiserver/x"} {
		if _, err := ParseProxy(bad); err == nil {
			t.Errorf("ParseProxy(%q) accepted", bad)
		}
	}
}

// TestProxyOfClaims: the role comes from node.cluster as spoke bootstrap
// writes it; anything else names no role.
func TestProxyOfClaims(t *testing.T) {
	got, err := ProxyOf(&corev3.Node{Id: "worker-1", Cluster: "spoke-node"})
	if err != nil || got != (Proxy{Role: translator.RoleNode, Node: "worker-1"}) {
		t.Errorf("node claim: %+v, %v", got, err)
	}
	if got, err := ProxyOf(&corev3.Node{Id: "anything", Cluster: "spoke-apiserver"}); err != nil || got.Key() != APIServerKey {
		t.Errorf("apiserver claim: %+v, %v", got, err)
	}
	for _, bad := range []*corev3.Node{{Id: "", Cluster: "spoke-node"}, {Id: "worker-1", Cluster: "ingress"}, {}} {
		if _, err := ProxyOf(bad); err == nil {
			t.Errorf("ProxyOf(%v) accepted", bad)
		}
	}
}

// TestNodeOfCertificate: only the kubelet convention (CN system:node:NAME
// and O system:nodes) names a node.
func TestNodeOfCertificate(t *testing.T) {
	ca := authtest.NewCA(t, "cluster CA")
	leaf := func(subject pkix.Name) *x509.Certificate {
		certPEM, _ := ca.Client(t, subject, time.Now().Add(time.Hour))
		block, _ := pem.Decode(certPEM)
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if name, err := nodeOfCertificate(leaf(pkix.Name{CommonName: "system:node:worker-1", Organization: []string{"system:nodes"}})); err != nil || name != "worker-1" {
		t.Errorf("kubelet certificate: %q, %v", name, err)
	}
	for _, subject := range []pkix.Name{
		{CommonName: "system:node:worker-1"},                                          // no O
		{CommonName: "system:node:", Organization: []string{"system:nodes"}},          // no name
		{CommonName: "worker-1", Organization: []string{"system:nodes"}},              // no prefix
		{CommonName: "system:node:worker-1", Organization: []string{"system:admins"}}, // other group
	} {
		if name, err := nodeOfCertificate(leaf(subject)); err == nil {
			t.Errorf("%v named node %q", subject, name)
		}
	}
}

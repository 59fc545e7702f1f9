// Package envoytest helps tests run the real Envoy: it finds the binary (and
// skips, or fails under SPOKE_REQUIRE_ENVOY=1, when there is none) and makes
// throwaway tunnel certificates for static bootstraps.
package envoytest

import (
	"os"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// Binary returns the Envoy binary or skips the test saying what is missing.
// CI sets SPOKE_REQUIRE_ENVOY=1 so that a missing Envoy fails instead.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := envoy.Binary()
	if err != nil {
		if os.Getenv("SPOKE_REQUIRE_ENVOY") == "1" {
			t.Fatalf("SPOKE_REQUIRE_ENVOY=1: %v", err)
		}
		t.Skipf("skipping real-Envoy test: %v", err)
	}
	return bin
}

// PKI is a throwaway tunnel CA, issuing through the server's own Issuer.
type PKI struct {
	issuer        *pki.Issuer
	caCert, caKey []byte
}

// NewPKI makes a fresh CA.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	caCert, caKey, err := pki.GenerateCA("test tunnel CA")
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := pki.NewIssuer(caCert, caKey, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{issuer: issuer, caCert: caCert, caKey: caKey}
}

// ExpiredSecrets is Secrets with a certificate from the same CA that has
// already expired (issued for one second; this waits it out).
func (p *PKI) ExpiredSecrets(t testing.TB, s model.Settings, role translator.Role, dnsName string) []*tlsv3.Secret {
	t.Helper()
	short, err := pki.NewIssuer(p.caCert, p.caKey, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := short.Certificate(dnsName)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(cert.Expires) + 100*time.Millisecond)
	return translator.Secrets(s, role, cert.CertPEM, cert.KeyPEM, p.issuer.CAPEM())
}

// Secrets returns the static secrets a role's translated config references:
// the CA bundle and a certificate whose single DNS SAN is dnsName (a node
// name, or the apiserver proxy's name; a test may pick a false one).
func (p *PKI) Secrets(t testing.TB, s model.Settings, role translator.Role, dnsName string) []*tlsv3.Secret {
	t.Helper()
	cert, err := p.issuer.Certificate(dnsName)
	if err != nil {
		t.Fatal(err)
	}
	return translator.Secrets(s, role, cert.CertPEM, cert.KeyPEM, p.issuer.CAPEM())
}

// Package envoytest helps tests run the real Envoy: it finds the binary (and
// skips, or fails under SPOKE_REQUIRE_ENVOY=1, when there is none) and makes
// throwaway tunnel certificates for static bootstraps.
package envoytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/spokeproxy/spoke/envoy"
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

// PKI is a throwaway tunnel CA with helpers to issue leaf certificates.
type PKI struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	CAPEM  []byte
}

// NewPKI makes a fresh CA.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "spoke test tunnel CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &PKI{caCert: cert, caKey: key, CAPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Issue returns PEM certificate and key for one DNS SAN, usable as client and server.
func (p *PKI) Issue(t testing.TB, dnsName string) (certPEM, keyPEM []byte) {
	t.Helper()
	key := newKey(t)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dnsName},
		DNSNames:     []string{dnsName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// Secrets returns the static secrets a role's translated config references:
// the CA bundle and a certificate for dnsName under the role's secret name.
func (p *PKI) Secrets(t testing.TB, s model.Settings, certSecretName, dnsName string) []*tlsv3.Secret {
	cert, key := p.Issue(t, dnsName)
	return []*tlsv3.Secret{
		{Name: s.Secrets.TunnelCA, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(p.CAPEM),
		}}},
		{Name: certSecretName, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(cert), PrivateKey: inline(key),
		}}},
	}
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

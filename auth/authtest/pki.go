// Package authtest holds test helpers for the trust rules: a cluster CA
// that signs kubelet-like client certificates, and files to hand them to
// servers and Envoys.
package authtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/pki"
)

// CA is a certificate authority for tests (a cluster CA, a foreign CA).
type CA struct {
	CertPEM []byte
	cert    *x509.Certificate
	key     crypto.Signer
}

// NewCA makes a fresh CA.
func NewCA(t testing.TB, commonName string) *CA {
	t.Helper()
	certPEM, keyPEM, err := pki.GenerateCA(commonName)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	keyBlock, _ := pem.Decode(keyPEM)
	key, err := x509.ParsePKCS8PrivateKey(keyBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{CertPEM: certPEM, cert: cert, key: key.(crypto.Signer)}
}

// KubeletClient returns a client certificate and key as a kubelet holds
// them: CN system:node:<node>, O system:nodes, valid for an hour.
func (c *CA) KubeletClient(t testing.TB, node string) (certPEM, keyPEM []byte) {
	return c.Client(t, pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}}, time.Now().Add(time.Hour))
}

// Client returns a client certificate for subject expiring at notAfter.
func (c *CA) Client(t testing.TB, subject pkix.Name, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	return c.issue(t, &x509.Certificate{Subject: subject, NotAfter: notAfter, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}

// issue signs tmpl (subject, names, expiry, usage) with a fresh P-256 key.
func (c *CA) issue(t testing.TB, tmpl *x509.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore = time.Now().Add(-2 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// Server returns a serving certificate for the given IP addresses, valid
// for an hour.
func (c *CA) Server(t testing.TB, ips ...net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	return c.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: ips[0].String()},
		IPAddresses: ips,
		NotAfter:    time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// ServerForNames returns a serving certificate for the given DNS names
// (a Service's <name>.<namespace>.svc), valid for an hour.
func (c *CA) ServerForNames(t testing.TB, names ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	return c.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: names[0]},
		DNSNames:    names,
		NotAfter:    time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// WriteFile writes the concatenation of parts to dir/name and returns the path.
func WriteFile(t testing.TB, dir, name string, parts ...[]byte) string {
	t.Helper()
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, all, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

package pki_test

import (
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/pki"
)

// TestTunnelCAFromFiles: a CA from PEM files issues certificates with
// exactly one DNS SAN that chain to it; files that are not a CA, a key of
// another certificate or garbage are refused with a clear error.
func TestTunnelCAFromFiles(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey, err := pki.GenerateCA("file tunnel CA")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := authtest.WriteFile(t, dir, "ca.crt", caCert), authtest.WriteFile(t, dir, "ca.key", caKey)
	issuer, err := pki.LoadIssuerFiles(certFile, keyFile, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := issuer.Certificate("worker-1")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(c.CertPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "worker-1" || len(leaf.IPAddresses)+len(leaf.URIs)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("want exactly one DNS SAN worker-1, got DNS %v IP %v URI %v", leaf.DNSNames, leaf.IPAddresses, leaf.URIs)
	}
	if leaf.NotAfter.Sub(leaf.NotBefore) > time.Hour+10*time.Minute {
		t.Errorf("certificate valid %v, want about the configured hour", leaf.NotAfter.Sub(leaf.NotBefore))
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caCert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("issued certificate does not chain to the file CA: %v", err)
	}

	other, otherKey, _ := pki.GenerateCA("another CA")
	leafOnly := authtest.NewCA(t, "x")
	notCA, notCAKey := leafOnly.KubeletClient(t, "n")
	for name, files := range map[string][2][]byte{
		"key of another CA":   {caCert, otherKey},
		"not a CA":            {notCA, notCAKey},
		"garbage certificate": {[]byte("hello"), caKey},
		"garbage key":         {other, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")},
	} {
		c := authtest.WriteFile(t, dir, "bad.crt", files[0])
		k := authtest.WriteFile(t, dir, "bad.key", files[1])
		if _, err := pki.LoadIssuerFiles(c, k, time.Hour); err == nil || !strings.Contains(err.Error(), "tunnel CA") {
			t.Errorf("%s: want a tunnel CA error, got %v", name, err)
		}
	}
	if _, err := pki.LoadIssuerFiles(filepath.Join(dir, "missing.crt"), keyFile, time.Hour); err == nil {
		t.Error("missing file: want an error")
	}
}

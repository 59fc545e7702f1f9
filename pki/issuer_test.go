package pki_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

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

// TestIssuanceIsDeterministic: two issuers on the same CA (a restarted
// server, another replica) issue byte-identical certificates and keys for a
// name within a period, and new ones in the next period; the certificates
// chain to the CA and the key belongs to the certificate.
func TestIssuanceIsDeterministic(t *testing.T) {
	caCert, caKey, err := pki.GenerateCA("deterministic tunnel CA")
	if err != nil {
		t.Fatal(err)
	}
	// One clock for both issuers, inside the CA's validity (it starts 5 min
	// before now): a fixed date fails once the CA is made after it.
	at := time.Now()
	clock := func() time.Time { return at }
	issuers := make([]*pki.Issuer, 2)
	for n := range issuers {
		if issuers[n], err = pki.NewIssuer(caCert, caKey, 24*time.Hour); err != nil {
			t.Fatal(err)
		}
		issuers[n].SetClock(clock)
	}
	a, _ := issuers[0].Certificate("worker-1")
	b, _ := issuers[1].Certificate("worker-1")
	if !bytes.Equal(a.CertPEM, b.CertPEM) || !bytes.Equal(a.KeyPEM, b.KeyPEM) {
		t.Fatal("two issuers on the same CA issued different certificates for the same name and period")
	}
	if other, _ := issuers[1].Certificate("worker-2"); bytes.Equal(other.KeyPEM, a.KeyPEM) || bytes.Equal(other.CertPEM, a.CertPEM) {
		t.Error("worker-2 got worker-1's key or certificate")
	}
	if _, err := tls.X509KeyPair(a.CertPEM, a.KeyPEM); err != nil {
		t.Errorf("key does not belong to the certificate: %v", err)
	}
	leaf := parseCert(t, a.CertPEM)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caCert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate does not chain to the CA at issuance time: %v", err)
	}
	if left := leaf.NotAfter.Sub(at); left < 8*time.Hour {
		t.Errorf("a fresh certificate has only %v left; at least a third of the validity is promised", left)
	}
	if issuers[0].NeedsRenewal("worker-1") {
		t.Error("renewal due right after issuance")
	}
	at = at.Add(16 * time.Hour) // the next period (two thirds of 24 h later)
	if !issuers[0].NeedsRenewal("worker-1") {
		t.Error("no renewal due one period later")
	}
	next, _ := issuers[0].Certificate("worker-1")
	if bytes.Equal(next.KeyPEM, a.KeyPEM) || parseCert(t, next.CertPEM).SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("the next period's certificate reuses the key or serial")
	}
	again, _ := issuers[1].Certificate("worker-1")
	if !bytes.Equal(again.CertPEM, next.CertPEM) {
		t.Error("the replicas disagree on the next period's certificate")
	}
}

func parseCert(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestReloadRotatesTheCA: the CA files are re-read on Reload; a bundle of
// two CAs is trusted whole and the key picks the signer; files that break
// keep the current CA; an unchanged file is no change.
func TestReloadRotatesTheCA(t *testing.T) {
	dir := t.TempDir()
	oldCert, oldKey, _ := pki.GenerateCA("old")
	newCert, newKey, _ := pki.GenerateCA("new")
	certFile, keyFile := authtest.WriteFile(t, dir, "ca.crt", oldCert), authtest.WriteFile(t, dir, "ca.key", oldKey)
	issuer, err := pki.LoadIssuerFiles(certFile, keyFile, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := issuer.Reload(); changed || err != nil {
		t.Errorf("unchanged files: changed=%v err=%v", changed, err)
	}
	issuedBy := func() string {
		c, err := issuer.Certificate("worker-1")
		if err != nil {
			t.Fatal(err)
		}
		return parseCert(t, c.CertPEM).Issuer.CommonName
	}
	authtest.WriteFile(t, dir, "ca.crt", oldCert, newCert)
	if changed, err := issuer.Reload(); !changed || err != nil || !bytes.Equal(issuer.CAPEM(), append(append([]byte{}, oldCert...), newCert...)) || issuedBy() != "old" {
		t.Errorf("bundle old+new with the old key: changed=%v err=%v issuer=%s", changed, err, issuedBy())
	}
	authtest.WriteFile(t, dir, "ca.key", newKey)
	if changed, err := issuer.Reload(); !changed || err != nil || issuedBy() != "new" {
		t.Errorf("new key: changed=%v err=%v issuer=%s", changed, err, issuedBy())
	}
	authtest.WriteFile(t, dir, "ca.key", oldKey[:20]) // a rotation caught halfway
	if changed, err := issuer.Reload(); changed || err == nil || issuedBy() != "new" {
		t.Errorf("broken key: changed=%v err=%v issuer=%s; want the current CA kept and an error", changed, err, issuedBy())
	}
	authtest.WriteFile(t, dir, "ca.key", newKey)
	authtest.WriteFile(t, dir, "ca.crt", oldCert) // the key (new) belongs to no certificate of the file
	if _, err := issuer.Reload(); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Errorf("key without its certificate: %v", err)
	}
}

// TestReloadRotatesTheCAFromASecret: the tunnel CA from a Secret is got
// again on Reload, through the same rotation steps as the files: old+new
// bundle with the old key, the new key, a broken update kept out, new only.
func TestReloadRotatesTheCAFromASecret(t *testing.T) {
	oldCert, oldKey, _ := pki.GenerateCA("old")
	newCert, newKey, _ := pki.GenerateCA("new")
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "spoke-system", Name: "spoke-tunnel-ca"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: oldCert, corev1.TLSPrivateKeyKey: oldKey}}
	secrets := &oneSecret{secret: secret.DeepCopy()}
	ctx := context.Background()
	issuer, err := pki.LoadIssuerSecret(ctx, secrets, "spoke-system", "spoke-tunnel-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	update := func(cert, key []byte) {
		secret.Data = map[string][]byte{corev1.TLSCertKey: cert, corev1.TLSPrivateKeyKey: key}
		secrets.set(secret.DeepCopy())
	}
	issuedBy := func() string {
		c, err := issuer.Certificate("worker-1")
		if err != nil {
			t.Fatal(err)
		}
		return parseCert(t, c.CertPEM).Issuer.CommonName
	}
	if changed, err := issuer.Reload(); changed || err != nil || issuedBy() != "old" {
		t.Errorf("unchanged Secret: changed=%v err=%v", changed, err)
	}
	bundle := append(append([]byte{}, oldCert...), newCert...)
	update(bundle, oldKey)
	if changed, err := issuer.Reload(); !changed || err != nil || !bytes.Equal(issuer.CAPEM(), bundle) || issuedBy() != "old" {
		t.Errorf("bundle old+new with the old key: changed=%v err=%v issuer=%s", changed, err, issuedBy())
	}
	update(bundle, newKey)
	if changed, err := issuer.Reload(); !changed || err != nil || issuedBy() != "new" {
		t.Errorf("new key: changed=%v err=%v issuer=%s", changed, err, issuedBy())
	}
	update(bundle, newKey[:20])
	if changed, err := issuer.Reload(); changed || err == nil || issuedBy() != "new" {
		t.Errorf("broken key: changed=%v err=%v issuer=%s; want the current CA kept and an error", changed, err, issuedBy())
	}
	update(newCert, newKey)
	if changed, err := issuer.Reload(); !changed || err != nil || !bytes.Equal(issuer.CAPEM(), newCert) {
		t.Errorf("new only: changed=%v err=%v bundle=%d bytes", changed, err, len(issuer.CAPEM()))
	}
}

// oneSecret is a CoreV1 client holding one Secret, as the apiserver would
// hand it out: a copy per Get, NotFound for other names. Only Get is
// implemented (the embedded interface is nil).
type oneSecret struct {
	corev1client.SecretInterface
	mu     sync.Mutex
	secret *corev1.Secret
}

func (o *oneSecret) Secrets(string) corev1client.SecretInterface { return o }

func (o *oneSecret) set(s *corev1.Secret) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.secret = s
}

func (o *oneSecret) Get(_ context.Context, name string, _ metav1.GetOptions) (*corev1.Secret, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if name != o.secret.Name {
		return nil, apierrors.NewNotFound(corev1.Resource("secrets"), name)
	}
	return o.secret.DeepCopy(), nil
}

// TestCAOutsideItsValidityOrOpenKeyRefused: an expired or not yet valid
// tunnel CA, and a CA key group or others may read, are refused with one
// line saying what to do (the server started with no word before, and node
// proxies then refused every certificate).
func TestCAOutsideItsValidityOrOpenKeyRefused(t *testing.T) {
	now := time.Now()
	for name, window := range map[string][2]time.Time{
		"expired at":          {now.Add(-48 * time.Hour), now.Add(-time.Hour)},
		"is not valid before": {now.Add(time.Hour), now.Add(48 * time.Hour)},
	} {
		cert, key, err := pki.GenerateCAValid("bad CA", window[0], window[1])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pki.NewIssuer(cert, key, time.Hour); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: want a refusal saying so, got %v", name, err)
		}
		dir := t.TempDir()
		if _, err := pki.LoadIssuerFiles(authtest.WriteFile(t, dir, "ca.crt", cert), authtest.WriteFile(t, dir, "ca.key", key), time.Hour); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s from files: want a refusal, got %v", name, err)
		}
	}
	cert, key, err := pki.GenerateCA("good CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath := authtest.WriteFile(t, dir, "ca.crt", cert), authtest.WriteFile(t, dir, "ca.key", key)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660} {
		if err := os.Chmod(keyPath, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := pki.LoadIssuerFiles(certPath, keyPath, time.Hour); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("key mode %04o: want a refusal, got %v", mode, err)
		}
	}
	if err := os.Chmod(keyPath, 0o400); err != nil {
		t.Fatal(err)
	}
	issuer, err := pki.LoadIssuerFiles(certPath, keyPath, time.Hour)
	if err != nil {
		t.Fatalf("key mode 0400: %v", err)
	}
	if left := time.Until(issuer.CAExpiry()); left < 9*365*24*time.Hour {
		t.Errorf("CAExpiry: %v left, want ~10 years", left)
	}
}

// Package pki is spoke's tunnel certificate authority: it loads the tunnel
// CA (files, a Kubernetes Secret, or a development CA made in memory) and
// issues the short-lived certificates node and apiserver proxies use for
// their tunnels, renewing them before they expire.
//
// It may import the Kubernetes API client (to read the CA Secret), never
// Envoy, gRPC or the rest of spoke: it hands out PEM bytes, and what goes
// into an Envoy resource is the translator's job.
package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Certificate is PEM material for one tunnel identity. KeyPEM is secret: it
// goes into SDS responses and nowhere else (never logs, dumps or metrics).
type Certificate struct {
	CertPEM []byte
	KeyPEM  []byte
	Expires time.Time
}

// Issuer signs short-lived tunnel certificates, each with exactly one DNS
// SAN, from the tunnel CA: loaded from files or a Kubernetes Secret in
// production (every server replica issues from the same CA), or generated in
// memory for development (a restart then invalidates every tunnel). It also
// serves the xDS port's certificate when no other is configured.
type Issuer struct {
	mu       sync.Mutex
	caCert   *x509.Certificate
	caKey    crypto.Signer
	caPEM    []byte
	validity time.Duration
	issued   map[string]Certificate
	reserved map[string]string // name -> what it identifies; never a node's
}

// NewIssuer issues from the CA in caCertPEM/caKeyPEM (PEM; the key PKCS#8,
// EC or PKCS#1).
func NewIssuer(caCertPEM, caKeyPEM []byte, validity time.Duration) (*Issuer, error) {
	block, _ := pem.Decode(caCertPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("tunnel CA certificate: no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("tunnel CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("tunnel CA certificate %q is not a CA (basicConstraints CA:TRUE is missing)", cert.Subject)
	}
	key, err := parsePrivateKey(caKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("tunnel CA key: %w", err)
	}
	if !publicKeyMatches(cert, key) {
		return nil, fmt.Errorf("tunnel CA key does not belong to the certificate %q", cert.Subject)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("certificate validity must be positive")
	}
	return &Issuer{caCert: cert, caKey: key, validity: validity, issued: map[string]Certificate{}, reserved: map[string]string{},
		caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})}, nil
}

// LoadIssuerFiles reads the tunnel CA from PEM files.
func LoadIssuerFiles(certPath, keyPath string, validity time.Duration) (*Issuer, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("read tunnel CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read tunnel CA key: %w", err)
	}
	return NewIssuer(certPEM, keyPEM, validity)
}

// NewDevelopmentIssuer makes a fresh in-memory CA.
func NewDevelopmentIssuer(validity time.Duration) (*Issuer, error) {
	certPEM, keyPEM, err := GenerateCA("spoke development tunnel CA")
	if err != nil {
		return nil, err
	}
	return NewIssuer(certPEM, keyPEM, validity)
}

// GenerateCA returns a new self-signed CA (P-256, ten years) as PEM, the
// key in PKCS#8.
func GenerateCA(commonName string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("self-sign CA: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

func parsePrivateKey(raw []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, fmt.Errorf("no PEM block")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		if signer, ok := k.(crypto.Signer); ok {
			return signer, nil
		}
		return nil, fmt.Errorf("PKCS#8 key of unsupported type %T", k)
	}
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	return nil, fmt.Errorf("PEM block %q is not a PKCS#8, EC or PKCS#1 private key", block.Type)
}

func publicKeyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
}

// CAPEM is the trust bundle every tunnel end validates its peer against.
func (i *Issuer) CAPEM() []byte { return i.caPEM }

// Certificate returns the certificate for dnsName, issuing a new one when
// there is none or the current one has used two thirds of its validity.
func (i *Issuer) Certificate(dnsName string) (Certificate, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if c, ok := i.issued[dnsName]; ok && !i.due(c) {
		return c, nil
	}
	c, err := i.issue(dnsName)
	if err != nil {
		return Certificate{}, fmt.Errorf("issue tunnel certificate for %s: %w", dnsName, err)
	}
	i.issued[dnsName] = c
	return c, nil
}

// Reserve keeps names for what they identify (the apiserver proxy, the xDS
// server): NodeCertificate refuses them, so a node named like one can never
// hold a certificate that others trust as that one.
func (i *Issuer) Reserve(what string, names ...string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, n := range names {
		i.reserved[n] = what
	}
}

// NodeCertificate is Certificate for a node proxy; reserved names are refused.
func (i *Issuer) NodeCertificate(node string) (Certificate, error) {
	i.mu.Lock()
	what, taken := i.reserved[node]
	i.mu.Unlock()
	if taken {
		return Certificate{}, fmt.Errorf("node name %q is reserved for %s: no tunnel certificate is issued for it; rename the node or change that name", node, what)
	}
	return i.Certificate(node)
}

// NeedsRenewal reports whether dnsName has no certificate yet or is due for
// a new one, so the server knows to re-publish that proxy's secrets.
func (i *Issuer) NeedsRenewal(dnsName string) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	c, ok := i.issued[dnsName]
	return !ok || i.due(c)
}

// RenewalCheckInterval is how often the server should look for certificates
// due for renewal: often enough that none gets near its expiry.
func (i *Issuer) RenewalCheckInterval() time.Duration { return max(i.validity/20, time.Second) }

func (i *Issuer) due(c Certificate) bool { return time.Until(c.Expires) <= i.validity/3 }

// ServingKeyPair returns the xDS port's own certificate for names (DNS
// names or IPs), renewed like tunnel certificates, ready for crypto/tls.
func (i *Issuer) ServingKeyPair(names []string) (*tls.Certificate, error) {
	c, err := i.servingCertificate(names)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
	return &pair, err
}

func (i *Issuer) servingCertificate(names []string) (Certificate, error) {
	key := "xds-serving:" + fmt.Sprint(names)
	i.mu.Lock()
	defer i.mu.Unlock()
	if c, ok := i.issued[key]; ok && !i.due(c) {
		return c, nil
	}
	c, err := i.sign(names[0], names)
	if err != nil {
		return Certificate{}, fmt.Errorf("issue the xDS serving certificate: %w", err)
	}
	i.issued[key] = c
	return c, nil
}

func (i *Issuer) issue(dnsName string) (Certificate, error) {
	return i.sign(dnsName, []string{dnsName})
}

// sign makes a certificate for subjects (each a DNS name or an IP).
func (i *Issuer) sign(commonName string, subjects []string) (Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(i.validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	for _, subject := range subjects {
		if ip := net.ParseIP(subject); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, subject)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.caCert, &key.PublicKey, i.caKey)
	if err != nil {
		return Certificate{}, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Certificate{}, err
	}
	return Certificate{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		Expires: tmpl.NotAfter,
	}, nil
}

// LoadIssuerSecret reads the tunnel CA from a kubernetes.io/tls Secret
// (tls.crt, tls.key). The server needs get on that one Secret, nothing more.
func LoadIssuerSecret(ctx context.Context, client kubernetes.Interface, namespace, name string, validity time.Duration) (*Issuer, error) {
	secret, err := client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("tunnel CA Secret %s/%s: %w (does it exist, and may the server get it?)", namespace, name, err)
	}
	certPEM, keyPEM := secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey]
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return nil, fmt.Errorf("tunnel CA Secret %s/%s: want keys %s and %s", namespace, name, corev1.TLSCertKey, corev1.TLSPrivateKeyKey)
	}
	issuer, err := NewIssuer(certPEM, keyPEM, validity)
	if err != nil {
		return nil, fmt.Errorf("tunnel CA Secret %s/%s: %w", namespace, name, err)
	}
	return issuer, nil
}

package xds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"sync"
	"time"
)

// Certificate is PEM material for one tunnel identity. KeyPEM is secret: it
// goes into SDS responses and nowhere else (never logs, dumps or metrics).
type Certificate struct {
	CertPEM []byte
	KeyPEM  []byte
	Expires time.Time
}

// Issuer signs tunnel certificates with one DNS SAN from a tunnel CA. This is
// the development issuer: it generates its CA in memory at start-up, so every
// restart invalidates all tunnels. Loading the CA from files or a Secret, and
// rotation, belong to the trust work (issue "Trust").
type Issuer struct {
	mu       sync.Mutex
	caCert   *x509.Certificate
	caKey    *ecdsa.PrivateKey
	caPEM    []byte
	validity time.Duration
	issued   map[string]Certificate
}

// NewDevelopmentIssuer makes a fresh in-memory CA.
func NewDevelopmentIssuer(validity time.Duration) (*Issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate tunnel CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: "spoke development tunnel CA"},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign tunnel CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Issuer{
		caCert: cert, caKey: key, validity: validity, issued: map[string]Certificate{},
		caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}, nil
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

func (i *Issuer) issue(dnsName string) (Certificate, error) {
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
		Subject:      pkix.Name{CommonName: dnsName},
		DNSNames:     []string{dnsName},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(i.validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
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

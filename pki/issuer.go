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
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
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

	"github.com/spokeproxy/spoke/filewatch"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// Certificate is PEM material for one tunnel identity. KeyPEM is secret: it
// goes into SDS responses and nowhere else (never logs, dumps or metrics).
type Certificate struct {
	CertPEM []byte
	KeyPEM  []byte
	Expires time.Time
	period  int64 // the issuing period (see Issuer)
}

// Issuer signs short-lived tunnel certificates, each with exactly one DNS
// SAN, from the tunnel CA: loaded from files or a Kubernetes Secret in
// production (every server replica issues from the same CA), or generated in
// memory for development (a restart then invalidates every tunnel). It also
// serves the xDS port's certificate when no other is configured.
//
// Issuance is deterministic: time is cut into periods of two thirds of the
// validity, and the certificate of a name in a period (its key derived from
// the CA key, its serial, its dates, its ECDSA signature per RFC 6979) is the
// same bytes whenever and wherever it is issued. A restarted server, or
// another replica, therefore serves the certificates Envoys already hold,
// and nothing is re-pushed; a new certificate comes at the next period,
// when the current one still has a third of its validity left.
type Issuer struct {
	mu       sync.Mutex
	ca       *caMaterial
	validity time.Duration
	now      func() time.Time
	issued   map[string]Certificate
	reserved map[string]string // name -> what it identifies; never a node's
	source   caSource          // re-reads the CA (files, Secret); nil: it never changes

	servingPair *tls.Certificate // ServingKeyPair's last answer, parsed
	servingPEM  []byte           // the certificate it was parsed from
}

// caSource returns the CA as its source holds it now, and whether it
// changed since the last call; on an error the current CA stays.
type caSource func() (ca *caMaterial, changed bool, err error)

// caMaterial is the signing CA and the trust bundle. During a CA rotation
// the certificate file holds several CA certificates (old and new): all of
// them are trusted, and the one the key belongs to signs.
type caMaterial struct {
	cert   *x509.Certificate
	key    crypto.Signer
	keyDER []byte  // secret input of the key derivation
	id     [8]byte // of the signing certificate: a new signing CA gives new keys and serials
	bundle []byte  // every CA certificate of the file, PEM
}

// parseCA reads a CA bundle and the signing key.
func parseCA(caCertPEM, caKeyPEM []byte) (*caMaterial, error) {
	key, err := parsePrivateKey(caKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("tunnel CA key: %w", err)
	}
	m := &caMaterial{key: key}
	for rest := caCertPEM; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("tunnel CA certificate: %w", err)
		}
		if !cert.IsCA {
			return nil, fmt.Errorf("tunnel CA certificate %q is not a CA (basicConstraints CA:TRUE is missing)", cert.Subject)
		}
		m.bundle = append(m.bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
		if m.cert == nil && publicKeyMatches(cert, key) {
			m.cert = cert
		}
	}
	switch {
	case m.bundle == nil:
		return nil, fmt.Errorf("tunnel CA certificate: no PEM CERTIFICATE block")
	case m.cert == nil:
		return nil, fmt.Errorf("tunnel CA key does not belong to any certificate of the CA file")
	}
	if err := checkValidNow(m.cert, time.Now()); err != nil {
		return nil, err
	}
	if m.keyDER, err = x509.MarshalPKCS8PrivateKey(key); err != nil {
		return nil, fmt.Errorf("tunnel CA key: %w", err)
	}
	sum := sha256.Sum256(m.cert.Raw)
	copy(m.id[:], sum[:])
	return m, nil
}

// checkValidNow refuses a signing CA outside its validity: node proxies
// would refuse every certificate it signs, and nothing else would say why.
func checkValidNow(cert *x509.Certificate, now time.Time) error {
	switch {
	case now.Before(cert.NotBefore):
		return fmt.Errorf("tunnel CA certificate %q is not valid before %s (now %s): check this host's clock, or issue the CA again",
			cert.Subject, cert.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case now.After(cert.NotAfter):
		return fmt.Errorf("tunnel CA certificate %q expired at %s: node proxies would refuse every certificate it signs; rotate it (docs/operations.md, Rotating the tunnel CA)",
			cert.Subject, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// checkKeyFileMode refuses a CA key file that group or others may read or
// write, as ssh refuses an open private key: whoever reads it can issue
// tunnel certificates for any node.
func checkKeyFileMode(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("tunnel CA key: %w", err)
	}
	if mode := info.Mode().Perm(); mode&0o077 != 0 {
		return fmt.Errorf("tunnel CA key %s has mode %04o: group or others may read it and issue tunnel certificates for any node; chmod 600 %s", path, mode, path)
	}
	return nil
}

// CAExpiry is when the signing CA certificate expires.
func (i *Issuer) CAExpiry() time.Time {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.ca.cert.NotAfter
}

// ServingExpiry is when the xDS serving certificate last handed out
// expires (zero before the first TLS handshake).
func (i *Issuer) ServingExpiry() time.Time {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.servingPair == nil || i.servingPair.Leaf == nil {
		return time.Time{}
	}
	return i.servingPair.Leaf.NotAfter
}

// NewIssuer issues from the CA in caCertPEM/caKeyPEM (PEM; the key PKCS#8,
// EC or PKCS#1). caCertPEM may hold several CA certificates (a rotation):
// all are trusted, the one caKeyPEM belongs to signs.
func NewIssuer(caCertPEM, caKeyPEM []byte, validity time.Duration) (*Issuer, error) {
	ca, err := parseCA(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, err
	}
	return newIssuer(ca, validity)
}

func newIssuer(ca *caMaterial, validity time.Duration) (*Issuer, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("certificate validity must be positive")
	}
	return &Issuer{ca: ca, validity: validity, now: time.Now, issued: map[string]Certificate{}, reserved: map[string]string{}}, nil
}

// LoadIssuerFiles reads the tunnel CA from PEM files, and re-reads them on
// Reload (a CA rotation needs no restart).
func LoadIssuerFiles(certPath, keyPath string, validity time.Duration) (*Issuer, error) {
	if err := checkKeyFileMode(keyPath); err != nil {
		return nil, err
	}
	files, err := filewatch.Load(func(c [][]byte) (*caMaterial, error) { return parseCA(c[0], c[1]) }, certPath, keyPath)
	if err != nil {
		return nil, err
	}
	i, err := newIssuer(files.Value(), validity)
	if err != nil {
		return nil, err
	}
	i.source = func() (*caMaterial, bool, error) { return files.Get(0) }
	return i, nil
}

// Reload re-reads the CA (its files or its Secret) and reports whether it
// changed; then every certificate is due and every proxy's secrets must be
// re-published. A CA that cannot be read or does not parse keeps the
// current one (rotations write files one at a time).
func (i *Issuer) Reload() (changed bool, err error) {
	if i.source == nil {
		return false, nil
	}
	ca, changed, err := i.source()
	if err != nil {
		return false, fmt.Errorf("tunnel CA: %w", err)
	}
	if changed {
		i.mu.Lock()
		i.ca = ca
		clear(i.issued) // the new signing CA's certificates (the same ones if only the bundle grew)
		i.mu.Unlock()
	}
	return changed, nil
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
	now := time.Now()
	return GenerateCAValid(commonName, now.Add(-5*time.Minute), now.Add(10*365*24*time.Hour))
}

// GenerateCAValid is GenerateCA with the given validity (tests of expired
// and future CAs).
func GenerateCAValid(commonName string, notBefore, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
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
func (i *Issuer) CAPEM() []byte {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.ca.bundle
}

// SetClock replaces the issuer's clock (tests).
func (i *Issuer) SetClock(now func() time.Time) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.now = now
}

// Certificate returns the certificate of dnsName for the current period.
func (i *Issuer) Certificate(dnsName string) (Certificate, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	c, err := i.current(dnsName, dnsName, []string{dnsName})
	if err != nil {
		return Certificate{}, fmt.Errorf("issue tunnel certificate for %s: %w", dnsName, err)
	}
	return c, nil
}

// current returns the cached certificate under key if it belongs to the
// current period, else signs the period's certificate.
func (i *Issuer) current(key, commonName string, subjects []string) (Certificate, error) {
	period := i.period()
	if c, ok := i.issued[key]; ok && c.period == period {
		return c, nil
	}
	c, err := i.sign(commonName, subjects, period)
	if err != nil {
		return Certificate{}, err
	}
	i.issued[key] = c
	return c, nil
}

// periodLength is two thirds of the validity: a certificate is replaced when
// a third of its life is left.
func (i *Issuer) periodLength() time.Duration { return max(i.validity*2/3, time.Millisecond) }

func (i *Issuer) period() int64 { return i.now().UnixNano() / int64(i.periodLength()) }

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
	return !ok || c.period != i.period()
}

// RenewalCheckInterval is how often the server should look for certificates
// due for renewal: often enough that none gets near its expiry.
func (i *Issuer) RenewalCheckInterval() time.Duration { return max(i.validity/20, time.Second) }

// ServingKeyPair returns the xDS port's own certificate for names (DNS
// names or IPs), renewed like tunnel certificates, ready for crypto/tls.
//
// Every TLS handshake asks for it: the parsed pair is kept until the
// certificate changes.
func (i *Issuer) ServingKeyPair(names []string) (*tls.Certificate, error) {
	c, err := i.servingCertificate(names)
	if err != nil {
		return nil, err
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.servingPair != nil && bytes.Equal(i.servingPEM, c.CertPEM) {
		return i.servingPair, nil
	}
	pair, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
	if err != nil {
		return nil, err
	}
	i.servingPair, i.servingPEM = &pair, c.CertPEM
	return &pair, nil
}

func (i *Issuer) servingCertificate(names []string) (Certificate, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	c, err := i.current("xds-serving:"+fmt.Sprint(names), names[0], names)
	if err != nil {
		return Certificate{}, fmt.Errorf("issue the xDS serving certificate: %w", err)
	}
	return c, nil
}

// sign makes the certificate of period for subjects (each a DNS name or an
// IP): the same bytes every time for the same CA, subjects and period.
func (i *Issuer) sign(commonName string, subjects []string, period int64) (Certificate, error) {
	id := fmt.Sprintf("%x\x00%s\x00%q\x00%d", i.ca.id, commonName, subjects, period)
	key, err := i.derivedKey(id)
	if err != nil {
		return Certificate{}, err
	}
	serial := sha256.Sum256([]byte("spoke tunnel certificate serial\x00" + id))
	start := time.Unix(0, period*int64(i.periodLength()))
	tmpl := &x509.Certificate{
		SerialNumber: new(big.Int).SetBytes(serial[:15]), // 120 bits, positive
		Subject:      pkix.Name{CommonName: commonName},
		NotBefore:    start.Add(-5 * time.Minute),
		NotAfter:     start.Add(i.validity),
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
	// A nil random source makes the CA's signature deterministic (ECDSA per
	// RFC 6979; RSA PKCS#1 v1.5 and Ed25519 are by nature).
	der, err := x509.CreateCertificate(nil, tmpl, i.ca.cert, &key.PublicKey, i.ca.key)
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
		period:  period,
	}, nil
}

// derivedKey is the P-256 key of id, derived from the CA's private key
// with HKDF-SHA256: secret as long as the CA key is, and the same on every
// server replica.
func (i *Issuer) derivedKey(id string) (*ecdsa.PrivateKey, error) {
	for attempt := 0; attempt < 16; attempt++ {
		scalar, err := hkdf.Key(sha256.New, i.ca.keyDER, []byte("spoke tunnel key"), fmt.Sprintf("%s\x00%d", id, attempt), 32)
		if err != nil {
			return nil, err
		}
		// A scalar of zero or above the group order is refused: try the next.
		if key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), scalar); err == nil {
			return key, nil
		}
	}
	return nil, fmt.Errorf("no valid key derived for %s", id)
}

// LoadIssuerSecret reads the tunnel CA from a kubernetes.io/tls Secret
// (tls.crt, tls.key), and gets it again on Reload (a CA rotation, old+new
// bundle then new, needs no restart); ctx bounds every read, so it should
// live as long as the server. The server needs get on that one Secret,
// nothing more. client is a clientset's CoreV1(): naming only the Secrets
// client keeps client-go's clientset (every API group) out of what imports
// pki, which the race detector's builds compile again.
func LoadIssuerSecret(ctx context.Context, client corev1client.SecretsGetter, namespace, name string, validity time.Duration) (*Issuer, error) {
	source := fmt.Sprintf("tunnel CA Secret %s/%s", namespace, name)
	read := func() ([][]byte, error) {
		getCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		secret, err := client.Secrets(namespace).Get(getCtx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("%s: %w (does it exist, and may the server get it?)", source, err)
		}
		return [][]byte{secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey]}, nil
	}
	secret, err := filewatch.LoadFrom(source, read, func(c [][]byte) (*caMaterial, error) {
		if len(c[0]) == 0 || len(c[1]) == 0 {
			return nil, fmt.Errorf("want keys %s and %s", corev1.TLSCertKey, corev1.TLSPrivateKeyKey)
		}
		return parseCA(c[0], c[1])
	})
	if err != nil {
		return nil, err
	}
	issuer, err := newIssuer(secret.Value(), validity)
	if err != nil {
		return nil, err
	}
	issuer.source = func() (*caMaterial, bool, error) { return secret.Get(0) }
	return issuer, nil
}

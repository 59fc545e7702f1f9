package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/pki"
)

// The load runs with authenticated xDS, as deployed: the parent makes a
// cluster CA (standing in for the one that signs kubelet certificates) and
// gives the server its certificate as client CA; the child signs one
// kubelet-like client certificate per simulated node with the CA's key and
// trusts the server's tunnel CA, which issues the xDS serving certificate.
const (
	clusterCACert = "cluster-ca.crt"
	clusterCAKey  = "cluster-ca.key"
	serverCAFile  = "xds-ca.crt"
	serverName    = "spoke-server"
)

// parentTLS writes the files and returns the server's TLS options and issuer.
func parentTLS(dir string) (*auth.TLSOptions, *pki.Issuer, error) {
	caCert, caKey, err := pki.GenerateCA("spoke-load cluster CA")
	if err != nil {
		return nil, nil, err
	}
	issuer, err := pki.NewDevelopmentIssuer(24 * time.Hour)
	if err != nil {
		return nil, nil, err
	}
	for name, data := range map[string][]byte{clusterCACert: caCert, clusterCAKey: caKey, serverCAFile: issuer.CAPEM()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, nil, err
		}
	}
	return &auth.TLSOptions{ClientCAFile: filepath.Join(dir, clusterCACert), ServerNames: []string{serverName}}, issuer, nil
}

// clientCredentials signs a kubelet-like certificate for node and returns
// the gRPC transport credentials of its stream.
type clientSigner struct {
	caCert *x509.Certificate
	caKey  crypto.Signer
	server *serverChainVerifier
}

func loadClientSigner(dir string) (*clientSigner, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, clusterCACert))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, clusterCAKey))
	if err != nil {
		return nil, err
	}
	serverCA, err := os.ReadFile(filepath.Join(dir, serverCAFile))
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(serverCA) {
		return nil, fmt.Errorf("no certificate in %s", serverCAFile)
	}
	return &clientSigner{caCert: caCert, caKey: pair.PrivateKey.(crypto.Signer), server: &serverChainVerifier{roots: roots}}, nil
}

func (s *clientSigner) credentials(node string) (credentials.TransportCredentials, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.caCert, &key.PublicKey, s.caKey)
	if err != nil {
		return nil, err
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	pair, err := tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(&tls.Config{
		ServerName: serverName, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13,
		// crypto/tls still checks each handshake's CertificateVerify
		// signature against the leaf; only the chain is checked here.
		InsecureSkipVerify: true, VerifyConnection: s.server.verify,
	}), nil
}

// serverChainVerifier checks the server's certificate chain as crypto/tls
// would (roots, name, usage), once per distinct chain. Real node proxies
// each verify it on their own machine; 5,000 simulated ones verifying the
// same chain again and again on the server's cores (~0.1 ms each) would
// lengthen the measured start without the server doing any more work.
type serverChainVerifier struct {
	roots    *x509.CertPool
	verified sync.Map // string of the chain's DER -> time.Time the verification holds until
}

func (v *serverChainVerifier) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the server sent no certificate")
	}
	var key strings.Builder
	for _, cert := range cs.PeerCertificates {
		key.Write(cert.Raw)
	}
	if until, ok := v.verified.Load(key.String()); ok && time.Now().Before(until.(time.Time)) {
		return nil
	}
	intermediates := x509.NewCertPool()
	for _, cert := range cs.PeerCertificates[1:] {
		intermediates.AddCert(cert)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: v.roots, Intermediates: intermediates, DNSName: serverName})
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	until := cs.PeerCertificates[0].NotAfter
	for _, cert := range cs.PeerCertificates[1:] {
		if cert.NotAfter.Before(until) {
			until = cert.NotAfter
		}
	}
	v.verified.Store(key.String(), until)
	return nil
}

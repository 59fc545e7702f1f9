package auth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spokeproxy/spoke/filewatch"
)

// TLSOptions secure the xDS TCP port. Files are re-read when their content
// changes (kubelet and cert-manager rotate them), checked at most once per
// ReloadInterval, at handshakes.
type TLSOptions struct {
	// CertFile/KeyFile: the port's serving certificate. Empty: the server
	// issues one from the tunnel CA for ServerNames.
	CertFile, KeyFile string
	ServerNames       []string
	// ClientCAFile: the CA bundle that signs node client certificates
	// (recommended: the cluster CA that signs kubelet client certificates).
	ClientCAFile   string
	ReloadInterval time.Duration
}

// ServingIssuer signs the xDS port's own certificate when no certificate
// file is configured (the tunnel CA's pki.Issuer does).
type ServingIssuer interface {
	ServingKeyPair(names []string) (*tls.Certificate, error)
}

// ServerTLS returns the xDS port's TLS config: TLS 1.3, client certificate
// required, verified against the client CA and mapped to a node (a
// certificate that names no node is refused at the handshake, logged, and
// passed to refused so the server can count it). Without a serving
// certificate file, issuer signs one for o.ServerNames.
func ServerTLS(o TLSOptions, issuer ServingIssuer, refused func(error), log logrus.FieldLogger) (*tls.Config, error) {
	if o.ClientCAFile == "" {
		return nil, errors.New("xDS TLS needs a client CA (--client-ca-file): node proxies authenticate with certificates it signs")
	}
	interval := o.ReloadInterval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	caFile, err := filewatch.Load(parseCAPool, o.ClientCAFile)
	if err != nil {
		return nil, err
	}
	clientCAs := func() *x509.CertPool { return current(caFile, interval, log) }
	var serving func() (*tls.Certificate, error)
	switch {
	case o.CertFile != "" && o.KeyFile != "":
		pair, err := filewatch.Load(parseKeyPair, o.CertFile, o.KeyFile)
		if err != nil {
			return nil, err
		}
		serving = func() (*tls.Certificate, error) { return current(pair, interval, log), nil }
	case o.CertFile != "" || o.KeyFile != "":
		return nil, errors.New("xDS TLS: give both --tls-cert-file and --tls-private-key-file, or neither (the server then issues its own from the tunnel CA)")
	default:
		if len(o.ServerNames) == 0 {
			return nil, errors.New("xDS TLS: no server names for the self-issued serving certificate (--xds-server-name)")
		}
		serving = func() (*tls.Certificate, error) { return issuer.ServingKeyPair(o.ServerNames) }
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		ClientAuth:     tls.RequireAnyClientCert, // verified below, against the current bundle
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serving() },
		// VerifyConnection, not VerifyPeerCertificate: it gets the
		// certificates the handshake already parsed (at 5,000 handshakes a
		// second parse per client was measurable).
		VerifyConnection: func(cs tls.ConnectionState) error {
			err := verifyNodeClient(cs.PeerCertificates, clientCAs)
			if err != nil {
				refused(err)
				log.WithError(err).Warn("refused an xDS client at the TLS handshake")
			}
			return err
		},
		NextProtos: []string{"h2"},
	}, nil
}

// verifyNodeClient checks the chain against the client CA bundle and that
// the leaf names a node.
func verifyNodeClient(certs []*x509.Certificate, clientCAs func() *x509.CertPool) error {
	if len(certs) == 0 {
		return errors.New("no client certificate")
	}
	intermediates := x509.NewCertPool()
	for _, c := range certs[1:] {
		intermediates.AddCert(c)
	}
	leaf := certs[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: clientCAs(), Intermediates: intermediates,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("client certificate %q: %w", leaf.Subject, err)
	}
	if _, err := nodeOfCertificate(leaf); err != nil {
		return err
	}
	return nil
}

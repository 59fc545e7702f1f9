package xds

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/spokeproxy/spoke/translator"
)

// Kubelet client certificates name their node this way (the Node
// authorizer's convention): CN system:node:<name>, O system:nodes.
const (
	nodeCommonNamePrefix = "system:node:"
	nodesOrganization    = "system:nodes"
)

// Identity is what an xDS client proved it is; it decides the role and the
// node whose config the client gets, whatever the client claims.
type Identity struct {
	Proxy Proxy
	// Insecure: plaintext development mode; the proxy is the Envoy's own
	// unverified claim.
	Insecure bool
	// Subject says, for logs, how the identity was established.
	Subject string
}

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

// serverTLS returns the xDS port's TLS config: TLS 1.3, client certificate
// required, verified against the client CA and mapped to a node (a
// certificate that names no node is refused at the handshake, and logged).
func serverTLS(o TLSOptions, issuer *Issuer, m *Metrics, log logrus.FieldLogger) (*tls.Config, error) {
	if o.ClientCAFile == "" {
		return nil, errors.New("xDS TLS needs a client CA (--client-ca-file): node proxies authenticate with certificates it signs")
	}
	interval := o.ReloadInterval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	clientCAs := &reloadingFile{paths: []string{o.ClientCAFile}, interval: interval, parse: parseCAPool, log: log}
	if _, err := clientCAs.get(); err != nil {
		return nil, err
	}
	var serving func() (*tls.Certificate, error)
	switch {
	case o.CertFile != "" && o.KeyFile != "":
		pair := &reloadingFile{paths: []string{o.CertFile, o.KeyFile}, interval: interval, parse: parseKeyPair, log: log}
		if _, err := pair.get(); err != nil {
			return nil, err
		}
		serving = func() (*tls.Certificate, error) {
			v, err := pair.get()
			if err != nil {
				return nil, err
			}
			return v.(*tls.Certificate), nil
		}
	case o.CertFile != "" || o.KeyFile != "":
		return nil, errors.New("xDS TLS: give both --tls-cert-file and --tls-private-key-file, or neither (the server then issues its own from the tunnel CA)")
	default:
		if len(o.ServerNames) == 0 {
			return nil, errors.New("xDS TLS: no server names for the self-issued serving certificate (--xds-server-name)")
		}
		serving = func() (*tls.Certificate, error) {
			c, err := issuer.ServingCertificate(o.ServerNames)
			if err != nil {
				return nil, err
			}
			pair, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
			return &pair, err
		}
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		ClientAuth:     tls.RequireAnyClientCert, // verified below, against the current bundle
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serving() },
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			err := verifyNodeClient(raw, clientCAs)
			if err != nil {
				m.denied.WithLabelValues("client_certificate").Inc()
				log.WithError(err).Warn("refused an xDS client at the TLS handshake")
			}
			return err
		},
		NextProtos: []string{"h2"},
	}, nil
}

// verifyNodeClient checks the chain against the client CA bundle and that
// the leaf names a node.
func verifyNodeClient(raw [][]byte, clientCAs *reloadingFile) error {
	if len(raw) == 0 {
		return errors.New("no client certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("client certificate does not parse: %w", err)
		}
		certs[i] = c
	}
	pool, err := clientCAs.get()
	if err != nil {
		return err
	}
	intermediates := x509.NewCertPool()
	for _, c := range certs[1:] {
		intermediates.AddCert(c)
	}
	leaf := certs[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool.(*x509.CertPool), Intermediates: intermediates,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("client certificate %q: %w", leaf.Subject, err)
	}
	if _, err := nodeOfCertificate(leaf); err != nil {
		return err
	}
	return nil
}

// nodeOfCertificate maps a kubelet client certificate to its node name.
func nodeOfCertificate(c *x509.Certificate) (string, error) {
	name, ok := strings.CutPrefix(c.Subject.CommonName, nodeCommonNamePrefix)
	if !ok || name == "" || !slices.Contains(c.Subject.Organization, nodesOrganization) {
		return "", fmt.Errorf("client certificate %q names no node: want CN %s<node name> and O %s (a kubelet client certificate)",
			c.Subject, nodeCommonNamePrefix, nodesOrganization)
	}
	return name, nil
}

// authenticate derives a stream's identity from its connection: the local
// Unix socket is the apiserver proxy (the socket's file mode admits only
// it); a TLS connection is the node its verified certificate names; a
// plaintext TCP connection exists only in the explicit insecure mode.
func authenticate(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, errors.New("no peer information on the stream")
	}
	if p.Addr != nil && p.Addr.Network() == "unix" {
		return Identity{Proxy: Proxy{Role: translator.RoleAPIServer}, Subject: "local xDS socket"}, nil
	}
	switch info := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		if len(info.State.PeerCertificates) == 0 {
			return Identity{}, errors.New("TLS connection without a client certificate")
		}
		leaf := info.State.PeerCertificates[0]
		name, err := nodeOfCertificate(leaf)
		if err != nil {
			return Identity{}, err
		}
		return Identity{Proxy: Proxy{Role: translator.RoleNode, Node: name}, Subject: leaf.Subject.String()}, nil
	case nil:
		return Identity{Insecure: true, Subject: "plaintext (insecure mode)"}, nil
	default:
		return Identity{}, fmt.Errorf("unexpected transport security %T", info)
	}
}

// reloadingFile caches the parsed content of files and re-reads them when
// their bytes change, checking at most once per interval. A file that is
// missing or does not parse after a good read is logged and the last good
// value stays (rotations replace files in several steps).
type reloadingFile struct {
	paths    []string
	interval time.Duration
	parse    func(contents [][]byte) (any, error)
	log      logrus.FieldLogger

	mu      sync.Mutex
	checked time.Time
	raw     [][]byte
	value   any
}

func (r *reloadingFile) get() (any, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.value != nil && time.Since(r.checked) < r.interval {
		return r.value, nil
	}
	r.checked = time.Now()
	contents := make([][]byte, len(r.paths))
	for i, p := range r.paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			if r.value != nil {
				r.log.WithError(err).WithField("file", p).Warn("cannot re-read: keeping the last good copy")
				return r.value, nil
			}
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		contents[i] = raw
	}
	if r.value != nil && slices.EqualFunc(contents, r.raw, bytes.Equal) {
		return r.value, nil
	}
	v, err := r.parse(contents)
	if err != nil {
		if r.value != nil {
			r.log.WithError(err).WithField("files", r.paths).Warn("changed but does not parse: keeping the last good copy")
			return r.value, nil
		}
		return nil, fmt.Errorf("%s: %w", strings.Join(r.paths, ", "), err)
	}
	if r.value != nil {
		r.log.WithField("files", r.paths).Info("reloaded")
	}
	r.raw, r.value = contents, v
	return v, nil
}

func parseCAPool(contents [][]byte) (any, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(contents[0]) {
		return nil, errors.New("no PEM certificate in the CA bundle")
	}
	return pool, nil
}

func parseKeyPair(contents [][]byte) (any, error) {
	pair, err := tls.X509KeyPair(contents[0], contents[1])
	if err != nil {
		return nil, err
	}
	return &pair, nil
}

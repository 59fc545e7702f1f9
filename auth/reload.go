package auth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/filewatch"
)

// current returns the content of files that kubelet or cert-manager rotate,
// re-read at most once per interval (at handshakes); a new version that
// cannot be read or parsed is logged and the last good one used.
func current[T any](files *filewatch.Files[T], interval time.Duration, log logrus.FieldLogger) T {
	v, changed, err := files.Get(interval)
	switch {
	case err != nil:
		log.WithError(err).Warn("cannot reload: keeping the last good copy")
	case changed:
		log.Info("TLS files reloaded")
	}
	return v
}

func parseCAPool(contents [][]byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(contents[0]) {
		return nil, errors.New("no PEM certificate in the CA bundle")
	}
	return pool, nil
}

func parseKeyPair(contents [][]byte) (*tls.Certificate, error) {
	pair, err := tls.X509KeyPair(contents[0], contents[1])
	if err != nil {
		return nil, err
	}
	return &pair, nil
}

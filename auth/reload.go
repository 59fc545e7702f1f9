package auth

import (
	"bytes"
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
)

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

// Package filewatch holds the parsed content of files that are replaced
// while the server runs (rotated certificates, keys and CA bundles), or of
// any other source of bytes read again and again (a Secret's keys): it
// re-reads them when asked, parses them again only when their bytes
// changed, and keeps the last good content when a new version cannot be
// read or does not parse (rotations replace files one at a time).
//
// It imports nothing of spoke; auth and pki use it.
package filewatch

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Files is the parsed content of a fixed list of files (or of a source
// given to LoadFrom).
type Files[T any] struct {
	source string                   // what is read, for messages
	read   func() ([][]byte, error) // the current contents
	parse  func(contents [][]byte) (T, error)

	mu      sync.Mutex
	checked time.Time
	raw     [][]byte
	value   T
}

// Load reads and parses the files; parse receives their contents in the
// order of paths.
func Load[T any](parse func(contents [][]byte) (T, error), paths ...string) (*Files[T], error) {
	return LoadFrom(strings.Join(paths, ", "), func() ([][]byte, error) { return readFiles(paths) }, parse)
}

// LoadFrom is Load for contents that read returns (source names them in
// messages).
func LoadFrom[T any](source string, read func() ([][]byte, error), parse func(contents [][]byte) (T, error)) (*Files[T], error) {
	f := &Files[T]{source: source, read: read, parse: parse}
	contents, err := f.read()
	if err != nil {
		return nil, err
	}
	if f.value, err = f.parse(contents); err != nil {
		return nil, fmt.Errorf("%s: %w", f.source, err)
	}
	f.raw, f.checked = contents, time.Now()
	return f, nil
}

// Value returns the content as last read, without reading.
func (f *Files[T]) Value() T {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.value
}

// Get returns the content, re-reading the files first when they were last
// read maxAge ago or more (0: now). changed says a new version was taken;
// err says why a new version was not (the last good content is returned).
func (f *Files[T]) Get(maxAge time.Duration) (value T, changed bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.checked) < maxAge {
		return f.value, false, nil
	}
	f.checked = time.Now()
	contents, err := f.read()
	if err != nil {
		return f.value, false, err
	}
	if slices.EqualFunc(contents, f.raw, bytes.Equal) {
		return f.value, false, nil
	}
	v, err := f.parse(contents)
	if err != nil {
		return f.value, false, fmt.Errorf("%s changed but %w: keeping the last good version", f.source, err)
	}
	f.raw, f.value = contents, v
	return v, true, nil
}

func readFiles(paths []string) ([][]byte, error) {
	contents := make([][]byte, len(paths))
	for i, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		contents[i] = raw
	}
	return contents, nil
}

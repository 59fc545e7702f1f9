package xds

import (
	"bytes"
	"context"
	"os"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/translator/input"
	"github.com/spokeproxy/spoke/translator/model"
)

// Update is one full view of the cluster from a source.
type Update struct {
	Objects  model.Objects
	Problems []model.Problem
}

// FileSource watches a cluster dump (the `spoke translate` input format) and
// emits an Update whenever its content changes. Polling the content, not
// inotify, also catches editors' rename-over and Kubernetes' ConfigMap
// symlink swaps. A file that stops parsing keeps the last good state.
type FileSource struct {
	Path     string
	Interval time.Duration
	Log      logrus.FieldLogger
}

// Run polls until ctx ends, calling emit for the first good read and each change.
func (f *FileSource) Run(ctx context.Context, emit func(Update)) {
	var last []byte
	ticker := time.NewTicker(f.Interval)
	defer ticker.Stop()
	for {
		raw, err := os.ReadFile(f.Path)
		switch {
		case err != nil:
			f.Log.WithError(err).WithField("file", f.Path).Error("cannot read the cluster file: serving the last good config")
		case last == nil || !bytes.Equal(raw, last):
			var objs model.Objects
			problems, err := input.Decode(raw, &objs)
			if err != nil {
				f.Log.WithError(err).WithField("file", f.Path).Error("cluster file does not parse: serving the last good config")
			} else {
				f.Log.WithField("file", f.Path).Info("cluster file loaded")
				emit(Update{Objects: objs, Problems: problems})
			}
			last = raw
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

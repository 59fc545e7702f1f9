package source

import (
	"bytes"
	"context"
	"os"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/translator/input"
	"github.com/spokeproxy/spoke/translator/model"
)

// File watches a cluster dump (the `spoke translate` input format) and
// replaces the store's content whenever it changes (the store turns that
// into per-object changes, so an edited pod touches only its node). Polling the content, not
// inotify, also catches editors' rename-over and Kubernetes' ConfigMap
// symlink swaps. A file that stops parsing keeps the last good state.
type File struct {
	Path     string
	Interval time.Duration
	Log      logrus.FieldLogger
}

// Run polls until ctx ends, loading the first good read and each change. While the file cannot be read, polls back off exponentially (up to
// 30 s) so a missing file does not flood the log.
func (f *File) Run(ctx context.Context, sink Sink) {
	var last []byte
	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval, retry.MaxInterval, retry.MaxElapsedTime = f.Interval, 30*time.Second, 0
	for {
		wait := f.Interval
		raw, err := os.ReadFile(f.Path)
		switch {
		case err != nil:
			wait = retry.NextBackOff()
			f.Log.WithError(err).WithFields(logrus.Fields{"file": f.Path, "retry_in": wait.Round(time.Millisecond)}).
				Error("cannot read the cluster file: serving the last good config")
		case last == nil || !bytes.Equal(raw, last):
			var objs model.Objects
			problems, err := input.Decode(raw, &objs)
			if err != nil {
				f.Log.WithError(err).WithField("file", f.Path).Error("cluster file does not parse: serving the last good config")
			} else {
				f.Log.WithField("file", f.Path).Info("cluster file loaded")
				sink.Store.Replace(objs, problems)
				sink.Synced()
				sink.Changed()
			}
			last = raw
		}
		if err == nil {
			retry.Reset()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

package source

import (
	"bytes"
	"context"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/translator/input"
	"github.com/spokeproxy/spoke/translator/model"
)

// File watches a cluster dump (the `spoke translate` input format) and
// replaces the store's content whenever it changes (the store turns that
// into per-object changes, so an edited pod touches only its node). Polling
// the content, not inotify, also catches editors' rename-over and
// Kubernetes' ConfigMap symlink swaps. A file that stops parsing keeps the
// last good state.
//
// A file without a single Node is never a cluster to serve (a truncated
// file, a dump of the wrong namespace): it is refused, at error level and
// through the sink, and the last good config stays served until a file
// with nodes arrives.
//
// A reload that would remove more than half of the nodes or pods is
// suspect: an in-place rewrite caught halfway still parses
// and looks exactly like that, and applying it would strip the routes of
// every Envoy it no longer names. Such content is applied only once it has
// stayed unchanged for Settle; a file that keeps growing is applied at once.
type File struct {
	Path     string
	Interval time.Duration
	// Settle is how long suspect content must stay unchanged before it is
	// applied; zero means four poll intervals (2 s with the default poll).
	Settle time.Duration
	Log    logrus.FieldLogger

	applied      []byte    // the content in the store
	pending      []byte    // suspect content waiting to settle
	pendingSince time.Time // when pending was first read; zero: none
	broken       []byte    // content that did not parse, already reported
	retry        *backoff.ExponentialBackOff
}

// Run polls until ctx ends, loading the first good read and each change.
// While the file cannot be read, polls back off exponentially (up to 30 s)
// so a missing file does not flood the log.
func (f *File) Run(ctx context.Context, sink Sink) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(f.poll(sink)):
		}
	}
}

// poll reads the file once, applies what changed (when it is not suspect,
// or has settled) and says how long to wait before the next poll.
func (f *File) poll(sink Sink) time.Duration {
	if f.retry == nil {
		f.retry = backoff.NewExponentialBackOff()
		f.retry.InitialInterval, f.retry.MaxInterval, f.retry.MaxElapsedTime = f.Interval, 30*time.Second, 0
	}
	raw, err := input.ReadFile(f.Path, input.DefaultMaxBytes)
	if err != nil {
		wait := f.retry.NextBackOff()
		f.Log.WithError(err).WithFields(logrus.Fields{"file": f.Path, "retry_in": wait.Round(time.Millisecond)}).
			Error("cannot read the cluster file: serving the last good config")
		sink.refused("cannot read " + f.Path + ": " + err.Error())
		return wait
	}
	f.retry.Reset()
	if f.applied != nil && bytes.Equal(raw, f.applied) {
		f.clearPending()     // a suspect rewrite that ended where it began
		if f.broken != nil { // so did a refused one
			f.broken = nil
			sink.refused("")
		}
		return f.Interval
	}
	var objs model.Objects
	problems, err := input.Decode(raw, &objs)
	if err != nil {
		if f.broken == nil || !bytes.Equal(raw, f.broken) {
			f.Log.WithError(err).WithField("file", f.Path).Error("cluster file does not parse: serving the last good config")
			f.broken = raw // log once per broken content
			sink.refused(f.Path + " does not parse: " + err.Error())
		}
		return f.Interval
	}
	if len(objs.Nodes) == 0 {
		if f.broken == nil || !bytes.Equal(raw, f.broken) {
			f.Log.WithFields(logrus.Fields{"file": f.Path, "objects": total(objs)}).
				Error("the cluster file holds no Node: refused (a truncated or wrong file?); serving the last good config until a file with nodes arrives")
			f.broken = raw
			sink.refused(f.Path + " holds no Node (truncated, or the wrong file?)")
		}
		return f.Interval
	}
	if why := shrinks(sink.Store.ObjectCounts(), objs); why != "" && f.applied != nil {
		if !f.settled(raw) {
			return f.Interval
		}
		f.Log.WithFields(logrus.Fields{"file": f.Path, "change": why, "unchanged_for": f.settleTime()}).
			Warn("applying a cluster file that removes most of the cluster: it stayed unchanged, so it is meant")
	}
	f.Log.WithField("file", f.Path).Info("cluster file loaded")
	sink.Store.Replace(objs, problems)
	f.applied, f.broken = raw, nil
	f.clearPending()
	sink.refused("")
	sink.Synced()
	sink.Changed()
	return f.Interval
}

// settled records suspect content and reports whether it has stayed the
// same for the settle time.
func (f *File) settled(raw []byte) bool {
	if f.pendingSince.IsZero() || !bytes.Equal(raw, f.pending) {
		f.pending, f.pendingSince = raw, time.Now()
		f.Log.WithFields(logrus.Fields{"file": f.Path, "wait": f.settleTime()}).
			Warn("the cluster file would remove most of the cluster (a rewrite caught halfway?): waiting for it to settle before applying it")
		return false
	}
	return time.Since(f.pendingSince) >= f.settleTime()
}

func (f *File) clearPending() { f.pending, f.pendingSince = nil, time.Time{} }

func (f *File) settleTime() time.Duration {
	if f.Settle > 0 {
		return f.Settle
	}
	return 4 * f.Interval
}

// shrinks says how next would shrink the cluster whose object counts are
// current, when it drops more than half of its nodes or pods; "" otherwise.
func shrinks(current map[string]int, next model.Objects) string {
	switch {
	case len(next.Nodes)*2 < current["Node"]:
		return "nodes " + strconv.Itoa(current["Node"]) + " -> " + strconv.Itoa(len(next.Nodes))
	case len(next.Pods)*2 < current["Pod"]:
		return "pods " + strconv.Itoa(current["Pod"]) + " -> " + strconv.Itoa(len(next.Pods))
	}
	return ""
}

func total(objs model.Objects) int {
	return len(objs.Nodes) + len(objs.Pods) + len(objs.Services) + len(objs.EndpointSlices) + len(objs.ServiceCIDRs)
}

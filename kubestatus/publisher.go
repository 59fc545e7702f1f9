package kubestatus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// Defaults of where reports go and how often.
const (
	DefaultNamespace = "spoke-system"
	DefaultConfigMap = "spoke-status"
	// Heartbeat is the longest a replica leaves its report unwritten: a
	// report older than StaleAfter is from a replica that is down or cut
	// off from the apiserver.
	Heartbeat  = 30 * time.Second
	StaleAfter = 3 * Heartbeat
	// minWrite paces writes while the state keeps changing.
	minWrite = 5 * time.Second
	// ReportBudget is one replica's share of the ConfigMap (1 MiB for all):
	// five replicas fit.
	ReportBudget = 150 << 10
)

// replicaName is what a ConfigMap key allows, less the ".json" suffix.
var replicaName = regexp.MustCompile(`^[-._a-zA-Z0-9]{1,100}$`)

// CheckReplica refuses a replica name that cannot be a ConfigMap key.
func CheckReplica(name string) error {
	if !replicaName.MatchString(name) {
		return fmt.Errorf("replica name %q: use letters, digits, '-', '_' and '.' (it names the replica's key in the status ConfigMap)", name)
	}
	return nil
}

// Key is a replica's key in the status ConfigMap.
func Key(replica string) string { return replica + ".json" }

// Publisher writes one replica's Report into the status ConfigMap by
// server-side apply (a field manager per replica, so replicas never undo
// each other's keys) and puts Node Events on tunnel changes.
type Publisher struct {
	Client    kubernetes.Interface
	Namespace string
	ConfigMap string
	Replica   string
	// Read returns what the replica knows now (Replica may be left empty).
	Read func() Input
	// Interval is how often Read is called (the tunnel read's pace).
	Interval time.Duration
	Log      logrus.FieldLogger

	recorder record.EventRecorder
	nodes    *nodeTracker
	written  []byte // content of the last report written, to skip equal ones
	wroteAt  time.Time
	lastErr  string
}

// Run publishes until ctx ends.
func (p *Publisher) Run(ctx context.Context) {
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: p.Client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	p.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: EventComponent, Host: p.Replica})
	p.nodes = newNodeTracker(p.Replica, time.Now())
	for {
		p.publish(ctx, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-time.After(p.Interval):
		}
	}
}

func (p *Publisher) publish(ctx context.Context, now time.Time) {
	in := p.Read()
	in.Replica = p.Replica
	for _, e := range p.nodes.observe(in, now) {
		p.recorder.Event(nodeReference(e.Node), e.Type, e.Reason, e.Message)
		p.Log.WithFields(logrus.Fields{"node": e.Node, "reason": e.Reason}).Info(e.Message)
	}
	r := Build(in, now, ReportBudget)
	c := content(r)
	if !p.due(c, now) {
		return
	}
	if err := p.apply(ctx, r); err != nil {
		if err.Error() != p.lastErr { // once per distinct error, not per try
			p.Log.WithError(err).Warn("cannot publish this replica's status into the Kubernetes API (kubectl spoke status shows it stale; serving goes on): check the server's RBAC for ConfigMap " + p.Namespace + "/" + p.ConfigMap)
		}
		p.lastErr = err.Error()
		return
	}
	if p.lastErr != "" {
		p.Log.Info("status published into the Kubernetes API again")
	}
	p.lastErr, p.written, p.wroteAt = "", c, now
}

// due says whether a report of content c is worth a write: it changed (at
// most every minWrite), or the heartbeat is due.
func (p *Publisher) due(c []byte, now time.Time) bool {
	since := now.Sub(p.wroteAt)
	if since >= Heartbeat {
		return true
	}
	return since >= minWrite && !bytes.Equal(c, p.written)
}

// content is r without the times that change at every read, as JSON.
func content(r Report) []byte {
	r.UpdatedAt, r.Tunnels.ReadAt = time.Time{}, time.Time{}
	b, _ := json.Marshal(r)
	return b
}

func (p *Publisher) apply(ctx context.Context, r Report) error {
	doc, err := json.Marshal(r)
	if err != nil {
		return err
	}
	cm := corev1ac.ConfigMap(p.ConfigMap, p.Namespace).
		WithLabels(map[string]string{"app.kubernetes.io/part-of": "spoke", "app.kubernetes.io/component": "status"}).
		WithData(map[string]string{Key(p.Replica): string(doc)})
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = p.Client.CoreV1().ConfigMaps(p.Namespace).Apply(ctx, cm, metav1.ApplyOptions{FieldManager: "spoke-server-" + p.Replica, Force: true})
	return err
}

package kubestatus

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	logtest "github.com/sirupsen/logrus/hooks/test"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/spokeproxy/spoke/status"
	"github.com/spokeproxy/spoke/translator/model"
)

func envoy(proxy string, states map[string]string) status.ProxyStatus {
	return status.ProxyStatus{StreamStatus: status.StreamStatus{Proxy: proxy, Types: map[string]*status.TypeStatus{
		"type.googleapis.com/envoy.config.listener.v3.Listener": {LastNack: "listener 'x': bad address"},
	}}, States: states}
}

func TestBuildSaysWhatIsNotSynced(t *testing.T) {
	in := Input{Replica: "cp-1",
		Envoys: []status.ProxyStatus{
			envoy("apiserver", map[string]string{"Listener": status.StateSynced, "Cluster": status.StateSynced}),
			envoy("node/a", map[string]string{"Listener": status.StateNacked, "Cluster": status.StateStale, "Secret": status.StateSynced}),
		},
		Tunnels: status.Tunnels{ReadAt: time.Now(), Nodes: map[string]int{"a": 4, "b": 0}},
	}
	r := Build(in, time.Now(), ReportBudget)
	if r.Envoys["apiserver"] != Synced {
		t.Errorf("apiserver: %q, want %s", r.Envoys["apiserver"], Synced)
	}
	if want := "STALE Cluster; NACKED Listener: listener 'x': bad address"; r.Envoys["node/a"] != want {
		t.Errorf("node/a: %q, want %q", r.Envoys["node/a"], want)
	}
	want := Counts{Envoys: 2, EnvoysNotSynced: 1, Nodes: 2, NodesWithoutTunnel: 1}
	if r.Counts != want {
		t.Errorf("counts %+v, want %+v", r.Counts, want)
	}
	if r.Omitted != "" {
		t.Errorf("a small report omitted %q", r.Omitted)
	}
}

// A cluster too large for the ConfigMap keeps what is wrong and counts the
// rest.
func TestBuildFitsLargeClustersByCountingTheHealthy(t *testing.T) {
	in := Input{Replica: "cp-1", Tunnels: status.Tunnels{ReadAt: time.Now(), Nodes: map[string]int{}, Refusals: map[string]status.Refusal{}}}
	for i := range 20000 {
		node := fmt.Sprintf("node-%05d", i)
		held := 4
		if i%1000 == 0 {
			held = 0
		}
		in.Tunnels.Nodes[node] = held
		state := status.StateSynced
		if i == 7 {
			state = status.StateNacked
		}
		in.Envoys = append(in.Envoys, envoy("node/"+node, map[string]string{"Listener": state}))
	}
	for i := range 500 {
		in.Problems = append(in.Problems, model.Problem{Object: fmt.Sprintf("Pod default/p%d", i), Message: strings.Repeat("x", 100)})
	}
	r := Build(in, time.Now(), ReportBudget)
	doc, _ := json.Marshal(r)
	if len(doc) > ReportBudget {
		t.Errorf("report of %d bytes, budget %d", len(doc), ReportBudget)
	}
	if _, ok := r.Envoys["node/node-00007"]; !ok || len(r.Envoys) != 1 {
		t.Errorf("kept %d Envoys; want only the NACKED one", len(r.Envoys))
	}
	if len(r.Tunnels.Nodes) != 20 || r.Tunnels.Nodes["node-01000"] != 0 {
		t.Errorf("kept %d nodes; want the 20 without tunnel", len(r.Tunnels.Nodes))
	}
	if r.Counts.Nodes != 20000 || r.Counts.NodesWithoutTunnel != 20 || r.Counts.Envoys != 20000 || r.Counts.Problems != 500 {
		t.Errorf("counts %+v", r.Counts)
	}
	if !strings.Contains(r.Omitted, "19999 SYNCED Envoys") || !strings.Contains(r.Omitted, "19980 nodes holding tunnels") {
		t.Errorf("omitted: %q", r.Omitted)
	}
}

func tunnels(at time.Time, nodes map[string]int) Input {
	return Input{Tunnels: status.Tunnels{ReadAt: at, Nodes: nodes, Refusals: map[string]status.Refusal{}}}
}

func TestNodeEventsOnlyForChangesSeen(t *testing.T) {
	start := time.Now()
	tr := newNodeTracker("cp-1", start)
	at := func(s int) time.Time { return start.Add(time.Duration(s) * time.Second) }
	// The first read: a node without tunnel is not news (the apiserver
	// proxy may have just started).
	if ev := tr.observe(tunnels(at(1), map[string]int{"a": 4, "b": 0}), at(1)); len(ev) != 0 {
		t.Fatalf("first read: %v", ev)
	}
	// b's first tunnels are a join, not a restore.
	if ev := tr.observe(tunnels(at(2), map[string]int{"a": 4, "b": 4}), at(2)); len(ev) != 0 {
		t.Fatalf("b joined: %v", ev)
	}
	// The same read again changes nothing.
	if ev := tr.observe(tunnels(at(2), map[string]int{"a": 0, "b": 4}), at(3)); len(ev) != 0 {
		t.Fatalf("an old read: %v", ev)
	}
	ev := tr.observe(tunnels(at(4), map[string]int{"a": 0, "b": 4}), at(4))
	if len(ev) != 1 || ev[0].Node != "a" || ev[0].Reason != ReasonTunnelsLost || ev[0].Type != corev1.EventTypeWarning ||
		!strings.Contains(ev[0].Message, "it held 4") || !strings.Contains(ev[0].Message, "no tunnel of it was refused") {
		t.Fatalf("a lost its tunnels: %+v", ev)
	}
	in := tunnels(at(6), map[string]int{"a": 0, "b": 4})
	in.Tunnels.Error = "read failed"
	if ev := tr.observe(in, at(6)); len(ev) != 0 {
		t.Fatalf("a failed read: %v", ev)
	}
	ev = tr.observe(tunnels(at(14), map[string]int{"a": 2, "b": 4}), at(14))
	if len(ev) != 1 || ev[0].Reason != ReasonTunnelsRestored || !strings.Contains(ev[0].Message, "none for 10s") {
		t.Fatalf("a back: %+v", ev)
	}
}

func TestNodeEventsNameTheRefusal(t *testing.T) {
	start := time.Now()
	tr := newNodeTracker("cp-1", start)
	tr.observe(tunnels(start.Add(time.Second), map[string]int{"a": 4}), start)
	in := tunnels(start.Add(3*time.Second), map[string]int{"a": 0})
	in.Tunnels.Refusals = map[string]status.Refusal{
		"a":        {At: start.Add(2 * time.Second), Class: status.RefusedTLS, Reason: "certificate expired", From: "10.0.0.1:5555"},
		"?1.2.3.4": {At: start.Add(2 * time.Second), Class: status.RefusedTLS, Reason: "no certificate", From: "1.2.3.4:1"},
	}
	in.Envoys = []status.ProxyStatus{envoy("node/a", map[string]string{"Listener": status.StateSynced})}
	ev := tr.observe(in, start.Add(3*time.Second))
	if len(ev) != 2 || ev[0].Reason != ReasonTunnelRefused || ev[1].Reason != ReasonTunnelsLost {
		t.Fatalf("events: %+v", ev)
	}
	if !strings.Contains(ev[0].Message, "certificate expired") || !strings.Contains(ev[1].Message, "refused (tls from 10.0.0.1:5555): certificate expired") ||
		!strings.Contains(ev[1].Message, "still connected to this server's xDS (SYNCED)") {
		t.Errorf("messages: %q / %q", ev[0].Message, ev[1].Message)
	}
	in.Tunnels.ReadAt = start.Add(5 * time.Second)
	if ev := tr.observe(in, start.Add(5*time.Second)); len(ev) != 0 {
		t.Errorf("the same refusal twice: %+v", ev)
	}
}

// The publisher writes its key by server-side apply, leaves other
// replicas' keys alone, skips equal reports and puts Events on Nodes.
func TestPublisherWritesItsKeyAndEvents(t *testing.T) {
	client := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: DefaultConfigMap, Namespace: DefaultNamespace},
		Data: map[string]string{Key("cp-2"): `{"replica":"cp-2"}`}})
	var lost atomic.Bool
	var reads atomic.Int64
	log, _ := logtest.NewNullLogger()
	p := &Publisher{Client: client, Namespace: DefaultNamespace, ConfigMap: DefaultConfigMap, Replica: "cp-1", Interval: 10 * time.Millisecond, Log: log,
		Read: func() Input {
			held := 4
			if lost.Load() {
				held = 0
			}
			return tunnels(time.Unix(reads.Add(1), 0), map[string]int{"a": held})
		}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	waitFor(t, "cp-1's report beside cp-2's", func() bool {
		reports, err := ReadReports(ctx, client, DefaultNamespace, DefaultConfigMap)
		return err == nil && len(reports) == 2 && reports[0].Replica == "cp-1" && reports[0].Tunnels.Nodes["a"] == 4 && reports[1].Replica == "cp-2"
	})
	lost.Store(true)
	waitFor(t, "a TunnelsLost Event on node a", func() bool {
		events, err := client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
		for _, e := range events.Items {
			if err == nil && e.Reason == ReasonTunnelsLost && e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == "a" && e.Source.Host == "cp-1" {
				return true
			}
		}
		return false
	})
	cancel()
	<-done
}

// Writes are paced: a change waits minWrite, an equal report the heartbeat.
func TestPublisherPacesWrites(t *testing.T) {
	now := time.Now()
	held := map[string]int{"a": 4}
	p := &Publisher{written: timelessBuild(held, now), wroteAt: now}
	if p.due(timelessBuild(map[string]int{"a": 0}, now), now.Add(time.Second)) {
		t.Error("a write due 1 s after the last")
	}
	if p.due(timelessBuild(held, now.Add(time.Second)), now.Add(minWrite)) {
		t.Error("an equal report due before the heartbeat")
	}
	if !p.due(timelessBuild(map[string]int{"a": 0}, now), now.Add(minWrite)) {
		t.Error("a changed report not due after minWrite")
	}
	if !p.due(timelessBuild(held, now), now.Add(Heartbeat)) {
		t.Error("the heartbeat not due")
	}
}

func timelessBuild(held map[string]int, at time.Time) []byte {
	return content(Build(tunnels(at, held), at, ReportBudget))
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spokeproxy/spoke/kubestatus"
	"github.com/spokeproxy/spoke/status"
)

// kubectl spoke status names each node without tunnel with why, marks a
// replica that stopped reporting, and lists Envoys not synced and Events.
func TestKubeStatusTable(t *testing.T) {
	now := time.Now()
	st := kubeStatus{Replicas: []kubestatus.Report{
		{Replica: "cp-1", UpdatedAt: now.Add(-3 * time.Second),
			Envoys:  map[string]string{"apiserver": "SYNCED", "node/a": "SYNCED", "node/c": "NACKED Listener: bad\x1b[2J"},
			Counts:  kubestatus.Counts{Envoys: 3, EnvoysNotSynced: 1, Nodes: 3, NodesWithoutTunnel: 2},
			Tunnels: status.Tunnels{Admin: "127.0.0.1:9901", ReadAt: now, Nodes: map[string]int{"a": 4, "b": 0, "c": 0}},
		},
		{Replica: "cp-2", UpdatedAt: now.Add(-10 * time.Minute),
			Envoys: map[string]string{"node/b": "SYNCED"},
			Tunnels: status.Tunnels{Admin: "127.0.0.1:9901", Error: "connection refused", Nodes: map[string]int{"a": 4, "b": 0, "c": 4},
				Refusals: map[string]status.Refusal{"b": {At: now.Add(-time.Minute), Class: "tls", Reason: "certificate expired", From: "10.0.0.2:4000"}}},
		},
	}, Events: []corev1.Event{{InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: "b"}, Reason: kubestatus.ReasonTunnelsLost,
		Message: "the apiserver proxy of spoke server cp-1 holds no tunnel", LastTimestamp: metav1.NewTime(now.Add(-20 * time.Second)), Count: 2}}}
	var out bytes.Buffer
	if err := printKubeStatus(&out, st, now); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	var lines []string // columns apart by one space: the widths are tabwriter's
	for _, l := range strings.Split(out.String(), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	got := strings.Join(lines, "\n")
	for _, want := range []string{
		"cp-2 10m0s ago STALE 0 0 0 0 127.0.0.1:9901 (last read failed: connection refused)",
		"b cp-1,cp-2 connected to cp-2 (SYNCED) 1m0s ago at cp-2: tls: certificate expired",
		"c cp-1 connected to cp-1 (NACKED Listener: bad\\x1b[2J) none",
		"cp-1 node/c NACKED Listener: bad\\x1b[2J",
		"REFUSED TUNNELS at the apiserver proxy of cp-2",
		"20s ago b TunnelsLost 2 the apiserver proxy of spoke server cp-1 holds no tunnel",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q", want)
		}
	}
	if strings.Contains(got, "\x1b") {
		t.Error("a control character reached the terminal")
	}
}

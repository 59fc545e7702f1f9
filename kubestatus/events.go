package kubestatus

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Reasons of the Events spoke puts on Nodes (kubectl describe node shows
// them; kubectl get events --field-selector reason=TunnelsLost finds them).
const (
	ReasonTunnelsLost     = "TunnelsLost"     // Warning: a node went from tunnels to none at a replica's apiserver proxy
	ReasonTunnelsRestored = "TunnelsRestored" // Normal: it holds tunnels there again
	ReasonTunnelRefused   = "TunnelRefused"   // Warning: that apiserver proxy refused a tunnel from it
)

// EventComponent is the source component of spoke's Events.
const EventComponent = "spoke-server"

// recentRefusal is how old a node's last refused tunnel may be and still
// be named as the likely cause when it loses its tunnels: a node proxy
// re-dials within seconds, so an older refusal is history, not the cause.
const recentRefusal = 30 * time.Second

// NodeEvent is one Event on a Node.
type NodeEvent struct {
	Node    string
	Type    string // corev1.EventTypeNormal or corev1.EventTypeWarning
	Reason  string
	Message string
}

// nodeTracker turns successive reads of a replica's state into Node Events:
// only changes it saw happen, so a server that starts (its apiserver proxy
// beside it holding no tunnel yet) does not flood the API.
type nodeTracker struct {
	replica string
	since   time.Time // refusals before this were made before the tracker ran

	readAt  time.Time            // the tunnel read last looked at
	held    map[string]int       // tunnels per node at that read; nil before the first
	lostAt  map[string]time.Time // nodes this tracker reported lost
	refused map[string]time.Time // each node's last refusal already reported
}

func newNodeTracker(replica string, since time.Time) *nodeTracker {
	return &nodeTracker{replica: replica, since: since, lostAt: map[string]time.Time{}, refused: map[string]time.Time{}}
}

// observe returns the Events that in shows happened since the last call.
func (t *nodeTracker) observe(in Input, now time.Time) []NodeEvent {
	events := t.refusals(in)
	tunnels := in.Tunnels
	if tunnels.ReadAt.IsZero() || tunnels.ReadAt.Equal(t.readAt) || tunnels.Error != "" {
		return events // no new read: nothing to compare
	}
	t.readAt = tunnels.ReadAt
	if t.held != nil {
		for node, n := range tunnels.Nodes {
			before, known := t.held[node]
			switch {
			case known && before > 0 && n == 0:
				t.lostAt[node] = now
				events = append(events, NodeEvent{node, corev1.EventTypeWarning, ReasonTunnelsLost, t.lostMessage(in, node, before)})
			case n > 0 && !t.lostAt[node].IsZero():
				events = append(events, NodeEvent{node, corev1.EventTypeNormal, ReasonTunnelsRestored,
					fmt.Sprintf("the apiserver proxy of spoke server %s holds %d tunnels from this node again (none for %s)", t.replica, n, now.Sub(t.lostAt[node]).Round(time.Second))})
				delete(t.lostAt, node)
			}
		}
	}
	for node := range t.lostAt {
		if _, ok := tunnels.Nodes[node]; !ok {
			delete(t.lostAt, node) // the node is gone from the cluster
		}
	}
	t.held = tunnels.Nodes
	return events
}

// lostMessage says what lost tunnels break and the likeliest why.
func (t *nodeTracker) lostMessage(in Input, node string, before int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "the apiserver proxy of spoke server %s holds no tunnel from this node (it held %d): kubectl logs, exec, port-forward and webhooks to it fail with 502", t.replica, before)
	if r, ok := in.Tunnels.Refusals[node]; ok && in.Tunnels.ReadAt.Sub(r.At) < recentRefusal {
		fmt.Fprintf(&b, "; its last tunnel was refused (%s from %s): %s", r.Class, r.From, r.Reason)
	} else {
		b.WriteString("; no tunnel of it was refused: its node proxy stopped, or cannot reach this apiserver proxy (node down, network cut)")
	}
	for _, e := range in.Envoys {
		if e.Proxy == "node/"+node {
			fmt.Fprintf(&b, "; its node proxy is still connected to this server's xDS (%s)", envoySync(e))
			break
		}
	}
	return b.String()
}

// refusals returns an Event per node whose last refused tunnel is new.
func (t *nodeTracker) refusals(in Input) []NodeEvent {
	var events []NodeEvent
	for node, r := range in.Tunnels.Refusals {
		if strings.HasPrefix(node, "?") || !r.At.After(t.since) || !r.At.After(t.refused[node]) {
			continue // a source no node owns has no Node to put it on
		}
		t.refused[node] = r.At
		events = append(events, NodeEvent{node, corev1.EventTypeWarning, ReasonTunnelRefused,
			fmt.Sprintf("the apiserver proxy of spoke server %s refused a tunnel from %s (%s): %s", t.replica, r.From, r.Class, r.Reason)})
	}
	return events
}

// nodeReference is how Events name a Node: kubectl describe node finds
// events whose UID is the node's name, as the kubelet's are.
func nodeReference(node string) *corev1.ObjectReference {
	return &corev1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: node, UID: types.UID(node)}
}

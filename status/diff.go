package status

import (
	"maps"
	"slices"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// Changes of one resource between what the server serves and what an
// Envoy holds.
const (
	ChangeChanged   = "changed"    // both have it; the Envoy's is older
	ChangeNotHeld   = "not held"   // served, and asked for, but not at the Envoy
	ChangeNotServed = "not served" // the Envoy still holds what the server removed
)

// maxDiffListed bounds the resources listed per type (the apiserver proxy
// holds a cluster per node): the count says how many differ.
const maxDiffListed = 200

// ResourceDiff is one resource that differs.
type ResourceDiff struct {
	Name   string `json:"name"`
	Change string `json:"change"`
}

// TypeDiff is, for one type of one Envoy, what the server serves against
// what that Envoy ACKed, resource by resource.
type TypeDiff struct {
	Type          string `json:"type"`
	State         string `json:"state"` // SYNCED, STALE, NACKED
	ServedVersion string `json:"servedVersion"`
	AckedVersion  string `json:"ackedVersion"`
	Served        int    `json:"served"` // resources served that the Envoy asked for
	Held          int    `json:"held"`
	// Unknown says why what the Envoy holds is not known (then nothing is
	// compared): no ACK on this stream yet, or it ACKed a snapshot already
	// replaced when its response was sent.
	Unknown string         `json:"unknown,omitempty"`
	Differ  []ResourceDiff `json:"differ,omitempty"`
	Differs int            `json:"differs"` // all that differ, listed or not
	// Nack is Envoy's message when it refused the version served now.
	Nack string `json:"nack,omitempty"`
}

// EnvoyDiff is one connected Envoy of a proxy.
type EnvoyDiff struct {
	Proxy   string     `json:"proxy"`
	EnvoyID string     `json:"envoyID"`
	Stream  int64      `json:"stream"`
	Delta   bool       `json:"delta"`
	Types   []TypeDiff `json:"types"`
}

// diffTypes are compared in the order Envoy applies them.
var diffTypes = []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.SecretType}

// Diff compares, for every connected Envoy of proxy (a snapshot key), what
// the server serves it now with what it ACKed, without asking the Envoy.
func (t *Tracker) Diff(proxy string) []EnvoyDiff {
	var out []EnvoyDiff
	for _, st := range t.Status() {
		if st.Proxy != proxy {
			continue
		}
		d := EnvoyDiff{Proxy: st.Proxy, EnvoyID: st.EnvoyID, Stream: st.Stream, Delta: st.Delta}
		for _, typeURL := range diffTypes {
			if td, ok := t.diffType(st, typeURL); ok {
				d.Types = append(d.Types, td)
			}
		}
		out = append(out, d)
	}
	return out
}

// diffType compares one type; ok is false when the type is neither served
// to nor asked for by this Envoy.
func (t *Tracker) diffType(st StreamStatus, typeURL string) (TypeDiff, bool) {
	version, snapshot := t.published.SnapshotResources(st.Proxy, typeURL)
	ts := st.Types[typeURL]
	if ts == nil && len(snapshot) == 0 {
		return TypeDiff{}, false
	}
	if ts == nil {
		ts = &TypeStatus{}
	}
	td := TypeDiff{Type: shortType(typeURL), ServedVersion: version, AckedVersion: ts.Acked, State: ts.state(version)}
	if td.State == StateNacked {
		td.Nack = ts.LastNack
	}
	served := snapshot
	if ts.held.asked != nil {
		served = sentSet(snapshot, slices.Collect(maps.Keys(ts.held.asked)))
	}
	td.Served = len(served)
	held := ts.held.resources
	if held == nil {
		td.Unknown = "the Envoy has not ACKed this type on this stream"
		if ts.Acked != "" {
			td.Unknown = "the Envoy ACKed " + ts.Acked + ", a snapshot no longer held by the server"
		}
		return td, true
	}
	td.Held = len(held)
	for _, name := range slices.Sorted(maps.Keys(served)) {
		h, ok := held[name]
		switch {
		case !ok:
			td.add(name, ChangeNotHeld)
		case !proto.Equal(h, served[name]):
			td.add(name, ChangeChanged)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(held)) {
		if _, ok := served[name]; !ok {
			td.add(name, ChangeNotServed)
		}
	}
	return td, true
}

func (td *TypeDiff) add(name, change string) {
	td.Differs++
	if len(td.Differ) < maxDiffListed {
		td.Differ = append(td.Differ, ResourceDiff{Name: name, Change: change})
	}
}

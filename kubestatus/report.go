// Package kubestatus publishes what each spoke server replica knows into the
// Kubernetes API, so that an operator can read it with kubectl alone when the
// data path is down (when kubectl logs to a node fails, a port-forward to the
// server would go through that broken path too):
//
//   - each replica's Report, one key per replica in one ConfigMap
//     (spoke-system/spoke-status): its connected Envoys and their sync state,
//     the tunnels each node holds at its apiserver proxy, each node's last
//     refused tunnel, the problems of the last update;
//   - Events on a Node when it loses or regains its tunnels at a replica's
//     apiserver proxy, or has a tunnel refused.
//
// kubectl spoke status (cmd/kubectl-spoke) reads both back. Publishing never
// affects serving: a write that fails is logged and tried again.
package kubestatus

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spokeproxy/spoke/status"
	"github.com/spokeproxy/spoke/translator/model"
)

// Synced is an Envoy's sync when every type it holds is SYNCED.
const Synced = "SYNCED"

// Report is what one replica publishes, as its key of the status ConfigMap
// holds it (JSON).
type Report struct {
	Replica   string    `json:"replica"`
	UpdatedAt time.Time `json:"updatedAt"`
	// Envoys maps each connected Envoy's proxy (apiserver, node/NAME) to
	// its sync: SYNCED, or each type that is not ("NACKED Listener: why").
	Envoys  map[string]string `json:"envoys"`
	Counts  Counts            `json:"counts"`
	Tunnels status.Tunnels    `json:"tunnels"`
	// Problems are what the last update left out of the config, and why.
	Problems []model.Problem `json:"problems,omitempty"`
	// Omitted says what was counted instead of listed, to keep the
	// ConfigMap within its size limit on a large cluster.
	Omitted string `json:"omitted,omitempty"`
}

// Counts are the report's totals, kept whatever the lists omit.
type Counts struct {
	Envoys             int `json:"envoys"`
	EnvoysNotSynced    int `json:"envoysNotSynced"`
	Nodes              int `json:"nodes"`
	NodesWithoutTunnel int `json:"nodesWithoutTunnel"`
	Problems           int `json:"problems"`
}

// Input is what a replica knows at one moment.
type Input struct {
	Replica  string
	Envoys   []status.ProxyStatus
	Tunnels  status.Tunnels
	Problems []model.Problem
}

// MaxNackText bounds each NACK message kept in a report.
const MaxNackText = 200

// Build makes the report of in, at most budget bytes as JSON where it can:
// past that, healthy entries are counted, not listed, then the longest lists
// are cut (see shrink).
func Build(in Input, at time.Time, budget int) Report {
	r := Report{Replica: in.Replica, UpdatedAt: at.UTC(), Envoys: map[string]string{}, Tunnels: in.Tunnels, Problems: in.Problems}
	for _, e := range in.Envoys {
		sync := envoySync(e)
		if prev, ok := r.Envoys[e.Proxy]; ok { // two Envoys of one proxy (a restart in flight)
			sync = prev + " | " + sync
		}
		r.Envoys[e.Proxy] = sync
	}
	r.Tunnels.Nodes = maps.Clone(in.Tunnels.Nodes)
	r.Tunnels.Refusals = maps.Clone(in.Tunnels.Refusals)
	r.Counts = Counts{Envoys: len(in.Envoys), Nodes: len(in.Tunnels.Nodes),
		NodesWithoutTunnel: len(in.Tunnels.NodesWithoutTunnel()), Problems: len(in.Problems)}
	for _, sync := range r.Envoys {
		if sync != Synced {
			r.Counts.EnvoysNotSynced++
		}
	}
	shrink(&r, budget)
	return r
}

// envoySync is SYNCED, or what is not, type by type, sorted.
func envoySync(e status.ProxyStatus) string {
	var not []string
	for _, typ := range slices.Sorted(maps.Keys(e.States)) {
		state := e.States[typ]
		if state == status.StateSynced {
			continue
		}
		entry := state + " " + typ
		if ts := typeStatus(e, typ); state == status.StateNacked && ts != nil {
			entry += ": " + truncate(ts.LastNack, MaxNackText)
		}
		not = append(not, entry)
	}
	if len(not) == 0 {
		return Synced
	}
	return strings.Join(not, "; ")
}

// typeStatus finds the tracker's entry of a short type name.
func typeStatus(e status.ProxyStatus, short string) *status.TypeStatus {
	for typeURL, ts := range e.Types {
		if strings.HasSuffix(typeURL, "."+short) {
			return ts
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// shrinkSteps cut a report, in order, until it fits: first what is healthy
// (the counts keep it), then the longest lists of problems, each to a
// bounded head.
var shrinkSteps = []struct {
	what string
	cut  func(*Report) int // returns how many entries it dropped
}{
	{"SYNCED Envoys", func(r *Report) int {
		return deleteIf(r.Envoys, func(sync string) bool { return sync == Synced })
	}},
	{"nodes holding tunnels", func(r *Report) int {
		return deleteIf(r.Tunnels.Nodes, func(n int) bool { return n > 0 })
	}},
	{"problems", func(r *Report) int { return cutList(&r.Problems, maxListed) }},
	{"refused tunnels", func(r *Report) int { return keepLatestRefusals(r, maxListed) }},
	{"Envoys not synced", func(r *Report) int { return cutMap(r.Envoys, maxListed) }},
	{"nodes without tunnel", func(r *Report) int { return cutMap(r.Tunnels.Nodes, 10*maxListed) }},
}

// maxListed is the head of a list kept once the report is cut.
const maxListed = 50

func shrink(r *Report, budget int) {
	var omitted []string
	for _, step := range shrinkSteps {
		if size(r) <= budget {
			break
		}
		if n := step.cut(r); n > 0 {
			omitted = append(omitted, fmt.Sprintf("%d %s", n, step.what))
		}
	}
	if len(omitted) > 0 {
		r.Omitted = "counted, not listed, to fit the ConfigMap: " + strings.Join(omitted, ", ")
	}
}

func size(r *Report) int {
	b, _ := json.Marshal(r)
	return len(b)
}

func deleteIf[V any](m map[string]V, drop func(V) bool) int {
	n := len(m)
	maps.DeleteFunc(m, func(_ string, v V) bool { return drop(v) })
	return n - len(m)
}

// cutMap keeps the first keep keys in sorted order.
func cutMap[V any](m map[string]V, keep int) int {
	keys := slices.Sorted(maps.Keys(m))
	if len(keys) <= keep {
		return 0
	}
	for _, k := range keys[keep:] {
		delete(m, k)
	}
	return len(keys) - keep
}

func cutList[T any](l *[]T, keep int) int {
	if len(*l) <= keep {
		return 0
	}
	n := len(*l) - keep
	*l = (*l)[:keep]
	return n
}

// keepLatestRefusals keeps the keep most recent refused tunnels.
func keepLatestRefusals(r *Report, keep int) int {
	keys := status.SortedRefusalKeys(r.Tunnels.Refusals) // latest first
	if len(keys) <= keep {
		return 0
	}
	for _, k := range keys[keep:] {
		delete(r.Tunnels.Refusals, k)
	}
	return len(keys) - keep
}

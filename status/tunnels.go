package status

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/metrics"
)

// tunnelStat is the apiserver proxy's per-node gauge of tunnels held (its
// upstream socket interface with detailed stats, as spoke bootstrap sets
// it; Envoy hides them from /stats unless asked).
const tunnelStat = "reverse_tunnel_responder.nodes."

// TunnelStatsPath is the apiserver proxy's admin path that lists the
// per-node tunnel gauges (ParseTunnelStats reads its answer).
const TunnelStatsPath = "/stats?hidden=include&filter=^reverse_tunnel_responder%5C.nodes%5C."

// Tunnels is what the local apiserver proxy holds: tunnels per node, every
// node of the cluster listed (0: no tunnel), read at ReadAt.
type Tunnels struct {
	Admin  string         `json:"apiserverProxyAdmin"`
	ReadAt time.Time      `json:"readAt"`
	Error  string         `json:"error,omitempty"`
	Nodes  map[string]int `json:"nodes"`
	// Refusals is each node's last refused tunnel connection (from the
	// apiserver proxy's handshake log); sources no node owns are keyed
	// "?<address>".
	Refusals map[string]Refusal `json:"refusals,omitempty"`
}

// TunnelWatcher polls the admin API of the apiserver proxy beside this
// server (on localhost, like the xDS socket) for the tunnels each node
// holds, and publishes them as metrics and in the debug API.
type TunnelWatcher struct {
	Admin    string          // host:port of the apiserver proxy's admin API
	Interval time.Duration   // between reads
	Nodes    func() []string // the cluster's nodes, to flag those without a tunnel
	Metrics  *metrics.Metrics
	Log      logrus.FieldLogger
	// Refusals, when set, gets the apiserver proxy's refused CONNECTs at
	// each read.
	Refusals *RefusalCollector

	mu     sync.Mutex
	latest Tunnels
	shown  map[string]bool // nodes with a spoke_tunnels series
}

// Run polls until ctx ends.
func (w *TunnelWatcher) Run(ctx context.Context) {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		held, err := w.read(ctx, client)
		w.record(held, err)
		if w.Refusals != nil && err == nil {
			if r, err := readAdminStats(ctx, client, w.Admin, refusalStatsPath, "the apiserver proxy's refused CONNECTs", parseConnectRefusals); err == nil {
				w.Refusals.Set(r)
			} // else the tunnels' read says why; the last read stays
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(w.Interval):
		}
	}
}

// Latest returns the last read.
func (w *TunnelWatcher) Latest() Tunnels {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.latest
}

func (w *TunnelWatcher) read(ctx context.Context, client *http.Client) (map[string]int, error) {
	return readAdminStats(ctx, client, w.Admin, TunnelStatsPath, "the apiserver proxy's tunnels", ParseTunnelStats)
}

// readAdminStats reads one stats path of an Envoy's admin API (what names
// what is read, for errors) and parses its lines.
func readAdminStats[T any](ctx context.Context, client *http.Client, admin, path, what string, parse func(*bufio.Scanner) (T, error)) (T, error) {
	var none T
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+path, nil)
	if err != nil {
		return none, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return none, fmt.Errorf("read %s at %s: %w (is it running, with its admin there?)", what, admin, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return none, fmt.Errorf("read %s at %s: %s", what, admin, resp.Status)
	}
	return parse(bufio.NewScanner(resp.Body))
}

// ParseTunnelStats reads "reverse_tunnel_responder.nodes.<node>: <count>"
// lines (node names may contain dots).
func ParseTunnelStats(lines *bufio.Scanner) (map[string]int, error) {
	held := map[string]int{}
	for lines.Scan() {
		name, value, ok := strings.Cut(lines.Text(), ": ")
		node, isNode := strings.CutPrefix(name, tunnelStat)
		if !ok || !isNode || node == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(value))
		if err != nil {
			return nil, fmt.Errorf("tunnel stat %q: %w", lines.Text(), err)
		}
		held[node] += n
	}
	return held, lines.Err()
}

// record publishes a read: every node of the cluster with its tunnels
// (absent: 0), the spoke_tunnels series and the count of nodes without one.
func (w *TunnelWatcher) record(held map[string]int, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if w.latest.Error != err.Error() {
			w.Log.WithError(err).Warn("cannot read tunnels from the apiserver proxy: spoke status and the tunnel metrics keep the last read")
		}
		w.latest.Error = err.Error()
		return
	}
	nodes := map[string]int{}
	for _, n := range w.Nodes() {
		nodes[n] = held[n]
	}
	for n, c := range held {
		nodes[n] = c // a tunnel from a node the model does not know is shown too
	}
	if w.shown == nil {
		w.shown = map[string]bool{}
	}
	without := 0
	for n, c := range nodes {
		w.Metrics.Tunnels.WithLabelValues(n).Set(float64(c))
		w.shown[n] = true
		if c == 0 {
			without++
		}
	}
	for n := range w.shown {
		if _, ok := nodes[n]; !ok {
			w.Metrics.Tunnels.DeleteLabelValues(n)
			delete(w.shown, n)
		}
	}
	w.Metrics.NodesWithoutTunnel.Set(float64(without))
	w.latest = Tunnels{Admin: w.Admin, ReadAt: time.Now(), Nodes: nodes}
}

// NodesWithoutTunnel lists, sorted, the nodes a read found with no tunnel.
func (t Tunnels) NodesWithoutTunnel() []string {
	var out []string
	for n, c := range t.Nodes {
		if c == 0 {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// initiatorHostStat is the node proxy's per-apiserver-proxy gauge of
// tunnels held (its downstream socket interface with detailed stats, as
// spoke bootstrap sets it; hidden from /stats unless asked).
const initiatorHostStat = "reverse_tunnel_initiator.host."

// NodeTunnelStatsPath is the node proxy's admin path that lists them.
const NodeTunnelStatsPath = "/stats?hidden=include&filter=^reverse_tunnel_initiator%5C.host%5C."

// ReadNodeTunnels reads, from a node proxy's admin API at admin, the
// tunnels it holds to each apiserver proxy it dials (host:port -> count;
// one it dials but reaches not is listed with 0).
func ReadNodeTunnels(ctx context.Context, admin string) (map[string]int, error) {
	return readAdminStats(ctx, &http.Client{Timeout: 2 * time.Second}, admin, NodeTunnelStatsPath, "the node proxy's tunnels", ParseNodeTunnelStats)
}

// ParseNodeTunnelStats reads "reverse_tunnel_initiator.host.<host:port>.
// connected: <count>" lines.
func ParseNodeTunnelStats(lines *bufio.Scanner) (map[string]int, error) {
	held := map[string]int{}
	for lines.Scan() {
		name, value, ok := strings.Cut(lines.Text(), ": ")
		host, isHost := strings.CutPrefix(name, initiatorHostStat)
		host, connected := strings.CutSuffix(host, ".connected")
		if !ok || !isHost || !connected || host == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(value))
		if err != nil {
			return nil, fmt.Errorf("tunnel stat %q: %w", lines.Text(), err)
		}
		held[host] = n
	}
	return held, lines.Err()
}

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/e2e/datapath"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/translator/model"
)

// benchConfig sizes the data-path benchmark. make bench-datapath runs the
// full one; make test runs a smoke-sized one so the benchmark keeps working.
type benchConfig struct {
	rounds         int
	setups         int   // set-ups measured idle and beside the bulk streams
	oneStream      int64 // bytes of the 1-stream download
	perStream16    int64 // bytes of each of the 16 parallel downloads
	bulkStreams    int
	apiWorkers     int // --concurrency of the apiserver proxy (the manifests')
	nodeWorkers    int // --concurrency of the node proxies (the manifests')
	restartPause   time.Duration
	full           bool
	memoryNodes    []int // simulated nodes for the memory figure
	tunnelsPerNode int
	systems        string // SPOKE_BENCH_SYSTEMS: the systems to run (names' first words), all when empty
	settings       string // SPOKE_BENCH_SETTINGS: spoke settings (YAML) over the defaults, for tuning runs
}

func benchConfigFor(full bool) benchConfig {
	if full {
		return benchConfig{rounds: 3, setups: 300, oneStream: 256 << 20, perStream16: 32 << 20, bulkStreams: 8, restartPause: time.Second, full: true, memoryNodes: []int{100, 1000}}
	}
	return benchConfig{rounds: 1, setups: 20, oneStream: 4 << 20, perStream16: 1 << 20, bulkStreams: 8, restartPause: 100 * time.Millisecond, memoryNodes: []int{10}}
}

// benchEnv is one system, started, with what a round needs to measure it.
type benchEnv struct {
	dial       datapath.Dialer
	path       string // dial, named for the helper (datapath.DialerFor)
	helper     *datapath.HelperProcess
	bulkTarget string       // on node-a's pod, served by the helper
	targets    []string     // one pod per node, each reachable only through its node's path
	proxies    func() []int // processes whose CPU counts as the system's
	nodeStart  time.Duration
	restart    func() (time.Duration, error) // the control-plane-side proxy; nil for direct TCP
}

// The systems, as the tables name them.
const (
	directName       = "direct TCP"
	konnectivityName = "Konnectivity " + konnectivityVersion
	spokeName        = "spoke (Envoy 1.40)"
)

type benchSystem struct {
	name  string
	start func(t *testing.T, cfg benchConfig) benchEnv
}

// roundResult is one system's figures in one round.
type roundResult struct {
	round              int
	system, load       string
	setup, beside      []time.Duration
	one, sixteen       datapath.Transfer
	cpuSeconds         float64
	bytesMoved         int64
	nodeStart, restart time.Duration
	err                error
}

// TestDatapathBenchmark compares direct TCP, Konnectivity and spoke on the
// same machine in alternating rounds (make bench-datapath). Under make test
// it runs one smoke-sized round of each, so a broken benchmark fails there.
func TestDatapathBenchmark(t *testing.T) {
	full := os.Getenv("SPOKE_BENCH_DATAPATH") == "1"
	cfg := benchConfigFor(full)
	cfg.systems, cfg.settings = os.Getenv("SPOKE_BENCH_SYSTEMS"), os.Getenv("SPOKE_BENCH_SETTINGS")
	cfg.tunnelsPerNode = int(model.DefaultSettings().TunnelsPerEndpoint)
	cfg.apiWorkers, cfg.nodeWorkers = benchWorkers(t)
	if r, err := strconv.Atoi(os.Getenv("SPOKE_BENCH_ROUNDS")); err == nil && r > 0 {
		cfg.rounds = r
	}
	envoytest.Binary(t) // refuses to start without Envoy, saying how to install it
	konnectivityBinaries(t)
	systems := []benchSystem{
		{directName, startDirect},
		{konnectivityName, startKonnectivity},
		{spokeName, startSpoke},
	}
	var results []roundResult
	for round := 1; round <= cfg.rounds; round++ {
		for _, sys := range systems {
			if cfg.systems != "" && !strings.Contains(cfg.systems, strings.Fields(sys.name)[0]) {
				continue
			}
			var res roundResult
			t.Run(fmt.Sprintf("round%d/%s", round, strings.Fields(sys.name)[0]), func(t *testing.T) {
				res = measureRound(t, sys, cfg)
				res.round = round
				if res.err != nil {
					t.Errorf("%s failed round %d: %v", sys.name, round, res.err)
				}
			})
			results = append(results, res)
		}
	}
	var memory []memoryPerNode
	for _, n := range cfg.memoryNodes {
		m := memoryPerNode{nodes: n}
		t.Run(fmt.Sprintf("memory/%d-nodes", n), func(t *testing.T) {
			if m.konn, m.err = konnectivityMemoryPerNode(t, n); m.err == nil {
				m.spoke, m.err = spokeMemoryPerNode(t, n, cfg)
			}
			if m.err != nil {
				t.Errorf("memory per node at %d nodes: %v", n, m.err)
			}
		})
		memory = append(memory, m)
	}
	report := benchTables(results, cfg) + summaryTable(results) + memoryTable(memory, cfg)
	fmt.Print(report)
	if out := os.Getenv("SPOKE_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// benchWorkers is each Envoy's --concurrency: the manifests' unless
// SPOKE_BENCH_ENVOY_CONCURRENCY says "N" (both) or "API,NODE".
func benchWorkers(t *testing.T) (api, node int) {
	knob := os.Getenv("SPOKE_BENCH_ENVOY_CONCURRENCY")
	if knob == "" {
		return manifestWorkers(t)
	}
	a, n, pair := strings.Cut(knob, ",")
	if !pair {
		n = a
	}
	return workerCounts(t, a, n, "SPOKE_BENCH_ENVOY_CONCURRENCY (N or API,NODE)")
}

func memoryTable(rows []memoryPerNode, cfg benchConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n| control-plane-side proxy memory per connected node | Konnectivity proxy-server | spoke apiserver proxy (%d tunnels per node) |\n|---|---|---|\n", cfg.tunnelsPerNode)
	for _, m := range rows {
		if m.err != nil {
			fmt.Fprintf(&b, "| %d nodes | FAILED: %v | |\n", m.nodes, m.err)
			continue
		}
		fmt.Fprintf(&b, "| %d nodes | %.1f KiB | %.1f KiB |\n", m.nodes, float64(m.konn)/1024, float64(m.spoke)/1024)
	}
	return b.String()
}

func measureRound(t *testing.T, sys benchSystem, cfg benchConfig) roundResult {
	res := roundResult{system: sys.name, load: datapath.LoadAverage()}
	env := sys.start(t, cfg)
	res.nodeStart = env.nodeStart
	ctx := context.Background()
	target := env.targets[0]
	if res.setup, res.err = datapath.SetupTimes(ctx, env.dial, target, cfg.setups); res.err != nil {
		return res
	}
	cpuBefore, err := processesCPU(env.proxies())
	if err != nil {
		res.err = err
		return res
	}
	if res.one, res.err = datapath.Download(ctx, env.dial, target, 1, cfg.oneStream); res.err != nil {
		return res
	}
	if res.sixteen, res.err = datapath.Download(ctx, env.dial, target, 16, cfg.perStream16); res.err != nil {
		return res
	}
	cpuAfter, err := processesCPU(env.proxies())
	if err != nil {
		res.err = err
		return res
	}
	res.cpuSeconds, res.bytesMoved = (cpuAfter - cpuBefore).Seconds(), res.one.Bytes+res.sixteen.Bytes
	bulk := env.helper.Bulk(cfg.bulkStreams, env.path, env.bulkTarget)
	if res.beside, _, res.err = datapath.SetupTimesBeside(ctx, env.dial, target, cfg.setups, bulk); res.err != nil {
		return res
	}
	if env.restart != nil {
		time.Sleep(cfg.restartPause)
		res.restart, res.err = env.restart()
	}
	return res
}

func processesCPU(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, pid := range pids {
		cpu, err := datapath.ProcessCPU(pid)
		if err != nil {
			return 0, fmt.Errorf("CPU time of a proxy: %w", err)
		}
		total += cpu
	}
	return total, nil
}

// TestDatapathHelper is the benchmark's helper process (targets and bulk
// streams, datapath.ServeHelper) when the benchmark starts this test binary
// with SPOKE_DATAPATH_HELPER=1; otherwise it does nothing.
func TestDatapathHelper(t *testing.T) {
	if os.Getenv("SPOKE_DATAPATH_HELPER") != "1" {
		return
	}
	if err := datapath.ServeHelper(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchmark helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// benchTargets serves a benchmark target as each node's pod (the addresses
// of clusterTemplate) in this process, and starts the helper process with
// a second target on node-a's pod, on another port, for the bulk streams:
// they then share node-a's path with the set-ups measured beside them but
// not the target's process, so what the figure shows is the path's
// head-of-line blocking, not one Go scheduler's queue.
func benchTargets(t *testing.T, port int) (targets []string, h *datapath.HelperProcess, bulkTarget string) {
	t.Helper()
	for _, ip := range []string{"127.1.1.7", "127.1.2.7"} {
		tg, err := datapath.ListenTarget(fmt.Sprintf("%s:%d", ip, port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tg.Close)
		targets = append(targets, tg.Addr())
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestDatapathHelper$")
	cmd.Env = append(os.Environ(), "SPOKE_DATAPATH_HELPER=1")
	cmd.Stderr = os.Stderr
	dieWithTest(cmd)
	h, err := datapath.StartHelper(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	if bulkTarget, err = h.Target("127.1.1.7:0"); err != nil {
		t.Fatal(err)
	}
	return targets, h, bulkTarget
}

func startDirect(t *testing.T, _ benchConfig) benchEnv {
	targets, h, bulk := benchTargets(t, freePort(t))
	return benchEnv{dial: datapath.Direct(), path: "direct", helper: h, bulkTarget: bulk, targets: targets, proxies: func() []int { return nil }}
}

// waitAll waits until every target works through dial and returns when the
// last one first did.
func waitAll(dial datapath.Dialer, targets []string, within time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var last time.Time
	for _, target := range targets {
		at, err := datapath.WaitConnect(ctx, dial, target, 10*time.Millisecond)
		if err != nil {
			return time.Time{}, err
		}
		last = at
	}
	return last, nil
}

func startKonnectivity(t *testing.T, _ benchConfig) benchEnv {
	k := newKonnectivity(t)
	targets, h, bulk := benchTargets(t, freePort(t))
	k.startServer()
	dial := datapath.ConnectOverUnix(k.socket)
	k.startAgent("node-a", "127.1.1.7")
	if _, err := waitAll(dial, targets[:1], 30*time.Second); err != nil {
		t.Fatal(err)
	}
	started := k.startAgent("node-b", "127.1.2.7")
	reachable, err := waitAll(dial, targets[1:], 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return benchEnv{dial: dial, path: "unix:" + k.socket, helper: h, bulkTarget: bulk, targets: targets, proxies: k.pids, nodeStart: reachable.Sub(started),
		restart: func() (time.Duration, error) {
			stopProcess(k.server)
			started := k.startServer()
			back, err := waitAll(dial, targets, 30*time.Second)
			return back.Sub(started), err
		}}
}

func startSpoke(t *testing.T, cfg benchConfig) benchEnv {
	tp := newTopologyWith(t, func(s *model.Settings) {
		var err error
		if *s, err = model.ApplySettings(*s, []byte(cfg.settings)); err != nil {
			t.Fatalf("SPOKE_BENCH_SETTINGS: %v", err)
		}
	})
	targets, h, bulk := benchTargets(t, tp.port)
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	apiWorkers := []string{"--concurrency", strconv.Itoa(cfg.apiWorkers)}
	workers := []string{"--concurrency", strconv.Itoa(cfg.nodeWorkers)}
	apiProxy := sec.startAPIServerProxyWith(t, tp.bin, "apiserver-1", apiWorkers...)
	dial := datapath.ConnectOverUnix(tp.settings.EgressSocketPath)
	nodes := []*envoytest.Process{sec.startNodeProxyFlags(t, tp.bin, "node-a", workers...)}
	if _, err := waitAll(dial, targets[:1], 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// node-b: from its process start to its first working CONNECT, polled
	// while the Envoy boots.
	started := time.Now()
	reached := make(chan time.Time, 1)
	go func() {
		at, err := waitAll(dial, targets[1:], 30*time.Second)
		if err != nil {
			at = time.Time{}
		}
		reached <- at
	}()
	nodes = append(nodes, sec.startNodeProxyFlags(t, tp.bin, "node-b", workers...))
	reachable := <-reached
	if reachable.IsZero() {
		t.Fatal("node-b never reachable through its node proxy")
	}
	// A node's first tunnel makes it reachable from one apiserver-proxy
	// worker; the measurements start once each node holds all of its
	// tunnels, one or more on every worker (Envoy spreads them).
	want := cfg.nodeWorkers * int(tp.settings.TunnelsPerEndpoint)
	waitFor(t, 10*time.Second, fmt.Sprintf("%d tunnels per node at the apiserver proxy", want), func() bool {
		held, err := tunnelsPerNode(apiProxy)
		return err == nil && held["node-a"] >= want && held["node-b"] >= want
	})
	return benchEnv{dial: dial, path: "unix:" + tp.settings.EgressSocketPath, helper: h, bulkTarget: bulk, targets: targets, nodeStart: reachable.Sub(started),
		proxies: func() []int {
			pids := []int{apiProxy.PID()}
			for _, n := range nodes {
				pids = append(pids, n.PID())
			}
			return pids
		},
		restart: func() (time.Duration, error) {
			apiProxy.Stop()
			started := time.Now()
			apiProxy = sec.startAPIServerProxyWith(t, tp.bin, "apiserver-1", apiWorkers...)
			back, err := waitAll(dial, targets, 30*time.Second)
			return back.Sub(started), err
		}}
}

// benchTables renders every round, then the median of each figure over the
// rounds a system passed, with the targets' ratios.
func benchTables(results []roundResult, cfg benchConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Data path, %d rounds (%s, %d cores, Go %s, %s)\n\n", cfg.rounds, time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(), fmt.Sprintf("Envoy --concurrency %d on the apiserver proxy, %d on node proxies", cfg.apiWorkers, cfg.nodeWorkers))
	b.WriteString("| round | system | load avg | set-up p50 / p99 | 1 stream MB/s | 16 streams MB/s | set-up p50 / p99 beside 8 bulk | proxy CPU s/GB | node start -> CONNECT | proxy restart -> all nodes |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(&b, "| %d | %s | %s | FAILED: %v | | | | | | |\n", r.round, r.system, r.load, r.err)
			continue
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %.0f | %.0f | %s | %s | %s | %s |\n", r.round, r.system, r.load,
			p50p99(r.setup), r.one.MBps(), r.sixteen.MBps(), p50p99(r.beside), cpuText(r.cpuPerGB()), ms(r.nodeStart), ms(r.restart))
	}
	return b.String()
}

// summaryTable is the median of each figure over a system's rounds, and
// spoke's ratios to the others. A system that failed any round gets no
// figures: a failed round is never reported as fast.
func summaryTable(results []roundResult) string {
	var b strings.Builder
	b.WriteString("\n| median of the rounds | set-up p50 / p99 | 1 stream MB/s | 16 streams MB/s | set-up p50 / p99 beside 8 bulk | proxy CPU s/GB | node start -> CONNECT | proxy restart -> all nodes |\n|---|---|---|---|---|---|---|---|\n")
	var order []string
	bySystem := map[string][]roundResult{}
	for _, r := range results {
		if _, ok := bySystem[r.system]; !ok {
			order = append(order, r.system)
		}
		bySystem[r.system] = append(bySystem[r.system], r)
	}
	medians := map[string]roundMedian{}
	for _, name := range order {
		m, failed := medianOf(bySystem[name])
		if failed > 0 {
			fmt.Fprintf(&b, "| %s | FAILED %d of %d rounds: no figures | | | | | | |\n", name, failed, len(bySystem[name]))
			continue
		}
		medians[name] = m
		fmt.Fprintf(&b, "| %s | %s / %s | %.0f | %.0f | %s / %s | %s | %s | %s |\n", name, ms(m.setup50), ms(m.setup99), m.one, m.sixteen,
			ms(m.beside50), ms(m.beside99), cpuText(m.cpu), ms(m.nodeStart), ms(m.restart))
	}
	spoke, okS := medians[spokeName]
	konn, okK := medians[konnectivityName]
	direct, okD := medians[directName]
	if okS && okK && okD {
		fmt.Fprintf(&b, "\nspoke / Konnectivity throughput: %.2fx (1 stream), %.2fx (16 streams); spoke / direct TCP: %.0f%% (1 stream), %.0f%% (16 streams); CPU per GB: spoke %.2f s, Konnectivity %.2f s\n",
			spoke.one/konn.one, spoke.sixteen/konn.sixteen, 100*spoke.one/direct.one, 100*spoke.sixteen/direct.sixteen, spoke.cpu, konn.cpu)
	}
	return b.String()
}

type roundMedian struct {
	setup50, setup99, beside50, beside99, nodeStart, restart time.Duration
	one, sixteen, cpu                                        float64
}

func medianOf(rounds []roundResult) (m roundMedian, failed int) {
	var cols [9][]float64
	for _, r := range rounds {
		if r.err != nil {
			failed++
			continue
		}
		for i, v := range []float64{float64(datapath.Percentile(r.setup, .5)), float64(datapath.Percentile(r.setup, .99)),
			float64(datapath.Percentile(r.beside, .5)), float64(datapath.Percentile(r.beside, .99)),
			float64(r.nodeStart), float64(r.restart), r.one.MBps(), r.sixteen.MBps(), r.cpuPerGB()} {
			cols[i] = append(cols[i], v)
		}
	}
	if failed > 0 || len(cols[0]) == 0 {
		return m, max(failed, 1)
	}
	med := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	d := func(i int) time.Duration { return time.Duration(med(cols[i])) }
	return roundMedian{setup50: d(0), setup99: d(1), beside50: d(2), beside99: d(3), nodeStart: d(4), restart: d(5),
		one: med(cols[6]), sixteen: med(cols[7]), cpu: med(cols[8])}, 0
}

func p50p99(times []time.Duration) string {
	return fmt.Sprintf("%s / %s", ms(datapath.Percentile(times, 0.5)), ms(datapath.Percentile(times, 0.99)))
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + " ms"
}

// cpuPerGB is the proxies' CPU seconds per GB moved; 0 without proxies.
func (r roundResult) cpuPerGB() float64 {
	if r.bytesMoved == 0 {
		return 0
	}
	return r.cpuSeconds / (float64(r.bytesMoved) / 1e9)
}

func cpuText(perGB float64) string {
	if perGB == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", perGB)
}

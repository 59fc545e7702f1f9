package e2e

import (
	"context"
	"encoding/json"
	"errors"
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
	setups         int           // set-ups per round measured idle, beside paced bulk and beside unlimited bulk
	warmupSetups   int           // the same, in the warm-up round
	setupInterval  time.Duration // set-ups start this far apart (SPOKE_BENCH_SETUP_INTERVAL): one set-up rate for every system
	oneStream      int64         // bytes of the 1-stream download
	perStream16    int64         // bytes of each of the 16 parallel downloads
	bulkStreams    int
	pace           int64 // B/s of the paced bulk, all streams; 0: 80% of the slowest system's unlimited bulk in the warm-up
	restarts       int   // control-plane-side proxy restarts per round
	apiWorkers     int   // --concurrency of the apiserver proxy (the manifests')
	nodeWorkers    int   // --concurrency of the node proxies (the manifests')
	restartPause   time.Duration
	full           bool
	memoryNodes    []int // simulated nodes for the memory figure
	tunnelsPerNode int
	systems        string // SPOKE_BENCH_SYSTEMS: the systems to run (names' first words), all when empty
	settings       string // SPOKE_BENCH_SETTINGS: spoke settings (YAML) over the defaults, for tuning runs
	placement      string // SPOKE_BENCH_PLACEMENT: "split" runs the control-plane-side proxy and the node proxies on separate CPUs; "" or "shared": wherever the kernel puts them
}

func benchConfigFor(full bool) benchConfig {
	if full {
		return benchConfig{rounds: 3, setups: 1000, warmupSetups: 200, setupInterval: defaultSetupInterval, oneStream: 256 << 20, perStream16: 32 << 20, bulkStreams: 8, restarts: 4,
			restartPause: time.Second, full: true, memoryNodes: []int{100, 1000}}
	}
	return benchConfig{rounds: 1, setups: 20, warmupSetups: 10, setupInterval: defaultSetupInterval, oneStream: 4 << 20, perStream16: 1 << 20, bulkStreams: 8, restarts: 1,
		restartPause: 100 * time.Millisecond, memoryNodes: []int{10}}
}

// defaultSetupInterval: 250 set-ups a second, about what Konnectivity's
// ~4 ms set-ups beside bulk allow back to back, so no system is measured
// under more set-up load than another.
const defaultSetupInterval = 4 * time.Millisecond

// benchEnv is one system, started, with what a round needs to measure it.
type benchEnv struct {
	dial       datapath.Dialer
	path       string // dial, named for the helper (datapath.DialerFor)
	helper     *datapath.HelperProcess
	bulkTarget string                           // on node-a's pod, served by the helper
	targets    []string                         // one pod per node, each reachable only through its node's path
	proxies    func() []int                     // processes whose CPU counts as the system's
	envoyStats func(fragments ...string) string // spoke: its Envoys' non-zero stats that hold a fragment
	apiStat    func(name string) int            // spoke: a stat of its apiserver proxy
	nodeStat   func(name string) int            // spoke: a stat of node-a's proxy
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
	round               int
	system, load        string
	overloaded          bool // the load average exceeded the cores at the round's start
	setup, paced, free  []time.Duration
	pacedBulk, freeBulk datapath.Transfer // what the bulk beside the set-ups moved
	one, sixteen        datapath.Transfer
	cpuSeconds          float64
	bytesMoved          int64
	setupCPU            time.Duration // the proxies' CPU over the idle set-ups (background included)
	nodeStart           time.Duration
	restarts            []time.Duration
	err                 error
}

// benchSystemsNamed is the systems SPOKE_BENCH_SYSTEMS names by the first
// word of their name, in any case ("spoke", "konnectivity,direct"); all of
// them when it is empty.
func benchSystemsNamed(names string) ([]benchSystem, error) {
	all := []benchSystem{{directName, startDirect}, {konnectivityName, startKonnectivity}, {spokeName, startSpoke}}
	if names == "" {
		return all, nil
	}
	wanted := strings.ToLower(names)
	var known []string
	var chosen []benchSystem
	for _, sys := range all {
		word := strings.ToLower(strings.Fields(sys.name)[0])
		known = append(known, word)
		if strings.Contains(wanted, word) {
			chosen = append(chosen, sys)
		}
	}
	if len(chosen) == 0 {
		return nil, fmt.Errorf("SPOKE_BENCH_SYSTEMS=%q names no system: use one or more of %s (comma-separated), or leave it empty for all", names, strings.Join(known, ", "))
	}
	return chosen, nil
}

// TestDatapathBenchmark compares direct TCP, Konnectivity and spoke on the
// same machine (make bench-datapath): a warm-up round that also sets the
// bulk pace, then rounds whose order rotates, set-ups pooled over the rounds.
// Under make test it runs one smoke-sized round of each, so a broken
// benchmark fails there.
func TestDatapathBenchmark(t *testing.T) {
	full := os.Getenv("SPOKE_BENCH_DATAPATH") == "1"
	cfg := benchConfigFor(full)
	cfg.systems, cfg.settings = os.Getenv("SPOKE_BENCH_SYSTEMS"), os.Getenv("SPOKE_BENCH_SETTINGS")
	switch cfg.placement = os.Getenv("SPOKE_BENCH_PLACEMENT"); cfg.placement {
	case "", "shared", "split":
	default:
		t.Fatalf("SPOKE_BENCH_PLACEMENT=%q: want shared or split", cfg.placement)
	}
	cfg.tunnelsPerNode = int(model.DefaultSettings().TunnelsPerEndpoint)
	cfg.apiWorkers, cfg.nodeWorkers = benchWorkers(t)
	if r, err := strconv.Atoi(os.Getenv("SPOKE_BENCH_ROUNDS")); err == nil && r > 0 {
		cfg.rounds = r
	}
	if p, err := strconv.ParseInt(os.Getenv("SPOKE_BENCH_PACE"), 10, 64); err == nil && p > 0 {
		cfg.pace = p
	}
	if n, err := strconv.Atoi(os.Getenv("SPOKE_BENCH_SETUPS")); err == nil && n > 0 {
		cfg.setups = n
	}
	if d, err := time.ParseDuration(os.Getenv("SPOKE_BENCH_SETUP_INTERVAL")); err == nil && d >= 0 {
		cfg.setupInterval = d
	}
	envoytest.Binary(t) // refuses to start without Envoy, saying how to install it
	konnectivityBinaries(t)
	systems, err := benchSystemsNamed(cfg.systems)
	if err != nil {
		t.Fatal(err)
	}
	warmup := runRound(t, 0, systems, cfg)
	if cfg.pace == 0 {
		cfg.pace = paceFrom(warmup)
	}
	var results []roundResult
	for round := 1; round <= cfg.rounds; round++ {
		rotated := append(slices.Clone(systems[round%len(systems):]), systems[:round%len(systems)]...)
		results = append(results, runRound(t, round, rotated, cfg)...)
	}
	if os.Getenv("SPOKE_BENCH_MEMORY") == "0" { // tuning runs (make bench-curve) need no memory figure
		cfg.memoryNodes = nil
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
	pooled := poolResults(results)
	report := benchTables(append(warmup, results...), cfg) + summaryTable(pooled, cfg) + targetsText(pooled, cfg) + memoryTable(memory, cfg)
	fmt.Print(report)
	writeBenchOutputs(t, report, pooled, cfg)
}

// runRound measures each system once, in order; round 0 is the warm-up
// (fewer set-ups, unlimited bulk only: it sets the pace).
func runRound(t *testing.T, round int, systems []benchSystem, cfg benchConfig) []roundResult {
	var results []roundResult
	for _, sys := range systems {
		res := roundResult{round: round, system: sys.name}
		name := fmt.Sprintf("round%d/%s", round, strings.Fields(sys.name)[0])
		if round == 0 {
			name = "warmup/" + strings.Fields(sys.name)[0]
		}
		passed := t.Run(name, func(t *testing.T) {
			res = measureRound(t, sys, cfg, round == 0)
			res.round = round
			if res.err != nil {
				t.Errorf("%s failed round %d: %v", sys.name, round, res.err)
			}
		})
		if !passed && res.err == nil { // it stopped while starting: a row that says so, never a blank one
			res.system, res.err = sys.name, errors.New("failed before measuring (see the test log)")
		}
		results = append(results, res)
	}
	return results
}

// paceFrom is the paced bulk rate: 80% of the slowest system's unlimited
// bulk in the warm-up, so every system can carry it.
func paceFrom(warmup []roundResult) int64 {
	var slowest float64
	for _, r := range warmup {
		if rate := r.freeBulk.MBps() * 1e6; r.err == nil && rate > 0 && (slowest == 0 || rate < slowest) {
			slowest = rate
		}
	}
	return int64(0.8 * slowest)
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

func measureRound(t *testing.T, sys benchSystem, cfg benchConfig, warmup bool) roundResult {
	res := roundResult{system: sys.name, load: datapath.LoadAverage()}
	res.overloaded = loadExceedsCores(res.load)
	env := sys.start(t, cfg)
	res.nodeStart = env.nodeStart
	if res.err = cfg.place(env.proxies()); res.err != nil {
		return res
	}
	ctx := context.Background()
	target := env.targets[0]
	setups := cfg.setups
	if warmup {
		setups = cfg.warmupSetups
	}
	cpuAtStart, err := processesCPU(env.proxies())
	if err != nil {
		res.err = err
		return res
	}
	if res.setup, res.err = datapath.SetupTimesEvery(ctx, env.dial, target, setups, cfg.setupInterval); res.err != nil {
		return res
	}
	cpuAfterSetups, err := processesCPU(env.proxies())
	if err != nil {
		res.err = err
		return res
	}
	res.setupCPU = cpuAfterSetups - cpuAtStart
	if res.one, res.err = datapath.Download(ctx, env.dial, target, 1, cfg.oneStream); res.err != nil {
		return res
	}
	if res.sixteen, res.err = datapath.Download(ctx, env.dial, target, 16, cfg.perStream16); res.err != nil {
		return res
	}
	cpuAfterDownloads, err := processesCPU(env.proxies())
	if err != nil {
		res.err = err
		return res
	}
	res.cpuSeconds, res.bytesMoved = (cpuAfterDownloads - cpuAfterSetups).Seconds(), res.one.Bytes+res.sixteen.Bytes
	free := env.helper.Bulk(cfg.bulkStreams, env.path, env.bulkTarget, 0)
	if res.free, res.freeBulk, res.err = datapath.SetupTimesBeside(ctx, env.dial, target, setups, cfg.setupInterval, free); res.err != nil {
		res.err = fmt.Errorf("beside unlimited bulk: %w", res.err)
		return res
	}
	if !warmup {
		paced := env.helper.Bulk(cfg.bulkStreams, env.path, env.bulkTarget, cfg.pace)
		if res.paced, res.pacedBulk, res.err = datapath.SetupTimesBeside(ctx, env.dial, target, setups, cfg.setupInterval, paced); res.err != nil {
			res.err = fmt.Errorf("beside bulk paced to %.0f MB/s: %w", float64(cfg.pace)/1e6, res.err)
			return res
		}
	}
	for i := 0; env.restart != nil && !warmup && i < cfg.restarts; i++ {
		time.Sleep(cfg.restartPause)
		took, err := env.restart()
		if err != nil {
			res.err = fmt.Errorf("restart %d: %w", i+1, err)
			return res
		}
		res.restarts = append(res.restarts, took)
		if res.err = cfg.place(env.proxies()); res.err != nil { // the restarted proxy
			return res
		}
	}
	return res
}

// place pins the proxies of pids when the placement is split: the first
// (the control-plane side: the apiserver proxy, Konnectivity's server) to
// CPU 0, the others (node proxies, agents) to CPU 1, every thread, as when
// they run on separate hosts; the client, the targets and the bulk helper
// stay where the kernel puts them. The same for every system.
func (cfg benchConfig) place(pids []int) error {
	if cfg.placement != "split" {
		return nil
	}
	for i, pid := range pids {
		cpu := min(i, 1)
		if out, err := exec.Command("taskset", "-a", "-p", "-c", strconv.Itoa(cpu), strconv.Itoa(pid)).CombinedOutput(); err != nil {
			return fmt.Errorf("pin proxy %d to CPU %d: %v %s", pid, cpu, err, out)
		}
	}
	return nil
}

// loadExceedsCores: the 1-minute load average is above one per core.
func loadExceedsCores(load string) bool {
	perCore, ok := loadPerCore(load)
	return ok && perCore > 1
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
	apiLog, nodeLog := manifestLogLevels(t)
	apiWorkers := deployedEnvoyFlags(cfg.apiWorkers, apiLog)
	workers := deployedEnvoyFlags(cfg.nodeWorkers, nodeLog)
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
	envoyStats := func(fragments ...string) string {
		var b strings.Builder
		for _, p := range append([]*envoytest.Process{apiProxy}, nodes...) {
			var stats []string
			for _, f := range fragments {
				stats = append(stats, p.Stats(f))
			}
			fmt.Fprintf(&b, "%s:\n%s\n", p.Name, nonZero(stats...))
		}
		return b.String()
	}
	t.Cleanup(func() {
		if t.Failed() { // what each Envoy counted of resets, refusals and retries
			t.Log(envoyStats("http2.", "_reset", "rq_5xx", "overflow", "goaway", "cx_destroy", "retry"))
		}
	})
	want := cfg.nodeWorkers * int(tp.settings.TunnelsPerEndpoint)
	waitFor(t, 10*time.Second, fmt.Sprintf("%d tunnels per node at the apiserver proxy", want), func() bool {
		held, err := tunnelsPerNode(apiProxy)
		return err == nil && held["node-a"] >= want && held["node-b"] >= want
	})
	return benchEnv{dial: dial, path: "unix:" + tp.settings.EgressSocketPath, helper: h, bulkTarget: bulk, targets: targets, nodeStart: reachable.Sub(started), envoyStats: envoyStats,
		apiStat:  func(name string) int { return apiProxy.Stat(name) },
		nodeStat: nodes[0].Stat,
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

// benchTables renders every round (round 0 is the warm-up), marking those
// that started with more load than cores.
func benchTables(results []roundResult, cfg benchConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Data path, %d rounds after a warm-up (%s, %d cores, Go %s, Envoy --concurrency %d on the apiserver proxy, %d on node proxies)\n\n",
		cfg.rounds, time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(), cfg.apiWorkers, cfg.nodeWorkers)
	if cfg.settings != "" {
		fmt.Fprintf(&b, "spoke settings over the defaults: `%s`\n\n", strings.Join(strings.Fields(cfg.settings), " "))
	}
	if cfg.placement == "split" {
		b.WriteString("Placement split: the control-plane-side proxy pinned to CPU 0, the node proxies to CPU 1 (SPOKE_BENCH_PLACEMENT=split).\n\n")
	}
	fmt.Fprintf(&b, "Set-ups one every %v (SPOKE_BENCH_SETUP_INTERVAL), idle, beside %d bulk streams paced to %.0f MB/s in all (80%% of the slowest system's unlimited bulk in the warm-up, or SPOKE_BENCH_PACE), and beside unlimited bulk; the bulk's achieved rate in brackets. `*`: the load average exceeded the %d cores at the round's start.\n\n",
		cfg.setupInterval, cfg.bulkStreams, float64(cfg.pace)/1e6, runtime.NumCPU())
	b.WriteString("| round | system | load avg | set-up p50 / p99 | proxy CPU per idle set-up | 1 stream MB/s | 16 streams MB/s | beside paced bulk p50 / p99 | beside unlimited bulk p50 / p99 | proxy CPU s/GB | node start -> CONNECT | proxy restart -> all nodes |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		round := strconv.Itoa(r.round)
		if r.round == 0 {
			round = "warm-up"
		}
		load := r.load
		if r.overloaded {
			load += " *"
		}
		if r.err != nil {
			fmt.Fprintf(&b, "| %s | %s | %s | FAILED: %v | | | | | | | | |\n", round, r.system, load, r.err)
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %.0f | %.0f | %s | %s | %s | %s | %s |\n", round, r.system, load,
			p50p99(r.setup), usText(r.cpuPerSetup()), r.one.MBps(), r.sixteen.MBps(), besideText(r.paced, r.pacedBulk)+belowPace(r.pacedBulk.MBps(), cfg), besideText(r.free, r.freeBulk),
			cpuText(r.cpuPerGB()), ms(r.nodeStart), ms(median(r.restarts)))
	}
	return b.String()
}

// belowPace flags a paced bulk that did not reach 90% of the pace: that
// system's set-ups then competed with less bulk than the others'.
func belowPace(mbps float64, cfg benchConfig) string {
	if mbps > 0 && mbps < 0.9*float64(cfg.pace)/1e6 {
		return " BELOW PACE"
	}
	return ""
}

func besideText(times []time.Duration, bulk datapath.Transfer) string {
	if len(times) == 0 {
		return "-"
	}
	return fmt.Sprintf("%s (%.0f MB/s)", p50p99(times), bulk.MBps())
}

// pooledResult is one system over every round: set-ups pooled (percentiles
// of all samples), the rest as medians of the rounds.
type pooledResult struct {
	System      string     `json:"system"`
	Rounds      int        `json:"rounds"`
	Failed      int        `json:"failed_rounds"`
	Samples     int        `json:"samples_per_measure"`
	SetupMs     [3]float64 `json:"setup_ms_p50_p90_p99"`
	SetupCPUus  float64    `json:"proxy_cpu_us_per_idle_setup"`
	PacedMs     [3]float64 `json:"beside_paced_bulk_ms_p50_p90_p99"`
	FreeMs      [3]float64 `json:"beside_unlimited_bulk_ms_p50_p90_p99"`
	PacedBulk   float64    `json:"paced_bulk_mbps"`
	FreeBulk    float64    `json:"unlimited_bulk_mbps"`
	One         float64    `json:"one_stream_mbps"`
	Sixteen     float64    `json:"sixteen_streams_mbps"`
	CPU         float64    `json:"cpu_seconds_per_gb"`
	NodeStartMs float64    `json:"node_start_ms"`
	RestartMs   [2]float64 `json:"restart_ms_p50_p99"`
	Restarts    int        `json:"restarts"`
}

func poolResults(results []roundResult) []pooledResult {
	var order []string
	by := map[string][]roundResult{}
	for _, r := range results {
		if _, ok := by[r.system]; !ok {
			order = append(order, r.system)
		}
		by[r.system] = append(by[r.system], r)
	}
	var out []pooledResult
	for _, name := range order {
		out = append(out, pool(name, by[name]))
	}
	return out
}

func pool(name string, rounds []roundResult) pooledResult {
	p := pooledResult{System: name, Rounds: len(rounds)}
	var setup, paced, free, restarts []time.Duration
	var cols [7][]float64
	for _, r := range rounds {
		if r.err != nil {
			p.Failed++
			continue
		}
		setup, paced, free = append(setup, r.setup...), append(paced, r.paced...), append(free, r.free...)
		restarts = append(restarts, r.restarts...)
		for i, v := range []float64{r.one.MBps(), r.sixteen.MBps(), r.cpuPerGB(), float64(r.nodeStart), r.pacedBulk.MBps(), r.freeBulk.MBps(), r.cpuPerSetup()} {
			cols[i] = append(cols[i], v)
		}
	}
	if p.Failed > 0 {
		return p
	}
	p.Samples = len(setup)
	p.SetupMs, p.PacedMs, p.FreeMs = percentilesMs(setup), percentilesMs(paced), percentilesMs(free)
	p.One, p.Sixteen, p.CPU = medianF(cols[0]), medianF(cols[1]), medianF(cols[2])
	p.NodeStartMs, p.PacedBulk, p.FreeBulk, p.SetupCPUus = medianF(cols[3])/1e6, medianF(cols[4]), medianF(cols[5]), medianF(cols[6])
	p.Restarts = len(restarts)
	p.RestartMs = [2]float64{msF(datapath.Percentile(restarts, .5)), msF(datapath.Percentile(restarts, .99))}
	return p
}

func percentilesMs(times []time.Duration) [3]float64 {
	return [3]float64{msF(datapath.Percentile(times, .5)), msF(datapath.Percentile(times, .9)), msF(datapath.Percentile(times, .99))}
}

func msF(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func medianF(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

func median(times []time.Duration) time.Duration { return datapath.Percentile(times, .5) }

// summaryTable: set-up percentiles pooled over every round (with their
// sample count), the rest medians of the rounds. A system that failed any
// round gets no figures: a failed round is never reported as fast.
func summaryTable(pooled []pooledResult, cfg benchConfig) string {
	var b strings.Builder
	b.WriteString("\n| all rounds | set-up samples | set-up p50 / p90 / p99 | proxy CPU per idle set-up | beside paced bulk p50 / p90 / p99 | beside unlimited bulk p50 / p90 / p99 | 1 stream MB/s | 16 streams MB/s | proxy CPU s/GB | node start -> CONNECT | proxy restart -> all nodes p50 / p99 |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range pooled {
		if p.Failed > 0 {
			fmt.Fprintf(&b, "| %s | FAILED %d of %d rounds: no figures | | | | | | | | | |\n", p.System, p.Failed, p.Rounds)
			continue
		}
		restart := "-"
		if p.Restarts > 0 {
			restart = fmt.Sprintf("%.0f / %.0f ms (%d restarts)", p.RestartMs[0], p.RestartMs[1], p.Restarts)
		}
		fmt.Fprintf(&b, "| %s | %d per measure | %s | %s | %s (%.0f MB/s%s) | %s (%.0f MB/s) | %.0f | %.0f | %s | %.0f ms | %s |\n", p.System, p.Samples,
			msTriple(p.SetupMs), usText(p.SetupCPUus), msTriple(p.PacedMs), p.PacedBulk, belowPace(p.PacedBulk, cfg), msTriple(p.FreeMs), p.FreeBulk, p.One, p.Sixteen, cpuText(p.CPU), p.NodeStartMs, restart)
	}
	return b.String()
}

func msTriple(v [3]float64) string { return fmt.Sprintf("%.2f / %.2f / %.2f ms", v[0], v[1], v[2]) }

// targetsText checks spoke against the targets, as ratios to Konnectivity
// in this run.
func targetsText(pooled []pooledResult, cfg benchConfig) string {
	var spoke, konn *pooledResult
	for i := range pooled {
		switch pooled[i].System {
		case spokeName:
			spoke = &pooled[i]
		case konnectivityName:
			konn = &pooled[i]
		}
	}
	if spoke == nil || konn == nil || spoke.Failed > 0 || konn.Failed > 0 {
		return "\nTargets: not checked (spoke and Konnectivity must both pass every round).\n"
	}
	if belowPace(spoke.PacedBulk, cfg) != "" || belowPace(konn.PacedBulk, cfg) != "" {
		return "\nTargets: not checked (a paced bulk stayed below its pace: the set-ups beside it did not compete with equal bulk).\n"
	}
	var b strings.Builder
	b.WriteString("\n| target (spoke against Konnectivity, this run) | spoke | Konnectivity | ratio | met |\n|---|---|---|---|---|\n")
	check := func(name string, s, k, limit float64, atMost bool) {
		ratio := s / k
		met := ratio <= limit
		if !atMost {
			met = ratio >= limit
		}
		fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.2fx | %s |\n", name, s, k, ratio, map[bool]string{true: "yes", false: "NO"}[met])
	}
	check("set-up p50 beside paced bulk (ms), at most 1/3", spoke.PacedMs[0], konn.PacedMs[0], 1.0/3, true)
	check("set-up p99 beside paced bulk (ms), at most 1/3", spoke.PacedMs[2], konn.PacedMs[2], 1.0/3, true)
	check("idle set-up p99 (ms), at most 1/2", spoke.SetupMs[2], konn.SetupMs[2], 0.5, true)
	check("1 stream (MB/s), at least 2.5x", spoke.One, konn.One, 2.5, false)
	check("16 streams (MB/s), at least 2.5x", spoke.Sixteen, konn.Sixteen, 2.5, false)
	check("proxy CPU per GB (s), at most 1/2", spoke.CPU, konn.CPU, 0.5, true)
	fmt.Fprintf(&b, "| apiserver proxy restart -> every node reachable, p99 under 2 s | %.0f ms over %d restarts | %.0f ms | | %s |\n",
		spoke.RestartMs[1], spoke.Restarts, konn.RestartMs[1], map[bool]string{true: "yes", false: "NO"}[spoke.RestartMs[1] < 2000 && spoke.Restarts >= 10])
	return b.String()
}

// benchRun is the benchmark's machine-readable output (SPOKE_BENCH_JSON),
// what cmd/spoke-benchplot draws.
type benchRun struct {
	Date     string         `json:"date"`
	Settings string         `json:"settings"` // spoke settings over the defaults ("" for the defaults)
	PaceMBps float64        `json:"paced_bulk_target_mbps"`
	Rounds   int            `json:"rounds"`
	Systems  []pooledResult `json:"systems"`
}

func writeBenchOutputs(t *testing.T, report string, pooled []pooledResult, cfg benchConfig) {
	if out := os.Getenv("SPOKE_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out := os.Getenv("SPOKE_BENCH_JSON"); out != "" {
		run := benchRun{Date: time.Now().UTC().Format(time.RFC3339), Settings: strings.Join(strings.Fields(cfg.settings), " "),
			PaceMBps: float64(cfg.pace) / 1e6, Rounds: cfg.rounds, Systems: pooled}
		raw, err := json.MarshalIndent(run, "", "  ")
		if err == nil {
			err = os.WriteFile(out, raw, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
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

// cpuPerSetup is the proxies' CPU per idle set-up in µs, their background
// work over the set-ups' span included; 0 without proxies or set-ups.
func (r roundResult) cpuPerSetup() float64 {
	if len(r.setup) == 0 {
		return 0
	}
	return float64(r.setupCPU.Microseconds()) / float64(len(r.setup))
}

func usText(us float64) string {
	if us == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f µs", us)
}

func cpuText(perGB float64) string {
	if perGB == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", perGB)
}

// nonZero keeps the lines of Envoy stats whose value is not 0.
func nonZero(stats ...string) string {
	var keep []string
	for _, line := range strings.Split(strings.Join(stats, "\n"), "\n") {
		if line != "" && !strings.HasSuffix(line, ": 0") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

// TestBenchSystemsNamed: SPOKE_BENCH_SYSTEMS picks systems by the first word
// of their name in any case, and a value naming none is an error that lists
// the names, not an empty benchmark.
func TestBenchSystemsNamed(t *testing.T) {
	for names, want := range map[string][]string{
		"":                    {directName, konnectivityName, spokeName},
		"spoke":               {spokeName},
		"Konnectivity":        {konnectivityName},
		"konnectivity,DIRECT": {directName, konnectivityName},
	} {
		systems, err := benchSystemsNamed(names)
		if err != nil {
			t.Errorf("SPOKE_BENCH_SYSTEMS=%q: %v", names, err)
			continue
		}
		var got []string
		for _, s := range systems {
			got = append(got, s.name)
		}
		if !slices.Equal(got, want) {
			t.Errorf("SPOKE_BENCH_SYSTEMS=%q chose %q, want %q", names, got, want)
		}
	}
	if _, err := benchSystemsNamed("envoy"); err == nil || !strings.Contains(err.Error(), "direct, konnectivity, spoke") {
		t.Errorf("SPOKE_BENCH_SYSTEMS=envoy: got %v, want an error listing the systems", err)
	}
}

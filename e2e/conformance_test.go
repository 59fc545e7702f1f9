package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// conformanceFocus picks the upstream e2e tests of the paths from the
// control plane to nodes: kubectl logs and exec (over websockets), the
// kubelet's logs, the pod and service proxies, kubectl port-forward (not
// part of Conformance, but the same path).
const conformanceFocus = `Pods should support remote command execution over websockets|Pods should support retrieving logs from the container over websockets|` +
	`Kubelet when scheduling a busybox command in a pod should print the output to logs|Kubectl logs logs should be able to retrieve and filter logs|` +
	`Proxy version v1|Kubectl Port forwarding With a server listening on (0.0.0.0|localhost)`

// conformanceImages builds, from binaries on this machine, the upstream
// test images the focused tests use, under their upstream names (no
// registry is reachable), behaving as upstream's do: busybox (Debian's
// static one) with no entrypoint, sh as its CMD and every applet linked
// (tar for kubectl cp, wget, ...) and a printenv (testdata/printenv: the
// applet Debian's busybox lacks); agnhost (2.66.1 and the
// previous 2.55) with pause as its default command, porter's certificate
// and busybox's applets beside it; nginx as a stand-in that serves HTTP on
// port 80 (agnhost netexec) with the same shell. All run as root with a
// /tmp, as upstream's do.
func conformanceImages(t *testing.T) []string {
	t.Helper()
	agnhost, busybox := kubeTool(t, "agnhost"), nodeHostTools["busybox"]
	porter := filepath.Join(kubeModuleDir(t), "test", "images", "agnhost", "porter")
	applets, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		t.Fatalf("%s --list-full: %v", busybox, err)
	}
	shell := []string{"--user", "0", "--dir", "/tmp:1777", "--add", "testdata/printenv=/usr/bin/printenv"}
	for _, applet := range strings.Fields(string(applets)) {
		if applet != "bin/busybox" {
			shell = append(shell, "--link", "/"+applet+"=/bin/busybox")
		}
	}
	withShell := func(args ...string) []string { return append(args, shell...) }
	agnhostFiles := []string{"--static", agnhost, "--add", busybox + "=/bin/busybox",
		"--add", filepath.Join(porter, "localhost.crt") + "=/localhost.crt", "--add", filepath.Join(porter, "localhost.key") + "=/localhost.key"}
	images := []struct {
		tag  string
		args []string
	}{
		{"registry.k8s.io/e2e-test-images/agnhost:2.66.1", withShell(slices.Concat(agnhostFiles, []string{"--cmd", "pause"})...)},
		{"registry.k8s.io/e2e-test-images/agnhost:2.55", withShell(slices.Concat(agnhostFiles, []string{"--cmd", "pause"})...)},
		{"registry.k8s.io/e2e-test-images/busybox:1.37.0-2", withShell("--static", busybox, "--path", "/bin/busybox", "--no-entrypoint", "--cmd", "sh")},
		{"registry.k8s.io/e2e-test-images/nginx:1.27.0-2", withShell(slices.Concat(agnhostFiles, []string{"--arg", "netexec", "--arg", "--http-port=80", "--arg", "--udp-port=-1"})...)},
	}
	return buildOnce(t, "conformance-images", func(dir string) ([]string, error) {
		var out []string
		for _, img := range images {
			archive := filepath.Join(dir, filepath.Base(strings.ReplaceAll(img.tag, ":", "-"))+".tar")
			if err := spokeImage(archive, slices.Concat(img.args, []string{"--tag", img.tag})...); err != nil {
				return nil, err
			}
			out = append(out, archive)
		}
		return out, nil
	})
}

// kubeModuleDir is the module cache's k8s.io directory (where
// k8s.io/kubernetes@<version> was downloaded to build the tools).
func kubeModuleDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "k8s.io", "kubernetes@"+kubeVersion)
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("%s missing: run `make tools-kube`", dir)
	}
	return dir
}

// TestConformanceThroughSpoke runs the upstream e2e tests of logs, exec,
// proxy and port-forward (e2e.test built from k8s.io/kubernetes, the same
// version as the cluster) against a real cluster whose only way from the
// control plane to its nodes is spoke. Every focused test must pass.
func TestConformanceThroughSpoke(t *testing.T) {
	c := startSpokeCluster(t, []clusterNode{
		{"node-a", "172.30.1.1", "10.244.1.0/24", nodeOptions{isolated: true, index: 1}},
		{"node-b", "172.30.2.1", "10.244.2.0/24", nodeOptions{isolated: true, index: 2}},
	}, conformanceImages(t)...)
	specs, run := runUpstreamE2E(t, c.cp.adminKubeconfig(t), conformanceFocus, upstreamProcs(t), func() (int, error) {
		return c.apiProxy.StatSumOf("cluster.node/", ".upstream_rq_total"), nil
	})
	checkUpstreamSpecs(t, specs, run, 10)
}

// upstreamProcs is how many ginkgo processes run the upstream specs (set by
// SPOKE_UPSTREAM_PROCS; 1 runs them one after the other). The specs mostly
// wait for pods, so more processes than cores pay: measured in
// docs/testing.md.
func upstreamProcs(t *testing.T) int {
	t.Helper()
	v := os.Getenv("SPOKE_UPSTREAM_PROCS")
	if v == "" {
		return 4
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("SPOKE_UPSTREAM_PROCS=%q: want a number of processes, 1 or more", v)
	}
	return n
}

// upstreamSpec is one spec of an upstream e2e run: its state and the
// streams the apiserver proxy carried while it ran.
type upstreamSpec struct {
	name, state        string
	start, end         time.Time
	streams, alongside int
}

// runUpstreamE2E runs e2e.test (built from k8s.io/kubernetes, the
// cluster's version) with focus against the cluster of kubeconfig, in procs
// parallel processes under the ginkgo CLI (as upstream's CI does), reading
// streams() (what the apiserver proxy has carried) ten times a second to
// give each spec the streams carried while it ran. It fails the test if the
// suite fails or runs nothing.
func runUpstreamE2E(t *testing.T, kubeconfig, focus string, procs int, streams func() (int, error)) ([]upstreamSpec, streamTimeline) {
	t.Helper()
	ginkgo, e2eTest := kubeTool(t, "ginkgo"), kubeTool(t, "e2e.test")
	reportDir := t.TempDir()
	samples := sampleStreams(streams)
	start := time.Now()
	cmd := exec.Command(ginkgo, "run", "--procs", strconv.Itoa(procs), "--no-color", "--timeout", "20m",
		"--focus", focus, "--skip", `\[Serial\]|\[Disruptive\]|\[Slow\]|\[Feature:|\[Flaky\]`,
		"--output-dir", reportDir, "--json-report", "report.json",
		e2eTest, "--",
		"--kubeconfig", kubeconfig, "--provider", "skeleton", "--kubectl-path", kubeTool(t, "kubectl"),
		"--report-dir", reportDir, "--minStartupPods", "0")
	logFile := filepath.Join(reportDir, "e2e.log")
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	err = cmd.Run()
	f.Close()
	timeline := samples.stop()
	out, _ := os.ReadFile(logFile)
	summary := regexp.MustCompile(`Ran (\d+) of \d+ Specs.*\n.*(SUCCESS|FAIL)!.*`).FindString(string(out))
	t.Logf("upstream e2e through spoke, %d processes, %v: %s", procs, time.Since(start).Round(time.Second), summary)
	if err != nil || summary == "" || strings.HasPrefix(summary, "Ran 0 ") {
		t.Errorf("ginkgo run e2e.test: %v\n%s", err, tail(string(out), 12000))
	}
	specs := jsonSpecs(t, filepath.Join(reportDir, "report.json"))
	for i := range specs {
		specs[i].streams = timeline.between(specs[i].start, specs[i].end)
		for j, other := range specs {
			if j != i && other.start.Before(specs[i].end) && specs[i].start.Before(other.end) {
				specs[i].alongside++
			}
		}
	}
	return specs, timeline
}

// checkUpstreamSpecs logs each spec with the streams carried while it ran
// (shared with the specs that ran alongside it) and fails on any spec that
// did not pass, or on fewer than min passed, or on a run that put fewer
// streams than specs through spoke.
func checkUpstreamSpecs(t *testing.T, specs []upstreamSpec, run streamTimeline, min int) {
	t.Helper()
	passed := 0
	for _, s := range specs {
		t.Logf("%s through spoke (%d streams while it ran, alongside %d other specs): %s", s.state, s.streams, s.alongside, s.name)
		switch s.state {
		case "passed":
			passed++
		default:
			t.Errorf("upstream spec %s: %s", s.state, s.name)
		}
	}
	total := run.growth()
	t.Logf("%d specs passed; the apiserver proxy carried %d streams into tunnels during the run", passed, total)
	if passed < min || total < passed {
		t.Errorf("%d specs passed (want at least %d) and the apiserver proxy carried %d streams: the suite did not go through spoke as meant", passed, min, total)
	}
}

// jsonSpecs reads the specs that ran from ginkgo's JSON report.
func jsonSpecs(t *testing.T, path string) []upstreamSpec {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the e2e JSON report: %v", err)
	}
	var reports []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			State                   string
			StartTime, EndTime      time.Time
		}
	}
	if err := json.Unmarshal(raw, &reports); err != nil {
		t.Fatalf("the e2e JSON report: %v", err)
	}
	var specs []upstreamSpec
	for _, r := range reports {
		for _, s := range r.SpecReports {
			if s.LeafNodeType != "It" || s.State == "skipped" {
				continue
			}
			name := strings.Join(append(s.ContainerHierarchyTexts, s.LeafNodeText), " ")
			specs = append(specs, upstreamSpec{name: name, state: s.State, start: s.StartTime, end: s.EndTime})
		}
	}
	return specs
}

// streamSamples reads a counter ten times a second until stopped.
type streamSamples struct {
	stopped chan struct{}
	done    chan []streamSample
}

type streamSample struct {
	at    time.Time
	value int
}

type streamTimeline []streamSample

func sampleStreams(read func() (int, error)) *streamSamples {
	s := &streamSamples{stopped: make(chan struct{}), done: make(chan []streamSample, 1)}
	go func() {
		var samples []streamSample
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if v, err := read(); err == nil {
				samples = append(samples, streamSample{time.Now(), v})
			}
			select {
			case <-s.stopped:
				s.done <- samples
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *streamSamples) stop() streamTimeline {
	close(s.stopped)
	return <-s.done
}

// growth is the counter's growth over the whole timeline.
func (tl streamTimeline) growth() int {
	if len(tl) == 0 {
		return 0
	}
	return tl[len(tl)-1].value - tl[0].value
}

// between is the counter's growth from the last sample at or before start
// to the first at or after end (up to a sample's slack on each side).
func (tl streamTimeline) between(start, end time.Time) int {
	from, to := -1, -1
	for _, s := range tl {
		if !s.at.After(start) {
			from = s.value
		}
		if to < 0 && !s.at.Before(end) {
			to = s.value
		}
	}
	if from < 0 || to < 0 {
		return 0
	}
	return to - from
}

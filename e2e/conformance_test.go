package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/envoy/envoytest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	checkUpstreamSpecs(t, c.cp, specs, run, 10)
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
	failure            string // where and why it failed, from ginkgo's report
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
	cmd := exec.Command(ginkgo, "run", "--procs", strconv.Itoa(procs), "--no-color", "--timeout", "30m",
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
	specs, reportErr := jsonSpecs(filepath.Join(reportDir, "report.json"))
	if reportErr != nil {
		t.Fatalf("ginkgo run e2e.test: %v; its JSON report: %v; its output's end:\n%s", err, reportErr, tail(string(out), 3000))
	}
	if err != nil || summary == "" || strings.HasPrefix(summary, "Ran 0 ") {
		// When specs failed, checkUpstreamSpecs says where and why, last
		// (what CI shows of a failed test is its end); ginkgo's own output
		// goes into a dump section, left out of make test's summary.
		envoytest.LogDump(t, "ginkgo's output, its last 12000 bytes", tail(string(out), 12000))
		if !slices.ContainsFunc(specs, func(s upstreamSpec) bool { return s.failure != "" }) {
			t.Errorf("ginkgo run e2e.test: %v, and no spec says why; its output's end:\n%s", err, tail(string(out), 3000))
		}
	}
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
// streams than specs through spoke. When a spec failed it also logs the
// cluster's (cp's) restarted containers: a restarted apiserver or proxy
// fails specs that are not at fault.
func checkUpstreamSpecs(t *testing.T, cp *controlPlane, specs []upstreamSpec, run streamTimeline, min int) {
	t.Helper()
	passed := 0
	var failed []upstreamSpec
	for _, s := range specs {
		t.Logf("%s through spoke (%d streams while it ran, alongside %d other specs): %s", s.state, s.streams, s.alongside, s.name)
		if s.state == "passed" {
			passed++
		} else {
			failed = append(failed, s)
		}
	}
	total := run.growth()
	t.Logf("%d specs passed; the apiserver proxy carried %d streams into tunnels during the run", passed, total)
	for _, drop := range run.drops() {
		t.Logf("the apiserver proxy's stream count went back %s: its Envoy restarted, or a node's cluster was removed and added again", drop)
	}
	if passed < min || total < passed {
		t.Errorf("%d specs passed (want at least %d) and the apiserver proxy carried %d streams: the suite did not go through spoke as meant", passed, min, total)
	}
	if len(failed) > 0 {
		t.Logf("containers that restarted in the cluster: %s", restartedContainers(cp))
	}
	// Last, so that the end of a failed test's output says what failed.
	for _, s := range failed {
		t.Errorf("upstream spec %s, %s-%s (%d streams while it ran, alongside %d other specs): %s\n%s",
			s.state, s.start.Format(time.TimeOnly), s.end.Format(time.TimeOnly), s.streams, s.alongside, s.name, s.failure)
	}
}

// jsonSpecs reads the specs that ran from ginkgo's JSON report, and the
// suite's setup or teardown nodes that failed.
func jsonSpecs(path string) ([]upstreamSpec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var reports []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			State                   string
			StartTime, EndTime      time.Time
			Failure                 struct {
				Message         string
				FailureNodeType string
				Location        struct {
					FileName   string
					LineNumber int
				}
			}
		}
	}
	if err := json.Unmarshal(raw, &reports); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var specs []upstreamSpec
	for _, r := range reports {
		for _, s := range r.SpecReports {
			failed := s.State != "passed" && s.State != "skipped"
			if s.State == "skipped" || (s.LeafNodeType != "It" && !failed) {
				continue
			}
			name := strings.Join(append(s.ContainerHierarchyTexts, s.LeafNodeText), " ")
			if s.LeafNodeType != "It" { // a suite's setup or teardown that failed
				name = "[" + s.LeafNodeType + "] " + name
			}
			spec := upstreamSpec{name: name, state: s.State, start: s.StartTime, end: s.EndTime}
			if f := s.Failure; failed {
				in := ""
				if f.FailureNodeType != "" && f.FailureNodeType != "INVALID NODE TYPE" {
					in = " (in its " + f.FailureNodeType + ")"
				}
				spec.failure = fmt.Sprintf("    at %s:%d%s: %s", filepath.Base(f.Location.FileName), f.Location.LineNumber, in, firstLines(f.Message, 12, 1500))
			}
			specs = append(specs, spec)
		}
	}
	return specs, nil
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
	return tl.increase(0, len(tl))
}

// increase is the counter's growth from sample i to sample j-1. A counter
// that went back started again from zero (its Envoy restarted, or the
// cluster it counts was removed and added again): what it counted since
// then is growth too.
func (tl streamTimeline) increase(i, j int) int {
	sum := 0
	for k := i + 1; k < j; k++ {
		if d := tl[k].value - tl[k-1].value; d >= 0 {
			sum += d
		} else {
			sum += tl[k].value
		}
	}
	return sum
}

// drops says where the counter went back, and by how much.
func (tl streamTimeline) drops() []string {
	var out []string
	for k := 1; k < len(tl); k++ {
		if tl[k].value < tl[k-1].value {
			out = append(out, fmt.Sprintf("from %d to %d between %s and %s", tl[k-1].value, tl[k].value,
				tl[k-1].at.Format("15:04:05.0"), tl[k].at.Format("15:04:05.0")))
		}
	}
	return out
}

// between is the counter's growth from the last sample at or before start
// to the first at or after end (up to a sample's slack on each side).
func (tl streamTimeline) between(start, end time.Time) int {
	from, to := -1, -1
	for k, s := range tl {
		if !s.at.After(start) {
			from = k
		}
		if to < 0 && !s.at.Before(end) {
			to = k
		}
	}
	if from < 0 || to < 0 {
		return 0
	}
	return tl.increase(from, to+1)
}

// restartedContainers lists the cluster's containers that restarted, with
// how their last run ended.
func restartedContainers(cp *controlPlane) string {
	pods, err := cp.client().CoreV1().Pods("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return "(listing pods: " + err.Error() + ")"
	}
	var out []string
	for _, p := range pods.Items {
		for _, c := range p.Status.ContainerStatuses {
			if c.RestartCount == 0 {
				continue
			}
			why := ""
			if last := c.LastTerminationState.Terminated; last != nil {
				why = fmt.Sprintf(", the last ended %s: %s, exit %d", last.FinishedAt.Format(time.TimeOnly), last.Reason, last.ExitCode)
			}
			out = append(out, fmt.Sprintf("%s/%s %s: %d restarts%s", p.Namespace, p.Name, c.Name, c.RestartCount, why))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return "\n    " + strings.Join(out, "\n    ")
}

// firstLines is s cut to its first n lines and at most max bytes.
func firstLines(s string, n, max int) string {
	lines := strings.SplitAfter(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	out := strings.Join(lines, "")
	if len(out) > max {
		out = out[:max] + "..."
	}
	return out
}

// TestStreamTimelineCountsAcrossARestart: a counter that starts again from
// zero (its Envoy restarted) keeps counting, and the drop is reported.
func TestStreamTimelineCountsAcrossARestart(t *testing.T) {
	at := time.Date(2026, 12, 7, 14, 0, 0, 0, time.UTC)
	var tl streamTimeline
	for i, v := range []int{100, 110, 130, 5, 20, 20, 50} {
		tl = append(tl, streamSample{at.Add(time.Duration(i) * time.Second), v})
	}
	if got := tl.growth(); got != 10+20+5+15+0+30 {
		t.Errorf("growth: %d, want 80", got)
	}
	if got := tl.between(at.Add(2*time.Second), at.Add(4*time.Second)); got != 5+15 {
		t.Errorf("between the 3rd and 5th sample: %d, want 20", got)
	}
	if got := tl.drops(); len(got) != 1 || !strings.HasPrefix(got[0], "from 130 to 5 between 14:00:02.0 and 14:00:03.0") {
		t.Errorf("drops: %q, want the one from 130 to 5", got)
	}
}

// TestFailedSuiteSetupIsReported: a report of e2e.test (this machine's
// build, run against an apiserver that is not there) whose suite setup
// failed reads as one failed node, saying where and why.
func TestFailedSuiteSetupIsReported(t *testing.T) {
	specs, err := jsonSpecs("testdata/ginkgo-report-setup-failed.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 1 || specs[0].state != "failed" || !strings.HasPrefix(specs[0].name, "[SynchronizedBeforeSuite]") ||
		!strings.Contains(specs[0].failure, "e2e.go:211") || !strings.Contains(specs[0].failure, "connection refused") {
		t.Errorf("specs read: %+v; want the failed SynchronizedBeforeSuite, at e2e.go:211, connection refused", specs)
	}
}

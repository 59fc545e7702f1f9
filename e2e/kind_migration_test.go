package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	migrationCluster = "spoke-konnectivity"
	migrationConfig  = "e2e/kind/konnectivity/cluster.yaml" // relative to the repository root
)

// TestKindMigrationFromKonnectivity sets up a kind cluster with Konnectivity
// as Kubernetes' documentation does it, then runs docs/migration.md's blocks
// in order: spoke beside Konnectivity, the switch, the way back, the switch
// again, Konnectivity removed. kube-apiserver's own dial counter says which
// proxy carried its egress after each restart; kubectl logs and exec run
// once a second throughout, and what failed around each switch is counted.
func TestKindMigrationFromKonnectivity(t *testing.T) {
	t.Parallel()
	kind, nodeImage := kindTools(t)
	lockKindClusters(t)
	images := append(append(localImages(t), spokeImages(t)...), konnectivityImages(t)...)
	cp := kindClusterUp(t, kind, nodeImage, migrationCluster, migrationConfig, images)
	controlPlaneNode := migrationCluster + "-control-plane"
	nodes := []string{controlPlaneNode, migrationCluster + "-worker", migrationCluster + "-worker2"}
	setUpKonnectivity(t, cp, controlPlaneNode)

	pod := "logger-migration"
	createLogger(t, cp, pod, nodes[1])
	waitFor(t, 2*time.Minute, "kubectl logs through Konnectivity", func() bool {
		_, err := kubectlRun(t, cp, nil, "logs", pod, "-c", "logger", "--tail", "1")
		return err == nil
	})
	probe := startAccessProbe(t, cp, pod)

	work := deployWorkdir(t)
	env := []string{"KUBECONFIG=" + cp.kubeconfig, "SPOKE_IMAGE=spoke:local", "ENVOY_IMAGE=envoy:1.40.0-local"}
	steps := migrationSteps(t)
	byName := map[string]deployStep{}
	for _, s := range steps {
		byName[s.name] = s
	}
	run := func(s deployStep) string {
		t.Helper()
		start := time.Now()
		var out string
		switch s.where {
		case whereKubectl:
			out = runKubectlStep(t, s, work, env...)
		case whereControlPlaneHost:
			out = runOnKindNode(t, controlPlaneNode, s, work)
		case whereEachNode:
			for _, n := range nodes {
				out += runOnKindNode(t, n, s, work)
			}
		}
		t.Logf("migration step %s (%s) took %v:\n%s", s.name, s.where, time.Since(start).Round(time.Millisecond), out)
		return out
	}
	switchTo := func(what string, s deployStep, protocol string) {
		t.Helper()
		start := time.Now()
		run(s)
		// The step ends once kube-apiserver is ready; loaded, it answered
		// logs and exec only up to 20 s later (kubectl's 10 s timeouts
		// right after a switch, CI-sized load). The restart lasts until
		// both answer, as for the kubelets' restart below.
		stepEnd := time.Now()
		waitFor(t, 2*time.Minute, "kubectl logs and exec through the restarted kube-apiserver", func() bool { return podAnswers(t, cp, pod) })
		t.Logf("%s: logs and exec answered %.1f s after the step ended", what, time.Since(stepEnd).Seconds())
		probe.report(what, start, time.Now(), true)
		checkEgressProtocol(t, what, run(byName["check"]), protocol)
	}
	checkEgressProtocol(t, "Konnectivity as set up", run(byName["check"]), "grpc")
	var kubeletsRestarted time.Time
	for _, s := range steps {
		switch s.name {
		case "kubelet-serving":
			kubeletsRestarted = time.Now()
			run(s)
		case "serving-certificates":
			// Until its certificate is issued, a restarted kubelet
			// serving nothing: logs and exec to its node fail.
			waitFor(t, 2*time.Minute, "every kubelet's serving certificate request", func() bool { requested, _ := servingCSRs(t, cp); return requested >= len(nodes) })
			run(s)
			waitFor(t, time.Minute, "every kubelet's serving certificate", func() bool { _, issued := servingCSRs(t, cp); return issued >= len(nodes) })
			waitFor(t, time.Minute, "kubectl logs and exec with the kubelets' new certificates", func() bool { return podAnswers(t, cp, pod) })
			probe.report("kubelets restarted with serverTLSBootstrap until their certificates were approved", kubeletsRestarted, time.Now(), true)
		case "switch":
			switchTo("switch to spoke", s, "http_connect")
		case "check":
			// run after each switch
		case "rollback":
			switchTo("rollback to Konnectivity", s, "grpc")
			switchTo("switch to spoke again", byName["switch"], "http_connect")
		default:
			run(s)
		}
	}
	checkEgressProtocol(t, "Konnectivity removed", run(byName["check"]), "http_connect")
	probe.report("after Konnectivity was removed", probe.since(), time.Now(), false)
	checkStreamingPaths(t, cp, pod, nodes[1])
	probe.stop()
	if n := probe.failedOutside(); n > 0 {
		t.Errorf("%d kubectl logs/exec failed while no kube-apiserver restart was under way (see the lines above)", n)
	}
}

// podAnswers: kubectl logs and kubectl exec to the probed pod both work
// now (the access probe's commands).
func podAnswers(t *testing.T, cp *controlPlane, pod string) bool {
	t.Helper()
	for _, args := range accessProbeCommands(pod) {
		if _, err := kubectlRun(t, cp, nil, append([]string{"--request-timeout", probeTimeout.String()}, args...)...); err != nil {
			return false
		}
	}
	return true
}

// konnectivityImages builds proxy-server and proxy-agent images from the
// Konnectivity binaries e2e/konnectivity/build.sh makes, under upstream's
// names (no registry is reachable here).
func konnectivityImages(t *testing.T) []string {
	t.Helper()
	server, agent, _ := konnectivityBinaries(t)
	return buildOnce(t, "konnectivity-images", func(dir string) ([]string, error) {
		var out []string
		for name, bin := range map[string]string{"proxy-server": server, "proxy-agent": agent} {
			archive := filepath.Join(dir, name+".tar")
			if err := spokeImage(archive, "--static", bin, "--path", "/"+name, "--user", "0",
				"--tag", "registry.k8s.io/kas-network-proxy/"+name+":"+konnectivityVersion); err != nil {
				return nil, err
			}
			out = append(out, archive)
		}
		return out, nil
	})
}

// setUpKonnectivity follows Kubernetes' "Set up Konnectivity service":
// e2e/kind/konnectivity/setup.sh on the control-plane host, then the agents
// and their RBAC with kubectl, the agents pointed at the host's address.
func setUpKonnectivity(t *testing.T, cp *controlPlane, node string) {
	t.Helper()
	start := time.Now()
	dir, err := filepath.Abs("kind/konnectivity")
	if err != nil {
		t.Fatal(err)
	}
	out := runOnKindNode(t, node, deployStep{name: "konnectivity", script: "bash setup.sh"}, dir)
	t.Logf("Konnectivity's setup on %s:\n%s", node, out)
	u, err := url.Parse(cp.url)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := os.ReadFile(filepath.Join(dir, "konnectivity-agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Minute, "kube-apiserver back with the egress selector", func() bool {
		_, err := kubectlRun(t, cp, nil, "get", "--raw", "/readyz")
		return err == nil
	})
	kubectl(t, cp, nil, "apply", "-f", filepath.Join(dir, "konnectivity-rbac.yaml"))
	kubectl(t, cp, []byte(strings.ReplaceAll(string(agent), "PROXY_SERVER_HOST", u.Hostname())), "apply", "-f", "-")
	kubectl(t, cp, nil, "-n", "kube-system", "rollout", "status", "daemonset/konnectivity-agent", "--timeout", "3m")
	t.Logf("Konnectivity set up in %v", time.Since(start).Round(time.Second))
}

// egressDialStarts is kube-apiserver's dial counter per egress protocol.
var egressDialStarts = regexp.MustCompile(`(?m)^apiserver_egress_dialer_dial_start_total\{protocol="([a-z_]+)",transport="([a-z]+)"\} (\d+)$`)

// checkEgressProtocol: after a kube-apiserver restart, the check step's
// dial counter names protocol and no other.
func checkEgressProtocol(t *testing.T, when, out, protocol string) {
	t.Helper()
	counts := map[string]string{}
	for _, m := range egressDialStarts.FindAllStringSubmatch(out, -1) {
		counts[m[1]] = m[3]
	}
	if len(counts) != 1 || counts[protocol] == "" || counts[protocol] == "0" {
		t.Errorf("%s: kube-apiserver's egress dials %v, want %s only:\n%s", when, counts, protocol, out)
		return
	}
	t.Logf("%s: kube-apiserver dialled %s %s times since it started", when, protocol, counts[protocol])
}

// accessProbe runs kubectl logs and kubectl exec to a pod once a second
// each and keeps every outcome.
type accessProbe struct {
	t       *testing.T
	cancel  context.CancelFunc
	done    chan struct{}
	started time.Time

	mu       sync.Mutex
	results  []accessResult
	windows  [][2]time.Time
	reported time.Time
}

type accessResult struct {
	op         string
	start, end time.Time
	err        string
}

// probeTimeout is how long a probe's kubectl may take before it counts as
// failed. A refusal through either proxy is an error at once; 8 s (as it
// was) failed 5 calls in a cold CI-style run whose load was 12-19 on the 2
// cores (logs and exec at 10 s, while the runbook's port-forward of 64 MiB
// each way crept at 4 MB/s), none of them an error; 25 s still catches a
// stream that hangs.
const probeTimeout = 25 * time.Second

// accessProbeCommands are what the probe runs: logs and exec to pod.
func accessProbeCommands(pod string) map[string][]string {
	return map[string][]string{
		"logs": {"logs", pod, "-c", "logger", "--tail", "1"},
		"exec": {"exec", pod, "-c", "shell", "--", "/busybox", "true"},
	}
}

func startAccessProbe(t *testing.T, cp *controlPlane, pod string) *accessProbe {
	ctx, cancel := context.WithCancel(context.Background())
	p := &accessProbe{t: t, cancel: cancel, done: make(chan struct{}), started: time.Now()}
	kubeconfig, kubectlBin := cp.adminKubeconfig(t), kubeTool(t, "kubectl")
	var wg sync.WaitGroup
	for op, args := range accessProbeCommands(pod) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				start := time.Now()
				call, cancelCall := context.WithTimeout(ctx, probeTimeout+5*time.Second)
				out, err := exec.CommandContext(call, kubectlBin, append([]string{"--kubeconfig", kubeconfig, "--request-timeout", probeTimeout.String()}, args...)...).CombinedOutput()
				cancelCall()
				if ctx.Err() != nil {
					return
				}
				r := accessResult{op: op, start: start, end: time.Now()}
				if err != nil {
					r.err = strings.TrimSpace(lastLine(string(out))) + " (" + err.Error() + ")"
				}
				p.mu.Lock()
				p.results = append(p.results, r)
				p.mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(p.done) }()
	t.Cleanup(p.stop)
	return p
}

func (p *accessProbe) stop() {
	p.cancel()
	<-p.done
}

// since is when the last report ended (or the probe started).
func (p *accessProbe) since() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reported.IsZero() {
		return p.started
	}
	return p.reported
}

// report logs what failed from start to end and in the 10 s after it;
// restart excuses failures from start to end (steps that restart
// kube-apiserver or kubelets).
func (p *accessProbe) report(what string, start, end time.Time, restart bool) {
	after := end.Add(10 * time.Second)
	time.Sleep(time.Until(after))
	p.mu.Lock()
	defer p.mu.Unlock()
	if restart {
		p.windows = append(p.windows, [2]time.Time{start, end})
	}
	p.reported = after
	var during, duringFailed, following, followingFailed int
	var failures []string
	for _, r := range p.results {
		switch {
		case r.start.Before(start) && r.end.Before(start), r.start.After(after):
			continue
		case r.start.Before(end):
			during++
			if r.err != "" {
				duringFailed++
			}
		default:
			following++
			if r.err != "" {
				followingFailed++
			}
		}
		if r.err != "" {
			failures = append(failures, fmt.Sprintf("  %s at +%.1fs: %s", r.op, r.start.Sub(start).Seconds(), r.err))
		}
	}
	p.t.Logf("%s: %.1f s; kubectl logs/exec during it %d, failed %d; in the 10 s after %d, failed %d\n%s",
		what, end.Sub(start).Seconds(), during, duringFailed, following, followingFailed, strings.Join(failures, "\n"))
}

// failedOutside counts failures outside every step that restarted
// kube-apiserver or kubelets, logging them.
func (p *accessProbe) failedOutside() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.results {
		inside := false
		for _, w := range p.windows {
			if !r.end.Before(w[0]) && r.start.Before(w[1]) {
				inside = true
			}
		}
		if r.err != "" && !inside {
			n++
			p.t.Logf("%s at %s failed outside any switch: %s", r.op, r.start.Format(time.TimeOnly), r.err)
		}
	}
	return n
}

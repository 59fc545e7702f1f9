package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/status"
	"github.com/spokeproxy/spoke/translator/model"
)

// spokeServer is `spoke serve --source kubernetes` in its own process with
// the control-plane static pod's flags: the spoke-server ServiceAccount's
// token (the RBAC of manifests/), the tunnel CA from its Secret, node
// proxies authenticated by the cluster CA.
type spokeServer struct {
	t      *testing.T
	bin    string
	args   []string
	dir    string
	http   string // health and metrics
	xds    string // what the node proxies dial
	socket string // the apiserver proxy's ADS
	cmd    *exec.Cmd
	starts int
}

// createTunnelCA stores a new tunnel CA as the Secret the server reads and
// its certificate as the ConfigMap the node proxies trust.
func createTunnelCA(t *testing.T, cp *controlPlane, dir string) {
	t.Helper()
	cert, key, err := pki.GenerateCA("spoke cluster-test tunnel CA")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := authtest.WriteFile(t, dir, "tunnel-ca.crt", cert), authtest.WriteFile(t, dir, "tunnel-ca.key", key)
	kubectl(t, cp, nil, "-n", "spoke-system", "create", "secret", "tls", "spoke-tunnel-ca", "--cert", certFile, "--key", keyFile)
	kubectl(t, cp, nil, "-n", "spoke-system", "create", "configmap", "spoke-server-ca", "--from-file=ca.crt="+certFile)
}

// startSpokeServer runs the server for settings s as replica (its name in
// the status ConfigMap); the node proxies reach it at host:xdsPort. It reads
// the tunnels of the apiserver proxy whose admin is at apiProxyAdmin ("":
// none). The manifests must be applied (ServiceAccount, RBAC).
func startSpokeServer(t *testing.T, cp *controlPlane, s model.Settings, clusterCAFile, host string, xdsPort int, replica, apiProxyAdmin string) *spokeServer {
	t.Helper()
	dir := t.TempDir()
	settings, err := json.Marshal(s) // a settings file may be JSON: YAML's superset
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(dir, "settings.yaml"), settings)
	token := strings.TrimSpace(kubectl(t, cp, nil, "-n", "spoke-system", "create", "token", "spoke-server", "--duration", "2h"))
	kubeconfig := filepath.Join(dir, "server.kubeconfig")
	writeTestFile(t, kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: spoke-server, user: {token: %q}}]
contexts: [{name: test, context: {cluster: test, user: spoke-server}}]
current-context: test
`, cp.url, token)))
	srv := &spokeServer{t: t, bin: buildSpoke(t), dir: dir,
		http: fmt.Sprintf("127.0.0.1:%d", freePort(t)), xds: net.JoinHostPort(host, strconv.Itoa(xdsPort)),
		socket: filepath.Join(dir, "xds.sock")}
	srv.args = []string{"serve", "--source=kubernetes", "--kubeconfig=" + kubeconfig,
		"--tunnel-ca-secret=spoke-system/spoke-tunnel-ca", "--client-ca-file=" + clusterCAFile,
		"--xds-address=0.0.0.0:" + strconv.Itoa(xdsPort), "--xds-server-name=spoke-server", "--xds-socket=" + srv.socket,
		"--http-address=" + srv.http, fmt.Sprintf("--debug-address=127.0.0.1:%d", freePort(t)),
		"--config=" + filepath.Join(dir, "settings.yaml"), "--shutdown-grace=1s", "--replica=" + replica}
	if apiProxyAdmin != "" {
		srv.args = append(srv.args, "--apiserver-proxy-admin="+apiProxyAdmin)
	}
	srv.start()
	return srv
}

func (s *spokeServer) start() {
	s.t.Helper()
	s.starts++
	s.cmd = startProcess(s.t, "spoke serve", filepath.Join(s.dir, fmt.Sprintf("serve-%d.log", s.starts)), s.bin, s.args...)
	waitFor(s.t, 30*time.Second, "spoke serve to be ready", func() bool { _, err := httpBody("http://" + s.http + "/readyz"); return err == nil })
}

// kill stops the server at once (SIGKILL, as a crash would); start brings
// it back on the same addresses.
func (s *spokeServer) kill() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// connected is spoke_connected_envoys{role=role} from /metrics.
func (s *spokeServer) connected(role string) int {
	body, err := httpBody("http://" + s.http + "/metrics")
	if err != nil {
		return -1
	}
	prefix := fmt.Sprintf(`spoke_connected_envoys{role=%q} `, role)
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return 0
}

// openStreams holds a kubectl logs -f and a kubectl port-forward (with one
// connection echoing through it) to pod while something restarts, and says
// afterwards which of them lived.
type openStreams struct {
	t       *testing.T
	stop    []func()
	follow  chan error
	lines   chan struct{}
	echo    net.Conn
	forward string // the port-forward's local address
}

func holdStreams(t *testing.T, cp *controlPlane, pod string) *openStreams {
	t.Helper()
	o := &openStreams{t: t, follow: make(chan error, 1), lines: make(chan struct{}, 1<<16)}
	out, stop := startKubectl(t, cp, "logs", "-f", pod, "-c", "logger", "--tail", "0")
	o.stop = append(o.stop, stop)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case o.lines <- struct{}{}:
			default:
			}
		}
		o.follow <- sc.Err()
	}()
	fwd, stop := startKubectl(t, cp, "port-forward", "pod/"+pod, ":9000", "--address", "127.0.0.1")
	o.stop = append(o.stop, stop)
	line, err := bufio.NewReader(fwd).ReadString('\n')
	if err != nil {
		t.Fatalf("%s: kubectl port-forward: %v", pod, err)
	}
	o.forward, _, _ = strings.Cut(strings.TrimPrefix(line, "Forwarding from "), " ->")
	if o.echo, err = net.DialTimeout("tcp", o.forward, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if !echoes(o.echo) {
		t.Fatalf("%s: the port-forward does not echo before the restart", pod)
	}
	waitFor(t, 5*time.Second, "kubectl logs -f to deliver a line", func() bool { return len(o.lines) > 0 })
	return o
}

// echoes sends a line through conn and wants it back within 3 s.
func echoes(conn net.Conn) bool {
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	defer func() { _ = conn.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(conn, "ping\n"); err != nil {
		return false
	}
	got := make([]byte, 5)
	_, err := io.ReadFull(conn, got)
	return err == nil && string(got) == "ping\n"
}

// report says what lived: the logs -f still delivering lines, the open
// port-forward connection still echoing, a new connection through the same
// kubectl port-forward. It returns whether the logs -f and the open
// connection lived.
func (o *openStreams) report(what string) (followLived, echoLived bool) {
	o.t.Helper()
	defer func() {
		o.echo.Close()
		for _, stop := range o.stop {
			stop()
		}
	}()
	for len(o.lines) > 0 {
		<-o.lines
	}
	select {
	case <-o.lines:
		followLived = true
	case err := <-o.follow:
		o.t.Logf("%s: the open kubectl logs -f ended (%v)", what, err)
	case <-time.After(3 * time.Second):
		o.t.Logf("%s: the open kubectl logs -f delivered nothing for 3 s", what)
	}
	echoLived = echoes(o.echo)
	newConn := false
	if conn, err := net.DialTimeout("tcp", o.forward, 2*time.Second); err == nil {
		newConn = echoes(conn)
		conn.Close()
	}
	o.t.Logf("%s: open kubectl logs -f still delivering: %v; open port-forward connection still echoing: %v; a new connection through the same kubectl port-forward echoes: %v",
		what, followLived, echoLived, newConn)
	return followLived, echoLived
}

// restartServerUnderLoad kills the spoke server while a logs -f and a
// port-forward are open and kubectl logs runs in a loop: the data path
// does not go through the server, so nothing of it may notice. It measures
// how long until every Envoy is connected to the new server.
func restartServerUnderLoad(t *testing.T, cp *controlPlane, srv *spokeServer, apiProxy *envoytest.Process, pod string, nodes int) {
	t.Helper()
	open := holdStreams(t, cp, pod)
	tunnels := apiProxy.StatSum("total_nodes")
	killed := time.Now()
	srv.kill()
	// The server is down: new requests still go through the tunnels.
	start := time.Now()
	if logs, err := kubectlRun(t, cp, nil, "logs", pod, "-c", "logger", "--tail", "1"); err != nil || !strings.Contains(logs, "logs_generator.go") {
		t.Errorf("kubectl logs while the spoke server is down: %q %v", logs, err)
	} else {
		t.Logf("spoke server down: a new kubectl logs through spoke took %v", time.Since(start).Round(time.Millisecond))
	}
	srv.start()
	ready := time.Since(killed)
	waitFor(t, 60*time.Second, "every Envoy back on the restarted server", func() bool {
		return srv.connected("node") >= nodes && srv.connected("apiserver") == 1
	})
	t.Logf("spoke server restart (SIGKILL): ready again %v after the kill, every Envoy (%d node proxies, 1 apiserver proxy) connected %v after it",
		ready.Round(time.Millisecond), nodes, time.Since(killed).Round(time.Millisecond))
	if after := apiProxy.StatSum("total_nodes"); after < tunnels {
		t.Errorf("tunnels at the apiserver proxy: %d before the server restart, %d after", tunnels, after)
	}
	if follow, echo := open.report("spoke server restart"); !follow || !echo {
		t.Errorf("a spoke server restart broke an open stream (logs -f lived: %v, port-forward lived: %v); the data path must not depend on the server", follow, echo)
	}
}

// tunnelsPerNode reads the apiserver proxy's per-node tunnel gauges, as
// spoke's tunnel watcher does.
func tunnelsPerNode(apiProxy *envoytest.Process) (map[string]int, error) {
	body, err := apiProxy.Get(status.TunnelStatsPath)
	if err != nil {
		return nil, err
	}
	return status.ParseTunnelStats(bufio.NewScanner(strings.NewReader(body)))
}

// rollSample is what a DaemonSet roll did to one node at one apiserver
// proxy.
type rollSample struct {
	fewestTunnels, probes, failed int
	run, longestRun               int      // failed CONNECTs in a row
	failures                      []string // each failed CONNECT: when, what came back, how long it took
}

// rollNodeProxies restarts the DaemonSet (kubectl rollout restart) and
// watches every node at every apiserver proxy throughout: the tunnels it
// holds (every 100 ms) and a CONNECT to its kubelet through each egress
// socket (every 300 ms). The manifests' surge update promises that a node
// never loses every tunnel: it is never unreachable. A CONNECT set up on a
// tunnel of the old pod the instant it exits is sent again through another
// (nodeRetry; TestConnectsSurviveAnOldNodeProxyExit proves it at one node);
// one may still fail alone on a loaded machine (no answer within the
// probe's 2 s), never two in a row. Each failure is listed with what came
// back.
//
// The roll starts from a settled DaemonSet (every pod available), as an
// operator's would: see waitForNodeProxyRoll for the upstream stall a roll
// begun within minReadySeconds of a pod's readiness can run into.
func rollNodeProxies(t *testing.T, cp *controlPlane, proxies []*envoytest.Process, sockets []string, kubelets map[string]string, pod string) {
	t.Helper()
	settle := time.Now()
	waitForNodeProxyRoll(t, cp)
	t.Logf("DaemonSet settled (every pod available) %v before the roll began", time.Since(settle).Round(time.Millisecond))
	open := holdStreams(t, cp, pod)
	samples := map[string]*rollSample{} // node@proxy
	key := func(node string, i int) string { return fmt.Sprintf("%s at apiserver proxy %d", node, i+1) }
	for node := range kubelets {
		for i := range proxies {
			samples[key(node, i)] = &rollSample{fewestTunnels: 1 << 30}
		}
	}
	done, watched := make(chan struct{}), make(chan struct{})
	watchStart := time.Now() // the failures' times count from here, the roll begins right after
	go func() {
		defer close(watched)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			for i, p := range proxies {
				held, err := tunnelsPerNode(p)
				for node, kubelet := range kubelets {
					s := samples[key(node, i)]
					if err == nil {
						s.fewestTunnels = min(s.fewestTunnels, held[node])
					}
					if n%3 != 0 {
						continue
					}
					sent := time.Now()
					conn, br, st, err := sendCONNECT(sockets[i], kubelet, 2*time.Second)
					body := ""
					if conn != nil {
						if st != 200 && br != nil {
							b, _ := io.ReadAll(io.LimitReader(br, 200))
							body = strings.TrimSpace(string(b))
						}
						conn.Close()
					}
					s.probes++
					if err != nil || st != 200 {
						s.failed++
						s.run++
						s.longestRun = max(s.longestRun, s.run)
						s.failures = append(s.failures, fmt.Sprintf("%v into the roll: status %d %q %v after %v (tunnels held: %d)",
							sent.Sub(watchStart).Round(time.Millisecond), st, body, err, time.Since(sent).Round(time.Millisecond), held[node]))
					} else {
						s.run = 0
					}
				}
			}
		}
	}()
	start := time.Now()
	kubectl(t, cp, nil, "-n", "spoke-system", "rollout", "restart", "daemonset/spoke-node-proxy")
	waitForNodeProxyRoll(t, cp)
	// rollout status returns when the new pods are available; the last old
	// pod may still be going.
	waitFor(t, 60*time.Second, "the old node proxy pods to go", func() bool {
		out, err := kubectlRun(t, cp, nil, "-n", "spoke-system", "get", "pods", "-o", "name")
		return err == nil && strings.Count(out, "pod/") == len(kubelets)
	})
	time.Sleep(time.Second)
	close(done)
	<-watched
	t.Logf("DaemonSet roll of %d nodes took %v", len(kubelets), time.Since(start).Round(time.Second))
	names := make([]string, 0, len(samples))
	for name := range samples {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		s := samples[name]
		t.Logf("DaemonSet roll, %s: fewest tunnels held %d; CONNECTs to its kubelet: %d of %d failed%s", name, s.fewestTunnels, s.failed, s.probes, bulleted(s.failures))
		if s.fewestTunnels == 0 || s.longestRun > 1 || s.probes < 10 {
			t.Errorf("DaemonSet roll: %s held %d tunnels at its worst and %d CONNECTs in a row failed (%d of %d); the surge update must keep it reachable",
				name, s.fewestTunnels, s.longestRun, s.failed, s.probes)
		}
	}
	for i, p := range proxies {
		t.Logf("DaemonSet roll: apiserver proxy %d's node clusters, counters of failed and retried streams:\n%s", i+1, nodeClusterFailures(p))
	}
	open.report("DaemonSet roll")
}

// bulleted lists lines one per line, indented, after a colon; nothing for none.
func bulleted(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return ":\n  " + strings.Join(lines, "\n  ")
}

var failureCounter = regexp.MustCompile(`\.(upstream_cx_connect_fail|upstream_rq_[rt]x_reset|upstream_cx_destroy_(local|remote)_with_active_rq|upstream_rq_5xx|upstream_rq_retry[a-z_]*|upstream_cx_none_healthy|upstream_rq_pending_failure_eject): [1-9]`)

// nodeClusterFailures: the apiserver proxy's non-zero per-node cluster
// counters that say how a CONNECT failed (connect failures, resets,
// streams cut with their connection, 5xx) or was sent again.
func nodeClusterFailures(p *envoytest.Process) string {
	var out []string
	for _, line := range strings.Split(p.Stats("cluster.node/"), "\n") {
		if failureCounter.MatchString(line) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// log is what the running server has logged.
func (s *spokeServer) log() string {
	raw, _ := os.ReadFile(filepath.Join(s.dir, fmt.Sprintf("serve-%d.log", s.starts)))
	return string(raw)
}

// checkRollWaitsForTunnels rolls the node proxies to pods that cannot get
// their tunnels (their bootstrap expects another xDS server name, so they
// get no config): the first new pod stays unready, with a probe message
// that says why, and no old pod goes, so every node keeps its tunnels. The
// roll is then undone.
func checkRollWaitsForTunnels(t *testing.T, cp *controlPlane, apiProxy *envoytest.Process, nodes int) {
	t.Helper()
	kubectl(t, cp, nil, "-n", "spoke-system", "patch", "daemonset", "spoke-node-proxy", "--type", "json", "-p",
		`[{"op":"replace","path":"/spec/template/spec/initContainers/0/args/4","value":"--server-name=not-the-spoke-server"}]`)
	var events string
	// Minutes, not seconds: on a loaded machine (load average 20 on 2
	// cores) the new pod started and was probed after more than a minute.
	// Checked once a second: a kubectl every 100 ms is load of its own on a
	// machine that is already slow to start the pod.
	waitForExplained(t, 3*time.Minute, time.Second, "the new pod's readiness probe to fail, saying why", func() bool {
		events, _ = kubectlRun(t, cp, nil, "-n", "spoke-system", "get", "events", "--field-selector", "reason=Unhealthy", "-o", "custom-columns=MSG:.message")
		return strings.Contains(events, "not ready: it dials no apiserver proxy yet")
	}, func() string {
		pods, _ := kubectlRun(t, cp, nil, "-n", "spoke-system", "get", "pods", "-o", "wide")
		return fmt.Sprintf("the probe failures seen:\n%s\nthe pods:\n%s", events, pods)
	})
	// Past minReadySeconds (10 s) and a few probes: a roll that did not
	// wait would have replaced the old pod by now.
	time.Sleep(25 * time.Second)
	pods := kubectl(t, cp, nil, "-n", "spoke-system", "get", "pods", "-o", "custom-columns=NAME:.metadata.name,READY:.status.containerStatuses[*].ready", "--no-headers")
	if n := strings.Count(strings.TrimSpace(pods), "\n") + 1; n != nodes+1 {
		t.Errorf("a roll to node proxies without tunnels: %d pods, want the %d old ones and one new:\n%s", n, nodes, pods)
	}
	held, err := tunnelsPerNode(apiProxy)
	if err != nil || len(held) < nodes {
		t.Errorf("tunnels per node during the stalled roll: %v %v", held, err)
	}
	for node, n := range held {
		if n == 0 {
			t.Errorf("%s lost its tunnels during a roll to pods that cannot get any", node)
		}
	}
	t.Logf("a roll to node proxies that get no tunnels waits: pods\n%s; the probe says: %s", pods, lastLine(strings.TrimSpace(events)))
	// What docs/operations.md tells an operator to read when kubectl logs
	// cannot reach a node proxy: its pod's status.
	for _, line := range strings.Split(strings.TrimSpace(pods), "\n") {
		if name, ready, _ := strings.Cut(line, " "); strings.Contains(ready, "false") {
			node := strings.TrimSpace(kubectl(t, cp, nil, "-n", "spoke-system", "get", "pod", name, "-o", "jsonpath={.spec.nodeName}"))
			listed := kubectl(t, cp, nil, "-n", "spoke-system", "get", "pods", "-o", "wide", "--field-selector", "spec.nodeName="+node)
			describe := kubectl(t, cp, nil, "-n", "spoke-system", "describe", "pod", name)
			if !strings.Contains(listed, name) || !strings.Contains(describe, "Readiness probe failed") || !strings.Contains(describe, "not ready: it dials no apiserver proxy yet") {
				t.Errorf("kubectl get pods on %s and describe pod %s do not show why it is not ready:\n%s\n%s", node, name, listed, describe)
			}
		}
	}
	kubectl(t, cp, nil, "-n", "spoke-system", "rollout", "undo", "daemonset/spoke-node-proxy")
	waitForNodeProxyRoll(t, cp)
	waitFor(t, 60*time.Second, "the unready pod to go", func() bool {
		out, err := kubectlRun(t, cp, nil, "-n", "spoke-system", "get", "pods", "-o", "name")
		return err == nil && strings.Count(out, "pod/") == nodes
	})
}

// waitForNodeProxyRoll is kubectl rollout status on the node proxies'
// DaemonSet; when the roll does not finish it fails with what a stalled
// roll needs read: the DaemonSet's status, its pods (node, revision,
// readiness, deletion), its events and the DaemonSet controller's log.
//
// A surge roll begun while a pod is inside minReadySeconds (node-d's, here)
// can stall in kube-controller-manager v1.37.2: the DaemonSet controller
// deletes an old pod only once the new one is available, and learns that
// only from a requeue it asks for minReadySeconds+1 s after the new pod
// turns Ready (updatePod). The workqueue keeps one delayed entry per key,
// the earliest (delaying_queue.go insert), so that requeue is dropped when
// an earlier one is pending, here the status resync asked 10 s after the
// joining pod's readiness; that resync finds the new pods Ready but not
// yet available, asks for nothing, and the roll waits for the next event
// on the DaemonSet's pods, which a quiet cluster never sends. Seen in the
// controller's log: the last sync right after the new pods turned Ready,
// none after. Rolls therefore start from a settled DaemonSet.
//
// The timeout stays past the controller's 5-minute expectations timeout,
// the other way a roll waits on the controller; the checks during a roll
// are about reachability, not how fast the controller is.
func waitForNodeProxyRoll(t *testing.T, cp *controlPlane) {
	t.Helper()
	_, err := kubectlRun(t, cp, nil, "-n", "spoke-system", "rollout", "status", "daemonset/spoke-node-proxy", "--timeout", "400s")
	if err == nil {
		return
	}
	var b strings.Builder
	show := func(what string, args ...string) {
		out, err := kubectlRun(t, cp, nil, append([]string{"-n", "spoke-system"}, args...)...)
		fmt.Fprintf(&b, "---- %s ----\n%s%v\n", what, out, err)
	}
	show("the DaemonSet's status", "get", "daemonset/spoke-node-proxy", "-o", "jsonpath={.metadata.generation} {.status}")
	show("its pods (a deleted one shows as Terminating; the revision is the controller-revision-hash label)", "get", "pods", "-o", "wide", "--show-labels")
	show("events", "get", "events", "--sort-by=.lastTimestamp")
	if cp.controllersLog != "" {
		raw, _ := os.ReadFile(cp.controllersLog)
		var lines []string
		for _, line := range strings.Split(string(raw), "\n") {
			if strings.Contains(line, "spoke-node-proxy") || strings.Contains(strings.ToLower(line), "daemon") {
				lines = append(lines, line)
			}
		}
		fmt.Fprintf(&b, "---- the DaemonSet controller's last lines ----\n%s\n", strings.Join(lines[max(0, len(lines)-60):], "\n"))
	}
	t.Fatalf("%v\n%s", err, b.String())
}

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/e2e/datapath"
	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// adminKubeconfig is a kubeconfig for cp's admin, written on first use.
func (cp *controlPlane) adminKubeconfig(t *testing.T) string {
	t.Helper()
	if cp.kubeconfig != "" {
		return cp.kubeconfig
	}
	path := filepath.Join(cp.t.TempDir(), "admin.kubeconfig")
	writeTestFile(t, path, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
`, cp.url, cp.token)))
	cp.kubeconfig = path
	return path
}

// startKubectl runs a long-lived kubectl (logs -f, port-forward) against cp
// and returns its output; it is killed when the calling function's stop runs.
// Its standard error is logged if the test fails.
func startKubectl(t *testing.T, cp *controlPlane, args ...string) (out io.Reader, stop func()) {
	t.Helper()
	cmd := exec.Command(kubeTool(t, "kubectl"), append([]string{"--kubeconfig", cp.adminKubeconfig(t)}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &envoytest.LogBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && stderr.String() != "" {
			t.Logf("kubectl %s: standard error:\n%s", strings.Join(args, " "), stderr.String())
		}
	})
	return stdout, func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
}

// startControllers runs the upstream kube-controller-manager (for the
// DaemonSet controller) and kube-scheduler (which binds DaemonSet pods).
func startControllers(t *testing.T, cp *controlPlane) {
	t.Helper()
	kubeconfig := cp.adminKubeconfig(t)
	dir := t.TempDir()
	// The upstream e2e framework (TestConformanceThroughSpoke) needs more
	// than the DaemonSet: default ServiceAccounts, the root CA ConfigMap in
	// every namespace, namespace deletion, Deployments, and nodes without
	// the not-ready taint once Ready.
	controllers := "daemonset-controller,garbage-collector-controller,endpointslice-controller,serviceaccount-controller,namespace-controller," +
		"deployment-controller,replicaset-controller,node-lifecycle-controller,root-ca-certificate-publisher-controller"
	cp.controllersLog = filepath.Join(dir, "controller-manager.log")
	// --vmodule: the DaemonSet controller says why it creates or deletes no
	// pod (expectations, surge counts), which a stalled roll needs.
	startProcess(t, "kube-controller-manager", cp.controllersLog, kubeTool(t, "kube-controller-manager"),
		"--kubeconfig", kubeconfig, "--controllers", controllers, "--root-ca-file", filepath.Join(flagValue(cp.args, "--cert-dir"), "apiserver.crt"),
		"--secure-port", "0", "--leader-elect=false", "--vmodule=daemon_controller=4,update=5")
	startProcess(t, "kube-scheduler", filepath.Join(dir, "scheduler.log"), kubeTool(t, "kube-scheduler"),
		"--kubeconfig", kubeconfig, "--secure-port", "0", "--leader-elect=false")
}

// spokeImages builds the spoke image (static binary) and the Envoy image
// (the installed Envoy 1.40), as make image does.
func spokeImages(t *testing.T) []string {
	t.Helper()
	envoys, _ := filepath.Glob("../.tools/venv/lib/python3*/site-packages/envoy/_bin/envoy")
	if len(envoys) == 0 {
		t.Fatal("no installed Envoy binary under .tools/venv: run make tools")
	}
	return buildOnce(t, "spoke-images", func(dir string) ([]string, error) {
		bin := filepath.Join(dir, "spoke")
		images := []string{filepath.Join(dir, "spoke.tar"), filepath.Join(dir, "envoy.tar")}
		// As make image builds it: static, stripped.
		if err := goCommand([]string{"CGO_ENABLED=0"}, "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "../cmd/spoke"); err != nil {
			return nil, err
		}
		if err := spokeImage(images[0], "--binary", bin, "--tag", "spoke:local"); err != nil {
			return nil, err
		}
		return images, spokeImage(images[1], "--envoy", envoys[0], "--tag", "envoy:1.40.0-local")
	})
}

// clusterNode is a node of a test cluster: its name, address, pod range.
type clusterNode struct {
	name, ip, pods string
	opts           nodeOptions
}

// spokeCluster is a real cluster with spoke deployed from manifests/.
type spokeCluster struct {
	cp                            *controlPlane
	s, s2                         model.Settings // the first and the second apiserver proxy's
	dir, clusterCAFile            string
	controlPlaneAddress, envoyBin string
	images                        []string
	clusterCA                     *authtest.CA
	srv                           *spokeServer
	apiProxy                      *envoytest.Process
	bootstrap                     *bootstrapv3.Bootstrap
	nodes                         map[string]*kubeNode
}

// startSpokeCluster starts a control plane on the host with no route to
// node or pod addresses (proven by a direct dial), the nodes in network
// namespaces of their own, and spoke from manifests/: the server as the
// static pod runs it, an apiserver proxy, the node proxy DaemonSet. It
// returns when every node holds a tunnel. The nodes run images as well as
// the test workloads and spoke's.
func startSpokeCluster(t *testing.T, nodes []clusterNode, images ...string) *spokeCluster {
	t.Helper()
	requireNodeHostTools(t)
	c := &spokeCluster{envoyBin: envoytest.Binary(t), dir: t.TempDir(), clusterCA: authtest.NewCA(t, "cluster CA"), nodes: map[string]*kubeNode{}}
	c.images = append(append(localImages(t), spokeImages(t)...), images...)
	c.clusterCAFile = authtest.WriteFile(t, c.dir, "cluster-ca.crt", c.clusterCA.CertPEM)
	c.s = model.DefaultSettings()
	c.s.EgressSocketPath = filepath.Join(c.dir, "egress.sock")
	c.controlPlaneAddress = nodes[0].opts.hostAddress() // the host's: every node reaches it
	// Two apiserver proxies, each on an address of its own on the host (a
	// second comes with a second kube-apiserver if a test starts one); the
	// node proxies dial both from the start.
	proxyAddresses := []string{"100.64.0.1", "100.64.0.2"}
	addHostAddresses(t, proxyAddresses...)
	c.s.TunnelPort = uint32(freePort(t))
	for _, a := range proxyAddresses {
		c.s.APIServerEndpoints = append(c.s.APIServerEndpoints, fmt.Sprintf("%s:%d", a, c.s.TunnelPort))
	}
	c.s.TunnelListenAddress = proxyAddresses[0]
	c.s2 = c.s
	c.s2.TunnelListenAddress, c.s2.EgressSocketPath = proxyAddresses[1], filepath.Join(c.dir, "egress-2.sock")
	blockNodeNetworks(t)
	egressFile := egressSelectorFile(t, c.s, filepath.Join(c.dir, "egress-selector.yaml"))
	c.cp = startControlPlaneWith(t, "--egress-selector-config-file", egressFile, "--client-ca-file", c.clusterCAFile, "--bind-address", "0.0.0.0",
		"--kubelet-certificate-authority", c.clusterCAFile,
		// Webhooks and APIServices at their pods' addresses: no kube-proxy
		// runs on these nodes to carry a ClusterIP.
		"--enable-aggregator-routing=true")
	startControllers(t, c.cp)

	// spoke deployed from manifests/: the namespace, the server's RBAC and
	// Service, the node proxies' DaemonSet; the tunnel CA as its Secret and
	// ConfigMap; the server as the static pod runs it, on its
	// ServiceAccount's token; the apiserver proxy on its socket.
	kubectl(t, c.cp, nil, "create", "namespace", "spoke-system")
	createTunnelCA(t, c.cp, c.dir)
	xdsPort := freePort(t)
	deployNodeProxies(t, c.cp, net.JoinHostPort(c.controlPlaneAddress, strconv.Itoa(xdsPort)))
	// The server reads the apiserver proxy's tunnels at its admin port, as
	// on a control-plane host (there 9901; here a free one).
	adminPort := freePort(t)
	c.srv = startSpokeServer(t, c.cp, c.s, c.clusterCAFile, c.controlPlaneAddress, xdsPort, "control-plane-1", fmt.Sprintf("127.0.0.1:%d", adminPort))
	var err error
	if c.bootstrap, err = envoy.Bootstrap(envoy.BootstrapOptions{Role: translator.RoleAPIServer, NodeID: "apiserver-1", XDSSocket: c.srv.socket, AdminPort: uint32(adminPort)}); err != nil {
		t.Fatal(err)
	}
	c.apiProxy = envoytest.Start(t, c.envoyBin, "apiserver-proxy", c.bootstrap)

	t.Cleanup(func() {
		if t.Failed() {
			dumpCluster(t, c.cp)
		}
	})
	for _, n := range nodes {
		n.opts.clusterCA = c.clusterCA
		if n.opts.servingCA == nil {
			n.opts.servingCA = c.clusterCA
		}
		c.nodes[n.name] = startKubeNodeWith(t, c.cp, n.opts, n.name, n.ip, n.pods, c.images...)
	}
	if conn, err := net.DialTimeout("tcp", nodes[0].ip+":10250", 2*time.Second); err == nil {
		conn.Close()
		t.Fatal("the control plane reached " + nodes[0].name + "'s kubelet directly: the test would prove nothing")
	} else {
		t.Logf("direct connection from the control plane to %s's kubelet: %v", nodes[0].name, err)
	}
	waitFor(t, 60*time.Second, "every node's tunnel at the apiserver proxy", func() bool { return c.apiProxy.StatSum("total_nodes") >= len(nodes) })
	return c
}

// TestKubectlReachesARealKubeletThroughSpoke: two real nodes (kubelet,
// containerd, pods) in network namespaces of their own, which the control
// plane (kube-apiserver with the egress selector, its controller manager and
// scheduler, spoke serve watching it, an apiserver proxy) has no route to:
// the test first proves a direct connection fails. The node proxies are
// deployed from manifests/ as DaemonSet pods on the real kubelets; kubectl
// logs and exec -i reach each node's pod through the egress socket and that
// node's tunnel; without the node proxies they fail at once with spoke's
// no-tunnel answer.
//
// It runs with the parallel tests, after the package's serial ones (the
// other real-kubelet tests among them: they share the host's node
// networks): most of its four minutes are waits (a DaemonSet roll,
// keepalives after a cut), which the timer-bound tests fill.
func TestKubectlReachesARealKubeletThroughSpoke(t *testing.T) {
	t.Parallel()
	nodes := []clusterNode{
		{"node-a", "172.30.1.1", "10.244.1.0/24", nodeOptions{isolated: true, index: 1}},
		{"node-b", "172.30.2.1", "10.244.2.0/24", nodeOptions{isolated: true, index: 2}},
	}
	// node-c's kubelet serves a certificate from another CA: with
	// --kubelet-certificate-authority the apiserver must refuse it, tunnel
	// or not.
	rogue := clusterNode{"node-c", "172.30.3.1", "10.244.3.0/24", nodeOptions{isolated: true, index: 3, servingCA: authtest.NewCA(t, "not the cluster CA")}}
	c := startSpokeCluster(t, append(nodes, rogue))
	cp, s, s2, dir, srv, apiProxy, b := c.cp, c.s, c.s2, c.dir, c.srv, c.apiProxy, c.bootstrap
	envoyBin, images, clusterCA, clusterCAFile, kubeNodes, controlPlaneAddress := c.envoyBin, c.images, c.clusterCA, c.clusterCAFile, c.nodes, c.controlPlaneAddress

	before := apiProxy.StatSumOf("cluster.node/", ".upstream_rq_total")
	for _, n := range nodes {
		pod := "logger-" + n.name
		createLogger(t, cp, pod, n.name)
		var logs string
		start := time.Now()
		waitFor(t, 30*time.Second, "kubectl logs through spoke to "+n.name, func() bool {
			var err error
			logs, err = kubectlRun(t, cp, nil, "logs", pod, "-c", "logger", "--tail", "3")
			return err == nil && strings.Count(logs, "logs_generator.go") == 3
		})
		t.Logf("%s: kubectl logs --tail 3 through spoke: %v (first success)", n.name, time.Since(start).Round(time.Millisecond))
		start = time.Now()
		if got := kubectl(t, cp, []byte("through the tunnel of "+n.name+"\n"), "exec", "-i", pod, "-c", "shell", "--", "/busybox", "cat"); got != "through the tunnel of "+n.name+"\n" {
			t.Errorf("kubectl exec -i through spoke to %s: %q", n.name, got)
		}
		t.Logf("%s: kubectl exec -i through spoke: %v", n.name, time.Since(start).Round(time.Millisecond))
	}
	for _, n := range nodes {
		checkStreamingPaths(t, cp, "logger-"+n.name, n.name)
	}
	// node-c's tunnel works, but its kubelet's certificate is not the
	// cluster CA's: the apiserver refuses it inside the tunnel.
	if out, err := kubectlRun(t, cp, nil, "get", "--raw", "/api/v1/nodes/node-c/proxy/healthz"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("the apiserver accepted node-c's kubelet with a certificate from another CA: %q %v", out, err)
	} else {
		t.Logf("node-c, wrong kubelet serving certificate: %v", lastLine(err.Error()))
	}
	if after := apiProxy.StatSumOf("cluster.node/", ".upstream_rq_total"); after < before+2*len(nodes) {
		t.Errorf("the apiserver proxy sent %d streams into tunnels for logs and exec, want at least %d", after-before, 2*len(nodes))
	}

	podB, err := cp.client().CoreV1().Pods("default").Get(context.Background(), "logger-node-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkNodeCannotReachOtherNodes(t, kubeNodes["node-a"], s.APIServerEndpoints[0], []string{nodes[1].ip + ":10250", net.JoinHostPort(podB.Status.PodIP, "8080")})
	checkWebhookAndAPIService(t, cp, "node-b")
	checkUnknownNode(t, cp, srv, clusterCA, filepath.Join(dir, "tunnel-ca.crt"), envoyBin, "logger-node-a")
	checkMissingEgressSocket(t, cp, s, "logger-node-a")
	restartServerUnderLoad(t, cp, srv, apiProxy, "logger-node-a", len(nodes)+1)
	apiProxy = restartAPIServerProxyUnderLoad(t, cp, apiProxy, envoyBin, b, "logger-node-a")
	checkDeletedPodRefused(t, cp, s.EgressSocketPath, "logger-node-b")
	startKubeNodeWith(t, cp, nodeOptions{isolated: true, index: 4, clusterCA: clusterCA, servingCA: clusterCA}, "node-d", "172.30.4.1", "10.244.4.0/24", images...)
	ready := time.Now()
	waitFor(t, 60*time.Second, "node-d's tunnel", func() bool { return apiProxy.StatSum("total_nodes") >= len(nodes)+2 })
	tunnel := time.Since(ready)
	createLogger(t, cp, "logger-node-d", "node-d")
	waitFor(t, 30*time.Second, "kubectl logs to node-d", func() bool {
		logs, err := kubectlRun(t, cp, nil, "logs", "logger-node-d", "-c", "logger", "--tail", "1")
		return err == nil && strings.Contains(logs, "logs_generator.go")
	})
	t.Logf("node-d joined: its tunnel %v after the node was Ready (DaemonSet pod created, scheduled, started), kubectl logs to its pod worked %v after Ready (pod start included)",
		tunnel.Round(time.Millisecond), time.Since(ready).Round(time.Millisecond))

	apiProxy2 := checkSecondAPIServer(t, cp, s2, clusterCAFile, controlPlaneAddress, envoyBin, []string{"node-a", "node-b", "node-c", "node-d"},
		map[string]string{"node-a": "logger-node-a", "node-d": "logger-node-d"})
	kubelets := map[string]string{"node-d": "172.30.4.1:10250"}
	for _, n := range append(nodes, rogue) {
		kubelets[n.name] = n.ip + ":10250"
	}
	rollNodeProxies(t, cp, []*envoytest.Process{apiProxy, apiProxy2}, []string{s.EgressSocketPath, s2.EgressSocketPath}, kubelets, "logger-node-a")
	checkRollWaitsForTunnels(t, cp, apiProxy, len(kubelets))

	checkNodeWithoutKubeletCertificate(t, cp, apiProxy, "logger-node-a", images)
	checkTunnelLossReadWithKubectl(t, cp, apiProxy, kubeNodes["node-b"])

	// Without the node proxies the apiserver has no way to the kubelets.
	kubectl(t, cp, nil, "-n", "spoke-system", "delete", "daemonset", "spoke-node-proxy", "--wait=false")
	waitFor(t, 60*time.Second, "the tunnels to go", func() bool { return apiProxy.StatSum("total_nodes") == 0 && apiProxy2.StatSum("total_nodes") == 0 })
	start := time.Now()
	out, err := kubectlRun(t, cp, nil, "logs", "logger-node-a", "-c", "logger", "--tail", "1")
	if err == nil || !strings.Contains(out, "502") && !strings.Contains(err.Error(), "502") {
		t.Errorf("kubectl logs with no tunnel to node-a: %q, %v; want spoke's 502", out, err)
	}
	t.Logf("kubectl logs with no tunnel failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
}

// deployNodeProxies applies the local overlay of manifests/ with what this
// machine needs on top (a generated overlay, not a copy): the server's
// address instead of its Service's DNS name, as no cluster DNS runs here.
func deployNodeProxies(t *testing.T, cp *controlPlane, xdsAddress string) {
	t.Helper()
	overlay := t.TempDir()
	abs, err := filepath.Abs("../manifests/overlays/local/cluster")
	if err != nil {
		t.Fatal(err)
	}
	base, err := filepath.Rel(overlay, abs) // kustomize takes relative roots only
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(overlay, "kustomization.yaml"), []byte(fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [%q]
patches:
- target: {kind: DaemonSet, name: spoke-node-proxy}
  patch: |
    - op: replace
      path: /spec/template/spec/initContainers/0/args/3
      value: --xds-address=%s
`, base, xdsAddress)))
	rendered := kubectl(t, nil, nil, "kustomize", "--load-restrictor", "LoadRestrictionsNone", overlay)
	if !strings.Contains(rendered, "--xds-address="+xdsAddress) {
		t.Fatalf("the test overlay did not patch the DaemonSet:\n%s", rendered)
	}
	kubectl(t, cp, []byte(rendered), "apply", "--server-side", "-f", "-")
}

// createLogger runs pod name on node (label app=<name>) with a log
// generator, a busybox shell, a TCP echo server on 9000 and an HTTP server
// on 8080 (agnhost netexec: /hostname answers the pod's name).
func createLogger(t *testing.T, cp *controlPlane, name, node string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
			Name: "logger", Image: "agnhost:local", ImagePullPolicy: corev1.PullNever,
			Args: []string{"logs-generator", "--log-lines-total", "1000000", "--run-duration", "1h"},
		}, {
			Name: "shell", Image: "busybox:local", ImagePullPolicy: corev1.PullNever, Args: []string{"sleep", "3600"},
		}, {
			Name: "echo", Image: "busybox:local", ImagePullPolicy: corev1.PullNever, Args: []string{"nc", "-ll", "-p", "9000", "-e", "/busybox", "cat"},
		}, {
			Name: "web", Image: "agnhost:local", ImagePullPolicy: corev1.PullNever, Args: []string{"netexec", "--http-port=8080", "--udp-port=-1"},
		}, {
			// Echoes its stdin: for kubectl attach.
			Name: "attach", Image: "busybox:local", ImagePullPolicy: corev1.PullNever, Args: []string{"cat"}, Stdin: true,
		}}},
	}
	if _, err := cp.client().CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "pod "+name+" Running", func() bool {
		p, err := cp.client().CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
}

// dumpCluster logs the pods and events of a failed cluster test (each node
// logs its containers' logs from disk when it is cleaned up).
func dumpCluster(t *testing.T, cp *controlPlane) {
	defer envoytest.DumpSection(t, "the cluster's pods and events")()
	for _, args := range [][]string{{"get", "pods", "-A", "-o", "wide"}, {"get", "events", "-A", "--sort-by=.lastTimestamp"}} {
		out, err := kubectlRun(t, cp, nil, args...)
		t.Logf("---- kubectl %s ----\n%s%v", strings.Join(args, " "), out, err)
	}
}

// checkStreamingPaths runs the rest of the control-plane-to-node paths
// through spoke against pod (on node), each checked for content: logs -f,
// port-forward of 64 MiB each way, the kubelet, pod and service proxies.
func checkStreamingPaths(t *testing.T, cp *controlPlane, pod, node string) {
	t.Helper()
	checkLogsFollow(t, cp, pod)
	checkPortForward(t, cp, pod, 64<<20)
	checkAttachAndTTY(t, cp, pod)
	if got := kubectl(t, cp, nil, "get", "--raw", "/api/v1/nodes/"+node+"/proxy/healthz"); got != "ok" {
		t.Errorf("%s: the kubelet's /healthz through the node proxy subresource: %q", node, got)
	}
	if got := kubectl(t, cp, nil, "get", "--raw", "/api/v1/namespaces/default/pods/"+pod+":8080/proxy/hostname"); got != pod {
		t.Errorf("%s: pod proxy to %s:8080/hostname: %q", node, pod, got)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: "default"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": pod}, Ports: []corev1.ServicePort{{Port: 8080}}},
	}
	if _, err := cp.client().CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got string
	waitFor(t, 30*time.Second, "the service proxy to "+pod, func() bool {
		got, _ = kubectlRun(t, cp, nil, "get", "--raw", "/api/v1/namespaces/default/services/"+pod+":8080/proxy/hostname")
		return got == pod
	})
}

// checkAttachAndTTY: kubectl attach -i reaches the running container's
// stdin and brings back its output; kubectl exec -it gets a terminal (run
// under script(1), which gives kubectl one).
func checkAttachAndTTY(t *testing.T, cp *controlPlane, pod string) {
	t.Helper()
	checkAttachEchoes(t, cp, pod)
	cmd := exec.Command("script", "-qec", fmt.Sprintf("%s --kubeconfig %s exec -it %s -c shell -- /busybox tty", kubeTool(t, "kubectl"), cp.adminKubeconfig(t), pod), "/dev/null")
	raw, err := cmd.CombinedOutput()
	// script's terminal may echo a control character of its own first
	// (seen: "^@/dev/pts/0"); busybox tty prints "not a tty" without one.
	if got := strings.TrimSpace(string(raw)); err != nil || !strings.Contains(got, "/dev/pts/") || strings.Contains(got, "not a tty") {
		t.Errorf("%s: kubectl exec -it ... tty: %q %v; want a terminal in the container", pod, got, err)
	}
}

// attachEchoWait is how long the attach check waits for its echo. CI's
// make test runs this beside the upstream specs at load 40-60 on 2 cores
// (port-forward then moved 1 MB/s; idle, 20 MB/s): kubectl's start, the
// upgrade through kube-apiserver, spoke and the kubelet, and containerd's
// attach took more than 10 s there once. A path that does not carry
// attach gives no echo at all; the time taken is logged.
const attachEchoWait = 60 * time.Second

// checkAttachEchoes: a line written to kubectl attach -i comes back from
// the container (cat). stdin stays open until the echo is back: at EOF
// kubectl attach leaves before the container answers.
func checkAttachEchoes(t *testing.T, cp *controlPlane, pod string) {
	t.Helper()
	attach := exec.Command(kubeTool(t, "kubectl"), "--kubeconfig", cp.adminKubeconfig(t), "attach", "-i", pod, "-c", "attach")
	in, _ := attach.StdinPipe()
	out, _ := attach.StdoutPipe()
	stderr := &envoytest.LogBuffer{}
	attach.Stderr = stderr
	start := time.Now()
	if err := attach.Start(); err != nil {
		t.Fatal(err)
	}
	// exited closes once kubectl is gone and its standard error is
	// complete.
	exited := make(chan struct{})
	echoed := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		echoed <- line
		_ = attach.Wait()
		close(exited)
	}()
	// stop returns once kubectl is gone: its standard error, complete
	// then, says why it left or what else it wrote.
	stop := func() { _ = attach.Process.Kill(); <-exited }
	defer stop()
	fmt.Fprintln(in, "hello over attach")
	select {
	case line := <-echoed:
		if line != "hello over attach\n" {
			stop()
			t.Errorf("%s: kubectl attach -i: %q back, want the line written; kubectl's standard error: %q", pod, line, stderr.String())
			return
		}
		t.Logf("%s: kubectl attach -i: echo back after %v", pod, time.Since(start).Round(time.Millisecond))
	case <-time.After(attachEchoWait):
		stop()
		t.Errorf("%s: kubectl attach -i: no echo in %v; kubectl's standard error: %q", pod, attachEchoWait, stderr.String())
	}
}

// checkLogsFollow: kubectl logs -f delivers lines while the pod writes
// them. A line's delay is its arrival here less the time the container
// runtime stamped on it (--timestamps; every node shares this host's
// clock), so a writer starved on a loaded machine, which writes fewer
// lines, does not read as a slow path. The stream is judged over
// consecutive 3-second windows, up to followWindows of them: one window
// with lines arriving as written (p50 at most a second) shows the path
// streams. A path that stalls or holds lines back fails every window;
// a machine starved for a moment (a cold make test compiling beside the
// kind tests: p50 1.2 s over one window) passes in the next.
func checkLogsFollow(t *testing.T, cp *controlPlane, pod string) {
	t.Helper()
	out, stop := startKubectl(t, cp, "logs", "-f", pod, "-c", "logger", "--tail", "0", "--timestamps")
	defer stop()
	lines := make(chan followedLine, 100000)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- followLine(sc.Text(), time.Now())
		}
		close(lines)
	}()
	start := time.Now()
	// The first line may take kubectl's start-up and the stream's set-up
	// (4.8 s seen on a loaded 2-core machine); a path that stalls gives
	// none in 10 s.
	first, ok := nextFollowedLine(t, pod, lines, time.After(10*time.Second))
	if !ok {
		t.Fatalf("%s: kubectl logs -f delivered no line in 10 s; want them as they are written", pod)
	}
	var windows []string
	for range followWindows {
		delays := followWindow(t, pod, lines)
		// logs-generator writes about 280 lines a second on an idle machine.
		if len(delays) >= 20 && datapath.Percentile(delays, .5) <= time.Second {
			slower := ""
			if len(windows) > 0 {
				slower = " (windows before it: " + strings.Join(windows, "; ") + ")"
			}
			t.Logf("%s: kubectl logs -f: first line after %v; %d lines in 3 s, %s after they were written%s",
				pod, first.at.Sub(start).Round(time.Millisecond), len(delays), delaysText(delays), slower)
			return
		}
		windows = append(windows, fmt.Sprintf("%d lines, %s", len(delays), delaysText(delays)))
	}
	t.Errorf("%s: kubectl logs -f: first line after %v, then in %d windows of 3 s: %s; want them as they are written",
		pod, first.at.Sub(start).Round(time.Millisecond), followWindows, strings.Join(windows, "; "))
}

// followWindows is how many 3-second windows of kubectl logs -f
// checkLogsFollow reads at most.
const followWindows = 4

// followWindow collects the delays of the lines that arrive in the next 3
// seconds.
func followWindow(t *testing.T, pod string, lines <-chan followedLine) []time.Duration {
	t.Helper()
	var delays []time.Duration
	for deadline := time.After(3 * time.Second); ; {
		l, ok := nextFollowedLine(t, pod, lines, deadline)
		if !ok {
			return delays
		}
		delays = append(delays, l.delay)
	}
}

// nextFollowedLine returns the next line of kubectl logs -f, or false if
// none came before deadline; the test ends if the stream does or a line
// has no timestamp.
func nextFollowedLine(t *testing.T, pod string, lines <-chan followedLine, deadline <-chan time.Time) (followedLine, bool) {
	t.Helper()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatalf("%s: kubectl logs -f ended", pod)
		}
		if l.err != nil {
			t.Fatalf("%s: kubectl logs -f --timestamps: %v", pod, l.err)
		}
		return l, true
	case <-deadline:
		return followedLine{}, false
	}
}

// followedLine is one line of kubectl logs -f --timestamps: when it
// arrived and how long after the runtime stamped it.
type followedLine struct {
	at    time.Time
	delay time.Duration
	err   error
}

func followLine(line string, at time.Time) followedLine {
	stamp, _, _ := strings.Cut(line, " ")
	written, err := time.Parse(time.RFC3339Nano, stamp)
	if err != nil {
		return followedLine{err: fmt.Errorf("line %q has no timestamp: %w", line, err)}
	}
	return followedLine{at: at, delay: at.Sub(written)}
}

func delaysText(delays []time.Duration) string {
	if len(delays) == 0 {
		return "none"
	}
	return fmt.Sprintf("p50 %v, max %v", datapath.Percentile(delays, .5).Round(100*time.Microsecond), slices.Max(delays).Round(100*time.Microsecond))
}

// checkPortForward sends size random bytes through kubectl port-forward to
// the pod's echo server and checks that the same bytes come back.
func checkPortForward(t *testing.T, cp *controlPlane, pod string, size int) {
	t.Helper()
	out, stop := startKubectl(t, cp, "port-forward", "pod/"+pod, ":9000", "--address", "127.0.0.1")
	defer stop()
	line, err := bufio.NewReader(out).ReadString('\n') // Forwarding from 127.0.0.1:PORT -> 9000
	if err != nil {
		t.Fatalf("%s: kubectl port-forward: %v", pod, err)
	}
	local, _, _ := strings.Cut(strings.TrimPrefix(line, "Forwarding from "), " ->")
	conn, err := net.DialTimeout("tcp", local, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: port-forward %q: %v", pod, line, err)
	}
	defer conn.Close()
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	back := make(chan []byte, 1)
	go func() { back <- readUntilStalled(conn, size, portForwardStall) }()
	if _, err := conn.Write(data); err != nil {
		t.Fatalf("%s: port-forward write: %v", pod, err)
	}
	got := <-back
	elapsed := time.Since(start)
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("%s: port-forward echoed %d of %d bytes in %v (each read waits %v for the next byte), checksum differs", pod, len(got), size, elapsed.Round(time.Millisecond), portForwardStall)
	}
	t.Logf("%s: port-forward: %d MiB each way in %v (%.0f MB/s each way), checksums match", pod, size>>20, elapsed.Round(time.Millisecond), float64(size)/1e6/elapsed.Seconds())
}

// portForwardStall is how long checkPortForward waits for the next echoed
// byte. The whole transfer has no bound of its own: CI's make test moved
// 1 MB/s each way at load 40-60 (64 MiB in 55 s; 20 MB/s idle), and a
// total bound wide enough for that machine would hide nothing a stall
// does not show.
const portForwardStall = time.Minute

// readUntilStalled reads up to size bytes from conn and returns what came
// before the stream ended or went quiet for stall.
func readUntilStalled(conn net.Conn, size int, stall time.Duration) []byte {
	got := make([]byte, size)
	n := 0
	for n < size {
		_ = conn.SetReadDeadline(time.Now().Add(stall))
		m, err := conn.Read(got[n:])
		n += m
		if err != nil {
			break
		}
	}
	return got[:n]
}

// checkDeletedPodRefused deletes pod and waits until spoke refuses a
// CONNECT to its old address (the apiserver's own path to it), measuring how
// long that takes.
func checkDeletedPodRefused(t *testing.T, cp *controlPlane, socket, pod string) {
	t.Helper()
	p, err := cp.client().CoreV1().Pods("default").Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	target := net.JoinHostPort(p.Status.PodIP, "8080")
	waitFor(t, 30*time.Second, "a CONNECT to "+target+" before the delete", func() bool {
		conn, _, st, err := sendCONNECT(socket, target, 5*time.Second)
		if conn != nil {
			conn.Close()
		}
		return err == nil && st == 200
	})
	start := time.Now()
	if err := cp.client().CoreV1().Pods("default").Delete(context.Background(), pod, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	var status int
	waitFor(t, 30*time.Second, "spoke to refuse the deleted pod's address", func() bool {
		conn, _, st, err := sendCONNECT(socket, target, 5*time.Second)
		if conn != nil {
			conn.Close()
		}
		status = st
		return err == nil && st != 200
	})
	t.Logf("pod %s deleted: CONNECT to its address %s refused (%d) %v after the delete", pod, target, status, time.Since(start).Round(time.Millisecond))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// restartAPIServerProxyUnderLoad kills and restarts the apiserver proxy
// while a kubectl logs -f and a port-forward are open, reports what
// happened to them, and measures how long until a new kubectl logs works
// again.
func restartAPIServerProxyUnderLoad(t *testing.T, cp *controlPlane, apiProxy *envoytest.Process, envoyBin string, b *bootstrapv3.Bootstrap, pod string) *envoytest.Process {
	t.Helper()
	open := holdStreams(t, cp, pod)
	apiProxy.Stop()
	stopped := time.Now()
	apiProxy = envoytest.Start(t, envoyBin, "apiserver-proxy-restarted", b)
	up := time.Since(stopped)
	waitFor(t, 30*time.Second, "kubectl logs after the apiserver proxy restart", func() bool {
		logs, err := kubectlRun(t, cp, nil, "logs", pod, "-c", "logger", "--tail", "1")
		return err == nil && strings.Contains(logs, "logs_generator.go")
	})
	t.Logf("apiserver proxy restart: Envoy ready %v after the kill, a new kubectl logs worked %v after it", up.Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
	// The streams lived in the killed Envoy: kubectl must see them end, not
	// hang on a dead connection.
	if follow, echo := open.report("apiserver proxy restart"); follow || echo {
		t.Errorf("after the apiserver proxy was killed, a stream it carried still works (logs -f: %v, port-forward: %v): the test did not cut what it meant to", follow, echo)
	}
	return apiProxy
}

// TestFollowLineReadsTheRuntimeStamp: the delay of a followed log line is
// measured from the container runtime's stamp, and a line without one is an
// error, not a zero delay.
func TestFollowLineReadsTheRuntimeStamp(t *testing.T) {
	at := time.Date(2026, 12, 6, 8, 0, 13, 500_000_000, time.UTC)
	got := followLine("2026-12-06T08:00:13.437683713Z I1206 08:00:13.437683 1 logs_generator.go:76] 0 GET /api/v1/namespaces/ns/pods/p 200", at)
	if got.err != nil || got.delay != 62316287*time.Nanosecond {
		t.Errorf("followLine: delay %v, error %v; want 62.316287ms", got.delay, got.err)
	}
	if got := followLine("I1206 08:00:13.437683 1 logs_generator.go:76] 0 GET", at); got.err == nil {
		t.Errorf("followLine of a line without a timestamp: delay %v, no error", got.delay)
	}
}

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	kindconfig "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/spokeproxy/spoke/envoy/envoytest"
)

const (
	kindVersion = "v0.33.0"
	kindConfig  = "e2e/kind/cluster.yaml" // relative to the repository root, where kind runs
	kindCluster = "spoke-e2e"
)

// loadKindConfig decodes the kind config as kind does: strictly (unknown
// fields are errors), into kind's own v1alpha4 types, then defaulted.
func loadKindConfig(t *testing.T) *kindconfig.Cluster {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", kindConfig))
	if err != nil {
		t.Fatal(err)
	}
	var cfg kindconfig.Cluster
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("%s: kind would refuse it: %v", kindConfig, err)
	}
	if cfg.Kind != "Cluster" || cfg.APIVersion != "kind.x-k8s.io/v1alpha4" {
		t.Fatalf("%s: kind %q apiVersion %q", kindConfig, cfg.Kind, cfg.APIVersion)
	}
	kindconfig.SetDefaultsCluster(&cfg)
	return &cfg
}

// TestKindConfig: the kind config is what kind accepts and deploys spoke
// from manifests/: its ClusterConfiguration patch is the manifests'
// fragment, the real kubeadm renders kube-apiserver's static pod from it
// with the egress selector and kubelet CA flags, every file it mounts into
// the control-plane node is the repository's (or rendered by the kind test),
// and kubelets get serving certificates the apiserver can verify.
func TestKindConfig(t *testing.T) {
	cfg := loadKindConfig(t)
	var controlPlanes, workers []kindconfig.Node
	for _, n := range cfg.Nodes {
		switch n.Role {
		case kindconfig.ControlPlaneRole:
			controlPlanes = append(controlPlanes, n)
		case kindconfig.WorkerRole:
			workers = append(workers, n)
		}
	}
	if len(controlPlanes) != 1 || len(workers) < 2 {
		t.Fatalf("want one control-plane node and at least two workers, got %d and %d", len(controlPlanes), len(workers))
	}
	cp := controlPlanes[0]
	if len(cp.KubeadmConfigPatches) != 1 {
		t.Fatalf("the control-plane node should carry exactly the ClusterConfiguration patch, has %d patches", len(cp.KubeadmConfigPatches))
	}
	fragment, err := os.ReadFile("../manifests/control-plane/kubeadm-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var want, got map[string]any
	if err := sigsyaml.Unmarshal(fragment, &want); err != nil {
		t.Fatal(err)
	}
	if err := sigsyaml.Unmarshal([]byte(cp.KubeadmConfigPatches[0]), &got); err != nil {
		t.Fatalf("the ClusterConfiguration patch: %v", err)
	}
	if !reflect.DeepEqual(want, got) {
		t.Errorf("the kind config's ClusterConfiguration differs from manifests/control-plane/kubeadm-config.yaml:\nkind: %v\nmanifests: %v", got, want)
	}
	var apiserver corev1.Pod
	renderedObject(t, string(renderAPIServerPod(t, cp.KubeadmConfigPatches[0])), "Pod", &apiserver)
	kas := apiserver.Spec.Containers[0]
	for _, flag := range []string{"--egress-selector-config-file=/etc/kubernetes/egress-selector-configuration.yaml", "--kubelet-certificate-authority=/etc/kubernetes/pki/ca.crt"} {
		if !slices.Contains(kas.Command, flag) {
			t.Errorf("kube-apiserver rendered from the kind config lacks %s", flag)
		}
	}
	mounted := map[string]string{}
	for _, m := range cp.ExtraMounts {
		mounted[m.ContainerPath] = m.HostPath
		if _, err := os.Stat(filepath.Join("..", m.HostPath)); err != nil {
			t.Errorf("extraMount %s: %v (paths are relative to the repository root)", m.HostPath, err)
		}
	}
	if mounted["/etc/kubernetes/egress-selector-configuration.yaml"] != "manifests/control-plane/egress-selector-configuration.yaml" {
		t.Error("the control-plane node must get manifests' egress selector file where kube-apiserver reads it")
	}
	serverTLSBootstrap := false
	for _, p := range cfg.KubeadmConfigPatches {
		var kubelet struct {
			Kind               string `json:"kind"`
			ServerTLSBootstrap bool   `json:"serverTLSBootstrap"`
		}
		if err := sigsyaml.Unmarshal([]byte(p), &kubelet); err == nil && kubelet.Kind == "KubeletConfiguration" {
			serverTLSBootstrap = kubelet.ServerTLSBootstrap
		}
	}
	if !serverTLSBootstrap {
		t.Error("with --kubelet-certificate-authority every kubelet needs serverTLSBootstrap: true (its serving certificate from the cluster CA)")
	}
}

// kindTools returns kind and the node image, or skips saying what is
// missing. make test starts a Docker daemon of its own (e2e/kind/docker.sh)
// and builds the node image (e2e/kind/node-image.sh, cached); on a machine
// with Docker but no SPOKE_KIND_NODE_IMAGE the test builds it itself rather
// than pull kind's default, which no registry here serves.
func kindTools(t *testing.T) (kind, image string) {
	t.Helper()
	root := repoRoot(t)
	kind = filepath.Join(root, ".tools", "kind-"+kindVersion, "kind")
	missing := ""
	if _, err := os.Stat(kind); err != nil {
		missing = kind + " missing: run `make tools-kind`"
	} else if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		missing = "no Docker daemon answers (`docker info`: " + strings.TrimSpace(lastLine(string(out))) +
			"); kind runs its nodes as Docker containers: `export $(e2e/kind/docker.sh start)` starts one of spoke's own (root)"
	}
	if missing != "" {
		if os.Getenv("SPOKE_REQUIRE_KIND") == "1" {
			t.Fatal("SPOKE_REQUIRE_KIND=1: " + missing)
		}
		t.Skip(missing)
	}
	if image = os.Getenv("SPOKE_KIND_NODE_IMAGE"); image != "" {
		return kind, image
	}
	cmd := exec.Command("bash", filepath.Join(root, "e2e", "kind", "node-image.sh"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build the kind node image (e2e/kind/node-image.sh): %v\n%s", err, tail(stderr.String(), 40))
	}
	return kind, strings.TrimSpace(string(out))
}

// kindCNI stands in for kindnetd: each node gets a ptp CNI config for its
// podCIDR and a route to every other node's podCIDR through that node.
// It waits for every node kind made (names) to register: kind create can
// return before a worker's kubelet has (kubeadm join waits for the
// kubelet's credentials, not its Node), and a node left out here would
// never be Ready.
func kindCNI(t *testing.T, cp *controlPlane, names []string) {
	t.Helper()
	if len(names) == 0 {
		t.Fatal("kind get nodes named no node of the cluster")
	}
	type node struct{ name, ip, cidr string }
	var nodes []node
	waitFor(t, 2*time.Minute, fmt.Sprintf("every kind node (%s) registered with its podCIDR", strings.Join(names, ", ")), func() bool {
		list, err := cp.client().CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil || len(list.Items) != len(names) {
			return false
		}
		nodes = nodes[:0]
		for _, n := range list.Items {
			if !slices.Contains(names, n.Name) {
				return false
			}
			ip := ""
			for _, a := range n.Status.Addresses {
				if a.Type == corev1.NodeInternalIP {
					ip = a.Address
				}
			}
			if n.Spec.PodCIDR == "" || ip == "" {
				return false
			}
			nodes = append(nodes, node{n.Name, ip, n.Spec.PodCIDR})
		}
		return true
	})
	for _, n := range nodes {
		conf := fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "kind-ptp", "plugins": [
  {"type": "ptp", "ipMasq": false, "mtu": 1500,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}`, n.cidr)
		script := "mkdir -p /etc/cni/net.d && cat > /etc/cni/net.d/10-spoke-ptp.conflist\n"
		for _, other := range nodes {
			if other.name != n.name {
				script += fmt.Sprintf("ip route replace %s via %s\n", other.cidr, other.ip)
			}
		}
		cmd := exec.Command("docker", "exec", "-i", n.name, "sh", "-c", script)
		cmd.Stdin = strings.NewReader(conf)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("CNI on kind node %s: %v %s", n.name, err, out)
		}
	}
}

// TestKindClusterThroughSpoke deploys spoke on a kind cluster created from
// e2e/kind/cluster.yaml with the command blocks of docs/operations.md, as
// an operator runs them (images loaded with kind load image-archive), then
// checks kubectl logs, logs -f, exec, attach, port-forward, the node/pod/
// service proxies, a webhook and an APIService, all through spoke.
func TestKindClusterThroughSpoke(t *testing.T) {
	t.Parallel()
	kind, nodeImage := kindTools(t)
	lockKindClusters(t)
	images := slices.Concat(localImages(t), spokeImages(t), conformanceImages(t))
	cp := kindClusterUp(t, kind, nodeImage, kindCluster, kindConfig, images)

	// spoke deployed by the command blocks of docs/operations.md, as
	// written: the images are the ones loaded above.
	nodes := len(loadKindConfig(t).Nodes)
	waitFor(t, 2*time.Minute, "every kubelet's serving certificate request", func() bool { requested, _ := servingCSRs(t, cp); return requested >= nodes })
	work := deployWorkdir(t)
	env := []string{"KUBECONFIG=" + cp.kubeconfig, "SPOKE_IMAGE=spoke:local", "ENVOY_IMAGE=envoy:1.40.0-local"}
	for _, step := range deploySteps(t) {
		start := time.Now()
		var out string
		switch step.where {
		case whereKubectl:
			out = runKubectlStep(t, step, work, env...)
		case whereControlPlaneHost:
			out = runOnKindNode(t, kindCluster+"-control-plane", step, work)
		default:
			t.Fatalf("deploy step %s: where=%s", step.name, step.where)
		}
		t.Logf("deploy step %s (%s) took %v:\n%s", step.name, step.where, time.Since(start).Round(time.Millisecond), out)
	}
	waitFor(t, time.Minute, "every kubelet's serving certificate, approved by step serving-certificates", func() bool { _, issued := servingCSRs(t, cp); return issued >= nodes })

	workers := []string{kindCluster + "-worker", kindCluster + "-worker2"}
	for _, node := range workers {
		pod := "logger-" + node
		createLogger(t, cp, pod, node)
		waitFor(t, 2*time.Minute, "kubectl logs through spoke to "+node, func() bool {
			logs, err := kubectlRun(t, cp, nil, "logs", pod, "-c", "logger", "--tail", "1")
			return err == nil && strings.Contains(logs, "logs_generator.go")
		})
		if got := kubectl(t, cp, []byte("through "+node+"\n"), "exec", "-i", pod, "-c", "shell", "--", "/busybox", "cat"); got != "through "+node+"\n" {
			t.Errorf("kubectl exec -i to %s: %q", node, got)
		}
		checkStreamingPaths(t, cp, pod, node)
	}
	checkWebhookAndAPIService(t, cp, workers[0])

	// The upstream e2e specs of everything that goes from the control plane
	// to the nodes, on a cluster with kube-proxy, DNS and service-account
	// tokens, spoke its only way there.
	specs, run := runUpstreamE2E(t, cp.adminKubeconfig(t), kindUpstreamFocus, upstreamProcs(t), kindAPIProxyStreams(t, kindCluster+"-control-plane"))
	checkUpstreamSpecs(t, cp, specs, run, 60)
}

// kindUpstreamFocus: the Conformance specs of admission and conversion
// webhooks, kubectl's exec/attach/run/logs/cp/port-forward specs, ephemeral
// containers, pods and PreStop, and the netns suite's specs.
const kindUpstreamFocus = `\[sig-api-machinery\] AdmissionWebhook.*\[Conformance\]|\[sig-api-machinery\] CustomResourceConversionWebhook.*\[Conformance\]|` +
	`Kubectl client Simple pod|Kubectl client Kubectl copy|Kubectl client Kubectl logs|Kubectl Port forwarding|Ephemeral Containers|` +
	`\[sig-node\] Pods should|\[sig-node\] PreStop|` + conformanceFocus

// kindAPIProxyStreams follows the streams the apiserver proxy on node has
// sent into tunnels (to nodes and to Services), from its Envoy's admin
// (127.0.0.1:9901 in the node's network) read ten times a second by a loop
// on the node (bash's /dev/tcp: the node has no curl); the function returns
// the latest sum. The loop ends with the cluster.
func kindAPIProxyStreams(t *testing.T, node string) func() (int, error) {
	t.Helper()
	// A reading ends with END only when the admin answered: a sum of zero
	// from an Envoy that did not answer would read as its counters starting
	// again.
	script := `while :; do
  if { exec 3<>/dev/tcp/127.0.0.1/9901; } 2>/dev/null && printf 'GET /stats?filter=upstream_rq_total HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n' >&3 && cat <&3; then echo END; else echo DOWN; fi
  exec 3<&-; sleep 0.1
done`
	cmd := exec.Command("docker", "exec", node, "bash", "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := regexp.MustCompile(`^cluster\.(?:node/[^.:]+|services)\.upstream_rq_total: (\d+)$`)
	var latest atomic.Int64
	latest.Store(-1)
	go func() {
		sc := bufio.NewScanner(out)
		sum := 0
		for sc.Scan() {
			switch sc.Text() {
			case "END":
				latest.Store(int64(sum))
				sum = 0
			case "DOWN":
				sum = 0
			default:
				if m := line.FindStringSubmatch(sc.Text()); m != nil {
					n, _ := strconv.Atoi(m[1])
					sum += n
				}
			}
		}
	}()
	return func() (int, error) {
		if v := latest.Load(); v >= 0 {
			return int(v), nil
		}
		return 0, fmt.Errorf("no reading of %s's apiserver proxy yet", node)
	}
}

// kindClusterUp creates kind cluster name from config (a path relative to
// the repository root) on nodeImage, gives it the CNI stand-in, waits for
// every node Ready and loads images into it; the cluster is deleted at the
// end (its pods and events logged first if the test failed).
func kindClusterUp(t *testing.T, kind, nodeImage, name, config string, images []string) *controlPlane {
	t.Helper()
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(kind, args...)
		cmd.Dir = ".."
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kind %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	_ = exec.Command(kind, "delete", "cluster", "--name", name).Run()
	created := time.Now()
	run("create", "cluster", "--name", name, "--config", config, "--image", nodeImage)
	t.Cleanup(func() { _ = exec.Command(kind, "delete", "cluster", "--name", name).Run() })
	cp := kindControlPlane(t, name, run("get", "kubeconfig", "--name", name))
	t.Cleanup(func() {
		if t.Failed() {
			dumpCluster(t, cp)
			dumpKindNodes(t, name)
		}
	})
	kindCNI(t, cp, kindNodeNames(run("get", "nodes", "--name", name), name))
	waitForExplained(t, 3*time.Minute, time.Second, "every kind node Ready", func() bool { return len(notReadyNodes(cp)) == 0 },
		func() string { return explainNotReady(cp) })
	t.Logf("kind cluster %s (node image %s) created and Ready in %v", name, nodeImage, time.Since(created).Round(time.Second))
	for _, image := range images {
		run("load", "image-archive", "--name", name, image)
	}
	return cp
}

// kindNodeNames: the node names in what kind get nodes printed for
// cluster name (each is the name with a role suffix).
func kindNodeNames(out, name string) []string {
	var names []string
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, name+"-") {
			names = append(names, f)
		}
	}
	return names
}

// notReadyNodes: the cluster's nodes whose Ready condition is not True,
// with that condition's reason and message ("?" when the list failed).
func notReadyNodes(cp *controlPlane) map[string]string {
	list, err := cp.client().CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return map[string]string{"?": err.Error()}
	}
	notReady := map[string]string{}
	for _, n := range list.Items {
		notReady[n.Name] = "no Ready condition yet"
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				delete(notReady, n.Name)
			} else if c.Type == corev1.NodeReady {
				notReady[n.Name] = fmt.Sprintf("%s: %s (since %s)", c.Reason, c.Message, c.LastTransitionTime.Format(time.TimeOnly))
			}
		}
	}
	return notReady
}

// nodeReadinessDump runs on a kind node that stays NotReady: what the
// kubelet's Ready condition rests on (the runtime's network and runtime
// conditions, the CNI config it reads), and the kubelet's and
// containerd's last complaints.
const nodeReadinessDump = `crictl --timeout 30s info 2>&1 | jq -c '.status.conditions' 2>&1
ls -l /etc/cni/net.d /opt/cni/bin 2>&1 | head -20
systemctl is-active kubelet containerd
echo "---- kubelet's last errors"
journalctl -u kubelet --no-pager -n 2000 2>&1 | grep -E '^.{0,40}[EW][0-9]{4}|NotReady|PLEG|NetworkReady' | tail -n 30
echo "---- containerd's last errors"
journalctl -u containerd --no-pager -n 2000 2>&1 | grep -iE 'level=(error|warn)|cni' | tail -n 20`

// explainNotReady says why each node is not Ready, from the API and from
// the node itself.
func explainNotReady(cp *controlPlane) string {
	var b strings.Builder
	notReady := notReadyNodes(cp)
	for _, name := range slices.Sorted(maps.Keys(notReady)) {
		fmt.Fprintf(&b, "\n---- node %s: %s\n", name, notReady[name])
		out, err := exec.Command("docker", "exec", name, "bash", "-c", nodeReadinessDump).CombinedOutput()
		fmt.Fprintf(&b, "%s%v", out, err)
	}
	return b.String()
}

// kindNodeDump runs on each node of a failed kind cluster: the containers
// (restarts, exits) and the last lines of spoke's (the apiserver proxy
// answers a CONNECT it cannot place with 502 and logs why; a node proxy
// logs lost tunnels), then the apiserver proxy's tunnel and error counters.
// It reads the nodes with docker exec, not through the apiserver: spoke's
// data path may be what failed.
const kindNodeDump = `crictl() { command crictl --timeout 30s "$@"; } # its default, 2 s, runs out on a loaded node
crictl ps -a
for n in apiserver-proxy spoke-server envoy tunnels; do
  for id in $(crictl ps -a -q --name "^$n\$"); do
    echo "---- container $n $id: its last 1000 lines, each distinct line once"
    crictl logs --tail 1000 "$id" 2>&1 | ` + compactLogLines + ` | tail -n 80
  done
done
if { exec 3<>/dev/tcp/127.0.0.1/9901; } 2>/dev/null; then # the apiserver proxy's node only
  echo "---- apiserver proxy counters"
  printf 'GET /stats?filter=reverse_tunnel|upstream_cx_connect_fail|upstream_rq_5|downstream_rq_5|upstream_cx_none_healthy|no_route HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n' >&3 && grep -v ': 0$' <&3
fi`

// compactLogLines prints each distinct log line once, where it first
// appeared, with how often and until when it repeated: lines that differ
// only in their JSON "time" field are the same line. Envoy's node proxy
// logs one line per dial cluster every second or two while it has no
// apiserver proxy to dial, and a plain tail showed nothing but that.
const compactLogLines = `awk '
  { key = $0; at = ""
    if (match(key, /"time":"[^"]*"/)) { at = ", the last at " substr(key, RSTART + 8, RLENGTH - 9); key = substr(key, 1, RSTART - 1) substr(key, RSTART + RLENGTH) }
    if (!(key in count)) { order[++n] = key; first[key] = $0 }
    count[key]++; last[key] = at }
  END { for (i = 1; i <= n; i++) { k = order[i]; print first[k]; if (count[k] > 1) printf "    (%d times in all%s)\n", count[k], last[k] } }'`

// dumpKindNodes logs kindNodeDump from every node of kind cluster name.
func dumpKindNodes(t *testing.T, name string) {
	defer envoytest.DumpSection(t, "kind cluster "+name+"'s nodes")()
	out, err := exec.Command("docker", "ps", "-q", "--filter", "label=io.x-k8s.kind.cluster="+name, "--format", "{{.Names}}").Output()
	if err != nil {
		t.Logf("listing kind cluster %s's nodes: %v", name, err)
		return
	}
	for _, node := range strings.Fields(string(out)) {
		dump, err := exec.Command("docker", "exec", node, "bash", "-c", kindNodeDump).CombinedOutput()
		t.Logf("---- kind node %s ----\n%s%v", node, dump, err)
	}
}

// kindControlPlane is the kind cluster as the shared checks see a control
// plane: kubectl and a client through kind's kubeconfig, pointed at the
// control-plane node's address. kind's own kubeconfig names
// https://127.0.0.1:PORT, which the apiserver's certificate no longer names
// (the kind config removes kind's extra names, as a stock kubeadm issues
// it): the test checks that too.
func kindControlPlane(t *testing.T, cluster, kindKubeconfig string) *controlPlane {
	t.Helper()
	kindCfg, err := clientcmd.Load([]byte(kindKubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	node := cluster + "-control-plane"
	ip, err := exec.Command("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", node).Output()
	if err != nil {
		t.Fatalf("docker inspect %s: %v", node, err)
	}
	for _, c := range kindCfg.Clusters {
		loopback := c.Server
		c.Server = "https://" + strings.TrimSpace(string(ip)) + ":6443"
		checkNotNamedLoopback(t, loopback, c.CertificateAuthorityData)
	}
	raw, err := clientcmd.Write(*kindCfg)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kind.kubeconfig")
	writeTestFile(t, kubeconfig, raw)
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &controlPlane{t: t, url: cfg.Host, kubeconfig: kubeconfig, clientset: client}
}

// checkNotNamedLoopback: the apiserver at server (kind's 127.0.0.1 port)
// answers with a certificate that, verified against the cluster CA, is not
// valid for 127.0.0.1.
func checkNotNamedLoopback(t *testing.T, server string, caPEM []byte) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	u, err := url.Parse(server)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: pool, ServerName: u.Hostname()})
	if err == nil {
		conn.Close()
		t.Fatalf("the apiserver's certificate names %s: kind's extra names are still there, so the test would hide a kubeconfig that needs them", u.Hostname())
	}
	var wrongName x509.HostnameError
	if !errors.As(err, &wrongName) {
		t.Fatalf("TLS to %s: %v (want the certificate refused for its name)", server, err)
	}
	t.Logf("kind's %s: %v", server, err)
}

// servingCSRs counts the kubelets' serving certificate requests
// (serverTLSBootstrap), and those that got their certificate.
func servingCSRs(t *testing.T, cp *controlPlane) (requested, issued int) {
	csrs, err := cp.client().CertificatesV1().CertificateSigningRequests().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return 0, 0
	}
	for _, csr := range csrs.Items {
		if csr.Spec.SignerName != "kubernetes.io/kubelet-serving" {
			continue
		}
		requested++
		if len(csr.Status.Certificate) > 0 {
			issued++
		}
	}
	return requested, issued
}

// runOnKindNode runs a control-plane-host step on a kind node, as root,
// in a copy of work (the repository's manifests, step images' deploy/).
func runOnKindNode(t *testing.T, node string, s deployStep, work string) string {
	t.Helper()
	copyIn := exec.Command("sh", "-c", "tar -C "+work+" -chf - . | docker exec -i "+node+" sh -c 'rm -rf /root/spoke && mkdir -p /root/spoke && tar -xf - -C /root/spoke'")
	if out, err := copyIn.CombinedOutput(); err != nil {
		t.Fatalf("copy the checkout onto %s: %v %s", node, err, out)
	}
	cmd := exec.Command("docker", "exec", "-i", "-w", "/root/spoke", node, "bash", "-euo", "pipefail", "-s")
	cmd.Stdin = strings.NewReader(s.script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("step %s on %s failed: %v\n%s\nits commands:\n%s", s.name, node, err, out, s.script)
	}
	return string(out)
}

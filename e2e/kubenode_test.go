package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// kubeNode is a real node on this machine: containerd (Debian's, with
// Debian's runc and CNI plugins) and the upstream kubelet, registered with a
// test control plane under its node identity, running pods from image
// archives built here (no registry is reachable).
type kubeNode struct {
	name, ip, dir string
	pki           string          // the kubelet's /var/lib/kubelet/pki: kubelet-client-current.pem when a cluster CA signed one
	socket        string          // containerd's CRI socket
	netnsBefore   map[string]bool // pod network namespaces that were there before the node
	netns         string          // the node's network namespace; "" when it shares the host's
}

// start runs a node process (containerd, kubelet), in the node's network
// namespace when it has one, and then in the node's mount namespace too.
func (n *kubeNode) start(t *testing.T, what, bin string, args ...string) {
	t.Helper()
	logFile := filepath.Join(n.dir, what+".log")
	if n.netns == "" {
		startProcess(t, n.name+"-"+what, logFile, bin, args...)
		return
	}
	// nsenter, not ip netns exec, which mounts a new /sys and so hides the
	// cgroup hierarchies from kubelet.
	startProcess(t, n.name+"-"+what, logFile, "nsenter", append([]string{"--net=/var/run/netns/" + n.netns, "--mount=" + n.mountNamespace(), bin}, args...)...)
}

func (n *kubeNode) mountNamespace() string { return filepath.Join(n.dir, "mntns", "ns") }

// pinMountNamespace creates the node's mount namespace, kept by a bind
// mount as ip netns keeps network namespaces: kubelet and containerd share
// it, so the tmpfs kubelet mounts for a pod's Secret volume is what runc
// bind-mounts into the container; the node's kubelet certificate is at the
// usual /var/lib/kubelet/pki there, as a DaemonSet's hostPath expects. It
// is a slave of the host's: the node's mounts stay its own.
func (n *kubeNode) pinMountNamespace(t *testing.T) {
	t.Helper()
	dir := filepath.Dir(n.mountNamespace())
	script := fmt.Sprintf(`mkdir -p %[1]s /var/lib/kubelet/pki && mount --bind %[1]s %[1]s && mount --make-private %[1]s && touch %[2]s &&
unshare --mount=%[2]s --propagation slave mount --bind %[3]s /var/lib/kubelet/pki`, dir, n.mountNamespace(), n.pki)
	if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("mount namespace of %s: %v %s", n.name, err, out)
	}
}

// isolate creates the node's network namespace and links it to the host.
func (n *kubeNode) isolate(t *testing.T, opts nodeOptions) {
	t.Helper()
	host, node := opts.hostAddress(), fmt.Sprintf("100.64.%d.2", opts.index)
	in := []string{"-n", n.netns}
	for _, args := range [][]string{
		{"netns", "add", n.netns},
		{"link", "add", n.netns, "type", "veth", "peer", "name", "eth0", "netns", n.netns},
		{"addr", "add", host + "/30", "dev", n.netns},
		{"link", "set", n.netns, "up"},
		append(in, "addr", "add", node+"/30", "dev", "eth0"),
		append(in, "addr", "add", n.ip+"/32", "dev", "eth0"),
		append(in, "link", "set", "eth0", "up"),
		append(in, "link", "set", "lo", "up"),
		append(in, "route", "add", "default", "via", host),
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
}

// nodeNetworks are the real-kubelet tests' node and pod addresses.
var nodeNetworks = []string{"172.30.0.0/16", "10.244.0.0/16"}

// blockNodeNetworks makes the host, where the control plane runs, unable
// to route to node and pod addresses (unreachable routes, so a direct
// connection fails at once), as a control plane in front of private or
// NATed nodes is; connections the nodes open still work.
func blockNodeNetworks(t *testing.T) {
	t.Helper()
	lockHost(t)
	for _, cidr := range nodeNetworks {
		if held := routesInside(cidr); held != "" {
			t.Fatalf("%s, the test nodes' network, is already routed on this machine (%s): a Docker network's bridge? Delete that link (ip link delete DEV) or move what holds it; the nodes' addresses must be unreachable from here but through spoke", cidr, held)
		}
		if out, err := exec.Command("ip", "route", "add", "unreachable", cidr).CombinedOutput(); err != nil {
			t.Fatalf("ip route add unreachable %s: %v %s", cidr, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "route", "delete", "unreachable", cidr).Run() })
	}
}

// routesInside lists the machine's routes to addresses in cidr (ip's
// "root": the prefix and anything more specific), one per "; ".
func routesInside(cidr string) string {
	out, _ := exec.Command("ip", "-4", "route", "show", "root", cidr).Output()
	return strings.Join(strings.Split(strings.TrimSpace(string(out)), "\n"), "; ")
}

func podNetworkNamespaces() map[string]bool {
	entries, _ := os.ReadDir("/var/run/netns")
	names := map[string]bool{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "cni-") {
			names[e.Name()] = true
		}
	}
	return names
}

// nodeHostTools are the Debian packages a node needs: `make tools-node`
// installs them.
var nodeHostTools = map[string]string{"containerd": "/usr/bin/containerd", "runc": "/usr/sbin/runc", "ctr": "/usr/bin/ctr", "CNI bridge plugin": "/usr/lib/cni/bridge", "busybox": "/bin/busybox"}

func requireNodeHostTools(t *testing.T) {
	t.Helper()
	for what, path := range nodeHostTools {
		if _, err := os.Stat(path); err != nil {
			msg := fmt.Sprintf("%s (%s) missing: run `make tools-node` (Debian's containerd, runc, containernetworking-plugins and busybox-static)", what, path)
			if os.Getenv("SPOKE_REQUIRE_KUBE") == "1" {
				t.Fatal("SPOKE_REQUIRE_KUBE=1: " + msg)
			}
			t.Skip(msg)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("a kubelet and containerd need root")
	}
	lockHost(t)
}

// startKubeNode starts containerd and a kubelet for name, whose InternalIP
// is ip (on a dummy link of its own) and whose pods get addresses from podCIDR on
// their own bridge, imports images (archives), and waits until the node is
// Ready.
func startKubeNode(t *testing.T, cp *controlPlane, name, ip, podCIDR string, images ...string) *kubeNode {
	return startKubeNodeWith(t, cp, nodeOptions{}, name, ip, podCIDR, images...)
}

// nodeOptions make a node more like a real one.
type nodeOptions struct {
	// clusterCA signs the kubelet's client certificate (CN
	// system:node:<name>), kept as kubelet keeps it, cert and key in
	// kubelet-client-current.pem; the kubelet authenticates with it. nil: a
	// token.
	clusterCA *authtest.CA
	// isolated puts the node in a network namespace of its own: a veth pair
	// to the host (host 100.64.<index>.1, node 100.64.<index>.2 and its
	// default route), ip on the node side, its pods behind its own bridge
	// there. The node reaches the host's addresses (the control plane); the
	// host has no route to ip or the pods (see blockNodeNetworks). Its
	// containerd sees its own kubelet-client-current.pem at
	// /var/lib/kubelet/pki, as a DaemonSet's hostPath expects.
	isolated bool
	index    int
	// servingCA signs the kubelet's serving certificate (for its node IP),
	// as with serverTLSBootstrap and approved CSRs. nil: kubelet signs its
	// own.
	servingCA *authtest.CA
}

// hostAddress is the host's address on an isolated node's veth pair.
func (o nodeOptions) hostAddress() string { return fmt.Sprintf("100.64.%d.1", o.index) }

// startKubeNodeWith is startKubeNode with options.
func startKubeNodeWith(t *testing.T, cp *controlPlane, opts nodeOptions, name, ip, podCIDR string, images ...string) *kubeNode {
	t.Helper()
	requireNodeHostTools(t)
	kubelet := kubeTool(t, "kubelet")
	dir, err := os.MkdirTemp("", "spoke-node-"+name+"-") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	n := &kubeNode{name: name, ip: ip, dir: dir, pki: filepath.Join(dir, "kubelet-pki"), socket: filepath.Join(dir, "containerd.sock"), netnsBefore: podNetworkNamespaces()}
	// 0755 as kubelet makes /var/lib/kubelet/pki: the files in it are
	// root's, 0600, but the node proxy's non-root init container may look.
	if err := os.MkdirAll(n.pki, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(n.pki, 0o755); err != nil {
		t.Fatal(err)
	}
	user := fmt.Sprintf("{token: %q}", nodeToken(name))
	if opts.clusterCA != nil {
		cert, key := opts.clusterCA.KubeletClient(t, name)
		pem := authtest.WriteFile(t, n.pki, "kubelet-client-current.pem", cert, key)
		user = fmt.Sprintf("{client-certificate: %q, client-key: %q}", pem, pem)
	}
	t.Cleanup(func() { n.cleanUp(t) })
	server := cp.url
	if opts.isolated {
		n.netns = "spk-" + name
		server = strings.Replace(cp.url, "127.0.0.1", opts.hostAddress(), 1)
	}
	n.writeConfigs(t, server, cp.kubeletClientCA, podCIDR, user)
	if opts.servingCA != nil {
		cert, key := opts.servingCA.Server(t, net.ParseIP(ip))
		config := filepath.Join(dir, "kubelet.yaml")
		raw, err := os.ReadFile(config)
		if err != nil {
			t.Fatal(err)
		}
		raw = fmt.Appendf(raw, "tlsCertFile: %s\ntlsPrivateKeyFile: %s\n",
			authtest.WriteFile(t, dir, "kubelet-serving.crt", cert), authtest.WriteFile(t, dir, "kubelet-serving.key", key))
		writeTestFile(t, config, raw)
	}
	n.makeCgroupRoot(t)
	if opts.isolated {
		n.isolate(t, opts)
		n.pinMountNamespace(t)
	} else {
		n.addAddress(t)
	}
	n.start(t, "containerd", nodeHostTools["containerd"], "--config", filepath.Join(dir, "containerd.toml"))
	waitFor(t, 20*time.Second, name+"'s containerd socket", func() bool { _, err := os.Stat(n.socket); return err == nil })
	for _, archive := range images {
		if out, err := exec.Command(nodeHostTools["ctr"], "--address", n.socket, "-n", "k8s.io", "images", "import", archive).CombinedOutput(); err != nil {
			t.Fatalf("import %s into %s: %v\n%s", archive, name, err, out)
		}
	}
	n.start(t, "kubelet", kubelet,
		"--config", filepath.Join(dir, "kubelet.yaml"), "--kubeconfig", filepath.Join(dir, "kubelet.kubeconfig"),
		"--hostname-override", name, "--node-ip", ip, "--root-dir", filepath.Join(dir, "kubelet"), "--cert-dir", filepath.Join(dir, "pki"),
		"--v=2") // SyncLoop ADD/UPDATE/DELETE: which pods the kubelet saw, when a test fails
	waitFor(t, 60*time.Second, "node "+name+" Ready", func() bool {
		node, err := cp.client().CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true
			}
		}
		return false
	})
	return n
}

// writeConfigs writes containerd's, the CNI's and the kubelet's
// configuration. Two settings fit this machine and are not defaults:
//   - restrict_oom_score_adj: the VM withholds CAP_SYS_RESOURCE, so runc
//     cannot give the pod sandbox oom_score_adj -998 ("can't get final
//     child's PID from pipe: EOF" without it);
//   - failCgroupV1: false: the machine has cgroup v1, which kubelet 1.37
//     refuses by default.
func (n *kubeNode) writeConfigs(t *testing.T, server, kubeletClientCA, podCIDR, user string) {
	t.Helper()
	writeTestFile(t, filepath.Join(n.dir, "containerd.toml"), []byte(fmt.Sprintf(`version = 2
root = "%[1]s/containerd"
state = "%[1]s/containerd-state"
[grpc]
  address = "%[2]s"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "pause:local"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "%[1]s/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
`, n.dir, n.socket)))
	if err := os.MkdirAll(filepath.Join(n.dir, "cni"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(n.dir, "cni", "10-bridge.conflist"), []byte(fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "%[1]s", "plugins": [
 {"type": "bridge", "bridge": "br-%[1]s", "isGateway": true, "ipam": {"type": "host-local", "dataDir": "%[2]s/ipam", "ranges": [[{"subnet": "%[3]s"}]]}}]}
`, n.name, n.dir, podCIDR)))
	writeTestFile(t, filepath.Join(n.dir, "kubelet.yaml"), []byte(fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /spoke-%[1]s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%[2]s
staticPodPath: %[3]s/static
podLogsDir: %[3]s/pod-logs
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: %[4]s}}
authorization: {mode: AlwaysAllow}
address: %[5]s
port: 10250
healthzPort: 0
readOnlyPort: 0
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
# A node in the host's network namespace must leave the host's firewall
# alone: kubelet's KUBE-FIREWALL rule on INPUT and OUTPUT sends every host
# packet, loopback included, through conntrack (direct TCP over loopback
# fell from 3.5 to 2.2 GB/s in make bench-datapath after a test run).
makeIPTablesUtilChains: false
`, n.name, n.socket, n.dir, kubeletClientCA, n.ip)))
	writeTestFile(t, filepath.Join(n.dir, "kubelet.kubeconfig"), []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: node, user: %s}]
contexts: [{name: test, context: {cluster: test, user: node}}]
current-context: test
`, server, user)))
	if err := os.MkdirAll(filepath.Join(n.dir, "static"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// addAddress gives the host the node's address on a link of its own (a
// veth pair; this kernel has no dummy links): kubelet reports no address
// for a loopback node IP.
func (n *kubeNode) addAddress(t *testing.T) {
	t.Helper()
	link := "spk-" + n.name
	for _, args := range [][]string{{"link", "add", link, "type", "veth", "peer", "name", link + "-p"}, {"addr", "add", n.ip + "/32", "dev", link},
		{"link", "set", link + "-p", "up"}, {"link", "set", link, "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
}

// cgroupHierarchies are the cgroup v1 hierarchies (one directory per mounted
// controller set, and the named systemd one).
func cgroupHierarchies() []string {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*")
	var out []string
	for _, d := range dirs {
		if fi, err := os.Lstat(d); err == nil && fi.IsDir() { // not the cpu,cpuacct symlinks
			out = append(out, d)
		}
	}
	return out
}

// makeCgroupRoot creates the node's cgroupRoot in every hierarchy: each
// kubelet on this host keeps its pods under its own root, and kubelet
// requires the root to exist.
func (n *kubeNode) makeCgroupRoot(t *testing.T) {
	t.Helper()
	for _, h := range cgroupHierarchies() {
		if err := os.MkdirAll(filepath.Join(h, "spoke-"+n.name), 0o755); err != nil {
			t.Fatalf("cgroup root for %s: %v", n.name, err)
		}
	}
}

// removeCgroupRoot removes the node's cgroups, deepest first (cgroup
// directories go only when empty).
func (n *kubeNode) removeCgroupRoot() {
	for _, h := range cgroupHierarchies() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, "spoke-"+n.name), func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			// The containers outlive containerd and its shims: kill them.
			if raw, err := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs")); err == nil {
				for _, pid := range strings.Fields(string(raw)) {
					_ = exec.Command("kill", "-9", pid).Run()
				}
			}
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			for try := 0; try < 20 && os.Remove(dirs[i]) != nil; try++ {
				time.Sleep(50 * time.Millisecond) // killed processes leave their cgroup a moment later
			}
		}
	}
}

// cleanUp removes what the node left on the host beyond its processes:
// containerd's shims and mounts, its links, the pods' network namespaces,
// its cgroups and the containers still in them.
func (n *kubeNode) cleanUp(t *testing.T) {
	_ = exec.Command("pkill", "-f", "containerd-shim-runc-v2 .*-address "+n.socket).Run()
	if out, err := exec.Command("sh", "-c", "grep -o ' "+n.dir+"[^ ]*' /proc/self/mounts | sort -r | xargs -r umount -l").CombinedOutput(); err != nil {
		t.Logf("unmount %s: %v %s", n.dir, err, out)
	}
	_ = exec.Command("ip", "link", "delete", "br-"+n.name).Run()
	_ = exec.Command("ip", "link", "delete", "spk-"+n.name).Run()
	if n.netns != "" {
		_ = exec.Command("ip", "netns", "delete", n.netns).Run()
	}
	for ns := range podNetworkNamespaces() { // containerd, killed, never tore its pods' down
		if !n.netnsBefore[ns] {
			_ = exec.Command("ip", "netns", "delete", ns).Run()
		}
	}
	n.removeCgroupRoot()
	if t.Failed() {
		// The containers' own logs, from disk: kubectl logs may be what broke.
		logs, _ := filepath.Glob(filepath.Join(n.dir, "pod-logs", "*", "*", "*.log"))
		for _, f := range append([]string{filepath.Join(n.dir, "containerd.log"), filepath.Join(n.dir, "kubelet.log")}, logs...) {
			raw, _ := os.ReadFile(f)
			envoytest.LogDump(t, n.name+" "+strings.TrimPrefix(f, n.dir), tail(string(raw), 3000))
		}
	}
	if os.Getenv("SPOKE_KEEP_NODE") == "" {
		_ = os.RemoveAll(n.dir)
	}
}

// localImages writes the images a test node runs, from binaries on this
// machine: pause (agnhost pause, the sandbox), agnhost (the workloads) and
// busybox (Debian's static one: a shell-less cat for exec with stdin).
func localImages(t *testing.T) []string {
	t.Helper()
	bin := kubeTool(t, "agnhost")
	return buildOnce(t, "local-images", func(dir string) ([]string, error) {
		images := []string{filepath.Join(dir, "pause.tar"), filepath.Join(dir, "agnhost.tar"), filepath.Join(dir, "busybox.tar")}
		for i, args := range [][]string{
			{"--static", bin, "--arg", "pause", "--tag", "pause:local"},
			{"--static", bin, "--tag", "agnhost:local"},
			{"--static", nodeHostTools["busybox"], "--tag", "busybox:local"},
		} {
			if err := spokeImage(images[i], args...); err != nil {
				return nil, err
			}
		}
		return images, nil
	})
}

// TestRealKubeletRunsPodsFromLocalImages is the ground the cluster suite
// stands on: a real kubelet and containerd on this machine register a node
// with a real kube-apiserver and run a pod from an image built here, and
// kubectl logs and exec reach it through the apiserver (directly, without
// spoke yet).
func TestRealKubeletRunsPodsFromLocalImages(t *testing.T) {
	requireNodeHostTools(t)
	images := localImages(t)
	firewallBefore := hostKubeletChains(t)
	cp := startControlPlane(t)
	startKubeNode(t, cp, "node-a", "172.30.1.1", "10.244.1.0/24", images...)
	createLogger(t, cp, "logger", "node-a")
	var logs string
	waitFor(t, 30*time.Second, "log lines through the apiserver", func() bool {
		var err error
		logs, err = kubectlRun(t, cp, nil, "logs", "logger", "-c", "logger", "--tail", "3")
		if err != nil {
			t.Logf("kubectl logs: %v", err)
		}
		return err == nil && strings.Count(logs, "\n") == 3
	})
	if strings.Count(logs, "logs_generator.go") != 3 || !strings.Contains(logs, " /api/v1/namespaces/") {
		t.Errorf("kubectl logs: %q, want logs-generator's lines", logs)
	}
	if got := kubectl(t, cp, []byte("hello from stdin\n"), "exec", "-i", "logger", "-c", "shell", "--", "/busybox", "cat"); got != "hello from stdin\n" {
		t.Errorf("kubectl exec with stdin: %q", got)
	}
	if added := slices.DeleteFunc(hostKubeletChains(t), func(c string) bool { return slices.Contains(firewallBefore, c) }); len(added) > 0 {
		t.Errorf("a node in the host's network namespace added kubelet's chains to the host's firewall: %s (makeIPTablesUtilChains must stay false: they send every host packet through conntrack)", strings.Join(added, ", "))
	}
}

// hostKubeletChains lists the KUBE-* chains in the host's firewall
// (nftables, which Debian's iptables also writes to).
func hostKubeletChains(t *testing.T) []string {
	t.Helper()
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Logf("nft is not installed: the host's firewall is not checked (apt-get install nftables)")
		return nil
	}
	out, err := exec.Command(nft, "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v %s", err, out)
	}
	var chains []string
	for _, line := range strings.Split(string(out), "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "chain "); ok && strings.HasPrefix(name, "KUBE-") {
			chains = append(chains, strings.TrimSuffix(name, " {"))
		}
	}
	slices.Sort(chains) // one name per chain, whatever the tables holding it
	return slices.Compact(chains)
}

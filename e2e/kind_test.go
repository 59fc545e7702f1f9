package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	kindconfig "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	sigsyaml "sigs.k8s.io/yaml"
)

const (
	kindVersion = "v0.33.0"
	kindConfig  = "e2e/kind/cluster.yaml" // relative to the repository root, where kind runs
	// kindStaticPod is where the kind test renders the control-plane
	// static pod; the kind config mounts it into the control-plane node.
	kindStaticPod = "dist/kind/spoke-control-plane.yaml"
	kindCluster   = "spoke-e2e"
	// kindStaticPodOnNode is where the control-plane node sees it; the test
	// copies it into the kubelet's manifest directory when its images and
	// kubeconfig are there.
	kindStaticPodOnNode = "/etc/kubernetes/spoke-control-plane.yaml"
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
		if m.HostPath == kindStaticPod {
			continue // rendered by TestKindClusterThroughSpoke
		}
		if _, err := os.Stat(filepath.Join("..", m.HostPath)); err != nil {
			t.Errorf("extraMount %s: %v (paths are relative to the repository root)", m.HostPath, err)
		}
	}
	if mounted["/etc/kubernetes/egress-selector-configuration.yaml"] != "manifests/control-plane/egress-selector-configuration.yaml" {
		t.Error("the control-plane node must get manifests' egress selector file where kube-apiserver reads it")
	}
	if mounted[kindStaticPodOnNode] != kindStaticPod {
		t.Errorf("the control-plane node must get spoke's static pod at %s", kindStaticPodOnNode)
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
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
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
func kindCNI(t *testing.T, cp *controlPlane) {
	t.Helper()
	type node struct{ name, ip, cidr string }
	var nodes []node
	waitFor(t, 2*time.Minute, "every kind node's podCIDR", func() bool {
		list, err := cp.client().CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil || len(list.Items) == 0 {
			return false
		}
		nodes = nodes[:0]
		for _, n := range list.Items {
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

// TestKindClusterThroughSpoke runs the checks of the real-cluster suite on
// a kind cluster created from e2e/kind/cluster.yaml: spoke deployed from
// manifests/ (static pod on the control-plane node, DaemonSet on every
// node, images loaded with kind load image-archive), then kubectl logs,
// logs -f, exec, attach, port-forward, the node/pod/service proxies, a
// webhook and an APIService, all through spoke.
func TestKindClusterThroughSpoke(t *testing.T) {
	kind, nodeImage := kindTools(t)
	lockHost(t) // one kind cluster of this name per machine
	images := append(localImages(t), spokeImages(t)...)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(kindStaticPod)), 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(root, kindStaticPod), []byte(kubectl(t, nil, nil, "kustomize", "../manifests/overlays/local/control-plane")))
	_ = exec.Command(kind, "delete", "cluster", "--name", kindCluster).Run()
	created := time.Now()
	run(kind, "create", "cluster", "--name", kindCluster, "--config", kindConfig, "--image", nodeImage)
	t.Cleanup(func() { _ = exec.Command(kind, "delete", "cluster", "--name", kindCluster).Run() })
	kubeconfig := filepath.Join(t.TempDir(), "kind.kubeconfig")
	writeTestFile(t, kubeconfig, []byte(run(kind, "get", "kubeconfig", "--name", kindCluster)))
	cp := kindControlPlane(t, kubeconfig)
	kindCNI(t, cp)
	kubectl(t, cp, nil, "wait", "--for=condition=Ready", "nodes", "--all", "--timeout=3m")
	t.Logf("kind cluster %s (node image %s) created and Ready in %v", kindCluster, nodeImage, time.Since(created).Round(time.Second))
	for _, image := range images {
		run(kind, "load", "image-archive", "--name", kindCluster, image)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpCluster(t, cp)
		}
	})
	approveServingCSRs(t, cp, len(loadKindConfig(t).Nodes))

	// spoke from manifests/: the tunnel CA, the server's kubeconfig from its
	// ServiceAccount's token (written onto the control-plane node, where the
	// static pod reads it), the cluster overlay with the DaemonSet.
	dir := t.TempDir()
	kubectl(t, cp, nil, "create", "namespace", "spoke-system")
	createTunnelCA(t, cp, dir)
	kubectl(t, cp, []byte(kubectl(t, nil, nil, "kustomize", "../manifests/overlays/local/cluster")), "apply", "--server-side", "-f", "-")
	token := strings.TrimSpace(kubectl(t, cp, nil, "-n", "spoke-system", "create", "token", "spoke-server", "--duration", "2h"))
	serverKubeconfig := "apiVersion: v1\nkind: Config\nclusters: [{name: kind, cluster: {server: \"https://127.0.0.1:6443\", certificate-authority: /etc/kubernetes/pki/ca.crt}}]\n" +
		"users: [{name: spoke-server, user: {token: " + token + "}}]\ncontexts: [{name: kind, context: {cluster: kind, user: spoke-server}}]\ncurrent-context: kind\n"
	write := exec.Command("docker", "exec", "-i", kindCluster+"-control-plane", "sh", "-c",
		"mkdir -p /etc/spoke && cat > /etc/spoke/server.kubeconfig && cp "+kindStaticPodOnNode+" /etc/kubernetes/manifests/")
	write.Stdin = strings.NewReader(serverKubeconfig)
	if out, err := write.CombinedOutput(); err != nil {
		t.Fatalf("write the server's kubeconfig and static pod on the control-plane node: %v %s", err, out)
	}
	kubectl(t, cp, nil, "-n", "spoke-system", "rollout", "status", "daemonset/spoke-node-proxy", "--timeout", "3m")

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
}

// kindControlPlane is the kind cluster as the shared checks see a control
// plane: kubectl and a client through kind's kubeconfig.
func kindControlPlane(t *testing.T, kubeconfig string) *controlPlane {
	t.Helper()
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

// approveServingCSRs approves the kubelets' serving certificate requests
// (serverTLSBootstrap), as a cluster's approver would, until n are issued.
func approveServingCSRs(t *testing.T, cp *controlPlane, n int) {
	t.Helper()
	waitFor(t, 2*time.Minute, "every kubelet's serving certificate", func() bool {
		csrs, err := cp.client().CertificatesV1().CertificateSigningRequests().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		issued := 0
		for _, csr := range csrs.Items {
			if csr.Spec.SignerName != "kubernetes.io/kubelet-serving" {
				continue
			}
			if len(csr.Status.Certificate) > 0 {
				issued++
				continue
			}
			_, _ = kubectlRun(t, cp, nil, "certificate", "approve", csr.Name)
		}
		return issued >= n
	})
}

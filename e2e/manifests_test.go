package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/spokeproxy/spoke/translator/model"
)

// kubectl runs the real kubectl (e2e/kube/build.sh) with stdin; with cp it
// talks to that control plane as its admin.
func kubectl(t *testing.T, cp *controlPlane, stdin []byte, args ...string) string {
	t.Helper()
	out, err := kubectlRun(t, cp, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// kubectlRun is kubectl that returns its failure (with its output) instead.
func kubectlRun(t *testing.T, cp *controlPlane, stdin []byte, args ...string) (string, error) {
	t.Helper()
	if cp != nil {
		args = append([]string{"--kubeconfig", cp.adminKubeconfig(t)}, args...)
	}
	cmd := exec.Command(kubeTool(t, "kubectl"), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out), nil
}

// documents splits rendered YAML into its objects' YAML.
func documents(rendered string) [][]byte {
	var docs [][]byte
	for _, d := range strings.Split(rendered, "\n---\n") {
		if strings.TrimSpace(d) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

// renderedObject decodes the one object of kind in rendered YAML into into.
func renderedObject(t *testing.T, rendered, kind string, into any) {
	t.Helper()
	for _, d := range documents(rendered) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(d, &meta); err == nil && meta.Kind == kind {
			if err := yaml.UnmarshalStrict(d, into); err != nil {
				t.Fatalf("%s: %v", kind, err)
			}
			return
		}
	}
	t.Fatalf("no %s in:\n%s", kind, rendered)
}

// TestManifestsApplyToARealAPIServer deploys manifests/ as a user would
// (server-side apply of the kustomizations, with real kubectl) to a real
// kube-apiserver: the local overlay for real, the bases with their default
// images and the control-plane static pods as server-side dry runs.
func TestManifestsApplyToARealAPIServer(t *testing.T) {
	cp := startControlPlane(t)
	kubectl(t, cp, nil, "apply", "--server-side", "-k", "../manifests/overlays/local/cluster")
	var ds appsv1.DaemonSet
	renderedObject(t, kubectl(t, cp, nil, "-n", "spoke-system", "get", "daemonset", "spoke-node-proxy", "-o", "yaml"), "DaemonSet", &ds)
	images := map[string]string{}
	for _, c := range append(ds.Spec.Template.Spec.InitContainers, ds.Spec.Template.Spec.Containers...) {
		images[c.Name] = c.Image
	}
	if images["bootstrap"] != "spoke:local" || images["envoy"] != "envoy:1.40.0-local" {
		t.Errorf("the local overlay's images did not reach the cluster: %v", images)
	}
	kubectl(t, cp, nil, "apply", "--server-side", "--dry-run=server", "-k", "../manifests/base")
	for _, dir := range []string{"../manifests/control-plane", "../manifests/overlays/local/control-plane"} {
		kubectl(t, cp, []byte(kubectl(t, nil, nil, "kustomize", dir)), "apply", "--server-side", "--dry-run=server", "-f", "-")
	}
}

// TestNodeProxyDaemonSetIsLeastPrivilege reads the DaemonSet as kustomize
// renders it and checks what the node proxy may do and how it rolls.
func TestNodeProxyDaemonSetIsLeastPrivilege(t *testing.T) {
	var ds appsv1.DaemonSet
	renderedObject(t, kubectl(t, nil, nil, "kustomize", "../manifests/base"), "DaemonSet", &ds)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || !slices.ContainsFunc(spec.Tolerations, func(t corev1.Toleration) bool {
		return t.Operator == corev1.TolerationOpExists && t.Key == "" && t.Effect == ""
	}) {
		t.Errorf("the node proxy must run on every node, in the host network, node-critical: %+v", spec)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the node proxy never talks to the Kubernetes API: no service account token")
	}
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 || ru.MaxSurge == nil || ru.MaxSurge.IntValue() < 1 {
		t.Errorf("a rolling update must start the new pod before stopping the old one (maxSurge >= 1, maxUnavailable 0): %+v", ds.Spec.UpdateStrategy)
	}
	checkContainersLocked(t, "node proxy", append(spec.InitContainers, spec.Containers...))
	if spec.SecurityContext == nil || spec.SecurityContext.SeccompProfile == nil || spec.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("the node proxy pod must run with the RuntimeDefault seccomp profile")
	}
	checkReadyMeansTunnels(t, spec)
	var ns corev1.Namespace
	renderedObject(t, kubectl(t, nil, nil, "kustomize", "../manifests/base"), "Namespace", &ns)
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace %s must say its Pod Security level (privileged: host network, hostPath), or a cluster default refuses the node proxy: %v", ns.Name, ns.Labels)
	}
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		for _, m := range c.VolumeMounts {
			if m.Name == "kubelet-pki" && !m.ReadOnly {
				t.Errorf("%s mounts the kubelet's certificates writable", c.Name)
			}
		}
	}
	boot := spec.InitContainers[0]
	if !slices.Contains(boot.Args, "--node-name=$(NODE_NAME)") || !slices.Contains(boot.Args, "--admin-port=0") ||
		len(boot.Env) != 1 || boot.Env[0].ValueFrom == nil || boot.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("bootstrap must name the node from the downward API and keep admin off fixed ports (surge shares the host network): %v %v", boot.Args, boot.Env)
	}
}

// checkReadyMeansTunnels: the pod's readiness is spoke node-ready reading
// the admin address file Envoy writes.
func checkReadyMeansTunnels(t *testing.T, spec corev1.PodSpec) {
	t.Helper()
	var envoyFile, probeFile string
	for _, c := range spec.Containers {
		if i := slices.Index(c.Args, "--admin-address-path"); i >= 0 && i+1 < len(c.Args) {
			envoyFile = c.Args[i+1]
		}
		if p := c.ReadinessProbe; p != nil && p.Exec != nil && slices.Contains(p.Exec.Command, "node-ready") {
			for _, arg := range p.Exec.Command {
				if f, ok := strings.CutPrefix(arg, "--admin-address-file="); ok {
					probeFile = f
				}
			}
		}
	}
	if envoyFile == "" || envoyFile != probeFile {
		t.Errorf("the node proxy's readiness must be spoke node-ready on the admin address file Envoy writes: Envoy writes %q, the probe reads %q", envoyFile, probeFile)
	}
}

// checkContainersLocked: read-only root, no privilege escalation, no
// capabilities, a memory limit, for each container.
func checkContainersLocked(t *testing.T, what string, containers []corev1.Container) {
	t.Helper()
	for _, c := range containers {
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 || (sc.Privileged != nil && *sc.Privileged) {
			t.Errorf("%s container %s: want read-only root, no privilege escalation, every capability dropped: %+v", what, c.Name, sc)
		}
		if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s container %s: memory request and limit required", what, c.Name)
		}
	}
}

// TestControlPlaneManifestsFitTogether: the real kubeadm renders
// kube-apiserver's static pod from kubeadm-config.yaml with the egress
// selector and kubelet CA flags and the shared socket directory; the spoke
// static pod, the egress selector file and the default settings agree on
// every path; both pods pass a real apiserver's server-side dry run.
func TestControlPlaneManifestsFitTogether(t *testing.T) {
	fragment, err := os.ReadFile("../manifests/control-plane/kubeadm-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	apiserverYAML := renderAPIServerPod(t, string(fragment))
	var apiserver, spoke corev1.Pod
	renderedObject(t, string(apiserverYAML), "Pod", &apiserver)
	renderedObject(t, kubectl(t, nil, nil, "kustomize", "../manifests/control-plane"), "Pod", &spoke)

	var egress struct {
		EgressSelections []struct {
			Name       string
			Connection struct {
				ProxyProtocol string
				Transport     struct{ UDS struct{ UDSName string } }
			}
		}
	}
	raw, err := os.ReadFile("../manifests/control-plane/egress-selector-configuration.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &egress); err != nil || len(egress.EgressSelections) != 1 {
		t.Fatalf("egress selector configuration: %v", err)
	}
	socket := egress.EgressSelections[0].Connection.Transport.UDS.UDSName
	if egress.EgressSelections[0].Name != "cluster" || egress.EgressSelections[0].Connection.ProxyProtocol != "HTTPConnect" || socket != model.DefaultSettings().EgressSocketPath {
		t.Errorf("the egress selector must send \"cluster\" as HTTPConnect to the settings' egressSocketPath %s: %+v", model.DefaultSettings().EgressSocketPath, egress)
	}
	kas := apiserver.Spec.Containers[0]
	for _, flag := range []string{"--egress-selector-config-file=/etc/kubernetes/egress-selector-configuration.yaml", "--kubelet-certificate-authority=/etc/kubernetes/pki/ca.crt"} {
		if !slices.Contains(kas.Command, flag) {
			t.Errorf("kube-apiserver lacks %s: %v", flag, kas.Command)
		}
	}
	socketDir := filepath.Dir(socket)
	if hostPathMountedAt(apiserver.Spec, kas, socketDir) != socketDir || hostPathMountedAt(spoke.Spec, spoke.Spec.Containers[1], socketDir) != socketDir {
		t.Errorf("kube-apiserver and the apiserver proxy must share the host's %s", socketDir)
	}
	if hostPathMountedAt(apiserver.Spec, kas, "/etc/kubernetes/egress-selector-configuration.yaml") == "" {
		t.Error("kube-apiserver does not mount the egress selector configuration")
	}
	if !slices.Contains(spoke.Spec.Containers[0].Args, "--xds-socket="+filepath.Join(socketDir, "xds.sock")) ||
		!slices.Contains(spoke.Spec.InitContainers[0].Args, "--xds-socket="+filepath.Join(socketDir, "xds.sock")) {
		t.Error("the server and the apiserver proxy's bootstrap must name the same xDS socket in the shared directory")
	}
	checkContainersLocked(t, "control plane", append(spoke.Spec.InitContainers, spoke.Spec.Containers...))

	cp := startControlPlane(t)
	kubectl(t, cp, nil, "create", "namespace", "spoke-system")
	kubectl(t, cp, apiserverYAML, "apply", "--server-side", "--dry-run=server", "-f", "-")
	kubectl(t, cp, []byte(kubectl(t, nil, nil, "kustomize", "../manifests/control-plane")), "apply", "--server-side", "--dry-run=server", "-f", "-")
}

// renderAPIServerPod has the real kubeadm write kube-apiserver's static pod
// for a ClusterConfiguration (kubernetesVersion added).
func renderAPIServerPod(t *testing.T, clusterConfiguration string) []byte {
	t.Helper()
	root := t.TempDir()
	config := "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint: {advertiseAddress: 192.0.2.10, bindPort: 6443}\nnodeRegistration: {name: cp-1}\n---\n" +
		strings.TrimRight(clusterConfiguration, "\n") + "\nkubernetesVersion: " + kubeVersion + "\n"
	writeTestFile(t, filepath.Join(root, "kubeadm.yaml"), []byte(config))
	// --rootfs: kubeadm chroots there, so it writes the manifest under root.
	if out, err := exec.Command(kubeTool(t, "kubeadm"), "init", "phase", "control-plane", "apiserver", "--config", "/kubeadm.yaml", "--rootfs", root).CombinedOutput(); err != nil {
		t.Fatalf("kubeadm: %v\n%s", err, out)
	}
	pod, err := os.ReadFile(filepath.Join(root, "etc/kubernetes/manifests/kube-apiserver.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// hostPathMountedAt returns the host path that c mounts at path, "" if none.
func hostPathMountedAt(spec corev1.PodSpec, c corev1.Container, path string) string {
	for _, m := range c.VolumeMounts {
		if m.MountPath != path {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil {
				return v.HostPath.Path
			}
		}
	}
	return ""
}

// manifestWorkers is each Envoy's --concurrency as the manifests deploy it.
func manifestWorkers(t *testing.T) (api, node int) {
	a, n := manifestWorkerFlags(t)
	return workerCounts(t, a, n, "the manifests")
}

func manifestWorkerFlags(t *testing.T) (api, node string) {
	return manifestEnvoyFlag(t, "--concurrency")
}

// manifestLogLevels are the --component-log-level values the manifests run
// each Envoy with: a benchmark measures Envoy as deployed (the tests'
// default, connection:debug, logs every connection and cost spoke's set-ups
// ~170 µs at p50).
func manifestLogLevels(t *testing.T) (api, node string) {
	return manifestEnvoyFlag(t, "--component-log-level")
}

// manifestEnvoyFlag is a flag's value on the apiserver proxy's and the node
// proxy's Envoy containers of the manifests.
func manifestEnvoyFlag(t *testing.T, flag string) (api, node string) {
	var pod corev1.Pod
	renderedObject(t, readRepoFile(t, "manifests/control-plane/spoke-control-plane.yaml"), "Pod", &pod)
	var ds appsv1.DaemonSet
	renderedObject(t, readRepoFile(t, "manifests/base/node-proxy.yaml"), "DaemonSet", &ds)
	return containerFlag(t, pod.Spec, "apiserver-proxy", flag), containerFlag(t, ds.Spec.Template.Spec, "envoy", flag)
}

// deployedAPIServerProxyFlags run an apiserver proxy with the manifests'
// workers and log levels; workers is their number.
func deployedAPIServerProxyFlags(t *testing.T) (flags []string, workers int) {
	workers, _ = manifestWorkers(t)
	logLevels, _ := manifestLogLevels(t)
	return deployedEnvoyFlags(workers, logLevels), workers
}

// deployedEnvoyFlags run an Envoy with workers and a manifest's log levels.
func deployedEnvoyFlags(workers int, logLevels string) []string {
	return []string{"--concurrency", strconv.Itoa(workers), "--component-log-level", logLevels}
}

// workerCounts parses --concurrency values taken from where (for the error).
func workerCounts(t *testing.T, a, n, where string) (api, node int) {
	var errA, errN error
	api, errA = strconv.Atoi(a)
	node, errN = strconv.Atoi(n)
	if errA != nil || errN != nil || api < 1 || node < 1 {
		t.Fatalf("Envoy workers %q (apiserver proxy), %q (node proxy) from %s: want numbers >= 1", a, n, where)
	}
	return api, node
}

// containerFlag is a flag of a manifest's container, so tests run Envoy as
// users do.
func containerFlag(t *testing.T, spec corev1.PodSpec, container, flag string) string {
	return flagValue(containerArgs(t, spec, container), flag)
}

func readRepoFile(t *testing.T, path string) string {
	raw, err := os.ReadFile(filepath.Join("..", path)) // tests run in e2e/
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// TestMigrationPatchGivesTheFragmentsAPIServer: kube-apiserver set up for
// Konnectivity as its documentation does it (e2e/kind/konnectivity), then
// patched by docs/migration.md's switch with
// manifests/control-plane/kube-apiserver-patch.json (the real kubectl), has
// what spoke's kubeadm fragment gives a new cluster: the same kubelet CA
// and egress selector flags, the egress file and spoke's socket directory
// mounted from the same host paths.
func TestMigrationPatchGivesTheFragmentsAPIServer(t *testing.T) {
	fragment, err := os.ReadFile("../manifests/control-plane/kubeadm-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var want, got corev1.Pod
	renderedObject(t, string(renderAPIServerPod(t, string(fragment))), "Pod", &want)
	manifest := filepath.Join(t.TempDir(), "kube-apiserver.yaml")
	writeTestFile(t, manifest, renderAPIServerPod(t, "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n"))
	for _, patch := range []string{"kind/konnectivity/kube-apiserver-patch.json", "../manifests/control-plane/kube-apiserver-patch.json"} {
		writeTestFile(t, manifest, []byte(kubectl(t, nil, nil, "patch", "--local", "-f", manifest, "--type", "json", "--patch-file", patch, "-o", "yaml")))
	}
	raw, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	renderedObject(t, string(raw), "Pod", &got)
	flags := func(p corev1.Pod) []string {
		var out []string
		for _, a := range p.Spec.Containers[0].Command {
			if strings.HasPrefix(a, "--kubelet-certificate-authority=") || strings.HasPrefix(a, "--egress-selector-config-file=") {
				out = append(out, a)
			}
		}
		slices.Sort(out)
		return out
	}
	if !slices.Equal(flags(got), flags(want)) || len(flags(want)) != 2 {
		t.Errorf("after the switch kube-apiserver has %v, a new cluster %v", flags(got), flags(want))
	}
	for _, path := range []string{"/var/run/spoke", "/etc/kubernetes/egress-selector-configuration.yaml"} {
		if g, w := hostPathMountedAt(got.Spec, got.Spec.Containers[0], path), hostPathMountedAt(want.Spec, want.Spec.Containers[0], path); g != w || w == "" {
			t.Errorf("%s: after the switch mounted from %q, in a new cluster from %q", path, g, w)
		}
	}
}

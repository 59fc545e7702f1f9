package e2e

import (
	"context"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// TestOfflineRecipeMatchesServedConfig runs the offline recipe of
// docs/operations.md as written there (kubectl against a real
// kube-apiserver, then spoke translate) and compares the version of each
// section with what a server watching the same apiserver serves (spoke
// config dump): the versions are content hashes, so equal versions are
// equal config. Secrets are left out: their served version hashes key
// material. Without ServiceCIDRs in the recipe, the node's listener and
// routes differ.
func TestOfflineRecipeMatchesServedConfig(t *testing.T) {
	cp := startControlPlane(t)
	client := cp.client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := startKubeServer(ctx, t, client, logrus.New().WithField("source", "kubernetes"))
	createNode(t, client, "worker-1", "10.0.0.5", "10.244.1.0/24")
	createPod(t, client, "web-1", "worker-1", "10.244.1.7")
	if _, err := client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 443}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	spoke := buildSpoke(t)
	bin := t.TempDir()
	for name, path := range map[string]string{"kubectl": kubeTool(t, "kubectl"), "spoke": spoke} {
		if err := os.Symlink(path, filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	var served map[string]string
	waitFor(t, 30*time.Second, "the server to serve worker-1 its pod, the apiserver endpoint and the Service range", func() bool {
		out, err := exec.Command(spoke, "config", "dump", "--proxy", "node/worker-1", "--server", srv.Addr("debug")).Output()
		// the pod, the apiserver's endpoint, and the Service range of the
		// ServiceCIDR the apiserver keeps (kubernetes: 10.96.0.0/16)
		if err != nil || !strings.Contains(string(out), "10.244.1.7:*") || !strings.Contains(string(out), "192.0.2.10") || !strings.Contains(string(out), "10.96.*") {
			return false
		}
		served = sectionVersions(t, out)
		return true
	})
	translated := sectionVersions(t, runRecipe(t, bin, cp.adminKubeconfig(t)))
	for section, v := range served {
		if strings.HasPrefix(section, "Secrets") {
			continue
		}
		if translated[section] != v {
			t.Errorf("%s: the recipe's translation has version %q, the server serves %q", section, translated[section], v)
		}
	}
	if len(translated) != len(served) || len(served) < 5 {
		t.Errorf("sections: translated %v, served %v", translated, served)
	}
}

// runRecipe runs the offline recipe's commands from docs/operations.md, as
// written there, in a fresh directory, and returns what the last printed.
func runRecipe(t *testing.T, bin, kubeconfig string) []byte {
	t.Helper()
	dir := t.TempDir()
	var out []byte
	for _, line := range recipeLines(t) {
		cmd := exec.Command("sh", "-c", line)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "KUBECONFIG="+kubeconfig)
		var err error
		if out, err = cmd.Output(); err != nil {
			stderr := ""
			if exit, ok := err.(*exec.ExitError); ok {
				stderr = string(exit.Stderr)
			}
			t.Fatalf("the documented %q: %v\n%s", line, err, stderr)
		}
	}
	return out
}

// recipeLines are the commands of the indented block in docs/operations.md
// that holds "spoke translate -f".
func recipeLines(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	for _, line := range strings.Split(string(raw), "\n") {
		cmd, indented := strings.CutPrefix(line, "    ")
		switch {
		case indented && strings.TrimSpace(cmd) != "":
			block = append(block, cmd)
		case len(block) > 0 && strings.HasPrefix(block[len(block)-1], "spoke translate -f"):
			return block
		default:
			block = nil
		}
	}
	t.Fatal(`docs/operations.md has no block of commands ending in "spoke translate -f ..."`)
	return nil
}

// sectionVersions reads a ConfigDump (YAML) into the versions each section
// carries, keyed by the section's type (ListenersConfigDump, ...): every
// version_info in it, the section's own and its resources' (route and
// endpoint sections carry only the latter).
func sectionVersions(t *testing.T, dump []byte) map[string]string {
	t.Helper()
	var d struct {
		Configs []map[string]any `json:"configs"`
	}
	if err := yaml.Unmarshal(dump, &d); err != nil {
		t.Fatalf("not a ConfigDump: %v\n%.300s", err, dump)
	}
	versions := map[string]string{}
	for _, c := range d.Configs {
		typ, _ := c["@type"].(string)
		versions[typ[strings.LastIndex(typ, ".")+1:]] = strings.Join(versionInfos(c), ",")
	}
	return versions
}

// versionInfos collects every version_info under v, in document order.
func versionInfos(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(v)) {
			if s, ok := v[k].(string); ok && k == "version_info" {
				out = append(out, s)
			} else {
				out = append(out, versionInfos(v[k])...)
			}
		}
	case []any:
		for _, it := range v {
			out = append(out, versionInfos(it)...)
		}
	}
	return out
}

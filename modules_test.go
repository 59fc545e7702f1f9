package spoke

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestKubeBuildSharesSpokesModuleVersions keeps the promise of
// e2e/kube/build.sh: the packages the Kubernetes binaries and spoke's tests
// both import (client-go, grpc, protobuf...) compile once in a cold make
// test only while both modules select the same version of each. A go.mod
// change on one side would silently compile all of them twice.
func TestKubeBuildSharesSpokesModuleVersions(t *testing.T) {
	if built, _ := filepath.Glob(filepath.Join(".tools", "kube-*")); len(built) == 0 && os.Getenv("SPOKE_REQUIRE_KUBE") == "" {
		t.Skip("the Kubernetes build's modules are not downloaded here: make tools-kube")
	}
	spoke := packageVersions(t, ".", "-test", "./...")
	kube := packageVersions(t, "e2e/kube", "./cmd/...", "tool")
	shared := 0
	for pkg, version := range spoke {
		kubeVersion, ok := kube[pkg]
		if !ok {
			continue
		}
		shared++
		if kubeVersion != version {
			t.Errorf("%s: spoke's go.mod selects %s, e2e/kube's %s; require the higher one in both (e2e/kube/build.sh says why)", pkg, version, kubeVersion)
		}
	}
	t.Logf("%d packages both import, each from the same module version", shared)
	if shared < 500 {
		t.Errorf("only %d packages shared; client-go alone should give hundreds", shared)
	}
}

// packageVersions maps every dependency of the packages go list ARGS names
// in module DIR to its module's path@version (the replacement's, if any).
func packageVersions(t *testing.T, dir string, args ...string) map[string]string {
	t.Helper()
	format := `{{with .Module}}{{if .Version}}{{$.ImportPath}} {{with or .Replace .}}{{.Path}}@{{.Version}}{{end}}{{end}}{{end}}`
	cmd := exec.Command("go", append([]string{"list", "-deps", "-f", format}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list in %s: %v", dir, err)
	}
	versions := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if pkg, version, ok := strings.Cut(line, " "); ok {
			versions[pkg] = version
		}
	}
	return versions
}

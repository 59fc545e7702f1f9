package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The deploy steps of docs/operations.md are command blocks marked
//
//	<!-- deploy step=NAME where=kubectl|control-plane-host -->
//
// followed by an indented code block. The kind test runs them as written,
// so the document and what works cannot drift apart.

// deployStep is one marked block.
type deployStep struct {
	name, where, script string
}

// Where a step runs.
const (
	whereKubectl          = "kubectl"            // wherever kubectl reaches the cluster
	whereControlPlaneHost = "control-plane-host" // as root on each control-plane host
)

var deployMarker = regexp.MustCompile(`^<!-- deploy step=([a-z-]+) where=(kubectl|control-plane-host) -->$`)

// deploySteps reads the marked blocks of docs/operations.md, in order.
func deploySteps(t *testing.T) []deployStep {
	t.Helper()
	f, err := os.Open("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []deployStep
	var cur *deployStep
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		line := lines.Text()
		if m := deployMarker.FindStringSubmatch(line); m != nil {
			steps = append(steps, deployStep{name: m[1], where: m[2]})
			cur = &steps[len(steps)-1]
			continue
		}
		if cur == nil {
			continue
		}
		switch code, ok := strings.CutPrefix(line, "    "); {
		case ok:
			cur.script += code + "\n"
		case strings.TrimSpace(line) == "" && cur.script != "":
			cur.script += "\n" // a blank line inside the block
		case strings.TrimSpace(line) != "":
			cur = nil // the block ended
		}
	}
	if err := lines.Err(); err != nil {
		t.Fatal(err)
	}
	return steps
}

// TestDeployStepsAreScripts: the deploy steps are all there, in the order
// an operator runs them, each a block bash parses.
func TestDeployStepsAreScripts(t *testing.T) {
	steps := deploySteps(t)
	var names []string
	for _, s := range steps {
		names = append(names, s.name+"@"+s.where)
		if strings.TrimSpace(s.script) == "" {
			t.Errorf("deploy step %s: no command block after its marker", s.name)
			continue
		}
		if out, err := exec.Command("bash", "-n", "-c", s.script).CombinedOutput(); err != nil {
			t.Errorf("deploy step %s does not parse: %v %s\n%s", s.name, err, out, s.script)
		}
	}
	want := "images@kubectl cluster@kubectl control-plane@control-plane-host serving-certificates@kubectl check@kubectl"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("deploy steps in docs/operations.md: %s\nwant %s", got, want)
	}
}

// deployWorkdir is where the kubectl steps run: a directory with the
// repository's manifests (what an operator's checkout has), in which
// step images writes deploy/.
func deployWorkdir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	manifests, err := filepath.Abs("../manifests")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(manifests, filepath.Join(dir, "manifests")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runKubectlStep runs a kubectl step in dir with env (on top of this
// process's), the kube tools and the kubectl-spoke plugin on PATH.
func runKubectlStep(t *testing.T, s deployStep, dir string, env ...string) string {
	t.Helper()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", s.script)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "PATH="+pluginDir(t)+":"+filepath.Dir(kubeTool(t, "kubectl"))+":"+os.Getenv("PATH")), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("deploy step %s (docs/operations.md) failed: %v\n%s\nits commands:\n%s", s.name, err, out, s.script)
	}
	return string(out)
}

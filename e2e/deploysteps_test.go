package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
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
	whereEachNode         = "each-node"          // as root on every node
)

// stepMarker is a step's marker; "uses=deploy" (docs/migration.md) stands
// for the deploy step of that name in docs/operations.md.
var stepMarker = regexp.MustCompile(`^<!-- (deploy|migrate) step=([a-z-]+) (where|uses)=(kubectl|control-plane-host|each-node|deploy) -->$`)

// deploySteps reads the marked blocks of docs/operations.md, in order.
func deploySteps(t *testing.T) []deployStep {
	return markedSteps(t, "../docs/operations.md", "deploy", nil)
}

// markedSteps reads the blocks of a document marked for runbook, in order;
// a step that uses another's block gets it from uses.
func markedSteps(t *testing.T, path, runbook string, uses []deployStep) []deployStep {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []deployStep
	var cur *deployStep
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		line := lines.Text()
		if m := stepMarker.FindStringSubmatch(line); m != nil {
			if m[1] != runbook {
				t.Fatalf("%s: a %s marker in the %s runbook: %s", path, m[1], runbook, line)
			}
			if m[3] == "uses" {
				i := slices.IndexFunc(uses, func(s deployStep) bool { return s.name == m[2] })
				if i < 0 || m[4] != "deploy" {
					t.Fatalf("%s: %s: no such deploy step", path, line)
				}
				steps = append(steps, uses[i])
				cur = nil
				continue
			}
			steps = append(steps, deployStep{name: m[2], where: m[4]})
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
	checkSteps(t, "docs/operations.md", deploySteps(t),
		"images@kubectl cluster@kubectl control-plane@control-plane-host egress-selector@control-plane-host serving-certificates@kubectl check@kubectl")
}

// TestMigrationStepsAreScripts: the same for the Konnectivity runbook,
// which reuses deploy steps by name.
func TestMigrationStepsAreScripts(t *testing.T) {
	checkSteps(t, "docs/migration.md", migrationSteps(t),
		"images@kubectl cluster@kubectl kubelet-serving@each-node kubelet-config@kubectl serving-certificates@kubectl "+
			"control-plane@control-plane-host tunnels@kubectl switch@control-plane-host check@kubectl rollback@control-plane-host "+
			"remove-agents@kubectl remove-server@control-plane-host")
}

// migrationSteps reads the marked blocks of docs/migration.md, in order.
func migrationSteps(t *testing.T) []deployStep {
	return markedSteps(t, "../docs/migration.md", "migrate", deploySteps(t))
}

// checkSteps: each step has a block bash parses; the steps are want
// (NAME@WHERE, in order).
func checkSteps(t *testing.T, doc string, steps []deployStep, want string) {
	t.Helper()
	var names []string
	for _, s := range steps {
		names = append(names, s.name+"@"+s.where)
		if strings.TrimSpace(s.script) == "" {
			t.Errorf("%s step %s: no command block after its marker", doc, s.name)
			continue
		}
		if out, err := exec.Command("bash", "-n", "-c", s.script).CombinedOutput(); err != nil {
			t.Errorf("%s step %s does not parse: %v %s\n%s", doc, s.name, err, out, s.script)
		}
	}
	if got := strings.Join(names, " "); got != want {
		t.Errorf("steps in %s: %s\nwant %s", doc, got, want)
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
		t.Fatalf("step %s failed: %v\n%s\nits commands:\n%s", s.name, err, out, s.script)
	}
	return string(out)
}

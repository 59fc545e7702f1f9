package translator_test

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/input"
	"github.com/spokeproxy/spoke/translator/model"
)

var update = flag.Bool("update", false, "rewrite testdata/out from the current translator")

// TestGolden translates every cluster under testdata/in (and the bundled
// example) for the apiserver proxy and each node proxy, and compares with
// testdata/out. Run `make golden` after an intended change and review the diff.
func TestGolden(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/in/*.yaml")
	inputs = append(inputs, "../examples/cluster.yaml")
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		if in == "../examples/cluster.yaml" {
			name = "example"
		}
		t.Run(name, func(t *testing.T) {
			got := translateAll(t, in, "testdata/settings/"+name+".yaml")
			outDir := filepath.Join("testdata/out", name)
			if *update {
				os.RemoveAll(outDir)
				writeAll(t, outDir, got)
			}
			compareDir(t, outDir, got)
		})
	}
}

// TestGoldenFatal checks inputs that must fail as a whole, with a clear error.
func TestGoldenFatal(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/in/*.err")
	if len(inputs) == 0 {
		t.Fatal("no fatal inputs found")
	}
	for _, in := range inputs {
		t.Run(filepath.Base(in), func(t *testing.T) {
			_, _, err := input.ReadFiles([]string{in}, input.DefaultMaxBytes)
			if err == nil {
				t.Fatal("want an error, got none")
			}
			got := map[string]string{"error.txt": err.Error() + "\n"}
			outDir := filepath.Join("testdata/out", filepath.Base(in))
			if *update {
				os.RemoveAll(outDir)
				writeAll(t, outDir, got)
			}
			compareDir(t, outDir, got)
		})
	}
}

// translateAll returns file name -> content for every proxy of one input.
func translateAll(t *testing.T, in, settingsFile string) map[string]string {
	t.Helper()
	if _, err := os.Stat(settingsFile); err != nil {
		settingsFile = ""
	}
	s, err := model.LoadSettings(settingsFile)
	if err != nil {
		t.Fatal(err)
	}
	objs, problems, err := input.ReadFiles([]string{in}, input.DefaultMaxBytes)
	if err != nil {
		t.Fatal(err)
	}
	cluster, more := model.Build(objs, s)
	problems = append(problems, more...)
	out := map[string]string{}
	var report strings.Builder
	for _, p := range problems {
		report.WriteString(p.String() + "\n")
	}
	out["problems.txt"] = report.String()
	out["apiserver.yaml"] = render(t, translator.APIServerProxy(&cluster, s))
	for _, n := range cluster.Nodes {
		res, err := translator.NodeProxy(&cluster, s, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		out["node-"+n.Name+".yaml"] = render(t, res)
	}
	return out
}

func render(t *testing.T, res translator.Resources) string {
	t.Helper()
	if err := translator.Check(res); err != nil {
		t.Fatalf("generated config fails checks: %v", err)
	}
	b, err := translator.Marshal(translator.ConfigDump(res, translator.TypeVersions(res)), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeAll(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func compareDir(t *testing.T, dir string, got map[string]string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("%v (run `make golden` to create it)", err)
	}
	for _, e := range entries {
		if _, ok := got[e.Name()]; !ok {
			t.Errorf("%s/%s is no longer produced (run `make golden`)", dir, e.Name())
		}
	}
	for name, content := range got {
		want, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s/%s: %v (run `make golden`)", dir, name, err)
			continue
		}
		if string(want) != content {
			t.Errorf("%s/%s differs from the translation (run `make golden` and review the diff):\n%s", dir, name, firstDiff(string(want), content))
		}
	}
}

func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return "line " + itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl
		}
	}
	return ""
}

func itoa(i int) string { return strconv.Itoa(i) }

package spoke

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/spokeproxy/spoke"

// goPackage is what `go list -json` says of one package (non-test files).
type goPackage struct {
	ImportPath string
	Name       string
	Doc        string
	Imports    []string // direct
	Deps       []string // transitive
}

// importRule forbids the packages under In (module-relative prefixes; ""
// is every package) except those under Except from importing anything under
// Forbidden or any of ForbiddenExactly, directly when Direct is set,
// otherwise through any dependency.
type importRule struct {
	Why              string
	In               []string
	Except           []string
	Forbidden        []string
	ForbiddenExactly []string
	Direct           bool
}

const (
	grpc          = "google.golang.org/grpc"
	clientGo      = "k8s.io/client-go"
	envoyProtos   = "github.com/envoyproxy/go-control-plane"
	xdsCache      = "github.com/envoyproxy/go-control-plane/pkg/cache"
	xdsServer     = "github.com/envoyproxy/go-control-plane/pkg/server"
	informers     = "k8s.io/client-go/informers"
	informerCache = "k8s.io/client-go/tools/cache"
	clientset     = "k8s.io/client-go/kubernetes"
)

// runtimePackages are spoke's server side; the translator must stay usable
// without them.
var runtimePackages = []string{module + "/source", module + "/xds", module + "/auth", module + "/pki", module + "/status", module + "/metrics"}

// layering is the data flow of docs/architecture.md as import rules.
var layering = []importRule{
	{Why: "translator is pure: model in, Envoy protos out, offline",
		In: []string{"translator"}, Forbidden: append([]string{grpc, clientGo, xdsCache, xdsServer}, runtimePackages...)},
	{Why: "sources read Kubernetes objects into the model and know nothing of Envoy or xDS",
		In: []string{"source"}, Forbidden: []string{envoyProtos, grpc, module + "/xds", module + "/status"}},
	{Why: "only xds/ uses go-control-plane's snapshot cache and ADS server",
		In: []string{""}, Except: []string{"xds"}, Forbidden: []string{xdsCache, xdsServer}, Direct: true},
	{Why: "only source/ runs informers",
		In: []string{""}, Except: []string{"source"}, Forbidden: []string{informers, informerCache}, Direct: true},
	{Why: "the tunnel CA hands out PEM bytes; Envoy resources are the translator's job",
		In: []string{"pki"}, Forbidden: []string{envoyProtos, grpc, module + "/auth", module + "/xds", module + "/status"}},
	{Why: "who an Envoy is depends on its credentials, not on the cluster client or the server",
		In: []string{"auth"}, Except: []string{"auth/authtest"}, Forbidden: []string{clientGo, module + "/pki", module + "/xds", module + "/status", module + "/source"}},
	{Why: "status reads the published config through an interface, never the server or its cache",
		In: []string{"status"}, Forbidden: []string{module + "/xds", module + "/source", xdsCache, xdsServer}},
	{Why: "kubestatus publishes what the server hands it; it never reaches into the server, its cache or a source",
		In: []string{"kubestatus"}, Forbidden: []string{module + "/xds", module + "/source", xdsCache, xdsServer}},
	{Why: "metrics and filewatch are leaves: they import nothing of spoke",
		In: []string{"metrics", "filewatch"}, Forbidden: []string{module + "/"}},
	{Why: "make race's packages name the typed clients they use, not client-go's clientset or informer factory (every API group: the race detector compiles them again, about 3 CPU-minutes cold)",
		In: []string{"xds", "status", "source", "auth", "pki", "translator/model"}, Forbidden: []string{informers}, ForbiddenExactly: []string{clientset}},
	{Why: "bootstraps are built from translator output, without the server or the cluster",
		In: []string{"envoy"}, Except: []string{"envoy/envoytest"}, Forbidden: append([]string{clientGo}, runtimePackages...)},
}

// under reports whether path is prefix or inside it.
func under(path, prefix string) bool {
	return path == prefix || strings.HasPrefix(path, strings.TrimSuffix(prefix, "/")+"/")
}

func relative(importPath string) string {
	return strings.TrimPrefix(strings.TrimPrefix(importPath, module), "/")
}

func (r importRule) applies(pkg string) bool {
	in := slices.ContainsFunc(r.In, func(p string) bool { return p == "" || under(pkg, p) })
	out := slices.ContainsFunc(r.Except, func(p string) bool { return under(pkg, p) })
	return in && !out
}

// violations lists every import that breaks a rule.
func violations(pkgs []goPackage, rules []importRule) []string {
	var out []string
	for _, p := range pkgs {
		rel := relative(p.ImportPath)
		for _, r := range rules {
			if !r.applies(rel) {
				continue
			}
			deps := p.Deps
			if r.Direct {
				deps = p.Imports
			}
			var bad []string
			for _, d := range deps {
				if slices.ContainsFunc(r.Forbidden, func(f string) bool { return under(d, f) }) || slices.Contains(r.ForbiddenExactly, d) {
					bad = append(bad, d)
				}
			}
			if len(bad) > 0 {
				out = append(out, fmt.Sprintf("%s imports %s (%d forbidden packages in all): %s", p.ImportPath, bad[0], len(bad), r.Why))
			}
		}
	}
	return out
}

func listPackages(t *testing.T) []goPackage {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p goPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages; is the test running in the module root?", len(pkgs))
	}
	return pkgs
}

// TestPackageLayering keeps the data flow readable off the folders.
func TestPackageLayering(t *testing.T) {
	for _, v := range violations(listPackages(t), layering) {
		t.Error(v)
	}
}

// TestLayeringRulesBite: the checker finds a translator that pulls in gRPC
// through a dependency, a command that uses the snapshot cache directly and
// a pki that imports the clientset, and lets xds use the cache and source a
// typed client.
func TestLayeringRulesBite(t *testing.T) {
	pkgs := []goPackage{
		{ImportPath: module + "/translator/model", Deps: []string{"fmt", grpc + "/codes"}},
		{ImportPath: module + "/cmd/spoke", Imports: []string{xdsCache + "/v3"}, Deps: []string{xdsCache + "/v3"}},
		{ImportPath: module + "/xds", Imports: []string{xdsCache + "/v3", xdsServer + "/v3"}, Deps: []string{xdsCache + "/v3"}},
		{ImportPath: module + "/sourcery", Deps: []string{envoyProtos + "/envoy/config/core/v3"}}, // not source/
		{ImportPath: module + "/pki", Deps: []string{clientset}},
		{ImportPath: module + "/source", Deps: []string{clientset + "/typed/core/v1"}}, // a typed client is allowed
	}
	got := violations(pkgs, layering)
	if len(got) != 3 || !strings.Contains(got[0], "translator/model imports "+grpc) || !strings.Contains(got[1], "cmd/spoke imports "+xdsCache) || !strings.Contains(got[2], "pki imports "+clientset+" ") {
		t.Errorf("want exactly the translator, cmd and pki violations, got %q", got)
	}
}

// TestEveryPackageSaysItsJob: each package has a doc comment.
func TestEveryPackageSaysItsJob(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment: say its one job and what it may import", p.ImportPath)
		}
	}
}

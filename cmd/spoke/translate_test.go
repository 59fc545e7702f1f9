package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func runSpoke(args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	cmd := newRootCommand()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

func TestTranslateExample(t *testing.T) {
	first, _, err := runSpoke("translate", "-f", "../../examples/cluster.yaml", "--proxy", "apiserver")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"envoy.admin.v3.ListenersConfigDump", "apiserver-egress", "tunnel-handshake", "node/worker-1", "spoke-tunnel-ca"} {
		if !strings.Contains(first, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	again, _, _ := runSpoke("translate", "-f", "../../examples/cluster.yaml", "--proxy", "apiserver")
	if again != first {
		t.Error("two runs on the same input gave different bytes")
	}
	js, _, err := runSpoke("translate", "-f", "../../examples/cluster.yaml", "--proxy", "node/worker-1", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var dump struct {
		Configs []map[string]any `json:"configs"`
	}
	if err := json.Unmarshal([]byte(js), &dump); err != nil || len(dump.Configs) != 5 {
		t.Fatalf("json output: %v, %d config sections", err, len(dump.Configs))
	}
}

func TestTranslateErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"unknown node":     {[]string{"--proxy", "node/ghost", "-f", "../../examples/cluster.yaml"}, `"ghost"`},
		"bad proxy":        {[]string{"--proxy", "worker-1", "-f", "../../examples/cluster.yaml"}, "node/NAME"},
		"bad output":       {[]string{"--proxy", "apiserver", "-o", "xml", "-f", "../../examples/cluster.yaml"}, "yaml or json"},
		"missing file":     {[]string{"--proxy", "apiserver", "-f", "nope.yaml"}, "nope.yaml"},
		"malformed yaml":   {[]string{"--proxy", "apiserver", "-f", "../../translator/testdata/in/bad-yaml.yaml.err"}, "not valid YAML"},
		"strict":           {[]string{"--proxy", "apiserver", "--strict", "-f", "../../translator/testdata/in/bad-objects.yaml"}, "--strict"},
		"no proxy flag":    {[]string{"-f", "../../examples/cluster.yaml"}, "proxy"},
		"settings missing": {[]string{"--proxy", "apiserver", "--config", "nope.yaml", "-f", "../../examples/cluster.yaml"}, "settings"},
	} {
		t.Run(name, func(t *testing.T) {
			out, _, err := runSpoke(append([]string{"translate"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("want error containing %q, got %v", tc.want, err)
			}
			if out != "" {
				t.Errorf("a failed translation printed output: %.80q", out)
			}
		})
	}
}

// TestTranslateWarnsAndContinues: bad objects are reported on stderr, the
// rest is still translated.
func TestTranslateWarnsAndContinues(t *testing.T) {
	out, stderr, err := runSpoke("translate", "--proxy", "node/good", "-f", "../../translator/testdata/in/bad-objects.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "evil:node") || !strings.Contains(stderr, "level=warning") {
		t.Errorf("stderr lacks the skipped node warning:\n%s", stderr)
	}
	if !strings.Contains(out, "10.244.1.2:*") {
		t.Error("the good pod's route is missing")
	}
}

// TestTranslateWarnsOnEmptyInput: an empty dump (a failed kubectl, a file
// written halfway) translates to an apiserver proxy that routes nothing; it
// is said on stderr, and --strict refuses it.
func TestTranslateWarnsOnEmptyInput(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := runSpoke("translate", "--proxy", "apiserver", "-f", empty)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "level=warning") || !strings.Contains(stderr, "no Node, Pod, Service or EndpointSlice") {
		t.Errorf("no warning about the empty input:\n%s", stderr)
	}
	if out, _, err := runSpoke("translate", "--proxy", "apiserver", "--strict", "-f", empty); err == nil || out != "" {
		t.Errorf("--strict accepted an empty input: %v", err)
	}
}

// TestExampleNodeProxiesDialOnlyLoopback: a node proxy started on the
// example cluster (make run) dials its apiserver proxies, the only
// addresses it dials unasked, on this host's loopback, never off the
// machine.
func TestExampleNodeProxiesDialOnlyLoopback(t *testing.T) {
	for _, node := range []string{"control-plane", "worker-1", "worker-2"} {
		js, _, err := runSpoke("translate", "-f", "../../examples/cluster.yaml", "--proxy", "node/"+node, "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		_, endpoints, _ := strings.Cut(js, "envoy.admin.v3.EndpointsConfigDump")
		endpoints, _, _ = strings.Cut(endpoints, "envoy.admin.v3.") // the next section
		addresses := regexp.MustCompile(`"address": "([^"]+)"`).FindAllStringSubmatch(endpoints, -1)
		if len(addresses) == 0 {
			t.Fatalf("%s: no endpoint addresses in:\n%s", node, js)
		}
		for _, a := range addresses {
			if ip, err := netip.ParseAddr(a[1]); err != nil || !ip.IsLoopback() {
				t.Errorf("%s dials %s: not loopback", node, a[1])
			}
		}
	}
}

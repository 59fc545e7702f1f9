package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logrustest "github.com/sirupsen/logrus/hooks/test"
	"k8s.io/klog/v2"
)

// TestServeRefusesInsecureOrIncompleteTrust: the default is authenticated
// xDS; plaintext must be asked for, and with a real cluster twice; a real
// cluster needs a shared tunnel CA; CA files come in pairs.
func TestServeRefusesInsecureOrIncompleteTrust(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte("unused"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve"}, "--client-ca-file"},
		{[]string{"serve", "--source", "kubernetes", "--insecure-xds", "--kubeconfig", kubeconfig}, "--insecure-allow-kubernetes"},
		{[]string{"serve", "--source", "kubernetes", "--client-ca-file", ca, "--kubeconfig", kubeconfig}, "tunnel CA"},
		{[]string{"serve", "--insecure-xds", "--tunnel-ca-cert-file", ca}, "together"},
		{[]string{"serve", "--insecure-xds", "--tunnel-ca-secret", "no-slash", "--kubeconfig", kubeconfig}, "NAMESPACE/NAME"},
		{[]string{"serve", "--insecure-xds", "--log-format", "xml"}, "use text or json"},
		{[]string{"serve", "--insecure-xds", "--source", "file=" + filepath.Join(dir, "missing.yaml")}, "missing.yaml: no such file"},
	} {
		_, _, err := runSpoke(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: want an error mentioning %q, got %v", tc.args, tc.want, err)
		}
	}
}

// TestKlogLinesGoThroughLogrus: what client-go logs through klog (watch
// failures, throttling) comes out as the server's own lines, JSON with
// --log-format json, not klog's format on stderr.
func TestKlogLinesGoThroughLogrus(t *testing.T) {
	var buf bytes.Buffer
	logrus.SetOutput(&buf)
	t.Cleanup(func() {
		logrus.SetOutput(os.Stderr)
		logrus.SetFormatter(&logrus.TextFormatter{})
		klog.ClearLogger()
	})
	if err := setupLogging("json"); err != nil {
		t.Fatal(err)
	}
	klog.ErrorS(errors.New("connection refused"), "Failed to watch", "resource", "*v1.Pod")
	klog.InfoS("Waiting for caches to sync")
	klog.Flush()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 log lines, got %q", buf.String())
	}
	for _, line := range lines {
		var fields map[string]any
		if err := json.Unmarshal([]byte(line), &fields); err != nil || fields["component"] != "client-go" || fields["msg"] == nil {
			t.Errorf("a klog line is not a JSON line of the server's: %s", line)
		}
	}
	if !strings.Contains(lines[0], `"level":"error"`) || !strings.Contains(lines[0], "connection refused") {
		t.Errorf("klog's error keeps its level and cause: %s", lines[0])
	}
}

// TestDefaultConnectionCapFitsQuietly: at the default --xds-max-connections
// a host whose descriptors cannot hold it gets the cap fitted, logged at
// info (no warning at the default settings); a cap the operator gave and
// the host cannot hold is a warning.
func TestDefaultConnectionCapFitsQuietly(t *testing.T) {
	const beyondAnyLimit = 1 << 30 // above nr_open: no process may raise its limit that far
	for _, given := range []bool{false, true} {
		log, hook := logrustest.NewNullLogger()
		got := fitFileLimit(beyondAnyLimit, given, log)
		if got >= beyondAnyLimit || len(hook.Entries) != 1 {
			t.Fatalf("cap %d, %d log lines: want it lowered, said once", got, len(hook.Entries))
		}
		want := logrus.InfoLevel
		if given {
			want = logrus.WarnLevel
		}
		if e := hook.LastEntry(); e.Level != want {
			t.Errorf("given %v: logged at %v (%q), want %v", given, e.Level, e.Message, want)
		}
	}
}

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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

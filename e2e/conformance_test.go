package e2e

import (
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// conformanceFocus picks the upstream e2e tests of the paths from the
// control plane to nodes: kubectl logs and exec (over websockets), the
// kubelet's logs, the pod and service proxies, kubectl port-forward (not
// part of Conformance, but the same path).
const conformanceFocus = `Pods should support remote command execution over websockets|Pods should support retrieving logs from the container over websockets|` +
	`Kubelet when scheduling a busybox command in a pod should print the output to logs|Kubectl logs logs should be able to retrieve and filter logs|` +
	`Proxy version v1|Kubectl Port forwarding With a server listening on (0.0.0.0|localhost)`

// conformanceImages builds, from binaries on this machine, the upstream
// test images those tests use, under their upstream names (no registry is
// reachable): agnhost with porter's certificate, and busybox (Debian's
// static one with its commands linked), both run as root as upstream's are.
func conformanceImages(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	agnhost := kubeTool(t, "agnhost")
	porter := filepath.Join(kubeModuleDir(t), "test", "images", "agnhost", "porter")
	// Upstream's test images have a shell and busybox's commands (the
	// port-forward test's readiness probe runs sh -c "netstat ... | grep").
	busyboxLinks := []string{}
	for _, cmd := range []string{"sh", "cat", "echo", "sleep", "ls", "test", "true", "false", "env", "hostname", "wc", "grep", "head", "tail", "printf", "id", "touch", "mkdir", "rm", "nc", "wget", "ps", "dd", "tee", "date", "seq", "netstat"} {
		busyboxLinks = append(busyboxLinks, "--link", "/bin/"+cmd+"=/bin/busybox")
	}
	images := []struct {
		tag  string
		args []string
	}{
		{"registry.k8s.io/e2e-test-images/agnhost:2.66.1", append([]string{"--static", agnhost, "--user", "0", "--add", nodeHostTools["busybox"] + "=/bin/busybox",
			"--add", filepath.Join(porter, "localhost.crt") + "=/localhost.crt", "--add", filepath.Join(porter, "localhost.key") + "=/localhost.key"}, busyboxLinks...)},
		{"registry.k8s.io/e2e-test-images/busybox:1.37.0-2", append([]string{"--static", nodeHostTools["busybox"], "--path", "/bin/busybox", "--user", "0", "--arg", "sh"}, busyboxLinks...)},
	}
	var out []string
	for i, img := range images {
		archive := filepath.Join(dir, filepath.Base(strings.ReplaceAll(img.tag, ":", "-"))+".tar")
		args := append(append([]string{"run", "../cmd/spoke-image"}, img.args...), "--tag", img.tag, "--out", archive)
		if raw, err := exec.Command("go", args...).CombinedOutput(); err != nil {
			t.Fatalf("image %d (%s): %v\n%s", i, img.tag, err, raw)
		}
		out = append(out, archive)
	}
	return out
}

// kubeModuleDir is the module cache's k8s.io directory (where
// k8s.io/kubernetes@<version> was downloaded to build the tools).
func kubeModuleDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "k8s.io", "kubernetes@"+kubeVersion)
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("%s missing: run `make tools-kube`", dir)
	}
	return dir
}

// TestConformanceThroughSpoke runs the upstream e2e tests of logs, exec,
// proxy and port-forward (e2e.test built from k8s.io/kubernetes, the same
// version as the cluster) against a real cluster whose only way from the
// control plane to its nodes is spoke. Every focused test must pass.
func TestConformanceThroughSpoke(t *testing.T) {
	e2eTest := kubeTool(t, "e2e.test")
	c := startSpokeCluster(t, []clusterNode{
		{"node-a", "172.30.1.1", "10.244.1.0/24", nodeOptions{isolated: true, index: 1}},
		{"node-b", "172.30.2.1", "10.244.2.0/24", nodeOptions{isolated: true, index: 2}},
	}, conformanceImages(t)...)
	reportDir := t.TempDir()
	before := c.apiProxy.StatSumOf("cluster.node/", ".upstream_rq_total")
	start := time.Now()
	cmd := exec.Command(e2eTest, "--kubeconfig", c.cp.adminKubeconfig(t), "--provider", "skeleton", "--kubectl-path", kubeTool(t, "kubectl"),
		"--report-dir", reportDir, "--ginkgo.focus", conformanceFocus, "--ginkgo.skip", `\[Serial\]|\[Disruptive\]|\[Slow\]|\[Feature:`,
		"--ginkgo.no-color", "--ginkgo.timeout", "20m", "--minStartupPods", "0")
	logFile := filepath.Join(reportDir, "e2e.log")
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	err = cmd.Run()
	f.Close()
	out, _ := os.ReadFile(logFile)
	summary := regexp.MustCompile(`Ran (\d+) of \d+ Specs.*\n.*(SUCCESS|FAIL)!.*`).FindString(string(out))
	t.Logf("upstream e2e (focus: logs, exec, proxy, port-forward) through spoke, %v: %s", time.Since(start).Round(time.Second), summary)
	if err != nil || summary == "" || strings.HasPrefix(summary, "Ran 0 ") {
		t.Fatalf("e2e.test: %v\n%s", err, tail(string(out), 12000))
	}
	passed := junitPassed(t, filepath.Join(reportDir, "junit_01.xml"))
	for _, name := range passed {
		t.Logf("passed through spoke: %s", name)
	}
	streams := c.apiProxy.StatSumOf("cluster.node/", ".upstream_rq_total") - before
	t.Logf("the apiserver proxy carried %d streams into tunnels for them", streams)
	if len(passed) < 10 || streams < len(passed) {
		t.Errorf("%d specs passed and the apiserver proxy carried %d streams: the suite did not go through spoke as meant", len(passed), streams)
	}
}

// junitPassed lists the specs the JUnit report says ran and passed.
func junitPassed(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the e2e JUnit report: %v", err)
	}
	var report struct {
		Suites []struct {
			Cases []struct {
				Name    string    `xml:"name,attr"`
				Status  string    `xml:"status,attr"`
				Skipped *struct{} `xml:"skipped"`
				Failure *struct{} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(raw, &report); err != nil {
		t.Fatalf("the e2e JUnit report: %v", err)
	}
	var passed []string
	for _, suite := range report.Suites {
		for _, c := range suite.Cases {
			if c.Skipped == nil && c.Failure == nil && c.Status == "passed" && strings.HasPrefix(c.Name, "[It]") {
				passed = append(passed, strings.TrimSpace(strings.TrimPrefix(c.Name, "[It]")))
			}
		}
	}
	return passed
}

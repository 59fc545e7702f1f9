package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// promtool is Prometheus's promtool ($SPOKE_PROMTOOL, built by make
// tools-promtool); without it the test skips saying so, unless
// SPOKE_REQUIRE_PROMTOOL is set (make test sets it).
func promtool(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("SPOKE_PROMTOOL")
	if _, err := os.Stat(bin); bin == "" || err != nil {
		if os.Getenv("SPOKE_REQUIRE_PROMTOOL") != "" {
			t.Fatalf("promtool %q not found: run make tools-promtool", bin)
		}
		t.Skip("promtool not installed: run make tools-promtool and set SPOKE_PROMTOOL=.tools/promtool-<version>/promtool")
	}
	return bin
}

// TestAlertRules: the rules of manifests/monitoring/spoke-alerts.yaml (a
// PrometheusRule; its spec is a Prometheus rules file) pass promtool check
// rules, and their unit tests (spoke-alerts-test.yaml: each alert fires on
// the series that should fire it, with its labels and text, and stays
// quiet on healthy ones) pass promtool test rules.
func TestAlertRules(t *testing.T) {
	bin := promtool(t)
	dir := t.TempDir()
	var rule struct {
		Kind string         `json:"kind"`
		Spec map[string]any `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(readRepoFile(t, "manifests/monitoring/spoke-alerts.yaml")), &rule); err != nil || rule.Kind != "PrometheusRule" {
		t.Fatalf("spoke-alerts.yaml is not a PrometheusRule: %v", err)
	}
	rules, err := yaml.Marshal(rule.Spec)
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(dir, "spoke-alerts.rules.yaml"), rules)
	writeTestFile(t, filepath.Join(dir, "spoke-alerts-test.yaml"), []byte(readRepoFile(t, "manifests/monitoring/spoke-alerts-test.yaml")))
	for _, args := range [][]string{{"check", "rules", "spoke-alerts.rules.yaml"}, {"test", "rules", "spoke-alerts-test.yaml"}} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// monitoringMetricNames are the spoke_* metric names the dashboard and the
// alert rules use (a histogram's by its _bucket series).
func monitoringMetricNames(t *testing.T) []string {
	t.Helper()
	text := readRepoFile(t, "manifests/monitoring/spoke-dashboard.json") + readRepoFile(t, "manifests/monitoring/spoke-alerts.yaml")
	names := regexp.MustCompile(`\bspoke_[a-z_]+\b`).FindAllString(text, -1)
	slices.Sort(names)
	return slices.Compact(names)
}

// checkMonitoringNamesExist fails for every metric the dashboard or the
// rules name that metrics (a running server's /metrics) lacks.
func checkMonitoringNamesExist(t *testing.T, metrics string) {
	t.Helper()
	names := monitoringMetricNames(t)
	if len(names) < 10 {
		t.Fatalf("the dashboard and rules name only %v", names)
	}
	for _, name := range names {
		// a histogram's base name is in its _bucket, _sum and _count series
		if !regexp.MustCompile(`(?m)^` + name + `(_bucket|_sum|_count)?[{ ]`).MatchString(metrics) {
			t.Errorf("the dashboard or the alert rules use %s, which the running server does not export", name)
		}
	}
}

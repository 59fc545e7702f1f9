package xds_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// TestHealthMetricsAndDebug checks the operational endpoints of a synced server.
func TestHealthMetricsAndDebug(t *testing.T) {
	srv, _ := serverOnExample(t)
	base, debug := "http://"+srv.Addr("http"), "http://"+srv.Addr("debug")
	if got := httpGet(t, base+"/readyz"); strings.TrimSpace(got) != "ok" {
		t.Errorf("/readyz = %q", got)
	}
	metrics := httpGet(t, base+"/metrics")
	for _, want := range []string{`spoke_watched_objects{kind="Pod"}`, "spoke_translation_seconds_count", "spoke_skipped_objects",
		`spoke_certificate_expiry_seconds{certificate="tunnel_ca"} 3.15`, `spoke_xds_nacks_total{type="Listener"} 0`, "spoke_source_refused 0", "spoke_refused_pod_addresses 0"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	dump := httpGet(t, debug+"/debug/config?proxy=node/worker-1")
	if !strings.Contains(dump, "node-tunnel") || !strings.Contains(dump, "spoke-tunnel-node") {
		t.Errorf("config dump incomplete:\n%.400s", dump)
	}
	if strings.Contains(dump, "PRIVATE KEY") || strings.Contains(dump, "inline_bytes") {
		t.Error("config dump carries key material")
	}
	if got := httpGet(t, debug+"/debug/config?proxy=node/ghost"); !strings.Contains(got, "no config") {
		t.Errorf("unknown node: %q", got)
	}
}

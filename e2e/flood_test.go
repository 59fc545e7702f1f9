package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/pki"
)

const floodEnv = "SPOKE_TEST_FLOOD" // "target,source,count"

// init turns a copy of this test binary into the flood: it opens count TCP
// connections from source to target, never sends a byte, says how many it
// opened and holds them until killed.
func init() {
	spec := os.Getenv(floodEnv)
	if spec == "" {
		return
	}
	parts := strings.Split(spec, ",")
	count, _ := strconv.Atoi(parts[2])
	dialer := net.Dialer{Timeout: 300 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: net.ParseIP(parts[1])}}
	var conns []net.Conn
	timeouts := 0
	for len(conns) < count && timeouts < 3 {
		c, err := dialer.Dial("tcp", parts[0])
		if err != nil {
			timeouts++ // the server's backlog is full
			continue
		}
		conns = append(conns, c)
	}
	fmt.Printf("opened %d\n", len(conns))
	select {}
}

// startFlood runs the flood in another process and waits until it has
// opened its connections.
func startFlood(t *testing.T, target, source string, count int) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d", floodEnv, target, source, count))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("flood: %v", err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "opened ")))
	return n
}

// buildSpoke is the spoke command, built once per test process.
func buildSpoke(t *testing.T) string {
	t.Helper()
	return buildOnce(t, "spoke", func(dir string) ([]string, error) {
		bin := filepath.Join(dir, "spoke")
		return []string{bin}, goCommand(nil, "build", "-o", bin, "../cmd/spoke")
	})[0]
}

// TestXDSPortSurvivesAHandshakeFlood: a process holding thousands of TCP
// connections to the xDS port that never start TLS does not stop a real
// node proxy from getting its config within seconds, nor health, metrics
// or the file source. The server runs as deployed, in its own process,
// started with a 1,024 file descriptor limit (a common default) that the
// flood alone would exhaust.
func TestXDSPortSurvivesAHandshakeFlood(t *testing.T) {
	tp := newTopology(t)
	spoke := buildSpoke(t)
	dir := t.TempDir()
	caCert, caKey, err := pki.GenerateCA("flood tunnel CA")
	if err != nil {
		t.Fatal(err)
	}
	sec := &secureServer{clusterCA: authtest.NewCA(t, "flood cluster CA"), dir: dir, logs: &envoytest.LogBuffer{},
		serverCA: authtest.WriteFile(t, dir, "tunnel-ca.crt", caCert), xdsAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	clusterFile := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(clusterFile, []byte(fmt.Sprintf(clusterTemplate, tp.port, tp.port)), 0o600); err != nil {
		t.Fatal(err)
	}
	settingsFile := filepath.Join(dir, "settings.yaml")
	if err := os.WriteFile(settingsFile, []byte("allowPodAddresses: [127.0.0.0/8]  # pods on loopback\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	server := exec.Command("bash", "-c", `ulimit -n 1024 && exec "$@"`, "bash", spoke, "serve",
		"--source", "file="+clusterFile, "--file-poll", "100ms", "--config", settingsFile,
		"--client-ca-file", authtest.WriteFile(t, dir, "client-ca.crt", sec.clusterCA.CertPEM),
		"--tunnel-ca-cert-file", sec.serverCA, "--tunnel-ca-key-file", authtest.WriteFile(t, dir, "tunnel-ca.key", caKey),
		"--xds-address", sec.xdsAddr, "--http-address", httpAddr, "--debug-address", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	server.Stdout, server.Stderr = sec.logs, sec.logs
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = server.Process.Kill()
		_ = server.Wait()
		if t.Failed() {
			envoytest.LogDump(t, "server log", sec.logs.String())
		}
	})
	get := func(path string) (string, error) { return httpBody("http://" + httpAddr + path) }
	waitFor(t, 20*time.Second, "the server to be ready", func() bool { _, err := get("/readyz"); return err == nil })

	opened := startFlood(t, sec.xdsAddr, "127.0.0.2", 3000)
	t.Logf("the flood holds %d connections from 127.0.0.2 that never handshake", opened)

	start := time.Now()
	certPEM, keyPEM := sec.clusterCA.KubeletClient(t, "node-a")
	node := sec.startNode(t, tp.bin, "node-a", false, certPEM, keyPEM, envoytest.StartUnready)
	waitFor(t, 15*time.Second, "the node proxy to get its config under the flood", func() bool { _, err := node.Get("/ready"); return err == nil })
	t.Logf("node proxy started under the flood had its config after %v", time.Since(start).Round(10*time.Millisecond))

	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if _, err := get(path); err != nil {
			t.Errorf("%s under the flood: %v", path, err)
		}
	}
	metrics, _ := get("/metrics")
	if seriesValue(metrics, `spoke_xds_connections_refused_total{cap="per_source"}`) <= 0 {
		t.Errorf("no refused connections counted:\n%s", grepLines(metrics, "spoke_xds_connections"))
	}
	// The file source still reads its file: a new pod reaches the node proxy.
	more := fmt.Sprintf(clusterTemplate, tp.port, tp.port) +
		"- {apiVersion: v1, kind: Pod, metadata: {name: web-a2, namespace: default}, spec: {nodeName: node-a}, status: {phase: Running, podIP: 127.1.1.9}}\n"
	if err := os.WriteFile(clusterFile, []byte(more), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a pod added under the flood to reach the node proxy", func() bool {
		dump, _ := node.Get("/config_dump")
		return strings.Contains(dump, "127.1.1.9")
	})
	if strings.Contains(sec.logs.String(), "too many open files") {
		t.Errorf("the server ran out of file descriptors:\n%s", grepLines(sec.logs.String(), "too many open files"))
	}
}

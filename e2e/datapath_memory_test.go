package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/e2e/datapath"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// memoryPerNode is what the control-plane-side proxy holds per connected
// node: (RSS with n nodes - RSS with none) / n.
type memoryPerNode struct {
	nodes       int
	spoke, konn int64 // bytes per node; 0 when not measured
	err         error
}

// simulatedNode holds a node's tunnels to an apiserver proxy as a node
// proxy does, without an Envoy per node: mTLS with the node's tunnel
// certificate, the reverse-tunnel handshake (GET /reverse_connections/request
// with the node, cluster and tenant ids), then it answers the responder's
// keepalive pings (RPING) until closed. The connection and the handshake
// must each finish within the given time.
func simulatedNode(addr, node string, tunnel int, cert pki.Certificate, caPEM []byte, s model.Settings, within time.Duration) (net.Conn, error) {
	pair, err := tls.X509KeyPair(cert.CertPEM, cert.KeyPEM)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: within}, "tcp", addr,
		&tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots, ServerName: s.APIServerProxyName})
	if err != nil {
		return nil, err
	}
	// The request a real node proxy (Envoy 1.40) sends, recorded byte for byte.
	fmt.Fprintf(conn, "GET /reverse_connections/request HTTP/1.1\r\nhost: %s\r\n"+
		"x-envoy-reverse-tunnel-node-id: %s\r\nx-envoy-reverse-tunnel-cluster-id: %s\r\nx-envoy-reverse-tunnel-tenant-id: %s\r\n"+
		"x-envoy-reverse-tunnel-upstream-cluster-name: %s\r\nx-envoy-reverse-tunnel-initiation-time: %d\r\n"+
		"x-envoy-reverse-tunnel-worker-id: worker_0\r\nx-envoy-reverse-tunnel-connection-id: %d\r\ncontent-length: 0\r\n\r\n",
		addr, node, s.ClusterID, s.TenantID, translator.APIServerProxies, time.Now().UnixMilli(), tunnel+1)
	br := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(within))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("tunnel handshake of %s: %w", node, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		conn.Close()
		return nil, fmt.Errorf("tunnel handshake of %s: %s", node, resp.Status)
	}
	_ = conn.SetReadDeadline(time.Time{})
	go func() { // echo keepalive pings
		buf := make([]byte, 64)
		for {
			n, err := br.Read(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:n]), "RPING") {
				_, _ = conn.Write([]byte("RPING"))
			}
		}
	}()
	return conn, nil
}

// spokeMemoryPerNode connects n simulated nodes, each with the tunnels a
// one-worker node proxy keeps (TunnelsPerEndpoint), to a real apiserver
// proxy and measures its RSS growth.
func spokeMemoryPerNode(t *testing.T, n int, cfg benchConfig) (int64, error) {
	tp := newTopology(t)
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	api := sec.startAPIServerProxyWith(t, tp.bin, "apiserver-1", "--concurrency", strconv.Itoa(cfg.apiWorkers))
	time.Sleep(time.Second)
	before, err := datapath.ProcessRSS(api.PID())
	if err != nil {
		return 0, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", tp.settings.TunnelPort)
	for i := 0; i < n; i++ {
		node := fmt.Sprintf("sim-%d", i)
		cert, err := sec.issuer.NodeCertificate(node)
		if err != nil {
			return 0, err
		}
		for j := uint32(0); j < tp.settings.TunnelsPerEndpoint; j++ {
			conn, err := simulatedNode(addr, node, int(j), cert, sec.issuer.CAPEM(), tp.settings, 5*time.Second)
			if err != nil {
				return 0, err
			}
			t.Cleanup(func() { conn.Close() })
		}
	}
	connected := func() int { return api.StatSum("total_nodes") }
	deadline := time.Now().Add(30 * time.Second)
	for connected() < n && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := connected(); got < n {
		return 0, fmt.Errorf("the apiserver proxy counts %d connected nodes, want %d", got, n)
	}
	time.Sleep(time.Second)
	after, err := datapath.ProcessRSS(api.PID())
	if err != nil {
		return 0, err
	}
	return (after - before) / int64(n), nil
}

// konnectivityMemoryPerNode connects n agents (agent-swarm: the agent's own
// client code, one process) to a real proxy-server and measures its RSS
// growth.
func konnectivityMemoryPerNode(t *testing.T, n int) (int64, error) {
	k := newKonnectivity(t)
	k.startServer()
	time.Sleep(time.Second)
	before, err := datapath.ProcessRSS(k.server.Process.Pid)
	if err != nil {
		return 0, err
	}
	swarm := exec.Command(k.swarm, "-agents", strconv.Itoa(n), "-server", fmt.Sprintf("127.0.0.1:%d", k.agentPort),
		"-ca-cert", k.caFile, "-agent-cert", k.agentCert[0], "-agent-key", k.agentCert[1])
	dieWithTest(swarm)
	stdin, _ := swarm.StdinPipe()
	stdout, _ := swarm.StdoutPipe()
	var stderr strings.Builder
	swarm.Stderr = &stderr
	if err := swarm.Start(); err != nil {
		return 0, err
	}
	t.Cleanup(func() { stdin.Close(); _ = swarm.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "READY") {
		return 0, fmt.Errorf("agent-swarm: %q %v: %s", line, err, stderr.String())
	}
	time.Sleep(time.Second)
	after, err := datapath.ProcessRSS(k.server.Process.Pid)
	if err != nil {
		return 0, err
	}
	return (after - before) / int64(n), nil
}

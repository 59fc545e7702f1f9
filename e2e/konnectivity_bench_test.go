package e2e

import (
	"crypto/x509/pkix"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/auth/authtest"
)

// konnectivityVersion keys the cached build of proxy-server and proxy-agent
// (e2e/konnectivity/build.sh).
const konnectivityVersion = "v0.34.0"

// konnectivityBinaries returns the cached proxy-server and proxy-agent, or
// skips (fails under SPOKE_REQUIRE_KONNECTIVITY=1) saying how to build them.
func konnectivityBinaries(t *testing.T) (server, agent, swarm string) {
	t.Helper()
	dir := filepath.Join(repoRoot(t), ".tools", "konnectivity-"+konnectivityVersion)
	server, agent, swarm = filepath.Join(dir, "proxy-server"), filepath.Join(dir, "proxy-agent"), filepath.Join(dir, "agent-swarm")
	for _, b := range []string{server, agent, swarm} {
		if _, err := os.Stat(b); err != nil {
			msg := fmt.Sprintf("%s missing: run `make tools-konnectivity` (builds Konnectivity %s from its Go module, ~1 min cold)", b, konnectivityVersion)
			if os.Getenv("SPOKE_REQUIRE_KONNECTIVITY") == "1" {
				t.Fatal("SPOKE_REQUIRE_KONNECTIVITY=1: " + msg)
			}
			t.Skip(msg)
		}
	}
	return server, agent, swarm
}

// konnectivity is the peer users would pick instead of spoke: a
// proxy-server in http-connect mode on a Unix socket (what kube-apiserver's
// egress selector dials), and one proxy-agent per node with mTLS to it.
// Each agent announces its node's pod IP, and the server picks the agent
// by destination only (destHost), as spoke picks a node's tunnel.
type konnectivity struct {
	t                       *testing.T
	serverBin, agent, swarm string
	socket                  string
	agentPort               int
	serverArgs              []string
	server                  *exec.Cmd
	agents                  map[string]*exec.Cmd
	caFile                  string
	agentCert               [2]string // cert, key files
}

func newKonnectivity(t *testing.T) *konnectivity {
	t.Helper()
	serverBin, agentBin, swarm := konnectivityBinaries(t)
	dir := t.TempDir()
	k := &konnectivity{t: t, serverBin: serverBin, agent: agentBin, swarm: swarm, socket: filepath.Join(dir, "konnectivity.sock"), agentPort: freePort(t), agents: map[string]*exec.Cmd{}}
	ca := authtest.NewCA(t, "konnectivity bench CA")
	k.caFile = authtest.WriteFile(t, dir, "ca.crt", ca.CertPEM)
	serverCert, serverKey := ca.Server(t, net.ParseIP("127.0.0.1"))
	agentCert, agentKey := ca.Client(t, pkix.Name{CommonName: "konnectivity-agent"}, time.Now().Add(time.Hour))
	k.agentCert = [2]string{authtest.WriteFile(t, dir, "agent.crt", agentCert), authtest.WriteFile(t, dir, "agent.key", agentKey)}
	k.serverArgs = []string{
		"--mode=http-connect", "--server-port=0", "--uds-name=" + k.socket, "--delete-existing-uds-file",
		"--cluster-cert=" + authtest.WriteFile(t, dir, "server.crt", serverCert), "--cluster-key=" + authtest.WriteFile(t, dir, "server.key", serverKey),
		"--cluster-ca-cert=" + k.caFile,
		"--agent-bind-address=127.0.0.1", "--agent-port=" + strconv.Itoa(k.agentPort),
		"--admin-port=" + strconv.Itoa(freePort(t)), "--health-bind-address=127.0.0.1", "--health-port=" + strconv.Itoa(freePort(t)),
		"--proxy-strategies=destHost", // each node's agent, as spoke picks each node's tunnel
		"--v=0",                       // its default is 4: a log line per packet would cost it dearly
	}
	return k
}

// startServer runs the proxy-server and waits for its socket.
func (k *konnectivity) startServer() time.Time {
	k.t.Helper()
	_ = os.Remove(k.socket)
	started := time.Now()
	k.server = startProcess(k.t, "konnectivity-server", filepath.Join(k.t.TempDir(), "server.log"), k.serverBin, k.serverArgs...)
	waitFor(k.t, 10*time.Second, "the Konnectivity server's socket", func() bool {
		_, err := os.Stat(k.socket)
		return err == nil
	})
	return started
}

// startAgent runs node's proxy-agent, announcing podIP.
func (k *konnectivity) startAgent(node, podIP string) time.Time {
	k.t.Helper()
	started := time.Now()
	k.agents[node] = startProcess(k.t, "konnectivity-agent-"+node, filepath.Join(k.t.TempDir(), "agent.log"), k.agent,
		"--agent-id="+node, "--agent-identifiers=ipv4="+podIP,
		"--proxy-server-host=127.0.0.1", "--proxy-server-port="+strconv.Itoa(k.agentPort),
		"--ca-cert="+k.caFile, "--agent-cert="+k.agentCert[0], "--agent-key="+k.agentCert[1],
		"--admin-server-port="+strconv.Itoa(freePort(k.t)), "--health-server-port="+strconv.Itoa(freePort(k.t)),
		"--v=0")
	return started
}

// pids are the proxies whose CPU the benchmark counts.
func (k *konnectivity) pids() []int {
	pids := []int{k.server.Process.Pid}
	for _, a := range k.agents {
		pids = append(pids, a.Process.Pid)
	}
	return pids
}

// dieWithTest has cmd killed when the test binary dies, even by SIGKILL:
// an interrupted test or benchmark leaves nothing running.
func dieWithTest(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// stopProcess kills a process started by startProcess and waits for it.
func stopProcess(cmd *exec.Cmd) {
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

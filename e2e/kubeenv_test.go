package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// kubeVersion keys the cached build of kube-apiserver and etcd (e2e/kube/build.sh).
const kubeVersion = "v1.37.2"

// kubeBinaries returns the cached kube-apiserver and etcd, or skips (fails
// under SPOKE_REQUIRE_KUBE=1) saying how to build them.
func kubeBinaries(t *testing.T) (apiserver, etcd string) {
	t.Helper()
	return kubeTool(t, "kube-apiserver"), kubeTool(t, "etcd")
}

// repoRoot is the checkout's root: go test runs a package's tests in its
// directory, e2e/. (Not from runtime.Caller: make test builds with
// -trimpath, which leaves no file system path in the binary.)
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// kubeTool returns one cached binary of e2e/kube/build.sh (kube-apiserver,
// etcd, kubectl, kubeadm), or skips (fails under SPOKE_REQUIRE_KUBE=1)
// saying how to build it.
func kubeTool(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(repoRoot(t), ".tools", "kube-"+kubeVersion, name)
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("%s missing: run `make tools-kube` (builds kube-apiserver, etcd, kubectl and kubeadm %s from Go modules, ~8 min cold)", bin, kubeVersion)
		if os.Getenv("SPOKE_REQUIRE_KUBE") == "1" {
			t.Fatal("SPOKE_REQUIRE_KUBE=1: " + msg)
		}
		t.Skip(msg)
	}
	return bin
}

// controlPlane is a real etcd and kube-apiserver on loopback.
type controlPlane struct {
	t          *testing.T
	bin        string
	args       []string
	apiserver  *exec.Cmd
	url        string
	token      string
	logFile    string
	kubeconfig string // the admin's (adminKubeconfig)
	// kubeletClientCA signs the client certificate the apiserver presents
	// to kubelets; kubelets trust it (x509 authentication).
	kubeletClientCA string
	// controllersLog is kube-controller-manager's log (startControllers),
	// read when a DaemonSet roll stalls.
	controllersLog string
	// clientset, when set, is the client (a cluster this test did not
	// start: kind).
	clientset kubernetes.Interface
}

// testNodes have tokens in every control plane (static token file): user
// system:node:<name>, group system:nodes, as the Node authorizer expects.
var testNodes = []string{"node-a", "node-b", "node-c", "node-e"}

func nodeToken(node string) string { return "spoke-test-" + node + "-token" }

func startControlPlane(t *testing.T) *controlPlane { return startControlPlaneWith(t) }

// startControlPlaneWith adds kube-apiserver flags (an egress selector, a
// client CA).
func startControlPlaneWith(t *testing.T, extraArgs ...string) *controlPlane {
	apiserverBin, etcdBin := kubeBinaries(t)
	dir := t.TempDir()
	etcdPort, peerPort := freePort(t), freePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	startProcess(t, "etcd", filepath.Join(dir, "etcd.log"), etcdBin,
		"--name", "spoke-test", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-cluster", fmt.Sprintf("spoke-test=http://127.0.0.1:%d", peerPort))

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "sa.key")
	writeTestFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	cp := &controlPlane{t: t, bin: apiserverBin, token: "spoke-test-admin-token", logFile: filepath.Join(dir, "apiserver.log")}
	tokens := cp.token + ",admin,admin,system:masters\n"
	for _, n := range testNodes {
		tokens += fmt.Sprintf("%s,system:node:%s,node-%s,system:nodes\n", nodeToken(n), n, n)
	}
	writeTestFile(t, filepath.Join(dir, "tokens.csv"), []byte(tokens))
	kubeletCA := authtest.NewCA(t, "kubelet client CA")
	clientCert, clientKey := kubeletCA.Client(t, pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}, time.Now().Add(time.Hour))
	cp.kubeletClientCA = authtest.WriteFile(t, dir, "kubelet-client-ca.crt", kubeletCA.CertPEM)
	port := freePort(t)
	cp.url = fmt.Sprintf("https://127.0.0.1:%d", port)
	cp.args = []string{
		"--etcd-servers", etcdURL,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", keyFile, "--service-account-signing-key-file", keyFile,
		"--cert-dir", filepath.Join(dir, "certs"), "--secure-port", fmt.Sprint(port),
		"--bind-address", "127.0.0.1", "--advertise-address", "192.0.2.10",
		"--authorization-mode", "Node,RBAC", "--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--kubelet-client-certificate", authtest.WriteFile(t, dir, "kubelet-client.crt", clientCert),
		"--kubelet-client-key", authtest.WriteFile(t, dir, "kubelet-client.key", clientKey),
		"--kubelet-preferred-address-types", "InternalIP",
		"--service-cluster-ip-range", "10.96.0.0/16",
		// No controller-manager runs, so nothing creates the default ServiceAccount.
		"--disable-admission-plugins", "ServiceAccount",
	}
	cp.args = append(cp.args, extraArgs...)
	cp.start()
	return cp
}

// withFlag returns args with every value of flag (a "--flag value" pair)
// replaced.
func withFlag(args []string, flag, value string) []string {
	out := append([]string(nil), args...)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == flag {
			out[i+1] = value
		}
	}
	return out
}

// flagValue is the value of the last "--flag value" pair in args.
func flagValue(args []string, flag string) string {
	v := ""
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			v = args[i+1]
		}
	}
	return v
}

func (cp *controlPlane) start() {
	cp.apiserver = startProcess(cp.t, "kube-apiserver", cp.logFile, cp.bin, cp.args...)
	cp.waitReady()
}

// restart kills the apiserver and starts it again on the same etcd and port.
func (cp *controlPlane) restart() {
	_ = cp.apiserver.Process.Kill()
	_ = cp.apiserver.Wait()
	cp.start()
}

// waitReady waits for kube-apiserver's /readyz. On a loaded machine (make
// test's two lanes at a load of 40-60) it has taken over 90 s, and a
// single /readyz over 2 s, so the wait degrades to slower: 3 minutes, 10 s
// a request. A failure says what /readyz said last.
func (cp *controlPlane) waitReady() {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	start := time.Now()
	last := "no answer yet"
	for time.Since(start) < 3*time.Minute {
		req, _ := http.NewRequest(http.MethodGet, cp.url+"/readyz?verbose", nil)
		req.Header.Set("Authorization", "Bearer "+cp.token)
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
		} else {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%s: %s", resp.Status, notOK(string(body)))
		}
		time.Sleep(200 * time.Millisecond)
	}
	log, _ := os.ReadFile(cp.logFile)
	cp.t.Fatalf("kube-apiserver not ready after %v; /readyz said last: %s\nits log's tail:\n%s", time.Since(start).Round(time.Second), last, tail(string(log), 3000))
}

// notOK keeps the checks of a verbose /readyz that did not pass.
func notOK(verbose string) string {
	var failed []string
	for _, line := range strings.Split(verbose, "\n") {
		if strings.HasPrefix(line, "[-]") {
			failed = append(failed, line)
		}
	}
	if len(failed) == 0 {
		return strings.TrimSpace(verbose)
	}
	return strings.Join(failed, "; ")
}

func (cp *controlPlane) client() kubernetes.Interface {
	if cp.clientset != nil {
		return cp.clientset
	}
	cfg := &rest.Config{Host: cp.url, BearerToken: cp.token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 100, Burst: 200}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		cp.t.Fatal(err)
	}
	return c
}

func startProcess(t *testing.T, name, logFile, bin string, args ...string) *exec.Cmd {
	t.Helper()
	out, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(context.Background(), bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		out.Close()
		if t.Failed() {
			log, _ := os.ReadFile(logFile)
			envoytest.LogDump(t, name+" log tail", tail(string(log), 2000))
		}
	})
	return cmd
}

func writeTestFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Command spoke-demo runs spoke on this host's loopback (make demo): the
// server on examples/demo/cluster.yaml, an apiserver proxy, a node proxy per
// node and a web server as pod web-1 on worker-1; then it prints the spoke
// connect command that reaches that pod through worker-1's tunnel, and
// runs until Ctrl-C, which stops every process it started.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The demo cluster's target: pod web-1 of worker-1 (examples/demo/cluster.yaml).
const (
	targetPod  = "web-1"
	targetNode = "worker-1"
	targetIP   = "127.1.1.10"
	targetPort = 8080
)

var demoNodes = []string{"worker-1", "worker-2"}

func main() {
	spoke := flag.String("spoke", "bin/spoke", "the spoke binary")
	envoy := flag.String("envoy", ".tools/venv/bin/envoy", "the Envoy 1.40 binary")
	cluster := flag.String("cluster", "examples/demo/cluster.yaml", "the demo cluster")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *spoke, *envoy, *cluster); err != nil {
		fmt.Fprintln(os.Stderr, "spoke-demo: "+err.Error())
		os.Exit(1)
	}
}

func run(ctx context.Context, spoke, envoy, cluster string) error {
	dir, err := os.MkdirTemp("", "spoke-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d := &demo{dir: dir, spoke: spoke, envoy: envoy}
	defer d.stopAll()
	if err := d.start(cluster); err != nil {
		return err
	}
	socket := filepath.Join(dir, "egress.sock")
	connect := []string{"connect", "--socket", socket, fmt.Sprintf("%s:%d", targetIP, targetPort), "--send", `GET / HTTP/1.0\r\n\r\n`}
	if err := waitForTunnel(ctx, spoke, connect); err != nil {
		return err
	}
	fmt.Printf("spoke runs on loopback: a server, an apiserver proxy and node proxies for %v (logs in %s).\n", demoNodes, dir)
	fmt.Printf("Reach pod %s on %s through its tunnel, as kube-apiserver would:\n\n", targetPod, targetNode)
	fmt.Printf("    %s %s '%s'\n\n", spoke, strings.Join(connect[:len(connect)-1], " "), connect[len(connect)-1])
	fmt.Println("Ctrl-C stops everything.")
	<-ctx.Done()
	return nil
}

// demo holds what it started, to stop it all.
type demo struct {
	dir, spoke, envoy string
	procs             []*exec.Cmd
	web               *http.Server
}

func (d *demo) start(cluster string) error {
	xdsPort, tunnelPort := freePort(), freePort()
	settings := fmt.Sprintf(`egressSocketPath: %s
tunnelListenAddress: 127.0.0.1
tunnelPort: %d
apiServerEndpoints: ["127.0.0.1:%d"]
allowPodAddresses: ["127.0.0.0/8"]   # loopback pods: the demo only
`, filepath.Join(d.dir, "egress.sock"), tunnelPort, tunnelPort)
	settingsFile := filepath.Join(d.dir, "settings.yaml")
	if err := os.WriteFile(settingsFile, []byte(settings), 0o600); err != nil {
		return err
	}
	xdsSocket := filepath.Join(d.dir, "xds.sock")
	if err := d.run("spoke-serve", d.spoke, "serve", "--source", "file="+cluster, "--config", settingsFile, "--insecure-xds",
		"--xds-address", fmt.Sprintf("127.0.0.1:%d", xdsPort), "--xds-socket", xdsSocket,
		"--http-address", "127.0.0.1:0", "--debug-address", "127.0.0.1:0"); err != nil {
		return err
	}
	if err := waitForFile(xdsSocket); err != nil {
		return fmt.Errorf("spoke serve did not start (%s): %w", filepath.Join(d.dir, "spoke-serve.log"), err)
	}
	if err := d.envoyProxy("apiserver-proxy", "--role", "apiserver", "--xds-socket", xdsSocket); err != nil {
		return err
	}
	for _, node := range demoNodes {
		if err := d.envoyProxy("node-proxy-"+node, "--role", "node", "--node-name", node, "--insecure",
			"--xds-address", fmt.Sprintf("127.0.0.1:%d", xdsPort)); err != nil {
			return err
		}
	}
	return d.serveWeb()
}

// envoyProxy writes a bootstrap with spoke bootstrap and runs Envoy on it.
func (d *demo) envoyProxy(name string, bootstrapArgs ...string) error {
	out := filepath.Join(d.dir, name)
	args := append([]string{"bootstrap", "--admin-port", "0", "--output-dir", out}, bootstrapArgs...)
	if b, err := exec.Command(d.spoke, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("spoke %v: %w\n%s", args, err, b)
	}
	return d.run(name, d.envoy, "-c", filepath.Join(out, "envoy.yaml"), "--concurrency", "1", "--disable-hot-restart")
}

// run starts a process logging to dir/name.log; it dies with the demo.
func (d *demo) run(name, bin string, args ...string) error {
	log, err := os.Create(filepath.Join(d.dir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	d.procs = append(d.procs, cmd)
	return nil
}

// serveWeb answers as pod web-1 on its loopback address.
func (d *demo) serveWeb() error {
	ln, err := net.Listen("tcp", net.JoinHostPort(targetIP, strconv.Itoa(targetPort)))
	if err != nil {
		return fmt.Errorf("pod %s: %w", targetPod, err)
	}
	d.web = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from pod %s on %s: this answer crossed %s's tunnel\n", targetPod, targetNode, targetNode)
	})}
	go func() { _ = d.web.Serve(ln) }()
	return nil
}

func (d *demo) stopAll() {
	if d.web != nil {
		_ = d.web.Close()
	}
	for i := len(d.procs) - 1; i >= 0; i-- {
		_ = d.procs[i].Process.Signal(syscall.SIGTERM)
	}
	for _, p := range d.procs {
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
}

// waitForTunnel runs the spoke connect command the demo prints until it
// works: the server, both proxies and worker-1's tunnel are up.
func waitForTunnel(ctx context.Context, spoke string, connect []string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if exec.CommandContext(ctx, spoke, append(connect, "--timeout", "2s")...).Run() == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return errors.New("no tunnel to " + targetNode + " after 30 s: see the logs")
}

func waitForFile(path string) error {
	for range 100 {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not appear", path)
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

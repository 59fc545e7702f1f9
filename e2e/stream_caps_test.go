package e2e

import (
	"fmt"
	"io"
	"net"

	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/translator/model"
)

// TestStreamCapsKeepOthersAnswering, with real Envoys and small caps: the
// apiserver proxy's streams to Services are held to serviceMaxStreams and
// the next is refused with 503 naming that cap while node targets answer at
// once; streams held to nodes up to their budget (egressMaxConnections -
// serviceMaxStreams) refuse the next node stream, naming that cap, while a
// Service still answers.
func TestStreamCapsKeepOthersAnswering(t *testing.T) {
	const egressCap, serviceCap = 40, 10
	tp := newTopologyWith(t, func(s *model.Settings) {
		s.EgressMaxConnections, s.ServiceMaxStreams = egressCap, serviceCap
	})
	webA, webB, service := tp.capTargets()
	sock := tp.settings.EgressSocketPath

	release := holdCONNECTs(t, sock, service, serviceCap)
	expectCapRefusal(t, sock, service, "serviceMaxStreams")
	expectQuickAnswer(t, sock, webA, "node-a/pod web-a")
	release()
	waitFor(t, 10*time.Second, "the released streams to leave the apiserver proxy", func() bool {
		return tp.apiProxy.Stat("http.apiserver_egress.downstream_cx_active") == 0
	})

	// Services keep their share of the egress connections (the listener's
	// cap is egressMaxConnections): with the nodes' budget held, a Service
	// still gets through.
	nodeBudget := egressCap - serviceCap
	holdCONNECTs(t, sock, webA, nodeBudget/2)
	holdCONNECTs(t, sock, webB, nodeBudget-nodeBudget/2)
	expectCapRefusal(t, sock, webB, "egressMaxConnections - serviceMaxStreams")
	expectCapRefusal(t, sock, webA, "egressMaxConnections - serviceMaxStreams")
	expectQuickAnswer(t, sock, service, "service webhook")
}

// TestNoStreamCeilingAt1024: with the default settings, 1,100 streams held
// to one pod leave that pod, another node's pod and a Service answering at
// once. Envoy's default circuit breakers stopped every CONNECT of the
// apiserver proxy at 1,024 open streams (503 in 2 ms), and queued the
// node proxy's 1,025th connection to one target for good.
func TestNoStreamCeilingAt1024(t *testing.T) {
	tp := newTopology(t)
	webA, webB, service := tp.capTargets()
	sock := tp.settings.EgressSocketPath
	holdCONNECTs(t, sock, webA, 1100)
	expectQuickAnswer(t, sock, webA, "node-a/pod web-a")
	expectQuickAnswer(t, sock, webB, "node-b/pod web-b")
	expectQuickAnswer(t, sock, service, "service webhook")
}

// capTargets serves node-a's and node-b's pods and the Service, starts the
// apiserver proxy and both node proxies, and waits until each answers.
func (tp *topology) capTargets() (webA, webB, service string) {
	t := tp.t
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	serve(t, "127.1.2.7", tp.port, "node-b/pod web-b")
	serve(t, "127.2.0.1", tp.port, "service webhook")
	tp.startAPIServerProxy()
	tp.startNodeProxy("node-a", "node-a")
	tp.startNodeProxy("node-b", "node-b")
	webA, webB, service = fmt.Sprintf("127.1.1.7:%d", tp.port), fmt.Sprintf("127.1.2.7:%d", tp.port), fmt.Sprintf("127.2.0.1:%d", tp.port)
	for _, target := range []string{webA, webB, service} {
		waitForTunnel(t, tp.settings.EgressSocketPath, target)
	}
	return webA, webB, service
}

// holdCONNECTs opens n CONNECTs to target that stay open until release
// (or the end of the test) and returns release.
func holdCONNECTs(t *testing.T, socket, target string, n int) (release func()) {
	t.Helper()
	var conns []net.Conn
	for i := range n {
		conn, _, status, err := sendCONNECT(socket, target, 10*time.Second)
		if err != nil || status != http.StatusOK {
			t.Fatalf("held stream %d to %s: status %d (0: no answer in 10 s), %v", i+1, target, status, err)
		}
		_ = conn.SetDeadline(time.Time{}) // held until released
		conns = append(conns, conn)
	}
	release = func() {
		for _, c := range conns {
			c.Close()
		}
		conns = nil
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return release
}

func expectCapRefusal(t *testing.T, socket, target, capName string) {
	t.Helper()
	conn, br, status, err := sendCONNECT(socket, target, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body, _ := io.ReadAll(io.LimitReader(br, 4096))
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), capName) {
		t.Fatalf("CONNECT %s beyond the cap: status %d, body %q; want 503 naming %s", target, status, body, capName)
	}
	t.Logf("CONNECT %s beyond the cap: %d %s", target, status, strings.TrimSpace(string(body)))
}

func expectQuickAnswer(t *testing.T, socket, target, want string) {
	t.Helper()
	start := time.Now()
	got, status := roundTrip(t, socket, target)
	took := time.Since(start)
	if status != http.StatusOK || got != want {
		t.Fatalf("CONNECT %s while another budget is full: status %d, answer %q; want 200 from %q", target, status, got, want)
	}
	t.Logf("CONNECT %s answered in %v while another budget is full", target, took.Round(time.Microsecond))
}

package e2e

import (
	"fmt"
	"io"
	"net"

	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// TestStreamCapsKeepOthersAnswering, with real Envoys and small caps:
// streams held to one node up to nodeMaxStreams refuse that node's next
// stream with 503 naming its cluster and the cap, and count it, while
// another node and a Service answer at once; streams held to Services up
// to serviceMaxStreams refuse the next Service stream alike while nodes
// answer.
func TestStreamCapsKeepOthersAnswering(t *testing.T) {
	const nodeCap, serviceCap = 15, 10
	tp := newTopologyWith(t, func(s *model.Settings) {
		s.EgressMaxConnections, s.NodeMaxStreams, s.ServiceMaxStreams = 40, nodeCap, serviceCap
	})
	webA, webB, service := tp.capTargets()
	sock := tp.settings.EgressSocketPath

	release := holdCONNECTs(t, sock, service, serviceCap)
	expectCapRefusal(t, sock, service, "services", "serviceMaxStreams 10")
	expectQuickAnswer(t, sock, webA, "node-a/pod web-a")
	release()
	waitFor(t, 10*time.Second, "the released streams to leave the apiserver proxy", func() bool {
		return tp.apiProxy.Stat("http.apiserver_egress.downstream_cx_active") == 0
	})

	holdCONNECTs(t, sock, webA, nodeCap)
	expectCapRefusal(t, sock, webA, "node/node-a", "nodeMaxStreams 15")
	expectQuickAnswer(t, sock, webB, "node-b/pod web-b")
	expectQuickAnswer(t, sock, service, "service webhook")
	for cluster, want := range map[string]int{"node/node-a": 1, "node/node-b": 0, "services": 1} {
		if got := tp.apiProxy.Stat("cluster." + cluster + ".upstream_rq_active_overflow"); got != want && !(want == 0 && got == -1) {
			t.Errorf("cluster.%s.upstream_rq_active_overflow = %d, want %d (one refusal per full cap)", cluster, got, want)
		}
	}
}

// TestNoStreamCeilingAt1024 holds (nodeMaxStreams + 1) streams to one pod,
// with nodeMaxStreams above Envoy's default 1,024: the last is refused with
// the cap's status and body, while another node's pod and a Service answer
// at once. Envoy's default circuit breakers stopped every CONNECT of the
// apiserver proxy at 1,024 open streams (503 in 2 ms), and queued the node
// proxy's 1,025th connection to one target for good.
func TestNoStreamCeilingAt1024(t *testing.T) {
	const nodeCap = 1100
	tp := newTopologyWith(t, func(s *model.Settings) { s.NodeMaxStreams = nodeCap })
	webA, webB, service := tp.capTargets()
	sock := tp.settings.EgressSocketPath
	holdCONNECTs(t, sock, webA, nodeCap)
	expectCapRefusal(t, sock, webA, "node/node-a", fmt.Sprintf("nodeMaxStreams %d", nodeCap))
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

// expectCapRefusal sends one more CONNECT to target and wants 503 with a
// body naming cluster and its cap.
func expectCapRefusal(t *testing.T, socket, target, cluster, capName string) {
	t.Helper()
	conn, br, status, err := sendCONNECT(socket, target, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body, _ := io.ReadAll(io.LimitReader(br, 4096))
	if status != translator.CapStatus || !strings.Contains(string(body), "spoke: "+cluster+" carries its cap") || !strings.Contains(string(body), capName) {
		t.Fatalf("CONNECT %s beyond the cap: status %d, body %q; want %d naming %s and %s", target, status, body, translator.CapStatus, cluster, capName)
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

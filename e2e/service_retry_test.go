package e2e

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// TestServiceAnsweringLateIsReached: kube-proxy programs a new Service on
// each node at its own pace, so for a moment a node proxy's connect to a
// fresh ClusterIP is refused (a 503 from the node proxy, nothing reached
// the Service). The apiserver proxy retries that with back-off: a Service
// that does not answer is refused after 4 retries (about 1.4 s on
// average), one that starts answering 300 ms after the CONNECT is reached
// (real Envoy 1.40 both).
func TestServiceAnsweringLateIsReached(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	tp.startAPIServerProxy()
	tp.startNodeProxy("node-a", "node-a")
	tp.startNodeProxy("node-b", "node-b")
	sock := tp.settings.EgressSocketPath
	waitForTunnel(t, sock, fmt.Sprintf("127.1.1.7:%d", tp.port))
	service := net.JoinHostPort("127.2.0.1", strconv.Itoa(tp.port))

	// Nothing listens yet: refused after every retry.
	before := tp.apiProxy.Stat("cluster.services.upstream_rq_retry")
	start := time.Now()
	conn, _, status, err := sendCONNECT(sock, service, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	retries := tp.apiProxy.Stat("cluster.services.upstream_rq_retry") - before
	t.Logf("CONNECT to a Service that does not answer: %d after %v and %d retries", status, time.Since(start).Round(time.Millisecond), retries)
	if status != http.StatusServiceUnavailable || retries < 4 {
		t.Fatalf("CONNECT to a Service that does not answer: status %d after %d retries; want 503 after all 4", status, retries)
	}

	// It starts answering 300 ms after the CONNECT: reached.
	before = tp.apiProxy.Stat("cluster.services.upstream_rq_retry")
	start = time.Now()
	late := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		ln, err := net.Listen("tcp", service)
		if err != nil {
			late <- err
			return
		}
		t.Cleanup(func() { ln.Close() })
		late <- nil
		answerLines(ln, "service webhook")
	}()
	got, status := roundTrip(t, sock, service)
	if err := <-late; err != nil {
		t.Fatal(err)
	}
	retries = tp.apiProxy.Stat("cluster.services.upstream_rq_retry") - before
	t.Logf("CONNECT to a Service that answered 300 ms later: %d %q after %v, %d retries", status, got, time.Since(start).Round(time.Millisecond), retries)
	if status != http.StatusOK || got != "service webhook" || retries < 1 {
		t.Fatalf("CONNECT to a Service that answers 300 ms later: status %d, answer %q, %d retries; want 200 from the Service after retries", status, got, retries)
	}
}

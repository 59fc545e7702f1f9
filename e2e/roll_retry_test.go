package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConnectsSurviveAnOldNodeProxyExit is a DaemonSet roll's moment of
// truth at one node: the old node proxy and its replacement both hold
// tunnels (the surge), then the old one exits (SIGTERM, as the kubelet
// stops it; Envoy closes its connections without a drain) while CONNECTs to
// the node's kubelet run back to back from four clients. Every CONNECT must
// succeed: one that met a tunnel of the old pod (closed under it, or no
// longer answering the tunnel's inner TLS handshake) is sent again, and the
// new pod's tunnels carry it. A stream already answered (200) on the old
// pod's tunnels ends with them: at most one per client per exit. A CONNECT
// with no answer at all within connectDeadline (CI's load starved one once)
// is logged, not failed: the retries turn refusals into answers, not a
// starved machine into a fast one.
func TestConnectsSurviveAnOldNodeProxyExit(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	serve(t, "127.0.1.1", tp.port, "node-a kubelet")
	tp.startAPIServerProxy()
	socket, target := tp.settings.EgressSocketPath, fmt.Sprintf("127.0.1.1:%d", tp.port)
	perPod := int(tp.settings.TunnelsPerEndpoint)
	waitForTunnels := func(n int) {
		waitFor(t, 30*time.Second, fmt.Sprintf("%d tunnels of node-a", n), func() bool {
			held, err := tunnelsPerNode(tp.apiProxy)
			return err == nil && held["node-a"] == n
		})
	}
	var mu sync.Mutex
	var failures, cut, unanswered []string
	connects := 0
	const rounds, clients = 6, 4
	old := tp.startNodeProxyWithName("node-a", "node-proxy-node-a-0")
	waitForTunnels(perPod)
	for round := 1; round <= rounds; round++ {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					sent := time.Now()
					answer, status, err := echoThrough(socket, target)
					took := time.Since(sent)
					mu.Lock()
					connects++
					what := fmt.Sprintf("round %d: status %d, answer %q, %v, after %v", round, status, answer, err, took.Round(time.Millisecond))
					switch {
					case status == 200 && answer == "node-a kubelet":
					case status == 200 && err != nil:
						cut = append(cut, what) // answered, then its tunnel ended
					case status == 0 && err == nil && took >= connectDeadline:
						unanswered = append(unanswered, what) // a starved machine, not a refusal
					default:
						failures = append(failures, what)
					}
					mu.Unlock()
				}
			})
		}
		// The old pod's tunnels carry the CONNECTs (the apiserver proxy's
		// HTTP/2 connections are on them) when its replacement arrives.
		time.Sleep(300 * time.Millisecond)
		replacement := tp.startNodeProxyWithName("node-a", fmt.Sprintf("node-proxy-node-a-%d", round))
		waitForTunnels(2 * perPod)
		old.Terminate()
		time.Sleep(700 * time.Millisecond)
		close(stop)
		wg.Wait()
		old = replacement
	}
	t.Logf("%d rounds of an old node proxy exiting under %d clients: %d CONNECTs, %d failed, %d answered and then cut with the old pod's tunnels%s",
		rounds, clients, connects, len(failures), len(cut), bulleted(cut))
	if len(failures) > 0 {
		t.Errorf("CONNECTs failed while the new node proxy held its tunnels%s", bulleted(failures))
	}
	if len(unanswered) > 0 {
		t.Logf("%d CONNECTs got no answer within %v (a loaded machine; not what the retries are for)%s", len(unanswered), connectDeadline, bulleted(unanswered))
	}
	if len(cut) > rounds*clients {
		t.Errorf("%d answered streams cut: more than the %d that can be open on the old pod's tunnels as it exits", len(cut), rounds*clients)
	}
}

// connectDeadline bounds each of echoThrough's CONNECTs and echoes.
const connectDeadline = 5 * time.Second

// echoThrough CONNECTs to target through the egress socket and has one line
// echoed: what came back (without the echo's suffix) and the CONNECT's status.
func echoThrough(socket, target string) (answer string, status int, err error) {
	conn, br, status, err := sendCONNECT(socket, target, connectDeadline)
	if err != nil {
		return "", 0, err
	}
	defer conn.Close()
	if status != 200 {
		return "", status, nil
	}
	if _, err := fmt.Fprintf(conn, "ping\n"); err != nil {
		return "", status, err
	}
	line, err := br.ReadString('\n')
	return strings.TrimSuffix(strings.TrimSuffix(line, "\n"), ": ping"), status, err
}

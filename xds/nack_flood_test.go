package xds_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/spokeproxy/spoke/status"
)

// TestNackFloodIsBounded: with a node's certificate, 20,000 NACKs and 50
// NACKs of 1 MB on one stream give a handful of log lines and a status
// whose messages are cut to 1 KiB; a NACK of a made-up type closes its
// stream, so 100 of them leave NACK series for the served types and
// "unknown" only (20,000 log lines, 200 MB of log, a 4 MB status and 2,044
// series from 5,000 made-up types before). A second flood leaves the heap
// where the first did.
func TestNackFloodIsBounded(t *testing.T) {
	env := startSecureServer(t)
	cert, key := env.clusterCA.KubeletClient(t, "worker-1")
	stream := mustStream(t)(env.dial(t, cert, key))
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: resourcev3.ClusterType})
	resp, err := recvWithin(t, stream, 5*time.Second)
	if err != nil || resp == nil {
		t.Fatalf("no clusters: %v", err)
	}
	logBefore := len(env.log.AllEntries())
	nack := func(typeURL, message string) {
		if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResponseNonce: resp.Nonce,
			ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: message}}); err != nil {
			t.Fatal(err)
		}
	}
	big := strings.Repeat("\x1b]0;owned\x07x", 1<<20/12)
	sent := 0.0
	flood := func(round int) {
		for i := range 20000 {
			nack(resourcev3.ClusterType, fmt.Sprintf("flood %d", i))
		}
		for range 50 {
			nack(resourcev3.ClusterType, big)
		}
		sent += 20000 + 50
		waitUntil := time.Now().Add(5 * time.Second)
		for nackCount(t, env) < sent && time.Now().Before(waitUntil) {
			time.Sleep(50 * time.Millisecond)
		}
		if got := nackCount(t, env); got != sent {
			t.Fatalf("NACKs counted %v, want %v", got, sent)
		}
	}
	// The test's log hook keeps every entry (the cache logs each watch at
	// debug level): count the NACK lines, then drop the entries before
	// reading the heap.
	flood(1)
	var lines, logBytes int
	for _, e := range env.log.AllEntries()[logBefore:] {
		if strings.Contains(e.Message, "NACKed") {
			lines++
			logBytes += len(e.Message)
		}
	}
	first := heapAfterGC(env)
	flood(2)
	second := heapAfterGC(env)
	for i := range 100 {
		made := mustStream(t)(env.dial(t, cert, key))
		_ = made.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: fmt.Sprintf("type.googleapis.com/made.up.T%d", i),
			ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "made up"}})
		if _, err := recvWithin(t, made, 5*time.Second); grpcstatus.Code(err) != codes.InvalidArgument {
			t.Fatalf("a made-up type: want the stream closed with InvalidArgument, got %v", err)
		}
	}
	if lines == 0 || lines > 4 {
		t.Errorf("%d NACK log lines, want the first of each type and at most a summary per 5 s", lines)
	}
	metrics := httpGet(t, "http://"+env.srv.Addr("http")+"/metrics")
	if series := strings.Count(metrics, "spoke_xds_nacks_total{"); series != 6 {
		t.Errorf("%d NACK series, want the 5 served types and unknown:\n%s", series, metrics)
	}
	var statusBytes int
	for _, st := range env.srv.Statuses() {
		if len(st.Types) > 5 {
			t.Errorf("%s keeps %d types, want at most the 5 served ones", st.Proxy, len(st.Types))
		}
		for _, ts := range st.Types {
			statusBytes += len(ts.LastNack)
			if len(ts.LastNack) > status.MaxDetail+40 {
				t.Errorf("a NACK message of %d bytes kept", len(ts.LastNack))
			}
		}
	}
	t.Logf("20,050 NACKs: %d log lines (%d bytes), %d bytes of NACK messages in status; 20,050 more: heap %+d KiB after GC",
		lines, logBytes, statusBytes, (int64(second)-int64(first))/1024)
}

func nackCount(t *testing.T, env *secureEnv) float64 {
	return metricNumber(t, env.srv, `spoke_xds_nacks_total{type="Cluster"}`)
}

func heapAfterGC(env *secureEnv) uint64 {
	env.log.Reset()
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

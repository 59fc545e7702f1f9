package xds_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/xds"
)

// TestGarbageAndAbruptClients: requests without a type, of unknown types, and
// clients that vanish mid-push get clean errors and leave the server serving.
func TestGarbageAndAbruptClients(t *testing.T) {
	srv, _ := serverOnExample(t)

	noType := adsStream(t, srv)
	_ = noType.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1")})
	if _, err := recvWithin(t, noType, 5*time.Second); status.Code(err) != codes.InvalidArgument {
		t.Errorf("request without type: want InvalidArgument, got %v", err)
	}
	unknown := adsStream(t, srv)
	_ = unknown.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: "type.googleapis.com/not.a.Type"})
	if resp, _ := recvWithin(t, unknown, time.Second); resp != nil && len(resp.Resources) > 0 {
		t.Errorf("unknown type got resources: %v", resp)
	}

	conn, err := grpc.NewClient(srv.Addr("xds"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := 0; i < 50; i++ { // ask, then vanish before reading the answer
		ctx, cancel := context.WithCancel(context.Background())
		s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: resourcev3.ClusterType})
		cancel()
	}

	healthy := adsStream(t, srv)
	_ = healthy.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-2"), TypeUrl: resourcev3.ListenerType})
	if resp, err := recvWithin(t, healthy, 5*time.Second); err != nil || resp == nil || len(resp.Resources) == 0 {
		t.Fatalf("server stopped serving after faults: %v %v", resp, err)
	}
	// The server handles each stream on its own goroutine, so a vanished
	// client's stream may be identified after the healthy one is served:
	// wait until the server has closed all 50 before counting what it tracks.
	// A closed stream can never be tracked again.
	deadline := time.Now().Add(10 * time.Second)
	for metricNumber(t, srv, "spoke_xds_streams_closed_total") < 50 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if closed := metricNumber(t, srv, "spoke_xds_streams_closed_total"); closed < 50 {
		t.Errorf("the server closed %v streams of the 50 abrupt clients within 10s", closed)
	}
	if n := len(srv.Statuses()); n > 3 { // noType, unknown, healthy may remain
		t.Errorf("%d streams tracked after the abrupt clients left; want at most 3", n)
	}
	opened := metricNumber(t, srv, "spoke_xds_streams_opened_total")
	if open := opened - metricNumber(t, srv, "spoke_xds_streams_closed_total"); open > 3 {
		t.Errorf("%v streams open (opened %v) after the abrupt clients left; want at most 3", open, opened)
	}
}

// TestGracefulShutdown: cancelling the server (SIGTERM in spoke serve) ends
// Run within the grace period even with streams open, and clients see the
// stream end.
func TestGracefulShutdown(t *testing.T) {
	srv, err := xds.NewServer(xds.Options{
		XDSAddress: "127.0.0.1:0", Insecure: true, HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
		Settings: model.DefaultSettings(), Holdoff: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
		CertValidity: time.Hour, ShutdownGrace: 500 * time.Millisecond, Log: logrus.New(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Run(ctx); close(done) }()
	stream := adsStream(t, srv)
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: resourcev3.ListenerType})
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of shutdown")
	}
	if _, err := recvWithin(t, stream, 5*time.Second); err == nil {
		t.Error("open stream did not end on shutdown")
	}
}

// TestShutdownSpreadsStreamClosesOverTheGrace: on SIGTERM the open ADS
// streams are closed a few at a time across --shutdown-grace, so the Envoys
// reconnect to the other servers gradually instead of all at once; Run
// returns once the last one is closed, within the grace.
func TestShutdownSpreadsStreamClosesOverTheGrace(t *testing.T) {
	const grace, streams = 2 * time.Second, 8
	srv, err := xds.NewServer(xds.Options{
		XDSAddress: "127.0.0.1:0", Insecure: true, HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
		Settings: model.DefaultSettings(), Holdoff: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
		CertValidity: time.Hour, ShutdownGrace: grace, Log: logrus.New(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan time.Time, 1)
	go func() { _ = srv.Run(ctx); done <- time.Now() }()
	closed := make(chan time.Time, streams)
	for i := 0; i < streams; i++ {
		stream := adsStream(t, srv)
		_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy(fmt.Sprintf("worker-%d", i)), TypeUrl: resourcev3.ListenerType})
		go func() {
			for {
				if _, err := stream.Recv(); err != nil {
					closed <- time.Now()
					return
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	cancel()
	var first, last time.Time
	for i := 0; i < streams; i++ {
		select {
		case at := <-closed:
			if first.IsZero() {
				first = at
			}
			last = at
		case <-time.After(grace + 3*time.Second):
			t.Fatalf("only %d of %d streams closed within %v of shutdown", i, streams, grace+3*time.Second)
		}
	}
	returned := <-done
	t.Logf("streams closed from %v to %v after SIGTERM; Run returned after %v",
		first.Sub(start).Round(time.Millisecond), last.Sub(start).Round(time.Millisecond), returned.Sub(start).Round(time.Millisecond))
	if spread := last.Sub(first); spread < grace/2 {
		t.Errorf("all %d streams closed within %v: the grace period %v was not used to spread them", streams, spread, grace)
	}
	if returned.Sub(start) > grace+time.Second {
		t.Errorf("Run returned %v after shutdown, beyond the grace of %v", returned.Sub(start), grace)
	}
}

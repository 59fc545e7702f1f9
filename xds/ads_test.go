package xds_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"

	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/metrics"
	"github.com/spokeproxy/spoke/source"
	"github.com/spokeproxy/spoke/status"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/xds"
)

// adsClient is an ADS client connected to srv, closed with the test.
func adsClient(t *testing.T, srv *xds.Server) (discoveryv3.AggregatedDiscoveryServiceClient, context.Context) {
	t.Helper()
	conn, err := grpc.NewClient(srv.Addr("xds"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return discoveryv3.NewAggregatedDiscoveryServiceClient(conn), ctx
}

func adsStream(t *testing.T, srv *xds.Server) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	client, ctx := adsClient(t, srv)
	stream, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

func deltaStream(t *testing.T, srv *xds.Server) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	client, ctx := adsClient(t, srv)
	stream, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

func recvWithin(t *testing.T, stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, d time.Duration) (*discoveryv3.DiscoveryResponse, error) {
	t.Helper()
	return receiveWithin(stream.Recv, d)
}

func recvDeltaWithin(t *testing.T, stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, d time.Duration) (*discoveryv3.DeltaDiscoveryResponse, error) {
	t.Helper()
	return receiveWithin(stream.Recv, d)
}

// receiveWithin returns the next message, or nothing after d.
func receiveWithin[T any](recv func() (T, error), d time.Duration) (T, error) {
	type result struct {
		resp T
		err  error
	}
	ch := make(chan result, 1)
	go func() { r, err := recv(); ch <- result{r, err} }()
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-time.After(d):
		var none T
		return none, nil
	}
}

func serverOnExample(t *testing.T) (*xds.Server, string) {
	raw, err := os.ReadFile("../examples/cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, _ := startServer(t, file)
	deadline := time.Now().Add(5 * time.Second)
	for !srv.Publisher().Synced() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return srv, file
}

func nodeProxy(name string) *corev3.Node { return &corev3.Node{Id: name, Cluster: "spoke-node"} }

// TestUnknownRoleGetsNothing: an Envoy whose node.cluster names no spoke role
// gets a PermissionDenied stream error and no resources.
func TestUnknownRoleGetsNothing(t *testing.T) {
	srv, _ := serverOnExample(t)
	stream := adsStream(t, srv)
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "worker-1", Cluster: "my-gateway"}, TypeUrl: resourcev3.ListenerType})
	resp, err := recvWithin(t, stream, 5*time.Second)
	if resp != nil || grpcstatus.Code(err) != codes.PermissionDenied {
		t.Fatalf("want PermissionDenied and no response, got %v, %v", resp, err)
	}
}

// TestUnknownNodeGetsNothing: a node proxy naming a node that is not in the
// cluster gets no resources (and the server logs it).
func TestUnknownNodeGetsNothing(t *testing.T) {
	srv, _ := serverOnExample(t)
	stream := adsStream(t, srv)
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("ghost"), TypeUrl: resourcev3.ListenerType})
	if resp, err := recvWithin(t, stream, 2*time.Second); resp != nil || err != nil {
		t.Fatalf("want nothing, got %v, %v", resp, err)
	}
}

// TestNackKeepsLastGoodAndIsVisible: a NACK is recorded with Envoy's message,
// counted, and the server neither crashes nor re-pushes the rejected version.
func TestNackKeepsLastGoodAndIsVisible(t *testing.T) {
	srv, _ := serverOnExample(t)
	stream := adsStream(t, srv)
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: resourcev3.ClusterType})
	resp, err := recvWithin(t, stream, 5*time.Second)
	if err != nil || resp == nil || len(resp.Resources) == 0 {
		t.Fatalf("no clusters for worker-1: %v %v", resp, err)
	}
	_ = stream.Send(&discoveryv3.DiscoveryRequest{
		TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.Nonce, VersionInfo: "",
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "test: cluster rejected"},
	})
	if again, _ := recvWithin(t, stream, time.Second); again != nil {
		t.Errorf("server re-pushed after a NACK: version %s", again.VersionInfo)
	}
	var found bool
	for _, st := range srv.Statuses() {
		if st.Proxy == "node/worker-1" && st.States["Cluster"] == status.StateNacked {
			found = strings.Contains(st.Types[resourcev3.ClusterType].LastNack, "test: cluster rejected")
		}
	}
	if !found {
		t.Errorf("NACK not visible in status: %+v", srv.Statuses())
	}
	if got := metricValue(t, srv, `spoke_xds_nacks_total{type="Cluster"}`); got != "1" {
		t.Errorf("spoke_xds_nacks_total{type=Cluster} = %q, want 1", got)
	}
}

// TestReconnectWithStaleVersion: an Envoy reconnecting with an old version
// gets the current config; one reconnecting with the current version is told
// the same version again (go-control-plane answers every new stream once;
// versions are content hashes, so Envoy sees nothing new).
func TestReconnectWithStaleVersion(t *testing.T) {
	srv, _ := serverOnExample(t)
	first := adsStream(t, srv)
	_ = first.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-2"), TypeUrl: resourcev3.ListenerType})
	resp, err := recvWithin(t, first, 5*time.Second)
	if err != nil || resp == nil {
		t.Fatalf("no listeners: %v", err)
	}
	current := resp.VersionInfo

	stale := adsStream(t, srv)
	_ = stale.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-2"), TypeUrl: resourcev3.ListenerType, VersionInfo: "0000000000000000"})
	if r, _ := recvWithin(t, stale, 5*time.Second); r == nil || r.VersionInfo != current {
		t.Errorf("stale reconnect: want version %s, got %v", current, r)
	}
	upToDate := adsStream(t, srv)
	_ = upToDate.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-2"), TypeUrl: resourcev3.ListenerType, VersionInfo: current})
	if r, _ := recvWithin(t, upToDate, 5*time.Second); r != nil && r.VersionInfo != current {
		t.Errorf("reconnect with the current version got another version: %s", r.VersionInfo)
	}
}

// TestPodChangeReachesOnlyItsNode: two node proxies watch routes; a new pod
// on worker-1 is pushed to worker-1 and nothing is sent to worker-2.
func TestPodChangeReachesOnlyItsNode(t *testing.T) {
	srv, file := serverOnExample(t)
	w1, w2 := adsStream(t, srv), adsStream(t, srv)
	for name, s := range map[string]discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient{"worker-1": w1, "worker-2": w2} {
		_ = s.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy(name), TypeUrl: resourcev3.RouteType, ResourceNames: []string{"node-tunnel"}})
		r, err := recvWithin(t, s, 5*time.Second)
		if err != nil || r == nil {
			t.Fatalf("%s: no routes: %v", name, err)
		}
		_ = s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: []string{"node-tunnel"}, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
	}
	addPod(t, file, "late-pod", "worker-1", "10.244.1.99")
	r, err := recvWithin(t, w1, 5*time.Second)
	if err != nil || r == nil {
		t.Fatalf("worker-1 got no push for its new pod: %v", err)
	}
	if got := r.String(); !strings.Contains(got, "10.244.1.99:*") {
		t.Errorf("worker-1's push lacks the new pod")
	}
	if r, _ := recvWithin(t, w2, time.Second); r != nil {
		t.Errorf("worker-2 was pushed (%s) for a pod on worker-1", r.VersionInfo)
	}
}

func metricValue(t *testing.T, srv *xds.Server, series string) string {
	t.Helper()
	body := httpGet(t, "http://"+srv.Addr("http")+"/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// TestBrokenFileKeepsLastGoodConfig: a cluster file that stops parsing is
// reported and the last good config stays served, unchanged; /readyz says
// the input is refused.
func TestBrokenFileKeepsLastGoodConfig(t *testing.T) {
	srv, file := serverOnExample(t)
	before, _ := srv.Publisher().Versions("node/worker-1")
	if len(before) == 0 {
		t.Fatal("no config before the break")
	}
	if err := os.WriteFile(file, []byte("apiVersion: v1\nkind: List\nitems: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // several polls and debounce windows
	after, _ := srv.Publisher().Versions("node/worker-1")
	for typ, v := range before {
		if after[typ] != v {
			t.Errorf("%s changed from %s to %s after the file broke", typ, v, after[typ])
		}
	}
	if got := httpGet(t, "http://"+srv.Addr("http")+"/readyz"); !strings.Contains(got, "does not parse") {
		t.Errorf("/readyz after a broken file = %q, want the refusal", got)
	}
}

// TestMissingFileKeepsConfigAndRecovers: a cluster file that disappears keeps
// the last config served and is picked up again when it returns.
func TestMissingFileKeepsConfigAndRecovers(t *testing.T) {
	srv, file := serverOnExample(t)
	raw, _ := os.ReadFile(file)
	before, _ := srv.Publisher().Versions("node/worker-1")
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if after, _ := srv.Publisher().Versions("node/worker-1"); after[resourcev3.RouteType] != before[resourcev3.RouteType] {
		t.Error("config changed while the file was missing")
	}
	changed := strings.Replace(string(raw), "items:\n", "items:\n"+newPod("back-pod", "worker-1", "10.244.1.98"), 1)
	if err := os.WriteFile(file, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, _, _ := srv.Publisher().Served(auth.Proxy{Role: "node", Node: "worker-1"})
		if len(res.Routes) > 0 && strings.Contains(res.Routes[0].String(), "10.244.1.98:*") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the file's return was not picked up within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFileSourceBacksOff: polling a missing file backs off, so the log gets
// a handful of errors per second instead of one per poll (20 at 50 ms).
func TestFileSourceBacksOff(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	src := &source.File{Path: filepath.Join(t.TempDir(), "missing.yaml"), Interval: 50 * time.Millisecond, Log: log}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	sink := source.Sink{Store: model.NewStore(model.DefaultSettings()),
		Changed: func() { t.Error("reported a change for a missing file") },
		Synced:  func() { t.Error("reported a sync for a missing file") }}
	src.Run(ctx, sink)
	if n := len(hook.AllEntries()); n < 2 || n > 9 {
		t.Errorf("%d error lines in 1s; want a few (backoff), not one per 50 ms poll", n)
	}
}

// TestPushLatencyIsChangeToACK: spoke_xds_push_latency_seconds counts the
// time from a change of an Envoy's config to that Envoy's ACK of it: a
// stream's first response (its snapshot was set before it connected, maybe
// hours before) and a reconnection are not pushes of a change.
func TestPushLatencyIsChangeToACK(t *testing.T) {
	srv, file := serverOnExample(t)
	const count = `spoke_xds_push_latency_seconds_count{type="RouteConfiguration"}`
	subscribe := func() (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, *discoveryv3.DiscoveryResponse) {
		s := adsStream(t, srv)
		_ = s.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: resourcev3.RouteType, ResourceNames: []string{"node-tunnel"}})
		r, err := recvWithin(t, s, 5*time.Second)
		if err != nil || r == nil {
			t.Fatalf("no routes: %v", err)
		}
		ack(s, r)
		return s, r
	}
	time.Sleep(50 * time.Millisecond) // the snapshot is older than the stream
	s, _ := subscribe()
	time.Sleep(200 * time.Millisecond) // the ACK is handled
	if v := metricValue(t, srv, count); v != "" && v != "0" {
		t.Fatalf("a stream's first response counted as a push: count %s", v)
	}
	addPod(t, file, "late-pod", "worker-1", "10.244.1.99")
	r, err := recvWithin(t, s, 5*time.Second)
	if err != nil || r == nil {
		t.Fatalf("no push for the new pod: %v", err)
	}
	ack(s, r)
	waitForMetric(t, srv, count, "1")
	subscribe() // a second stream, as after a reconnection: not a push
	time.Sleep(200 * time.Millisecond)
	if v := metricValue(t, srv, count); v != "1" {
		t.Errorf("after a reconnection the count is %s, want it still 1", v)
	}
}

func ack(s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, r *discoveryv3.DiscoveryResponse) {
	_ = s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: r.TypeUrl, ResourceNames: []string{"node-tunnel"}, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
}

func waitForMetric(t *testing.T, srv *xds.Server, series, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for metricValue(t, srv, series) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s is %q, want %s", series, metricValue(t, srv, series), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLabelledCountersStartAtZero: a fresh server exposes every series of
// its known label sets at zero, so alerts can use rate() before the first
// event (a series born at its first event hides that event from rate()).
func TestLabelledCountersStartAtZero(t *testing.T) {
	srv, _ := serverOnExample(t)
	var want []string
	for _, r := range metrics.DenyReasons {
		want = append(want, fmt.Sprintf(`spoke_xds_denied_total{reason=%q}`, r))
	}
	for _, c := range metrics.ConnectionCaps {
		want = append(want, fmt.Sprintf(`spoke_xds_connections_refused_total{cap=%q}`, c))
	}
	for _, c := range status.RefusalClasses {
		want = append(want, fmt.Sprintf(`spoke_tunnel_refusals_total{class=%q}`, c))
	}
	for _, r := range []translator.Role{translator.RoleAPIServer, translator.RoleNode} {
		want = append(want, fmt.Sprintf(`spoke_connected_envoys{role=%q}`, r))
	}
	for _, typ := range []string{"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment", "Secret"} {
		want = append(want, fmt.Sprintf(`spoke_xds_nacks_total{type=%q}`, typ))
	}
	for _, series := range want {
		if v := metricValue(t, srv, series); v != "0" {
			t.Errorf("%s is %q on a fresh server, want 0", series, v)
		}
	}
}

// TestDiffShowsWhatAnEnvoyRefused: an Envoy ACKs its routes, then NACKs the
// next version (a new pod): the diff names the route configuration that
// differs and Envoy's message, over SotW and over delta xDS alike.
func TestDiffShowsWhatAnEnvoyRefused(t *testing.T) {
	srv, file := serverOnExample(t)
	sotw := adsStream(t, srv)
	_ = sotw.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: resourcev3.RouteType, ResourceNames: []string{"node-tunnel"}})
	r, err := recvWithin(t, sotw, 5*time.Second)
	if err != nil || r == nil {
		t.Fatalf("worker-1: no routes: %v", err)
	}
	_ = sotw.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: []string{"node-tunnel"}, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})

	delta := deltaStream(t, srv)
	_ = delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: nodeProxy("worker-2"), TypeUrl: resourcev3.RouteType, ResourceNamesSubscribe: []string{"node-tunnel"}})
	d, err := recvDeltaWithin(t, delta, 5*time.Second)
	if err != nil || d == nil {
		t.Fatalf("worker-2: no routes: %v", err)
	}
	_ = delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.RouteType, ResponseNonce: d.Nonce})

	waitForCondition(t, "both ACKs recorded", func() bool {
		return routeDiff(t, srv, "node/worker-1").State == status.StateSynced && routeDiff(t, srv, "node/worker-2").State == status.StateSynced
	})
	for _, proxy := range []string{"node/worker-1", "node/worker-2"} {
		routes := routeDiff(t, srv, proxy)
		if routes.State != status.StateSynced || routes.Differs != 0 || routes.Held != 1 || routes.Unknown != "" {
			t.Fatalf("%s after its ACK: %+v", proxy, routes)
		}
	}

	addPod(t, file, "refused-1", "worker-1", "10.244.1.98")
	addPod(t, file, "refused-2", "worker-2", "10.244.2.98")
	if r, err = recvWithin(t, sotw, 5*time.Second); err != nil || r == nil {
		t.Fatalf("worker-1: no push: %v", err)
	}
	_ = sotw.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: []string{"node-tunnel"}, ResponseNonce: r.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "test: route node-tunnel refused"}})
	if d, err = recvDeltaWithin(t, delta, 5*time.Second); err != nil || d == nil {
		t.Fatalf("worker-2: no push: %v", err)
	}
	_ = delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.RouteType, ResponseNonce: d.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "test: route node-tunnel refused"}})

	waitForCondition(t, "both NACKs recorded", func() bool {
		return routeDiff(t, srv, "node/worker-1").State == status.StateNacked && routeDiff(t, srv, "node/worker-2").State == status.StateNacked
	})
	for _, proxy := range []string{"node/worker-1", "node/worker-2"} {
		routes := routeDiff(t, srv, proxy)
		want := []status.ResourceDiff{{Name: "node-tunnel", Change: status.ChangeChanged}}
		if fmt.Sprint(routes.Differ) != fmt.Sprint(want) || routes.Nack != "test: route node-tunnel refused" || routes.AckedVersion == routes.ServedVersion {
			t.Errorf("%s after its NACK: %+v; want node-tunnel changed and the NACK", proxy, routes)
		}
	}
}

func routeDiff(t *testing.T, srv *xds.Server, proxy string) status.TypeDiff {
	t.Helper()
	diffs := srv.Tracker().Diff(proxy)
	if len(diffs) != 1 {
		t.Fatalf("%s: %d Envoys in the diff", proxy, len(diffs))
	}
	for _, td := range diffs[0].Types {
		if td.Type == "RouteConfiguration" {
			return td
		}
	}
	t.Fatalf("%s: no routes in the diff: %+v", proxy, diffs[0])
	return status.TypeDiff{}
}

func waitForCondition(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

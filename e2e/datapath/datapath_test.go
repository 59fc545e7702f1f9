package datapath

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func startTarget(t *testing.T) *Target {
	t.Helper()
	tg, err := ListenTarget("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tg.Close)
	return tg
}

func TestMeasurementsThroughDirectTCP(t *testing.T) {
	tg := startTarget(t)
	ctx := context.Background()
	times, err := SetupTimes(ctx, Direct(), tg.Addr(), 20)
	if err != nil || len(times) != 20 {
		t.Fatalf("set-ups: %d, %v", len(times), err)
	}
	for _, streams := range []int{1, 4} {
		tr, err := Download(ctx, Direct(), tg.Addr(), streams, 3<<20+17)
		if err != nil {
			t.Fatal(err)
		}
		if want := int64(streams) * (3<<20 + 17); tr.Bytes != want || tr.MBps() <= 0 {
			t.Fatalf("%d streams moved %d bytes at %.0f MB/s, want %d", streams, tr.Bytes, tr.MBps(), want)
		}
	}
	times, bulk, err := SetupTimesBeside(ctx, Direct(), tg.Addr(), 10, 0, &LocalBulk{Dial: Direct(), Target: tg.Addr(), Streams: 2})
	if err != nil || len(times) != 10 || bulk.Bytes <= 0 {
		t.Fatalf("beside bulk: %d set-ups, %d bulk bytes, %v", len(times), bulk.Bytes, err)
	}
}

// TestPacedBulkKeepsItsRate: bulk paced to a rate never receives more than
// the rate allows over the time it ran (plus one chunk per stream, the
// target's burst), however fast the path.
func TestPacedBulkKeepsItsRate(t *testing.T) {
	tg := startTarget(t)
	const rate = 4 << 20 // bytes a second, both streams
	_, bulk, err := SetupTimesBeside(context.Background(), Direct(), tg.Addr(), 20, 0, &LocalBulk{Dial: Direct(), Target: tg.Addr(), Streams: 2, Rate: rate})
	if err != nil {
		t.Fatal(err)
	}
	if most := int64(rate*bulk.Elapsed.Seconds()) + 2*receiveChunk; bulk.Bytes <= 0 || bulk.Bytes > most {
		t.Fatalf("paced bulk received %d bytes in %v; at %d B/s at most %d", bulk.Bytes, bulk.Elapsed, rate, most)
	}
}

// TestABulkStreamThatEndsFailsTheMeasure: a bulk stream cut before the
// set-ups end fails them instead of leaving set-ups measured beside less
// bulk than reported.
func TestABulkStreamThatEndsFailsTheMeasure(t *testing.T) {
	tg := startTarget(t)
	cut := cutAfter(100 << 10)
	_, _, err := SetupTimesBeside(context.Background(), Direct(), tg.Addr(), 20, 0, &LocalBulk{Dial: cut, Target: tg.Addr(), Streams: 2})
	if err == nil || !strings.Contains(err.Error(), "bulk stream") {
		t.Fatalf("a cut bulk stream: %v, want it named", err)
	}
}

// connectProxy is a minimal egress proxy on a Unix socket: it answers a
// CONNECT with status, and with 200 relays to the target.
func connectProxy(t *testing.T, status int) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "egress.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil || req.Method != http.MethodConnect {
					return
				}
				if status != http.StatusOK {
					io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\n\r\n")
					return
				}
				up, err := net.Dial("tcp", req.URL.Host)
				if err != nil {
					return
				}
				defer up.Close()
				io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\n")
				go io.Copy(up, br)
				io.Copy(c, up)
			}()
		}
	}()
	return socket
}

func TestConnectOverUnixSpeaksLikeTheAPIServer(t *testing.T) {
	tg := startTarget(t)
	ctx := context.Background()
	dial := ConnectOverUnix(connectProxy(t, http.StatusOK))
	if _, err := SetupTimes(ctx, dial, tg.Addr(), 5); err != nil {
		t.Fatal(err)
	}
	tr, err := Download(ctx, dial, tg.Addr(), 2, 1<<20)
	if err != nil || tr.Bytes != 2<<20 {
		t.Fatalf("download through the proxy: %d bytes, %v", tr.Bytes, err)
	}
}

func TestARefusingPathFailsTheMeasurement(t *testing.T) {
	tg := startTarget(t)
	ctx := context.Background()
	dial := ConnectOverUnix(connectProxy(t, http.StatusServiceUnavailable))
	if _, err := SetupTimes(ctx, dial, tg.Addr(), 3); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("set-ups through a refusing proxy: %v, want the 503", err)
	}
	if _, err := Download(ctx, dial, tg.Addr(), 1, 1<<20); err == nil {
		t.Fatal("a download through a refusing proxy succeeded")
	}
	ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := WaitConnect(ctx, dial, tg.Addr(), 50*time.Millisecond); err == nil {
		t.Fatal("WaitConnect returned for a path that never works")
	}
}

func TestAShortTransferFails(t *testing.T) {
	tg := startTarget(t)
	cut := cutAfter(100 << 10)
	if _, err := Download(context.Background(), cut, tg.Addr(), 1, 1<<20); err == nil || !strings.Contains(err.Error(), "fewer bytes") {
		t.Fatalf("a cut stream: %v, want a short-transfer error", err)
	}
}

// cutAfter dials directly and ends each connection after n bytes read: a
// "proxy" that cuts streams short.
func cutAfter(n int) Dialer {
	return func(ctx context.Context, target string) (net.Conn, error) {
		c, err := Direct()(ctx, target)
		if err != nil {
			return nil, err
		}
		return &cutConn{Conn: c, left: n}, nil
	}
}

type cutConn struct {
	net.Conn
	left int
}

func (c *cutConn) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, io.EOF
	}
	n, err := c.Conn.Read(p[:min(len(p), c.left)])
	c.left -= n
	return n, err
}

func TestPercentile(t *testing.T) {
	var times []time.Duration
	for i := 100; i >= 1; i-- {
		times = append(times, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{0.5: 50 * time.Millisecond, 0.99: 99 * time.Millisecond, 1: 100 * time.Millisecond} {
		if got := Percentile(times, p); got != want {
			t.Errorf("p%v = %v, want %v", p*100, got, want)
		}
	}
	if Percentile(nil, 0.5) != 0 {
		t.Error("percentile of nothing")
	}
}

// TestHelperServesTargetsAndBulk drives ServeHelper over pipes as the
// benchmark drives its helper process.
func TestHelperServesTargetsAndBulk(t *testing.T) {
	cmdR, cmdW := io.Pipe()
	ansR, ansW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- ServeHelper(cmdR, ansW) }()
	h := &HelperProcess{in: cmdW, out: bufio.NewScanner(ansR)}
	addr, err := h.Target("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SetupTimes(context.Background(), Direct(), addr, 3); err != nil {
		t.Fatalf("the helper's target: %v", err)
	}
	times, moved, err := SetupTimesBeside(context.Background(), Direct(), addr, 5, 0, h.Bulk(2, "direct", addr, 0))
	if err != nil || len(times) != 5 || moved.Bytes <= 0 {
		t.Fatalf("beside the helper's bulk: %d set-ups, %d bytes, %v", len(times), moved.Bytes, err)
	}
	if _, err := h.call("bulk 2 carrier-pigeon %s 0", addr); err == nil || !strings.Contains(err.Error(), "unknown path") {
		t.Fatalf("a bad path: %v", err)
	}
	if _, err := h.call("frobnicate"); err == nil {
		t.Fatal("an unknown command was accepted")
	}
	cmdW.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestSetupsKeepTheirInterval: set-ups at a fixed rate start no closer than
// the interval, whatever the path's speed.
func TestSetupsKeepTheirInterval(t *testing.T) {
	tg := startTarget(t)
	start := time.Now()
	times, err := SetupTimesEvery(context.Background(), Direct(), tg.Addr(), 5, 20*time.Millisecond)
	if err != nil || len(times) != 5 {
		t.Fatalf("set-ups: %d, %v", len(times), err)
	}
	if took := time.Since(start); took < 80*time.Millisecond {
		t.Errorf("5 set-ups 20 ms apart took %v: they did not wait for their turn", took)
	}
}

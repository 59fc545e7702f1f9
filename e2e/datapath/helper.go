package datapath

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// The load side of the benchmark, the targets (the pods) and the bulk
// streams, runs in a helper process of its own: in the process that
// measures set-up times, a probe goroutine queued behind busy bulk
// goroutines for a whole Go time slice, and direct TCP itself showed a
// 17 ms set-up p99 beside the bulk streams.
//
// The helper reads one command per line and answers one line:
//
//	target <ip:port>               -> ok <address>
//	bulk <n> <path> <target> <B/s> -> ok        (path: direct | unix:<socket>; B/s: all n streams together, 0: as fast as the path lets them)
//	moved                          -> ok <bytes the bulk streams received so far>
//	stop                           -> ok <bytes the bulk streams received>
//
// It stops everything when its input ends.

// ServeHelper runs the helper's side until in ends.
func ServeHelper(in io.Reader, out io.Writer) error {
	var h helperState
	defer h.close()
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		answer, err := h.do(strings.Fields(sc.Text()))
		if err != nil {
			answer = "error " + strings.ReplaceAll(err.Error(), "\n", " ")
		}
		if _, err := fmt.Fprintln(out, answer); err != nil {
			return err
		}
	}
	return sc.Err()
}

// helperState is what the helper runs: its targets and the bulk load.
type helperState struct {
	targets []*Target
	bulk    *LocalBulk
}

func (h *helperState) do(f []string) (string, error) {
	switch {
	case len(f) == 2 && f[0] == "target":
		t, err := ListenTarget(f[1])
		if err != nil {
			return "", err
		}
		h.targets = append(h.targets, t)
		return "ok " + t.Addr(), nil
	case len(f) == 5 && f[0] == "bulk":
		n, err := strconv.Atoi(f[1])
		if err != nil {
			return "", fmt.Errorf("bulk: stream count %q", f[1])
		}
		rate, err := strconv.ParseInt(f[4], 10, 64)
		if err != nil || rate < 0 {
			return "", fmt.Errorf("bulk: rate %q", f[4])
		}
		dial, err := DialerFor(f[2])
		if err != nil {
			return "", err
		}
		h.bulk = &LocalBulk{Dial: dial, Target: f[3], Streams: n, Rate: rate}
		return "ok", h.bulk.Start()
	case len(f) == 1 && f[0] == "moved" && h.bulk != nil:
		n, err := h.bulk.Moved()
		return "ok " + strconv.FormatInt(n, 10), err
	case len(f) == 1 && f[0] == "stop" && h.bulk != nil:
		n, err := h.bulk.Stop()
		h.bulk = nil
		return "ok " + strconv.FormatInt(n, 10), err
	}
	return "", fmt.Errorf("unknown command %q", strings.Join(f, " "))
}

func (h *helperState) close() {
	if h.bulk != nil {
		_, _ = h.bulk.Stop()
	}
	for _, t := range h.targets {
		t.Close()
	}
}

// DialerFor names a path as the helper's commands do: direct, or
// unix:<socket> for an egress proxy.
func DialerFor(path string) (Dialer, error) {
	if path == "direct" {
		return Direct(), nil
	}
	if socket, ok := strings.CutPrefix(path, "unix:"); ok {
		return ConnectOverUnix(socket), nil
	}
	return nil, fmt.Errorf("unknown path %q: want direct or unix:<socket>", path)
}

// Bulk is load that runs beside the set-ups being measured.
type Bulk interface {
	Start() error
	Moved() (received int64, err error)
	Stop() (received int64, err error)
}

// LocalBulk receives on Streams connections, in this process, as fast as
// the path lets it or, with Rate, what the target sends at Rate bytes a
// second in all (each stream its share), so each system carries the same
// bulk. The target keeps the pace, not the reader: a slow reader would fill
// every buffer on the path, a different test.
type LocalBulk struct {
	Dial    Dialer
	Target  string
	Streams int
	Rate    int64 // bytes per second, all streams together; 0: no limit

	conns    []net.Conn
	wg       sync.WaitGroup
	moved    atomic.Int64
	stopping atomic.Bool
	failed   atomic.Pointer[error] // a stream that ended before Stop
}

func (b *LocalBulk) Start() error {
	for i := 0; i < b.Streams; i++ {
		c, err := b.Dial(context.Background(), b.Target)
		if err == nil {
			_, err = c.Write(b.streamCommand())
		}
		if err != nil {
			_, _ = b.Stop()
			return fmt.Errorf("bulk stream %d: %w", i+1, err)
		}
		b.conns = append(b.conns, c)
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			n, err := receive(countingReader{c, &b.moved}, -1)
			if err == nil {
				err = io.EOF // the target never ends a stream
			}
			if !b.stopping.Load() {
				err = fmt.Errorf("bulk stream %d ended after %d bytes: %v", i+1, n, err)
				b.failed.CompareAndSwap(nil, &err)
			}
		}()
	}
	return nil
}

// Moved is what the streams have received so far.
func (b *LocalBulk) Moved() (int64, error) { return b.moved.Load(), nil }

// countingReader adds what it reads to n as it reads it.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n.Add(int64(k))
	return k, err
}

// OpenStream opens an endless stream from target through dial (what a bulk
// stream reads), for tests that read it their own way.
func OpenStream(ctx context.Context, dial Dialer, target string) (net.Conn, error) {
	c, err := dial(ctx, target)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{opStream}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// streamCommand asks the target for an endless stream: its share of Rate,
// or as fast as it can.
func (b *LocalBulk) streamCommand() []byte {
	if b.Rate == 0 {
		return []byte{opStream}
	}
	return command(opPaced, uint64(max(1, b.Rate/int64(b.Streams))))
}

// Stop ends the streams and returns what they received; a stream that had
// ended before, or streams that received nothing, fail the measure.
func (b *LocalBulk) Stop() (int64, error) {
	b.stopping.Store(true)
	for _, c := range b.conns {
		c.Close()
	}
	b.wg.Wait()
	if err := b.failed.Load(); err != nil {
		return b.moved.Load(), *err
	}
	if b.moved.Load() == 0 && len(b.conns) > 0 {
		return 0, fmt.Errorf("the %d bulk streams received nothing", len(b.conns))
	}
	return b.moved.Load(), nil
}

// HelperProcess drives a helper started from cmd (whose standard input and
// output it takes).
type HelperProcess struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	mu  sync.Mutex
}

// StartHelper starts cmd as a helper.
func StartHelper(cmd *exec.Cmd) (*HelperProcess, error) {
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the benchmark helper: %w", err)
	}
	return &HelperProcess{cmd: cmd, in: in, out: bufio.NewScanner(out)}, nil
}

// PID is the helper's process id.
func (h *HelperProcess) PID() int { return h.cmd.Process.Pid }

func (h *HelperProcess) call(format string, args ...any) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	line := fmt.Sprintf(format, args...)
	if _, err := fmt.Fprintln(h.in, line); err != nil {
		return "", fmt.Errorf("helper: %w", err)
	}
	if !h.out.Scan() {
		return "", fmt.Errorf("helper: no answer to %q (%v)", line, h.out.Err())
	}
	answer := h.out.Text()
	if rest, ok := strings.CutPrefix(answer, "ok"); ok {
		return strings.TrimSpace(rest), nil
	}
	return "", fmt.Errorf("helper, %q: %s", line, answer)
}

// Target serves a target on addr in the helper and returns its address.
func (h *HelperProcess) Target(addr string) (string, error) { return h.call("target %s", addr) }

// Bulk is load of streams through path (see DialerFor) run by the helper,
// at most rate bytes a second in all (0: no limit).
func (h *HelperProcess) Bulk(streams int, path, target string, rate int64) Bulk {
	return &helperBulk{h: h, streams: streams, path: path, target: target, rate: rate}
}

// Close ends the helper and waits for it.
func (h *HelperProcess) Close() {
	h.in.Close()
	_ = h.cmd.Wait()
}

type helperBulk struct {
	h            *HelperProcess
	streams      int
	path, target string
	rate         int64
}

func (b *helperBulk) Start() error {
	_, err := b.h.call("bulk %d %s %s %d", b.streams, b.path, b.target, b.rate)
	return err
}

func (b *helperBulk) Moved() (int64, error) {
	answer, err := b.h.call("moved")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(answer, 10, 64)
}

func (b *helperBulk) Stop() (int64, error) {
	answer, err := b.h.call("stop")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(answer, 10, 64)
}

package datapath

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"time"
)

// SetupTimes opens n connections to target one after another and returns
// how long each took from the dial to the first byte back from the target
// (for a proxy: dial the socket, CONNECT, 200, then one round trip).
func SetupTimes(ctx context.Context, dial Dialer, target string, n int) ([]time.Duration, error) {
	return SetupTimesEvery(ctx, dial, target, n, 0)
}

// SetupTimesEvery is SetupTimes starting set-up i no earlier than i x
// interval after the first (0: back to back). A fixed rate gives every
// system the same set-up load: back to back, a faster path takes more set-ups
// a second, and their CPU is then missing from what runs beside them (on 2
// cores, spoke's 1 ms set-ups held paced bulk to ~160 of 228 MB/s).
func SetupTimesEvery(ctx context.Context, dial Dialer, target string, n int, interval time.Duration) ([]time.Duration, error) {
	times := make([]time.Duration, 0, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		d, err := SetupOnce(ctx, dial, target)
		if err != nil {
			return nil, fmt.Errorf("set-up %d of %d: %w", i+1, n, err)
		}
		times = append(times, d)
	}
	return times, nil
}

// SetupOnce is one set-up, measured as SetupTimes measures it.
func SetupOnce(ctx context.Context, dial Dialer, target string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	conn, err := dial(ctx, target)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	if _, err := conn.Write([]byte{opPing}); err != nil {
		return 0, err
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return 0, fmt.Errorf("first byte: %w", err)
	}
	if b[0] != opPing {
		return 0, fmt.Errorf("first byte %q, want %q: not the benchmark target", b[0], opPing)
	}
	return time.Since(start), nil
}

// Transfer is what a throughput run moved and how long it took.
type Transfer struct {
	Bytes   int64
	Elapsed time.Duration
}

// MBps is megabytes (10^6) per second.
func (t Transfer) MBps() float64 {
	if t.Elapsed <= 0 {
		return 0
	}
	return float64(t.Bytes) / 1e6 / t.Elapsed.Seconds()
}

// Download opens streams connections to target and has each receive
// perStream bytes from it at once; the clock runs from the first dial to
// the last byte. A stream that ends short fails the run.
func Download(ctx context.Context, dial Dialer, target string, streams int, perStream int64) (Transfer, error) {
	conns := make([]net.Conn, 0, streams)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for i := 0; i < streams; i++ {
		c, err := dial(ctx, target)
		if err != nil {
			return Transfer{}, fmt.Errorf("stream %d: %w", i+1, err)
		}
		conns = append(conns, c)
	}
	errs := make(chan error, streams)
	var moved atomic.Int64
	for _, c := range conns {
		go func() {
			if _, err := c.Write(command(opDownload, uint64(perStream))); err != nil {
				errs <- err
				return
			}
			n, err := receive(c, perStream)
			moved.Add(n)
			if err == nil && n < perStream {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				err = fmt.Errorf("%w: %d of %d bytes (%v)", errShort, n, perStream, err)
			}
			errs <- err
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			return Transfer{}, err
		}
	}
	return Transfer{Bytes: moved.Load(), Elapsed: time.Since(start)}, nil
}

// receiveChunk is how much a receiver reads at once: what the target writes
// at once. io.Discard would read 8 KiB at a time, and the receivers' extra
// system calls would take CPU from the proxies they share the cores with.
const receiveChunk = 64 << 10

// receive reads and drops up to limit bytes from r (no limit if negative)
// and returns how many arrived; io.EOF is no error.
func receive(r io.Reader, limit int64) (int64, error) {
	if limit >= 0 {
		r = io.LimitReader(r, limit)
	}
	// Wrapped so that neither io.Discard's ReadFrom nor a connection's
	// WriteTo takes over with a buffer of its own choosing.
	return io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{r}, make([]byte, receiveChunk))
}

// bulkWindow is the shortest time over which a bulk rate is read.
const bulkWindow = time.Second

// SetupTimesBeside measures n set-ups (SetupTimesEvery) while bulk runs (head-of-line
// blocking shows here), and returns what bulk moved while they ran (after
// its 200 ms ramp-up: the rate the set-ups competed with). A bulk stream
// that failed fails the measure.
func SetupTimesBeside(ctx context.Context, dial Dialer, target string, n int, interval time.Duration, bulk Bulk) ([]time.Duration, Transfer, error) {
	if err := bulk.Start(); err != nil {
		return nil, Transfer{}, err
	}
	time.Sleep(200 * time.Millisecond) // the bulk streams reach full speed
	before, err := bulk.Moved()
	if err != nil {
		_, _ = bulk.Stop()
		return nil, Transfer{}, err
	}
	start := time.Now()
	times, err := SetupTimesEvery(ctx, dial, target, n, interval)
	// Fast set-ups end in milliseconds: the rate is read over at least
	// bulkWindow, or it would be mostly noise.
	time.Sleep(bulkWindow - time.Since(start))
	after, movedErr := bulk.Moved()
	elapsed := time.Since(start)
	_, stopErr := bulk.Stop()
	if err == nil {
		err = cmp.Or(movedErr, stopErr)
	}
	return times, Transfer{Bytes: after - before, Elapsed: elapsed}, err
}

// Percentile is the p-th (0..1) of times, nearest rank; 0 for none.
func Percentile(times []time.Duration, p float64) time.Duration {
	if len(times) == 0 {
		return 0
	}
	s := slices.Clone(times)
	slices.Sort(s)
	i := int(p*float64(len(s)) + 0.5)
	return s[min(max(i-1, 0), len(s)-1)]
}

// WaitConnect retries a set-up every interval until it works, and returns
// when it first did (the time from a restart to a working path).
func WaitConnect(ctx context.Context, dial Dialer, target string, interval time.Duration) (time.Time, error) {
	for {
		attempt, cancel := context.WithTimeout(ctx, time.Second)
		_, err := SetupOnce(attempt, dial, target)
		cancel()
		if err == nil {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%s never reachable: %w (last: %v)", target, ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

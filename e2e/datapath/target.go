// Package datapath measures CONNECT data paths: how long a tunnelled
// connection takes to set up and how many bytes it moves, through whatever
// proxy a Dialer goes through (none, Konnectivity, spoke). The benchmark in
// e2e (make bench-datapath) runs it against each system in turn; it also
// reads the CPU time and memory of processes (proxies, spoke-load's clients).
package datapath

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// The target's protocol: each command is one byte, some followed by a
// big-endian uint64 count. A connection may send several commands.
const (
	opPing     = 'p' // answer one byte: set-up latency ends at its arrival
	opDownload = 'd' // + count: send count bytes (target -> caller, as logs and port-forward answers)
	opUpload   = 'u' // + count: read count bytes, then answer one byte
	opStream   = 's' // send until the caller closes (the bulk load beside new set-ups)
	opPaced    = 'r' // + count: opStream at count bytes a second (bulk at the same rate through every system)
)

// chunk is what the target sends: 64 KiB of a fixed pattern.
var chunk = func() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}()

// Target is the server every measured path ends at: a pod or kubelet
// stand-in on a local address.
type Target struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// ListenTarget serves the target protocol on addr (host:port).
func ListenTarget(addr string) (*Target, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("benchmark target on %s: %w", addr, err)
	}
	t := &Target{ln: ln, conns: map[net.Conn]struct{}{}}
	t.wg.Add(1)
	go t.accept()
	return t, nil
}

// Addr is the target's host:port.
func (t *Target) Addr() string { return t.ln.Addr().String() }

// Close stops the target and closes its connections.
func (t *Target) Close() {
	_ = t.ln.Close()
	t.mu.Lock()
	for c := range t.conns {
		_ = c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}

func (t *Target) accept() {
	defer t.wg.Done()
	for {
		conn, err := t.ln.Accept()
		if err != nil {
			return
		}
		t.mu.Lock()
		t.conns[conn] = struct{}{}
		t.mu.Unlock()
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			_ = serveTarget(conn)
			t.mu.Lock()
			delete(t.conns, conn)
			t.mu.Unlock()
			_ = conn.Close()
		}()
	}
}

func serveTarget(conn net.Conn) error {
	r := bufio.NewReader(conn)
	for {
		op, err := r.ReadByte()
		if err != nil {
			return err
		}
		switch op {
		case opPing:
			if _, err := conn.Write([]byte{opPing}); err != nil {
				return err
			}
		case opDownload:
			n, err := readCount(r)
			if err != nil {
				return err
			}
			if err := send(conn, n); err != nil {
				return err
			}
		case opUpload:
			n, err := readCount(r)
			if err != nil {
				return err
			}
			if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
				return err
			}
			if _, err := conn.Write([]byte{opUpload}); err != nil {
				return err
			}
		case opStream:
			for {
				if _, err := conn.Write(chunk); err != nil {
					return err
				}
			}
		case opPaced:
			perSecond, err := readCount(r)
			if err != nil {
				return err
			}
			if err := sendPaced(conn, perSecond); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown command %q", op)
		}
	}
}

func readCount(r io.Reader) (uint64, error) {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b[:]), nil
}

func send(w io.Writer, n uint64) error {
	for n > 0 {
		part := chunk[:min(n, uint64(len(chunk)))]
		if _, err := w.Write(part); err != nil {
			return err
		}
		n -= uint64(len(part))
	}
	return nil
}

func command(op byte, n uint64) []byte {
	b := make([]byte, 9)
	b[0] = op
	binary.BigEndian.PutUint64(b[1:], n)
	return b
}

var errShort = errors.New("the path delivered fewer bytes than were sent")

// sendPaced sends chunks until the connection fails, perSecond bytes a
// second on average: on a schedule from its start, so time a write spent
// blocked (the path's flow control) is made up by the next writes instead
// of lost, and every system carries the same bytes. The caller reads at
// once, so no queue builds on the path: the set-ups beside it meet the
// proxies' own scheduling, not a slow reader's backlog.
func sendPaced(conn net.Conn, perSecond uint64) error {
	start := time.Now()
	var sent uint64
	for {
		due := start.Add(time.Duration(float64(sent) / float64(perSecond) * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		if _, err := conn.Write(chunk); err != nil {
			return err
		}
		sent += uint64(len(chunk))
	}
}

package datapath

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Dialer opens a connection to target (host:port) through one system.
type Dialer func(ctx context.Context, target string) (net.Conn, error)

// Direct dials the target itself: the limit every proxy is measured against.
func Direct() Dialer {
	return func(ctx context.Context, target string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", target)
	}
}

// ConnectOverUnix dials an egress proxy's Unix socket and asks for target
// with exactly the bytes kube-apiserver sends (HTTP CONNECT, Host
// 127.0.0.1), as its egress selector does for every request to a node.
func ConnectOverUnix(socket string) Dialer {
	return func(ctx context.Context, target string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", socket)
		if err != nil {
			return nil, err
		}
		if deadline, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(deadline)
		}
		if _, err := fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", target); err != nil {
			conn.Close()
			return nil, err
		}
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("CONNECT %s: no response: %w", target, err)
		}
		if resp.StatusCode != http.StatusOK {
			// The body says which refusal it was (a stream cap, no tunnel,
			// the node could not reach the target).
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
			conn.Close()
			return nil, fmt.Errorf("CONNECT %s: %s %q", target, resp.Status, strings.TrimSpace(string(body)))
		}
		_ = conn.SetDeadline(time.Time{})
		return &bufferedConn{Conn: conn, r: br}, nil
	}
}

// bufferedConn reads what the response reader already buffered first.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// connectRequest is what kube-apiserver sends its egress proxy for one
// connection to a node, pod or Service (measured byte for byte).
func connectRequest(target string) string {
	return "CONNECT " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
}

type connectOptions struct {
	socket  string
	send    string
	timeout time.Duration
}

func newConnectCommand() *cobra.Command {
	var o connectOptions
	cmd := &cobra.Command{
		Use:   "connect TARGET",
		Short: "Open a connection through the apiserver proxy's egress socket, as kube-apiserver does",
		Long: `Send the CONNECT kube-apiserver sends for TARGET (host:port of a kubelet, a
pod or a Service) to the apiserver proxy's egress socket, and print its
answer: on 200 the connection is carried through the owning node's tunnel,
and --send's text (or standard input) goes to the target, whose answer is
printed until it closes or --timeout passes (a target that keeps the
connection open, e.g. after an HTTP/1.1 request, ends at --timeout). Otherwise the refusal is
printed (404: no node owns the target; 502: its node holds no tunnel here;
503: a stream cap is full, or the node could not reach the target) and the
command fails. Run it on a control-plane host to test one node's path.`,
		Example: `  spoke connect 10.244.1.7:8080 --send 'GET / HTTP/1.0\r\n\r\n'
  spoke connect --socket /var/run/spoke/egress.sock 10.0.0.5:10250 < request.txt`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args[0], cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "socket", "/var/run/spoke/egress.sock", "the apiserver proxy's egress socket (settings: egressSocketPath)")
	f.StringVar(&o.send, "send", "", `text to send once connected, with \r \n \t escapes; default: standard input`)
	f.DurationVar(&o.timeout, "timeout", 10*time.Second, "give up after this long")
	return cmd
}

func (o *connectOptions) run(ctx context.Context, target string, stdin io.Reader, stdout, stderr io.Writer) error {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return fmt.Errorf("target %q: want host:port, as kube-apiserver dials: %w", target, err)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", o.socket)
	if err != nil {
		return fmt.Errorf("dial the egress socket %s: %w (is the apiserver proxy running? --socket sets the path; it is 0600, so run as its owner)", o.socket, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	if _, err := io.WriteString(conn, connectRequest(target)); err != nil {
		return fmt.Errorf("send the CONNECT: %w", err)
	}
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return fmt.Errorf("read the apiserver proxy's answer: %w", err)
	}
	fmt.Fprintf(stderr, "%s %s\n", resp.Proto, resp.Status) // the answer to the CONNECT; the target's follows on stdout
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("CONNECT %s refused: %s %s", target, resp.Status, printable(strings.TrimSpace(string(body))))
	}
	in := stdin
	if o.send != "" {
		unquoted, err := strconv.Unquote(`"` + strings.ReplaceAll(o.send, `"`, `\"`) + `"`)
		if err != nil {
			return fmt.Errorf("--send %q: %w", o.send, err)
		}
		in = strings.NewReader(unquoted)
	}
	// No half-close when the input ends: Envoy ends the whole tunneled
	// connection on it, before the target's answer. The command ends when
	// the target closes, or at --timeout.
	go func() { _, _ = io.Copy(conn, in) }()
	if _, err := io.Copy(stdout, r); err != nil && !isTimeout(err) {
		return fmt.Errorf("read from %s: %w", target, err)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

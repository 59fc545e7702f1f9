package xds

import (
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// ConnectionLimits bound what clients that never finish a TLS handshake can
// hold on the xDS port: without them, 20,000 silent TCP connections used up
// the server's file descriptors and real Envoys got no config.
type ConnectionLimits struct {
	// Total caps open connections on the xDS TCP port.
	Total int
	// PerSource caps open connections from one IP address. Node proxies
	// hold one connection each: set it above the number of nodes behind
	// one NAT address.
	PerSource int
	// Handshake bounds the TLS and HTTP/2 handshake of a new connection.
	Handshake time.Duration
}

// DefaultConnectionLimits fit 5,000 nodes with room for reconnects.
func DefaultConnectionLimits() ConnectionLimits {
	return ConnectionLimits{Total: 20000, PerSource: 256, Handshake: 5 * time.Second}
}

// limitListener closes, right after accepting them, connections over the
// total or per-source cap, so a flood costs a file descriptor for an
// instant and never blocks the accept loop.
type limitListener struct {
	net.Listener
	limits  ConnectionLimits
	refused func(reason string)
	log     logrus.FieldLogger

	mu       sync.Mutex
	total    int
	bySource map[string]int
	lastLog  time.Time
	unlogged int
}

func newLimitListener(ln net.Listener, limits ConnectionLimits, refused func(string), log logrus.FieldLogger) *limitListener {
	return &limitListener{Listener: ln, limits: limits, refused: refused, log: log, bySource: map[string]int{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		source := sourceIP(conn.RemoteAddr())
		if reason := l.admit(source); reason != "" {
			_ = conn.Close()
			l.refuse(source, reason)
			continue
		}
		return &limitedConn{Conn: conn, l: l, source: source}, nil
	}
}

// admit counts the connection in, or says which cap it would break.
func (l *limitListener) admit(source string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.limits.Total > 0 && l.total >= l.limits.Total:
		return "total"
	case l.limits.PerSource > 0 && l.bySource[source] >= l.limits.PerSource:
		return "per_source"
	}
	l.total++
	l.bySource[source]++
	return ""
}

func (l *limitListener) release(source string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.bySource[source]--; l.bySource[source] <= 0 {
		delete(l.bySource, source)
	}
}

// refuse counts every refusal and logs at most one line per 10 s, so a
// flood cannot flood the log too.
func (l *limitListener) refuse(source, reason string) {
	l.refused(reason)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unlogged++
	if time.Since(l.lastLog) < 10*time.Second {
		return
	}
	l.log.WithFields(logrus.Fields{"source": source, "cap": reason, "refused_since_last_line": l.unlogged,
		"open": l.total, "total_cap": l.limits.Total, "per_source_cap": l.limits.PerSource}).
		Warn("refusing xDS connections over the connection caps (a flood, or more nodes behind one address than --xds-max-connections-per-source)")
	l.lastLog, l.unlogged = time.Now(), 0
}

func sourceIP(addr net.Addr) string {
	if tcp, ok := addr.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	return addr.String()
}

type limitedConn struct {
	net.Conn
	l      *limitListener
	source string
	once   sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.release(c.source) })
	return c.Conn.Close()
}

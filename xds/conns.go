package xds

import (
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/metrics"
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

// connections are the open connections of one listener. Connections over
// the caps (zero: none) are closed right after they are accepted, so a flood
// costs a file descriptor for an instant and never blocks the accept loop.
// At shutdown they are closed a few at a time (drain): an Envoy whose
// connection closes keeps its config and reconnects, to another server
// replica when there is one, and closing 5,000 at once would send 5,000
// Envoys there in the same instant. Closing the connection is the only way
// to end one ADS stream that go-control-plane offers.
type connections struct {
	limits  ConnectionLimits
	refused func(cap string)
	log     logrus.FieldLogger

	mu       sync.Mutex
	open     map[*trackedConn]struct{}
	bySource map[string]int
	lastLog  time.Time
	unlogged int
}

func newConnections(limits ConnectionLimits, refused func(string), log logrus.FieldLogger) *connections {
	return &connections{limits: limits, refused: refused, log: log, open: map[*trackedConn]struct{}{}, bySource: map[string]int{}}
}

// listen wraps ln so that its connections are counted against the caps and
// can be drained.
func (c *connections) listen(ln net.Listener) net.Listener {
	return trackingListener{Listener: ln, c: c}
}

type trackingListener struct {
	net.Listener
	c *connections
}

func (l trackingListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tracked := l.c.admit(conn); tracked != nil {
			return tracked, nil
		}
	}
}

// admit tracks conn, or closes it when it breaks a cap.
func (c *connections) admit(conn net.Conn) *trackedConn {
	source := sourceIP(conn.RemoteAddr())
	c.mu.Lock()
	defer c.mu.Unlock()
	capName := ""
	switch {
	case c.limits.Total > 0 && len(c.open) >= c.limits.Total:
		capName = metrics.CapTotal
	case c.limits.PerSource > 0 && c.bySource[source] >= c.limits.PerSource:
		capName = metrics.CapPerSource
	}
	if capName != "" {
		_ = conn.Close()
		c.refuse(source, capName)
		return nil
	}
	t := &trackedConn{Conn: conn, c: c, source: source}
	c.open[t] = struct{}{}
	c.bySource[source]++
	return t
}

// refuse counts every refusal and logs at most one line per 10 s, so a
// flood cannot flood the log too. Called with c.mu held.
func (c *connections) refuse(source, capName string) {
	c.refused(capName)
	c.unlogged++
	if time.Since(c.lastLog) < 10*time.Second {
		return
	}
	c.log.WithFields(logrus.Fields{"source": source, "cap": capName, "refused_since_last_line": c.unlogged,
		"open": len(c.open), "total_cap": c.limits.Total, "per_source_cap": c.limits.PerSource}).
		Warn("refusing xDS connections over the connection caps (a flood, or more nodes behind one address than --xds-max-connections-per-source)")
	c.lastLog, c.unlogged = time.Now(), 0
}

func (c *connections) release(t *trackedConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.open, t)
	if c.bySource[t.source]--; c.bySource[t.source] <= 0 {
		delete(c.bySource, t.source)
	}
}

// drain closes the connections open now, spread evenly over within (the
// last one a step before within ends), and reports how many it closed.
func drain(within time.Duration, sets ...*connections) int {
	var conns []*trackedConn
	for _, c := range sets {
		c.mu.Lock()
		for t := range c.open {
			conns = append(conns, t)
		}
		c.mu.Unlock()
	}
	step := within / time.Duration(len(conns)+1)
	for i, t := range conns {
		if i > 0 {
			time.Sleep(step)
		}
		_ = t.Close()
	}
	return len(conns)
}

func sourceIP(addr net.Addr) string {
	if tcp, ok := addr.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	return addr.String()
}

type trackedConn struct {
	net.Conn
	c      *connections
	source string
	once   sync.Once
}

func (t *trackedConn) Close() error {
	t.once.Do(func() { t.c.release(t) })
	return t.Conn.Close()
}

package xds

import (
	"net"
	"sync"
	"time"
)

// drainer tracks the connections of the xDS listeners so that shutdown can
// close them a few at a time. An Envoy whose connection closes keeps its
// config and reconnects, to another server replica when there is one:
// closing 5,000 streams in the same instant would send 5,000 Envoys to the
// other replicas at once. (Each Envoy holds one connection with its ADS
// stream; closing the connection is the only way to end a stream that
// go-control-plane offers short of stopping the whole server.)
type drainer struct {
	mu    sync.Mutex
	conns map[*drainableConn]struct{}
}

func newDrainer() *drainer { return &drainer{conns: map[*drainableConn]struct{}{}} }

// listener wraps ln so that its connections can be drained.
func (d *drainer) listener(ln net.Listener) net.Listener {
	return drainableListener{Listener: ln, d: d}
}

// drain closes the connections open now, spread evenly over within (the
// last one a step before within ends), and reports how many it closed.
func (d *drainer) drain(within time.Duration) int {
	d.mu.Lock()
	conns := make([]*drainableConn, 0, len(d.conns))
	for c := range d.conns {
		conns = append(conns, c)
	}
	d.mu.Unlock()
	step := within / time.Duration(len(conns)+1)
	for i, c := range conns {
		if i > 0 {
			time.Sleep(step)
		}
		_ = c.Close()
	}
	return len(conns)
}

type drainableListener struct {
	net.Listener
	d *drainer
}

func (l drainableListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := &drainableConn{Conn: conn, d: l.d}
	l.d.mu.Lock()
	l.d.conns[c] = struct{}{}
	l.d.mu.Unlock()
	return c, nil
}

type drainableConn struct {
	net.Conn
	d    *drainer
	once sync.Once
}

func (c *drainableConn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		delete(c.d.conns, c)
		c.d.mu.Unlock()
	})
	return c.Conn.Close()
}

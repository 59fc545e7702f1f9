package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/spokeproxy/spoke/translator/model"
)

// TestTunnelSocketsCarryUnsentLimit: with tunnelUnsentLimit set, every
// tunnel socket of both real Envoys has TCP_NOTSENT_LOWAT at that value (the
// apiserver proxy's accepted tunnels inherit it from its listener, the node
// proxy sets it on those it dials), and CONNECTs work through them; without
// the setting the sockets keep the kernel's default. The sockets are read
// from the running Envoys (pidfd_getfd), not from their config.
func TestTunnelSocketsCarryUnsentLimit(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("reading another process's sockets (pidfd_getfd) needs root: run make test as root")
	}
	for _, limit := range []uint32{64 << 10, 0} {
		t.Run(fmt.Sprintf("tunnelUnsentLimit=%d", limit), func(t *testing.T) {
			tp := newTopologyWith(t, func(s *model.Settings) {
				s.TunnelUnsentLimit, s.TunnelBufferLimit = limit, 128<<10
			})
			serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
			tp.startAPIServerProxy()
			node := tp.startNodeProxy("node-a", "node-a")
			socket, target := tp.settings.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port)
			waitForTunnel(t, socket, target)
			if got, status := roundTrip(t, socket, target); status != 200 || got != "node-a/pod web-a" {
				t.Fatalf("CONNECT through the tuned tunnel: status %d, answer %q", status, got)
			}
			port := int(tp.settings.TunnelPort)
			apiSide := tunnelSocketLowats(t, tp.apiProxy.PID(), func(local, _ int) bool { return local == port })
			nodeSide := tunnelSocketLowats(t, node.PID(), func(_, peer int) bool { return peer == port })
			for side, lowats := range map[string][]int{"apiserver proxy": apiSide, "node proxy": nodeSide} {
				if len(lowats) == 0 {
					t.Errorf("%s: no tunnel socket found", side)
				}
				for _, v := range lowats {
					if v != int(limit) {
						t.Errorf("%s: a tunnel socket has TCP_NOTSENT_LOWAT %d, want %d (all: %v)", side, v, limit, lowats)
						break
					}
				}
			}
		})
	}
}

// tunnelSocketLowats returns TCP_NOTSENT_LOWAT of each connected TCP socket
// of process pid whose local and peer ports pass match.
func tunnelSocketLowats(t *testing.T, pid int, match func(local, peer int) bool) []int {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(pidfd)
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	var lowats []int
	for _, e := range entries {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		n, _ := strconv.Atoi(e.Name())
		if !strings.HasPrefix(link, "socket:") {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			continue // closed meanwhile
		}
		if v, ok := lowatIfMatching(fd, match); ok {
			lowats = append(lowats, v)
		}
		unix.Close(fd)
	}
	return lowats
}

func lowatIfMatching(fd int, match func(local, peer int) bool) (int, bool) {
	local, err := unix.Getsockname(fd)
	if err != nil {
		return 0, false
	}
	peer, err := unix.Getpeername(fd)
	if err != nil {
		return 0, false // a listener, or not connected
	}
	l, lok := local.(*unix.SockaddrInet4)
	p, pok := peer.(*unix.SockaddrInet4)
	if !lok || !pok || !match(l.Port, p.Port) {
		return 0, false
	}
	v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
	return v, err == nil
}

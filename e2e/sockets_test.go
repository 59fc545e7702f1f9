package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The sockets of a running Envoy, read (and, for fault tests, shut down)
// from the test through pidfd_getfd: what the kernel really holds, not
// what the config says.

// needOtherProcessSockets skips a test that reaches into another process's
// sockets when the test does not run as root.
func needOtherProcessSockets(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("reaching another process's sockets (pidfd_getfd) needs root: run make test as root")
	}
}

// tcpSocket is one connected TCP socket of a running process: its ports,
// TCP_NOTSENT_LOWAT and the bytes it has received (TCP_INFO).
type tcpSocket struct {
	local, peer, lowat int
	received           uint64
}

// tcpSockets reads the connected IPv4 TCP sockets of process pid whose local
// and peer ports pass match, through pidfd_getfd.
func tcpSockets(t *testing.T, pid int, match func(local, peer int) bool) []tcpSocket {
	t.Helper()
	var sockets []tcpSocket
	eachTCPSocket(t, pid, match, func(_ int, s tcpSocket) { sockets = append(sockets, s) })
	return sockets
}

// shutDownSocket shuts down (both directions) the socket of process pid
// with the ports of s, as a network fault would end it: the process sees
// its connection end and must cope. It reports whether the socket was found.
func shutDownSocket(t *testing.T, pid int, s tcpSocket) bool {
	t.Helper()
	found := false
	eachTCPSocket(t, pid, func(local, peer int) bool { return local == s.local && peer == s.peer }, func(fd int, _ tcpSocket) {
		found = unix.Shutdown(fd, unix.SHUT_RDWR) == nil
	})
	return found
}

// eachTCPSocket calls f with a duplicate of each connected IPv4 TCP socket
// of process pid whose ports pass match (pidfd_getfd); the duplicate shares
// the process's open file, so a shutdown through it is the process's too.
func eachTCPSocket(t *testing.T, pid int, match func(local, peer int) bool, f func(fd int, s tcpSocket)) {
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
		if s, ok := matchingSocket(fd, match); ok {
			f(fd, s)
		}
		unix.Close(fd)
	}
}

func matchingSocket(fd int, match func(local, peer int) bool) (tcpSocket, bool) {
	local, err := unix.Getsockname(fd)
	if err != nil {
		return tcpSocket{}, false
	}
	peer, err := unix.Getpeername(fd)
	if err != nil {
		return tcpSocket{}, false // a listener, or not connected
	}
	l, lok := local.(*unix.SockaddrInet4)
	p, pok := peer.(*unix.SockaddrInet4)
	if !lok || !pok || !match(l.Port, p.Port) {
		return tcpSocket{}, false
	}
	v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
	if err != nil {
		return tcpSocket{}, false
	}
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return tcpSocket{}, false
	}
	return tcpSocket{local: l.Port, peer: p.Port, lowat: v, received: info.Bytes_received}, true
}

package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Two things of the whole machine are shared by every run of this
// package, so each is a lock taken by the first test that needs it and held
// for the rest of its process; a second run waits, saying which run holds
// it:
//   - the real-kubelet tests' network namespaces and veths named
//     spk-<node>, unreachable routes for 172.30.0.0/16 and 10.244.0.0/16,
//     cgroup roots /spoke-<node> (two runs would collide: "RTNETLINK
//     answers: File exists");
//   - the kind clusters' names (spoke-e2e, spoke-konnectivity) and their
//     nodes' containers.
//
// They are separate so the kind tests can run beside the real-kubelet
// tests (make test does: a go test run each).
var (
	hostLock = &machineLock{path: filepath.Join(os.TempDir(), "spoke-e2e-host.lock"), what: "the host's test network and cgroups", sweep: sweepHostNetwork}
	kindLock = &machineLock{path: filepath.Join(os.TempDir(), "spoke-e2e-kind.lock"), what: "the kind clusters " + kindCluster + " and " + migrationCluster}
)

// machineLockWait bounds the wait: longer than one run of the e2e package.
const machineLockWait = 20 * time.Minute

// machineLock is a file lock (flock) every checkout's runs share.
type machineLock struct {
	path, what string
	// sweep, when set, runs once the lock is taken: whatever of the
	// lock's things is left on the machine then was left by a run that
	// ended without its clean-up (killed), as no live run holds the lock.
	sweep func(logf func(string, ...any))
	once  sync.Once
	file  *os.File // held open (and locked) until the process ends
	err   error
}

// lockHost takes the host's test network and cgroups for this process.
func lockHost(t *testing.T) { hostLock.take(t) }

// lockKindClusters takes the kind clusters' names for this process.
func lockKindClusters(t *testing.T) { kindLock.take(t) }

func (l *machineLock) take(t *testing.T) {
	t.Helper()
	l.once.Do(func() {
		if l.file, l.err = l.acquire(t.Logf); l.err == nil && l.sweep != nil {
			l.sweep(t.Logf)
		}
	})
	if l.err != nil {
		t.Fatal(l.err)
	}
}

func (l *machineLock) acquire(logf func(string, ...any)) (*os.File, error) {
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("test lock %s: %w", l.path, err)
	}
	deadline, logged := time.Now().Add(machineLockWait), false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("test lock %s: %w", l.path, err)
		}
		holder := l.holder()
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("%s are still held after %v by %s (%s); wait for that run, or end it", l.what, machineLockWait, holder, l.path)
		}
		if !logged {
			logf("waiting for %s, held by %s (%s)", l.what, holder, l.path)
			logged = true
		}
		time.Sleep(time.Second)
	}
	if err := f.Truncate(0); err == nil {
		cwd, _ := os.Getwd()
		_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d, %s in %s, since %s\n", os.Getpid(), filepath.Base(os.Args[0]), cwd, time.Now().UTC().Format(time.RFC3339))), 0)
	}
	return f, nil
}

// sweepHostNetwork removes the real-kubelet tests' host network state
// (unreachable routes, network namespaces and links named spk-*) that a
// killed run left: the next run's "ip route add" would fail on it with
// "RTNETLINK answers: File exists", as one did after a run was stopped.
func sweepHostNetwork(logf func(string, ...any)) {
	var removed []string
	remove := func(what string, ipArgs ...string) {
		if exec.Command("ip", ipArgs...).Run() == nil {
			removed = append(removed, what)
		}
	}
	for _, cidr := range nodeNetworks {
		remove("route unreachable "+cidr, "route", "delete", "unreachable", cidr)
	}
	for _, dir := range []struct{ path, kind string }{{"/var/run/netns", "netns"}, {"/sys/class/net", "link"}} {
		entries, _ := os.ReadDir(dir.path)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "spk-") {
				remove(dir.kind+" "+e.Name(), dir.kind, "delete", e.Name())
			}
		}
	}
	if len(removed) > 0 {
		logf("removed what a run that ended without cleaning up left: %s", strings.Join(removed, ", "))
	}
}

// holder is what the lock file says about the run that holds it.
func (l *machineLock) holder() string {
	raw, err := os.ReadFile(l.path)
	if err != nil || len(strings.TrimSpace(string(raw))) == 0 {
		return "another run"
	}
	return strings.TrimSpace(string(raw))
}

// TestHostLockIsExclusive: once this process holds a machine lock, another
// holder (a second open file, as another run's would be) is refused, and
// the lock file names this process.
func TestHostLockIsExclusive(t *testing.T) {
	lockHost(t)
	other, err := os.OpenFile(hostLock.path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Fatalf("a second holder got the lock: %v", err)
	}
	if holder := hostLock.holder(); !strings.HasPrefix(holder, fmt.Sprintf("pid %d,", os.Getpid())) {
		t.Errorf("the lock file names %q, not this process", holder)
	}
}

// TestNodeNetworkHeldElsewhereIsNamed: a link that routes part of the test
// nodes' network (as a Docker network's bridge in 172.17-31.0.0/16 can) is
// seen and named before the run adds its unreachable route, which would
// fail with a bare "File exists" or, for a narrower prefix, be bypassed.
func TestNodeNetworkHeldElsewhereIsNamed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("adding a link needs root")
	}
	lockHost(t)
	const probe = "spk-probe" // spk-: a killed run's is swept with the lock
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	if held := routesInside(nodeNetworks[0]); held != "" {
		t.Fatalf("before the probe, %s is routed already: %s", nodeNetworks[0], held)
	}
	ip("link", "add", probe, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "delete", probe).Run() })
	ip("addr", "add", "172.30.200.1/24", "dev", probe)
	ip("link", "set", probe, "up")
	if held := routesInside(nodeNetworks[0]); !strings.Contains(held, "172.30.200.0/24") || !strings.Contains(held, probe) {
		t.Errorf("a link routing 172.30.200.0/24 is not named: %q", held)
	}
}

package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The real-kubelet tests take names and routes of the whole host: network
// namespaces and veths named spk-<node>, unreachable routes for
// 172.30.0.0/16 and 10.244.0.0/16, cgroup roots /spoke-<node>. Two runs on
// one machine would collide ("RTNETLINK answers: File exists"), so the
// first test that needs them takes a lock for the rest of its process; a
// second run waits, saying which run holds it.

// hostLockPath is machine-wide: every checkout's runs share it.
var hostLockPath = filepath.Join(os.TempDir(), "spoke-e2e-host.lock")

// hostLockWait bounds the wait: longer than one run of the e2e package.
const hostLockWait = 20 * time.Minute

var hostLock struct {
	once sync.Once
	file *os.File // held open (and locked) until the process ends
	err  error
}

// lockHost takes the host's test network and cgroups for this process.
func lockHost(t *testing.T) {
	t.Helper()
	hostLock.once.Do(func() { hostLock.file, hostLock.err = acquireHostLock(t.Logf) })
	if hostLock.err != nil {
		t.Fatal(hostLock.err)
	}
}

func acquireHostLock(logf func(string, ...any)) (*os.File, error) {
	f, err := os.OpenFile(hostLockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("host test lock %s: %w", hostLockPath, err)
	}
	deadline, logged := time.Now().Add(hostLockWait), false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("host test lock %s: %w", hostLockPath, err)
		}
		holder := hostLockHolder()
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("the host's test network is still held after %v by %s (%s); wait for that run, or end it", hostLockWait, holder, hostLockPath)
		}
		if !logged {
			logf("waiting for the host's test network and cgroups, held by %s (%s)", holder, hostLockPath)
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

func hostLockHolder() string {
	raw, err := os.ReadFile(hostLockPath)
	if err != nil || len(strings.TrimSpace(string(raw))) == 0 {
		return "another run"
	}
	return strings.TrimSpace(string(raw))
}

// TestHostLockIsExclusive: once this process holds the host lock, another
// holder (a second open file, as another run's would be) is refused, and
// the lock file names this process.
func TestHostLockIsExclusive(t *testing.T) {
	lockHost(t)
	other, err := os.OpenFile(hostLockPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Fatalf("a second holder got the lock: %v", err)
	}
	if holder := hostLockHolder(); !strings.HasPrefix(holder, fmt.Sprintf("pid %d,", os.Getpid())) {
		t.Errorf("the lock file names %q, not this process", holder)
	}
}

package xds

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestDebounceCoalescesAndBoundsDelay: a burst becomes one application of
// the latest value, and a never-ending stream of changes is still applied
// within MaxDelay.
func TestDebounceCoalescesAndBoundsDelay(t *testing.T) {
	var mu sync.Mutex
	var applied []int
	var waits []time.Duration
	d := NewDebouncer(30*time.Millisecond, 150*time.Millisecond, func(_ context.Context, v int, waited time.Duration) {
		mu.Lock()
		applied, waits = append(applied, v), append(waits, waited)
		mu.Unlock()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)

	for i := 1; i <= 5; i++ {
		d.Submit(i)
	}
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	if len(applied) != 1 || applied[0] != 5 {
		t.Fatalf("burst: applied %v, want [5]", applied)
	}
	applied = nil
	mu.Unlock()

	// A change every 10 ms never leaves a 30 ms gap: only MaxDelay lets it out.
	stop := time.After(700 * time.Millisecond)
	for i := 100; ; i++ {
		select {
		case <-stop:
			mu.Lock()
			defer mu.Unlock()
			if len(applied) < 2 {
				t.Fatalf("steady stream: applied %d times in 700ms, want >= 2 (MaxDelay 150ms)", len(applied))
			}
			return
		case <-time.After(10 * time.Millisecond):
			d.Submit(i)
		}
	}
}

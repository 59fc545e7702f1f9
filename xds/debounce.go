package xds

import (
	"context"
	"sync"
	"time"
)

// Debouncer coalesces bursts of updates: it applies the latest value once no
// new one arrived for Holdoff, and at the latest MaxDelay after the first of
// the burst (Contour's holdoff: 100 ms / 500 ms), so a steady stream of
// changes still gets through.
type Debouncer[T any] struct {
	Holdoff, MaxDelay time.Duration
	Apply             func(ctx context.Context, v T, waited time.Duration)

	mu      sync.Mutex
	pending bool
	latest  T
	first   time.Time
	kick    chan struct{}
}

// Submit records v as the newest value; it never blocks.
func (d *Debouncer[T]) Submit(v T) {
	d.mu.Lock()
	d.latest = v
	if !d.pending {
		d.pending, d.first = true, time.Now()
	}
	d.mu.Unlock()
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// Run applies submitted values until ctx ends. Call it once, before Submit.
func (d *Debouncer[T]) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.kick:
			d.mu.Lock()
			wait := d.Holdoff
			if left := d.MaxDelay - time.Since(d.first); left < wait {
				wait = max(left, 0)
			}
			d.mu.Unlock()
			timer.Reset(wait)
		case <-timer.C:
			d.mu.Lock()
			v, first := d.latest, d.first
			d.pending = false
			d.mu.Unlock()
			d.Apply(ctx, v, time.Since(first))
		}
	}
}

// NewDebouncer returns a Debouncer; Run must be started before Submit matters.
func NewDebouncer[T any](holdoff, maxDelay time.Duration, apply func(context.Context, T, time.Duration)) *Debouncer[T] {
	return &Debouncer[T]{Holdoff: holdoff, MaxDelay: maxDelay, Apply: apply, kick: make(chan struct{}, 1)}
}

package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sightline/sightline/agent/queue"
	"github.com/sightline/sightline/wire"
)

const (
	// sendTimeout bounds one batch send; a hung send is retried like a failed one.
	sendTimeout = 30 * time.Second
	// logEvery rate-limits repeated warnings (aggregator unreachable, config fetch).
	logEvery = 10 * time.Second
)

// forwarder hands sealed batches to the send workers, each batch to exactly
// one worker per process: a worker keeps its batch until it is acked or
// quarantined, retrying it itself, so the claim cursor only moves forward.
type forwarder struct {
	q *queue.Queue

	mu      sync.Mutex
	cursor  uint64        // highest sequence claimed so far
	changed chan struct{} // closed and replaced when a batch is sealed
}

func newForwarder(q *queue.Queue) *forwarder {
	return &forwarder{q: q, changed: make(chan struct{})}
}

// sealed wakes workers waiting for a batch.
func (f *forwarder) sealed() {
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// claim returns the oldest pending batch no worker has claimed, waiting
// for one to be sealed.
func (f *forwarder) claim(ctx context.Context) (*wire.Batch, error) {
	for {
		f.mu.Lock()
		ch := f.changed
		b, err := f.q.Next(f.cursor)
		if b != nil {
			f.cursor = b.Seq
		}
		f.mu.Unlock()
		if err != nil || b != nil {
			return b, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// sealLoop seals a batch when BatchMaxEvents events are waiting or the
// oldest unsealed record has waited BatchLinger. It sleeps until an append
// or the linger deadline, never polling.
func (a *Agent) sealLoop(ctx context.Context, f *forwarder) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var failures int
	for {
		records, events, oldest := a.q.Unsealed()
		if records > 0 && (events >= a.cfg.BatchMaxEvents || a.now().Sub(oldest) >= a.cfg.BatchLinger) {
			b, err := a.q.Seal(a.cfg.BatchMaxEvents)
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, queue.ErrClosed) {
					return
				}
				failures++
				delay := backoff(a.cfg.RetryMin, a.cfg.RetryMax, failures)
				a.log.Error("agent: sealing batch", "error", err, "retry_in", delay)
				if !sleepCtx(ctx, delay) {
					return
				}
				continue
			}
			failures = 0
			if b != nil {
				a.m.batchesSealed.Inc()
				f.sealed()
			}
			continue
		}
		var linger <-chan time.Time
		if records > 0 {
			timer.Reset(a.cfg.BatchLinger - a.now().Sub(oldest))
			linger = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-a.q.Appended():
		case <-linger:
		}
	}
}

// sendLoop is one of MaxInFlight workers.
func (a *Agent) sendLoop(ctx context.Context, f *forwarder) {
	var failures int
	for {
		b, err := f.claim(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			delay := backoff(a.cfg.RetryMin, a.cfg.RetryMax, failures)
			a.log.Error("agent: reading pending batch", "error", err, "retry_in", delay)
			if !sleepCtx(ctx, delay) {
				return
			}
			continue
		}
		failures = 0
		a.deliver(ctx, b)
	}
}

// deliver sends b until the aggregator acks or rejects it, or ctx ends
// (then b stays pending and is sent again after a restart). Every attempt
// carries the same sequence and payload.
func (a *Agent) deliver(ctx context.Context, b *wire.Batch) {
	for attempt := 1; ; attempt++ {
		b.AgentID = a.id
		b.Low = a.q.Low()
		a.m.batchesInFlight.Inc()
		sctx, cancel := context.WithTimeout(ctx, sendTimeout)
		ack, err := a.sender.SendBatch(sctx, b)
		cancel()
		a.m.batchesInFlight.Dec()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			switch {
			case ack == nil:
				err = errors.New("no ack")
			case ack.Seq != b.Seq:
				err = fmt.Errorf("ack names batch %d, sent %d", ack.Seq, b.Seq)
			case ack.Status == wire.AckOK:
				a.acked(ctx, b)
				return
			case ack.Status == wire.AckRejected:
				a.rejected(ctx, b, ack.Message)
				return
			case ack.Status == wire.AckNotLeader:
				err = fmt.Errorf("not leader (leader %q)", ack.Leader)
			case ack.Status == wire.AckUnavailable:
				err = fmt.Errorf("unavailable: %s", ack.Message)
			default:
				err = fmt.Errorf("unknown ack status %d: %s", ack.Status, ack.Message)
			}
		}
		a.m.forwardErrors.Inc()
		a.m.forwardRetries.Inc()
		delay := backoff(a.cfg.RetryMin, a.cfg.RetryMax, attempt)
		a.link.down(a, err, b.Seq, delay)
		if !sleepCtx(ctx, delay) {
			return
		}
	}
}

func (a *Agent) acked(ctx context.Context, b *wire.Batch) {
	a.link.up(a)
	// A batch left pending here would be resent only after a restart (and
	// deduped then), but it would hold its share of the budget till then.
	if !a.retryLocal(ctx, "deleting acked batch", b.Seq, func() error { return a.q.Ack(b.Seq) }) {
		return
	}
	a.m.batchesAcked.Inc()
	a.m.eventsAcked.Add(float64(b.Count))
}

func (a *Agent) rejected(ctx context.Context, b *wire.Batch, reason string) {
	a.link.up(a)
	if !a.retryLocal(ctx, "quarantining rejected batch", b.Seq, func() error { return a.q.Quarantine(b.Seq, reason) }) {
		return
	}
	a.m.quarantined.Inc()
	a.log.Error("agent: aggregator rejected batch; kept as dead letter", "seq", b.Seq, "events", b.Count, "reason", reason)
}

// retryLocal runs a queue operation until it succeeds, the batch is no
// longer pending, or the agent stops; it reports success.
func (a *Agent) retryLocal(ctx context.Context, what string, seq uint64, op func() error) bool {
	for attempt := 1; ; attempt++ {
		err := op()
		switch {
		case err == nil:
			return true
		case errors.Is(err, queue.ErrNotPending), errors.Is(err, queue.ErrClosed):
			return false
		}
		delay := backoff(a.cfg.RetryMin, a.cfg.RetryMax, attempt)
		a.log.Error("agent: "+what, "seq", seq, "error", err, "retry_in", delay)
		if !sleepCtx(ctx, delay) {
			return false
		}
	}
}

// linkState tracks whether the aggregators answer, to log an outage once
// (then at most every logEvery) and its end once.
type linkState struct {
	mu      sync.Mutex
	isDown  bool
	since   time.Time
	lastLog time.Time
	errors  int
}

func (l *linkState) down(a *Agent, err error, seq uint64, delay time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if !l.isDown {
		l.isDown, l.since, l.errors = true, now, 0
	}
	l.errors++
	if now.Sub(l.lastLog) >= logEvery {
		l.lastLog = now
		a.log.Warn("agent: aggregator unreachable, will retry", "error", err, "seq", seq,
			"retry_in", delay.Round(time.Millisecond), "down_for", now.Sub(l.since).Round(time.Millisecond),
			"errors", l.errors, "queued_events", a.q.Events())
	}
}

func (l *linkState) up(a *Agent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isDown {
		a.log.Info("agent: aggregator back online", "down_for", time.Since(l.since).Round(time.Millisecond), "errors", l.errors)
		l.isDown, l.lastLog = false, time.Time{}
	}
}

// backoff returns the delay before attempt n (1-based): exponential from lo,
// capped at hi, with full jitter between lo and the cap so that many agents
// do not retry in step.
func backoff(lo, hi time.Duration, n int) time.Duration {
	ceil := lo
	for i := 1; i < n && ceil < hi; i++ {
		ceil *= 2
	}
	ceil = min(ceil, hi)
	if ceil <= lo {
		return lo
	}
	return lo + rand.N(ceil-lo+1)
}

// sleepCtx waits d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

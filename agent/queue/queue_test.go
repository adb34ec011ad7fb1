package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/cockroachdb/pebble/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sightline/sightline/wire"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t *testing.T, dir string, budget int64) *Queue {
	t.Helper()
	q, err := Open(Options{Dir: dir, Budget: budget})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q
}

func mkEvents(prefix string, n int) []wire.Event {
	evs := make([]wire.Event, n)
	for i := range evs {
		evs[i] = wire.Event{
			Site: "demo", Session: "s1", ID: fmt.Sprintf("%s-%d", prefix, i), Type: wire.TypeClick,
			TS: 1_700_000_000_000 + int64(i), Recv: 1_700_000_000_001, URL: "http://localhost:8080/",
			Target: wire.Target{Sel: "button#go", Tag: "button", ID: "go", Cls: []string{"a"}},
			Props:  []byte(`{"k":1}`),
		}
	}
	return evs
}

func decode(t *testing.T, b *wire.Batch) []wire.Event {
	t.Helper()
	evs, err := wire.DecodeEvents(b.Codec, b.Payload)
	if err != nil {
		t.Fatalf("DecodeEvents(batch %d): %v", b.Seq, err)
	}
	if int(b.Count) != len(evs) {
		t.Fatalf("batch %d: Count %d, payload has %d", b.Seq, b.Count, len(evs))
	}
	return evs
}

func pending(t *testing.T, q *Queue) []*wire.Batch {
	t.Helper()
	p, err := q.Pending()
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	return p
}

type state struct {
	Bytes, Events int64
	Low           uint64
	Unsealed      int
	Pending       []*wire.Batch
}

func snapshot(t *testing.T, q *Queue) state {
	n, _, _ := q.Unsealed()
	return state{Bytes: q.Bytes(), Events: q.Events(), Low: q.Low(), Unsealed: n, Pending: pending(t, q)}
}

func TestAppendSealAckReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	q := open(t, dir, 1<<30)

	var all []wire.Event
	for i := range 30 {
		evs := mkEvents(fmt.Sprintf("r%d", i), 1+i%7)
		all = append(all, evs...)
		if err := q.Append(ctx, evs); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
	if got := q.Events(); got != int64(len(all)) {
		t.Fatalf("Events = %d, want %d", got, len(all))
	}
	var sealed []*wire.Batch
	for {
		b, err := q.Seal(10)
		if err != nil {
			t.Fatalf("Seal: %v", err)
		}
		if b == nil {
			break
		}
		sealed = append(sealed, b)
	}
	var got []wire.Event
	for i, b := range sealed {
		if b.Seq != uint64(i+1) {
			t.Fatalf("batch %d has seq %d", i, b.Seq)
		}
		evs := decode(t, b)
		if len(evs) > 10 && i != 0 {
			t.Fatalf("batch %d has %d events, max 10", b.Seq, len(evs))
		}
		got = append(got, evs...)
	}
	if !reflect.DeepEqual(got, all) {
		t.Fatalf("sealed events differ from appended ones")
	}
	if q.Low() != 1 {
		t.Fatalf("Low = %d, want 1", q.Low())
	}
	// Ack every other batch.
	for i := 0; i < len(sealed); i += 2 {
		if err := q.Ack(sealed[i].Seq); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	if err := q.Ack(sealed[0].Seq); !errors.Is(err, ErrNotPending) {
		t.Fatalf("second Ack: %v, want ErrNotPending", err)
	}
	// More records left unsealed.
	if err := q.Append(ctx, mkEvents("tail", 3)); err != nil {
		t.Fatal(err)
	}
	if err := q.SetMeta("agent_id", []byte("a1")); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, q)
	if len(before.Pending) != len(sealed)/2 || before.Unsealed != 1 {
		t.Fatalf("before reopen: %d pending, %d unsealed", len(before.Pending), before.Unsealed)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	q2 := open(t, dir, 1<<30)
	after := snapshot(t, q2)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("state changed across reopen:\nbefore %+v\nafter  %+v", before, after)
	}
	if v, err := q2.Meta("agent_id"); err != nil || string(v) != "a1" {
		t.Fatalf("Meta(agent_id) = %q, %v", v, err)
	}
	b, err := q2.Seal(100)
	if err != nil || b == nil {
		t.Fatalf("Seal after reopen: %v, %v", b, err)
	}
	if want := sealed[len(sealed)-1].Seq + 1; b.Seq != want {
		t.Fatalf("seq after reopen = %d, want %d (sequences must never be reused)", b.Seq, want)
	}
}

func TestSeqNeverReusedAfterAllAcked(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	q := open(t, dir, 1<<20)
	var last uint64
	for range 3 {
		if err := q.Append(ctx, mkEvents("x", 2)); err != nil {
			t.Fatal(err)
		}
		b, err := q.Seal(100)
		if err != nil || b == nil {
			t.Fatalf("Seal: %v %v", b, err)
		}
		if err := q.Ack(b.Seq); err != nil {
			t.Fatal(err)
		}
		last = b.Seq
	}
	if q.Bytes() != 0 || q.Events() != 0 {
		t.Fatalf("empty queue has %d bytes, %d events", q.Bytes(), q.Events())
	}
	_ = q.Close()
	q2 := open(t, dir, 1<<20)
	if q2.Low() != last+1 {
		t.Fatalf("Low = %d, want %d", q2.Low(), last+1)
	}
	if err := q2.Append(ctx, mkEvents("y", 1)); err != nil {
		t.Fatal(err)
	}
	b, err := q2.Seal(100)
	if err != nil || b == nil || b.Seq != last+1 {
		t.Fatalf("Seal = %+v, %v; want seq %d", b, err, last+1)
	}
}

func TestSealTakesWholeRecords(t *testing.T) {
	ctx := context.Background()
	q := open(t, t.TempDir(), 1<<20)
	for _, n := range []int{25, 3, 4, 5} {
		if err := q.Append(ctx, mkEvents("r", n)); err != nil {
			t.Fatal(err)
		}
	}
	var counts []uint32
	for {
		b, err := q.Seal(8)
		if err != nil {
			t.Fatal(err)
		}
		if b == nil {
			break
		}
		counts = append(counts, b.Count)
	}
	// 25 alone (over the limit but at least one record), then 3+4, then 5.
	if want := []uint32{25, 7, 5}; !reflect.DeepEqual(counts, want) {
		t.Fatalf("batch sizes %v, want %v", counts, want)
	}
}

func TestGroupCommitSharesFsyncs(t *testing.T) {
	const writers = 64
	release := make(chan struct{})
	var held, heldRecords atomic.Int32
	hook := func(n int) {
		// Hold the commits every committer has taken until all the other
		// writers are queued behind them, so sharing is deterministic.
		held.Add(1)
		heldRecords.Add(int32(n))
		<-release
	}
	q, err := Open(Options{Dir: t.TempDir(), Budget: 1 << 30, commitHook: hook})
	if err != nil {
		t.Fatal(err)
	}
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	defer q.Close()
	defer unblock() // runs first, so Close never waits on a held commit

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			errs <- q.Append(context.Background(), mkEvents(fmt.Sprintf("w%d", i), 1))
		})
	}
	waitFor(t, 10*time.Second, func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		// Every writer is queued: in a held group or waiting behind them.
		// (Not every committer need hold a group: one may have taken all.)
		return held.Load() >= 1 && int(heldRecords.Load())+len(q.waiting) == writers
	})
	unblock()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	if q.Appends() != writers {
		t.Fatalf("Appends = %d, want %d", q.Appends(), writers)
	}
	// The held groups (at most one per committer), then whatever waits
	// goes in the next group a committer takes.
	if q.Fsyncs() > committers+1 {
		t.Fatalf("%d synced commits for %d appends, want at most %d: no group commit", q.Fsyncs(), writers, committers+1)
	}
	if q.Events() != writers {
		t.Fatalf("Events = %d", q.Events())
	}
}

func TestConcurrentAppendSealAck(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, 1<<30)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 20 {
				if err := q.Append(ctx, mkEvents(fmt.Sprintf("w%d-%d", w, i), 2)); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
			}
		})
	}
	seen := map[string]bool{}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	drain := func() {
		for {
			b, err := q.Seal(7)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if b == nil {
				return
			}
			for _, e := range decode(t, b) {
				if seen[e.ID+e.Session] {
					t.Fatalf("event %s sealed twice", e.ID)
				}
				seen[e.ID+e.Session] = true
			}
			if err := q.Ack(b.Seq); err != nil {
				t.Fatalf("Ack: %v", err)
			}
		}
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-q.Appended():
		}
		drain()
	}
	drain()
	if len(seen) != 16*20*2 {
		t.Fatalf("sealed %d distinct events, want %d", len(seen), 16*20*2)
	}
	if q.Bytes() != 0 || q.Events() != 0 {
		t.Fatalf("Bytes %d Events %d after draining", q.Bytes(), q.Events())
	}
}

func TestBudget(t *testing.T) {
	ctx := context.Background()
	q := open(t, t.TempDir(), 4096)
	var n int
	for {
		err := q.Append(ctx, mkEvents("b", 3))
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		if n > 1000 {
			t.Fatal("budget never reached")
		}
	}
	full := q.Bytes()
	if full > 4096 {
		t.Fatalf("Bytes %d over budget", full)
	}
	events := q.Events()
	if err := q.Append(ctx, mkEvents("b", 3)); !errors.Is(err, ErrFull) {
		t.Fatalf("Append at budget: %v, want ErrFull", err)
	}
	if q.Events() != events {
		t.Fatal("ErrFull append changed the queue")
	}
	// Sealing compresses; acking frees the space.
	for {
		b, err := q.Seal(1000)
		if err != nil {
			t.Fatal(err)
		}
		if b == nil {
			break
		}
		if err := q.Ack(b.Seq); err != nil {
			t.Fatal(err)
		}
	}
	if q.Bytes() != 0 {
		t.Fatalf("Bytes %d after acking everything", q.Bytes())
	}
	if err := q.Append(ctx, mkEvents("b", 3)); err != nil {
		t.Fatalf("Append after ack: %v", err)
	}
}

func TestQuarantine(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	q := open(t, dir, 1<<20)
	for i := range 3 {
		if err := q.Append(ctx, mkEvents(fmt.Sprint(i), 1)); err != nil {
			t.Fatal(err)
		}
		if _, err := q.Seal(1); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Quarantine(2, "bad site"); err != nil {
		t.Fatal(err)
	}
	if err := q.Quarantine(2, "again"); !errors.Is(err, ErrNotPending) {
		t.Fatalf("second Quarantine: %v", err)
	}
	if q.Quarantined() != 1 || q.DeadLetters() != 1 {
		t.Fatalf("Quarantined %d DeadLetters %d", q.Quarantined(), q.DeadLetters())
	}
	seqs := func(q *Queue) []uint64 {
		var s []uint64
		for _, b := range pending(t, q) {
			s = append(s, b.Seq)
		}
		return s
	}
	if got := seqs(q); !reflect.DeepEqual(got, []uint64{1, 3}) {
		t.Fatalf("pending %v", got)
	}
	_ = q.Close()
	q2 := open(t, dir, 1<<20)
	if got := seqs(q2); !reflect.DeepEqual(got, []uint64{1, 3}) {
		t.Fatalf("pending after reopen %v", got)
	}
	if q2.DeadLetters() != 1 || q2.Events() != 2 {
		t.Fatalf("after reopen: DeadLetters %d Events %d", q2.DeadLetters(), q2.Events())
	}
}

func TestLowWaitsForDurableAck(t *testing.T) {
	ctx := context.Background()
	q := open(t, t.TempDir(), 1<<20)
	for i := range 3 {
		if err := q.Append(ctx, mkEvents(fmt.Sprint(i), 1)); err != nil {
			t.Fatal(err)
		}
		if _, err := q.Seal(1); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Ack(1); err != nil {
		t.Fatal(err)
	}
	// The delete of 1 is not synced yet: a crash could bring batch 1 back.
	if q.Low() != 1 {
		t.Fatalf("Low = %d before a synced commit, want 1", q.Low())
	}
	if err := q.Append(ctx, mkEvents("sync", 1)); err != nil {
		t.Fatal(err)
	}
	if q.Low() != 2 {
		t.Fatalf("Low = %d after a synced commit, want 2", q.Low())
	}
	if err := q.Ack(3); err != nil {
		t.Fatal(err)
	}
	if err := q.SetMeta("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if q.Low() != 2 {
		t.Fatalf("Low = %d, want 2 (batch 2 pending)", q.Low())
	}
}

// TestRecordAtomic checks that a record is all there or not there: a
// process that stops after Append returned has the whole record, and one
// whose commit never ran has none of it.
func TestRecordAtomic(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	block := make(chan struct{})
	reached := make(chan struct{})
	var calls atomic.Int32
	hook := func(int) {
		if calls.Add(1) == 2 {
			close(reached)
			<-block
		}
	}
	q, err := Open(Options{Dir: dir, Budget: 1 << 20, commitHook: hook})
	if err != nil {
		t.Fatal(err)
	}
	want := mkEvents("whole", 50)
	if err := q.Append(ctx, want); err != nil {
		t.Fatal(err)
	}
	// The second append is stuck before its commit; its caller gives up.
	cctx, cancel := context.WithCancel(ctx)
	res := make(chan error, 1)
	go func() { res <- q.Append(cctx, mkEvents("never", 50)) }()
	<-reached
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with cancelled ctx: %v", err)
	}
	// Simulate a crash: copy the store while the second commit is blocked.
	crash := t.TempDir() + "/cp"
	if err := q.db.Checkpoint(crash); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	close(block)
	_ = q.Close()

	q2 := open(t, crash, 1<<20)
	if q2.Events() != int64(len(want)) {
		t.Fatalf("after crash: %d events, want %d", q2.Events(), len(want))
	}
	b, err := q2.Seal(1000)
	if err != nil || b == nil {
		t.Fatalf("Seal: %v %v", b, err)
	}
	if got := decode(t, b); !reflect.DeepEqual(got, want) {
		t.Fatal("record changed across the crash")
	}
}

func TestClosed(t *testing.T) {
	q := open(t, t.TempDir(), 1<<20)
	if err := q.Append(context.Background(), mkEvents("a", 1)); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := q.Append(context.Background(), mkEvents("a", 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if _, err := q.Seal(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Seal after Close: %v", err)
	}
	if err := q.Ack(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ack after Close: %v", err)
	}
	if _, err := q.Meta("x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Meta after Close: %v", err)
	}
}

func TestReservedMeta(t *testing.T) {
	q := open(t, t.TempDir(), 1<<20)
	if err := q.SetMeta(metaNextBatch, []byte{0}); !errors.Is(err, ErrReservedMeta) {
		t.Fatalf("SetMeta(reserved) = %v", err)
	}
	if v, err := q.Meta("absent"); v != nil || err != nil {
		t.Fatalf("Meta(absent) = %q, %v", v, err)
	}
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met before deadline")
		}
		<-tick.C
	}
}

// TestSealCapsBytes: large records (DOM snapshots) are sealed into several
// batches by size, not into one oversized batch by event count.
func TestSealCapsBytes(t *testing.T) {
	q := open(t, t.TempDir(), 1<<30)
	big := mkEvents("big", 1)
	big[0].RRWeb = bytes.Repeat([]byte("x"), 1<<20)
	for i := range 10 {
		evs := mkEvents(fmt.Sprint("r", i), 1)
		evs[0].RRWeb = big[0].RRWeb
		if err := q.Append(context.Background(), evs); err != nil {
			t.Fatal(err)
		}
	}
	var batches int
	for {
		b, err := q.Seal(1000)
		if err != nil {
			t.Fatal(err)
		}
		if b == nil {
			break
		}
		batches++
		if n := len(decode(t, b)); n > 4 {
			t.Fatalf("batch %d holds %d MiB-sized events, want at most 4 (MaxBatchBytes)", b.Seq, n)
		}
	}
	if batches < 3 {
		t.Fatalf("10 MiB of records sealed into %d batches, want at least 3", batches)
	}
}

// TestDamagedBatchDoesNotStopTheQueue: a sealed batch whose bytes were
// damaged on disk neither keeps the queue from opening nor blocks the
// batches behind it; it becomes a counted dead letter.
func TestDamagedBatchDoesNotStopTheQueue(t *testing.T) {
	dir := t.TempDir()
	q, err := Open(Options{Dir: dir, Budget: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := q.Append(context.Background(), mkEvents(fmt.Sprint("r", i), 2)); err != nil {
			t.Fatal(err)
		}
		if _, err := q.Seal(2); err != nil {
			t.Fatal(err)
		}
	}
	// Damage batch 2 directly in Pebble.
	if err := q.db.Set(seqKey(famBatch, 2), []byte{0xc1, 0xc1}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	q.Close()

	q = open(t, dir, 1<<30)
	var seqs []uint64
	var after uint64
	for {
		b, err := q.Next(after)
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if b == nil {
			break
		}
		seqs = append(seqs, b.Seq)
		after = b.Seq
	}
	if len(seqs) != 2 || seqs[0] != 1 || seqs[1] != 3 {
		t.Fatalf("sendable batches %v, want [1 3]", seqs)
	}
	if q.DeadLetters() != 1 || q.PendingCount() != 2 {
		t.Fatalf("dead letters %d, pending %d; want 1 and 2", q.DeadLetters(), q.PendingCount())
	}
}

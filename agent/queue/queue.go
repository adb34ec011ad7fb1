package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/sightline/sightline/wire"
	"github.com/vmihailenco/msgpack/v5"
)

var (
	// ErrFull means the record would take the queue past its disk budget;
	// nothing was written.
	ErrFull = errors.New("queue: disk budget spent")
	// ErrClosed means the queue is closed (or closing) and takes no more work.
	ErrClosed = errors.New("queue: closed")
	// ErrNotPending means Ack or Quarantine named a batch that is not pending.
	ErrNotPending = errors.New("queue: batch not pending")
	// ErrReservedMeta means SetMeta was given a key the queue keeps for itself.
	ErrReservedMeta = errors.New("queue: reserved meta key")
)

// Key families, one prefix byte each. Sequences follow as big-endian uint64
// so that Pebble's byte order is sequence order.
const (
	famMeta       = 'm' // 'm' + name → value
	famRecord     = 'r' // 'r' + record seq → msgpack []wire.Event (one accepted request)
	famBatch      = 'b' // 'b' + batch seq → msgpack wire.Batch (sealed, unacked)
	famDead       = 'd' // 'd' + batch seq → msgpack deadLetter (rejected by the aggregator)
	famDeadRecord = 'x' // 'x' + record seq → the raw record bytes that could not be decoded
)

// Meta names the queue keeps for itself; SetMeta refuses them.
const (
	reservedPrefix = "queue."
	metaNextRecord = "queue.next_record"
	metaNextBatch  = "queue.next_batch"
)

const (
	seqKeyLen       = 9       // prefix byte + uint64
	defaultMaxGroup = 4 << 20 // bytes per group commit; the rest waits for the next one
)

// Options configure Open.
type Options struct {
	Dir    string       // Pebble directory, created when missing
	Budget int64        // bytes of queued records and batches Append may fill
	Logger *slog.Logger // nil means slog.Default()
	// FS is the file system Pebble uses; nil means the operating system's.
	// Crash tests pass a crashable in-memory FS to simulate power loss.
	FS vfs.FS

	// commitHook, set by tests, runs in a committer before each group
	// commit with the number of records in the group.
	commitHook func(n int)
}

// Queue is the durable queue. All methods are safe for concurrent use.
//
// Lock order: life before mu; sealMu before mu. The committer goroutine
// takes only mu and runs only while the queue is open.
type Queue struct {
	db     *pebble.DB
	log    *slog.Logger
	budget int64

	// life guards db against use after Close: every method using db holds
	// the read side, Close holds the write side while closing Pebble.
	life   sync.RWMutex
	closed bool

	// sealMu makes seals one at a time so two never take the same records.
	sealMu sync.Mutex

	mu         sync.Mutex
	cond       *sync.Cond // broadcast when waiting gains requests, closing is set, or a group is published
	closing    bool
	waiting    []*appendReq
	turn       uint64 // next group number handed to a committer
	published  uint64 // groups published so far, in group order
	reserved   int64  // bytes of appends waiting for their group commit
	bytes      int64  // bytes of committed records and pending batches
	events     int64  // events in committed records and pending batches
	nextRecord uint64
	nextBatch  uint64
	records    []recordEntry // committed, unsealed records in seq order
	pending    []batchEntry  // sealed, unacked batches in seq order
	recEvents  int64         // events in records
	// unsynced holds acked batches whose Pebble delete is not yet covered by
	// a synced commit. Low counts them as pending so the aggregator is never
	// told to forget a sequence that a crash could bring back. unsyncedBase
	// is the number of acks ever dropped from its front, so a commit can
	// name "every ack before mark" even when commits finish out of order.
	unsynced     []uint64
	unsyncedBase uint64

	appended chan struct{}
	wg       sync.WaitGroup

	fsyncs      atomic.Uint64
	appends     atomic.Uint64
	quarantined atomic.Uint64
	dead        atomic.Uint64

	commitHook func(n int)
}

type appendReq struct {
	seq    uint64
	data   []byte
	events int
	done   chan error
}

type recordEntry struct {
	seq    uint64
	size   int64
	events int
	at     time.Time
}

type batchEntry struct {
	seq    uint64
	size   int64
	events int64
}

// deadLetter is what Quarantine keeps for a batch the aggregator refused.
type deadLetter struct {
	_msgpack struct{} `msgpack:",as_array"`

	Reason string `msgpack:"reason"`
	At     int64  `msgpack:"at"` // Unix milliseconds
	Batch  []byte `msgpack:"batch"`
}

// Open opens (or creates) the queue in opts.Dir and rebuilds its in-memory
// index and counters by scanning the stored records and batches.
func Open(opts Options) (*Queue, error) {
	if opts.Dir == "" {
		return nil, errors.New("queue: Options.Dir is empty")
	}
	if opts.Budget <= 0 {
		return nil, fmt.Errorf("queue: Options.Budget must be positive, got %d", opts.Budget)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	db, err := pebble.Open(opts.Dir, &pebble.Options{
		FormatMajorVersion: pebble.FormatNewest,
		CacheSize:          2 << 20, // sealing reads records mostly from the memtable
		MemTableSize:       4 << 20,
		Logger:             pebbleLogger{log: log.With("component", "pebble")},
		FS:                 opts.FS,
	})
	if err != nil {
		return nil, fmt.Errorf("queue: opening %s: %w", opts.Dir, err)
	}
	q := &Queue{
		db:         db,
		log:        log,
		budget:     opts.Budget,
		appended:   make(chan struct{}, 1),
		commitHook: opts.commitHook,
	}
	q.cond = sync.NewCond(&q.mu)
	if err := q.load(); err != nil {
		_ = db.Close()
		return nil, err
	}
	q.wg.Add(committers)
	for range committers {
		go q.commitLoop()
	}
	return q, nil
}

// load rebuilds counters and indexes from disk.
func (q *Queue) load() error {
	var err error
	if q.nextRecord, err = q.metaUint(metaNextRecord); err != nil {
		return err
	}
	if q.nextBatch, err = q.metaUint(metaNextBatch); err != nil {
		return err
	}
	// Sequences start at 1 so that 0 can mean "none" (Next(0) is "from the start").
	q.nextRecord = max(q.nextRecord, 1)
	q.nextBatch = max(q.nextBatch, 1)
	now := time.Now()
	err = q.scan(famRecord, func(seq uint64, v []byte) error {
		n, err := msgpack.NewDecoder(bytes.NewReader(v)).DecodeArrayLen()
		if err != nil || n < 0 {
			// Seal moves undecodable records aside; count it as one event so
			// the sealer still picks it up.
			n = 1
		}
		size := int64(seqKeyLen + len(v))
		q.records = append(q.records, recordEntry{seq: seq, size: size, events: n, at: now})
		q.bytes += size
		q.events += int64(n)
		q.recEvents += int64(n)
		q.nextRecord = max(q.nextRecord, seq+1)
		return nil
	})
	if err != nil {
		return err
	}
	err = q.scan(famBatch, func(seq uint64, v []byte) error {
		var b wire.Batch
		if err := wire.Unmarshal(v, &b); err != nil {
			// Next moves it to the dead letters; it must not keep the queue
			// (and so the agent) from opening.
			q.log.Error("queue: undecodable batch on disk", "seq", seq, "error", err)
		}
		size := int64(seqKeyLen + len(v))
		q.pending = append(q.pending, batchEntry{seq: seq, size: size, events: int64(b.Count)})
		q.bytes += size
		q.events += int64(b.Count)
		q.nextBatch = max(q.nextBatch, seq+1)
		return nil
	})
	if err != nil {
		return err
	}
	// Dead letters hold used sequences too; never hand one out again.
	err = q.scan(famDead, func(seq uint64, _ []byte) error {
		q.dead.Add(1)
		q.nextBatch = max(q.nextBatch, seq+1)
		return nil
	})
	if err != nil {
		return err
	}
	return q.scan(famDeadRecord, func(uint64, []byte) error {
		q.dead.Add(1)
		return nil
	})
}

func (q *Queue) scan(fam byte, fn func(seq uint64, v []byte) error) error {
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: []byte{fam}, UpperBound: []byte{fam + 1}})
	if err != nil {
		return fmt.Errorf("queue: scanning %q: %w", fam, err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) != seqKeyLen {
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("queue: scanning %q: %w", fam, err)
		}
		if err := fn(binary.BigEndian.Uint64(k[1:]), v); err != nil {
			_ = it.Close()
			return err
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("queue: scanning %q: %w", fam, err)
	}
	return nil
}

func seqKey(fam byte, seq uint64) []byte {
	k := make([]byte, seqKeyLen)
	k[0] = fam
	binary.BigEndian.PutUint64(k[1:], seq)
	return k
}

func metaKey(name string) []byte { return append([]byte{famMeta}, name...) }

func (q *Queue) metaUint(name string) (uint64, error) {
	v, err := q.get(metaKey(name))
	if err != nil || v == nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("queue: meta %s: %d bytes, want 8", name, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// get returns a copy of the value, or nil when the key is absent.
func (q *Queue) get(key []byte) ([]byte, error) {
	v, closer, err := q.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("queue: reading %q: %w", key, err)
	}
	out := bytes.Clone(v)
	if out == nil {
		out = []byte{}
	}
	return out, closer.Close()
}

// Append stores events as one record and returns nil only once the record is
// in a synced Pebble commit. Concurrent Appends share one commit and one
// fsync (group commit). It returns ErrFull, writing nothing, when the record
// would take the queue past its budget.
//
// If ctx ends first Append returns ctx.Err(); the record may still be
// committed, so a caller that retries can duplicate events (the aggregator
// dedupes by event id).
func (q *Queue) Append(ctx context.Context, events []wire.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	data, err := wire.Marshal(events)
	if err != nil {
		return fmt.Errorf("queue: encoding record: %w", err)
	}
	req := &appendReq{data: data, events: len(events), done: make(chan error, 1)}
	size := int64(seqKeyLen + len(data))

	q.mu.Lock()
	if q.closing {
		q.mu.Unlock()
		return ErrClosed
	}
	if q.bytes+q.reserved+size > q.budget {
		q.mu.Unlock()
		return ErrFull
	}
	q.reserved += size
	req.seq = q.nextRecord
	q.nextRecord++
	q.waiting = append(q.waiting, req)
	q.cond.Broadcast()
	q.mu.Unlock()

	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// MaxBatchBytes bounds the stored records one batch takes (at least one
// record is always taken). With max_body_bytes bounded too, a batch stays
// far below what a frame (wire.MaxFrameBody) and the aggregator's decoder
// (wire.MaxPayloadDecoded) accept, even when every record is a large DOM
// snapshot.
const MaxBatchBytes = 4 << 20

// committers is how many group commits may be in flight at once. Pebble
// coalesces the fsyncs of concurrent synced commits, so while one group
// waits for the disk the next is already being written; groups are still
// published to the index (and so to the sealer) in order.
const committers = 4

// commitLoop is one committer: it takes the waiting appends (a group of up
// to defaultMaxGroup bytes), writes them in one Pebble batch, syncs, waits
// for its turn to publish them to the index, and wakes them.
func (q *Queue) commitLoop() {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		for len(q.waiting) == 0 && !q.closing {
			q.cond.Wait()
		}
		if len(q.waiting) == 0 {
			q.mu.Unlock()
			return
		}
		group := q.waiting
		var n, total int
		for n < len(group) && (n == 0 || total+len(group[n].data) <= defaultMaxGroup) {
			total += len(group[n].data) + seqKeyLen
			n++
		}
		group, q.waiting = group[:n:n], group[n:]
		mark := q.ackMarkLocked()
		last := group[n-1].seq
		turn := q.turn
		q.turn++
		q.mu.Unlock()

		if q.commitHook != nil {
			q.commitHook(len(group))
		}
		b := q.db.NewBatchWithSize(total + 64)
		var err error
		for _, r := range group {
			if err = b.Set(seqKey(famRecord, r.seq), r.data, nil); err != nil {
				break
			}
		}
		if err == nil {
			err = b.Set(metaKey(metaNextRecord), u64(last+1), nil)
		}
		if err == nil {
			err = b.Commit(pebble.Sync)
			q.fsyncs.Add(1)
		}
		_ = b.Close()
		if err != nil {
			err = fmt.Errorf("queue: committing %d records: %w", len(group), err)
		}

		now := time.Now()
		q.mu.Lock()
		// Publish in group order, so the index holds records in sequence
		// order and the sealer never sees a later group before an earlier.
		for q.published != turn {
			q.cond.Wait()
		}
		for _, r := range group {
			size := int64(seqKeyLen + len(r.data))
			q.reserved -= size
			if err == nil {
				q.records = append(q.records, recordEntry{seq: r.seq, size: size, events: r.events, at: now})
				q.bytes += size
				q.events += int64(r.events)
				q.recEvents += int64(r.events)
			}
		}
		if err == nil {
			q.syncedLocked(mark)
		}
		q.published++
		q.cond.Broadcast()
		q.mu.Unlock()
		if err == nil {
			q.appends.Add(uint64(len(group)))
			select {
			case q.appended <- struct{}{}:
			default:
			}
		}
		for _, r := range group {
			r.done <- err
		}
	}
}

// ackMarkLocked names every ack whose delete is already in the WAL; take it
// before a synced commit and pass it to syncedLocked after.
func (q *Queue) ackMarkLocked() uint64 { return q.unsyncedBase + uint64(len(q.unsynced)) }

// syncedLocked forgets the unsynced acks before mark: a synced commit that
// started after their deletes made those deletes durable too, since the WAL
// is written in order.
func (q *Queue) syncedLocked(mark uint64) {
	if mark <= q.unsyncedBase {
		return
	}
	n := int(mark - q.unsyncedBase)
	q.unsynced = append(q.unsynced[:0], q.unsynced[n:]...)
	q.unsyncedBase = mark
}

// Appended returns a channel that receives (coalesced) after records were
// committed. It has a single consumer: the sealer.
func (q *Queue) Appended() <-chan struct{} { return q.appended }

// Unsealed reports the records not yet sealed: how many, their events, and
// when the oldest was committed (zero when none). Records found on Open
// count as committed at Open.
func (q *Queue) Unsealed() (records, events int, oldest time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.records) > 0 {
		oldest = q.records[0].at
	}
	return len(q.records), int(q.recEvents), oldest
}

// Seal takes the oldest records — at least one, otherwise whole records up
// to maxEvents events — encodes them into a batch with the next batch
// sequence, and in one synced commit stores the batch, deletes the records
// and advances the sequence. It returns nil, nil when there is nothing to
// seal. A sealed batch never changes: resends carry the same sequence and
// payload, which is what makes the aggregator's (agent, seq) dedupe exact.
func (q *Queue) Seal(maxEvents int) (*wire.Batch, error) {
	q.life.RLock()
	defer q.life.RUnlock()
	if q.closed {
		return nil, ErrClosed
	}
	q.sealMu.Lock()
	defer q.sealMu.Unlock()
	for {
		b, took, err := q.sealOnce(maxEvents)
		// A round of only undecodable records yields no batch; go on.
		if err != nil || b != nil || took == 0 {
			return b, err
		}
	}
}

// sealOnce is one Seal round; took is the number of records consumed.
func (q *Queue) sealOnce(maxEvents int) (batch *wire.Batch, took int, err error) {
	q.mu.Lock()
	var n, count int
	var size int64
	for n < len(q.records) && (n == 0 || (count+q.records[n].events <= maxEvents && size+q.records[n].size <= MaxBatchBytes)) {
		count += q.records[n].events
		size += q.records[n].size
		n++
	}
	take := append([]recordEntry(nil), q.records[:n]...)
	seq := q.nextBatch
	q.mu.Unlock()
	if n == 0 {
		return nil, 0, nil
	}

	// Records are stored as msgpack event arrays; the batch joins their
	// elements without decoding them, which is most of what sealing costs.
	var elements []byte
	var nEvents int
	pb := q.db.NewBatch()
	defer pb.Close()
	var bad int
	it, err := q.db.NewIter(&pebble.IterOptions{
		LowerBound: seqKey(famRecord, take[0].seq),
		UpperBound: seqKey(famRecord, take[n-1].seq+1),
	})
	if err != nil {
		return nil, 0, fmt.Errorf("queue: reading records: %w", err)
	}
	i := 0
	for ok := it.First(); ok && i < n; ok = it.Next() {
		rseq := binary.BigEndian.Uint64(it.Key()[1:])
		if rseq > take[i].seq {
			// The index only holds committed records, so this is a bug or
			// corruption; refuse rather than seal a different set.
			_ = it.Close()
			return nil, 0, fmt.Errorf("queue: record %d missing (found %d)", take[i].seq, rseq)
		}
		// rseq < take[i].seq is a record whose commit reported an error yet
		// landed; its caller saw a failure, but the events are real, so they
		// ride along rather than block the queue. It was never counted.
		extra := rseq < take[i].seq
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return nil, 0, fmt.Errorf("queue: reading record %d: %w", rseq, err)
		}
		if k, body, err := wire.SplitEventArray(v); err != nil {
			// Never silently drop: keep the bytes aside, counted and logged.
			q.log.Error("queue: undecodable record moved to dead letters", "record", rseq, "error", err)
			if err := pb.Set(seqKey(famDeadRecord, rseq), v, nil); err != nil {
				_ = it.Close()
				return nil, 0, err
			}
			bad++
		} else {
			if elements == nil {
				elements = make([]byte, 0, size)
			}
			elements = append(elements, body...)
			nEvents += k
		}
		if err := pb.Delete(seqKey(famRecord, rseq), nil); err != nil {
			_ = it.Close()
			return nil, 0, err
		}
		if !extra {
			i++
		}
	}
	if err := it.Close(); err != nil {
		return nil, 0, fmt.Errorf("queue: reading records: %w", err)
	}
	if i != n {
		return nil, 0, fmt.Errorf("queue: %d of %d records missing from %d", n-i, n, take[0].seq)
	}

	var batchSize int64
	if nEvents > 0 {
		payload := wire.EncodeEventElements(nEvents, elements)
		batch = &wire.Batch{Seq: seq, Count: uint32(nEvents), Codec: wire.CodecZstdMsgpack, Payload: payload}
		val, err := wire.Marshal(batch)
		if err != nil {
			return nil, 0, fmt.Errorf("queue: encoding batch %d: %w", seq, err)
		}
		batchSize = int64(seqKeyLen + len(val))
		if err := pb.Set(seqKey(famBatch, seq), val, nil); err != nil {
			return nil, 0, err
		}
		if err := pb.Set(metaKey(metaNextBatch), u64(seq+1), nil); err != nil {
			return nil, 0, err
		}
	}
	q.mu.Lock()
	mark := q.ackMarkLocked()
	q.mu.Unlock()
	err = pb.Commit(pebble.Sync)
	q.fsyncs.Add(1)
	if err != nil {
		return nil, 0, fmt.Errorf("queue: committing batch %d: %w", seq, err)
	}

	q.mu.Lock()
	q.syncedLocked(mark)
	q.records = q.records[n:]
	for _, r := range take {
		q.bytes -= r.size
		q.events -= int64(r.events)
		q.recEvents -= int64(r.events)
	}
	if batch != nil {
		q.nextBatch = seq + 1
		q.pending = append(q.pending, batchEntry{seq: seq, size: batchSize, events: int64(batch.Count)})
		q.bytes += batchSize
		q.events += int64(batch.Count)
	}
	q.mu.Unlock()
	q.dead.Add(uint64(bad))
	return batch, n, nil
}

// Pending returns the sealed, unacknowledged batches in sequence order. The
// index is kept in memory; payloads are read from Pebble on each call so
// that memory does not grow with the backlog. The forwarder walks the
// backlog one batch at a time with Next instead.
func (q *Queue) Pending() ([]*wire.Batch, error) {
	var out []*wire.Batch
	var after uint64
	for {
		b, err := q.Next(after)
		if err != nil || b == nil {
			return out, err
		}
		out = append(out, b)
		after = b.Seq
	}
}

// Next returns the first pending batch with a sequence above after, or nil
// when there is none. Sequences start at 1, so Next(0) is the oldest.
func (q *Queue) Next(after uint64) (*wire.Batch, error) {
	q.life.RLock()
	defer q.life.RUnlock()
	if q.closed {
		return nil, ErrClosed
	}
	for {
		q.mu.Lock()
		i := sort.Search(len(q.pending), func(i int) bool { return q.pending[i].seq > after })
		if i == len(q.pending) {
			q.mu.Unlock()
			return nil, nil
		}
		seq := q.pending[i].seq
		q.mu.Unlock()
		v, err := q.get(seqKey(famBatch, seq))
		if err != nil {
			return nil, err
		}
		if v == nil {
			// Acked between the index look-up and the read; look further.
			after = seq
			continue
		}
		var b wire.Batch
		if err := wire.Unmarshal(v, &b); err != nil {
			// Damaged on disk: it can never be sent, and must not stop the
			// batches behind it. Kept as a dead letter, counted and logged.
			q.log.Error("queue: undecodable batch moved to dead letters", "seq", seq, "error", err)
			if err := q.quarantine(seq, "undecodable on disk: "+err.Error()); err != nil {
				return nil, err
			}
			after = seq
			continue
		}
		return &b, nil
	}
}

// PendingCount returns how many sealed batches await an ack.
func (q *Queue) PendingCount() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// IsPending reports whether seq is sealed and not yet acked or quarantined.
func (q *Queue) IsPending(seq uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, ok := q.findLocked(seq)
	return ok
}

func (q *Queue) findLocked(seq uint64) (int, bool) {
	i := sort.Search(len(q.pending), func(i int) bool { return q.pending[i].seq >= seq })
	return i, i < len(q.pending) && q.pending[i].seq == seq
}

// Ack deletes an acknowledged batch. The delete is not synced: if a crash
// loses it the batch is resent and the aggregator, which acked it only after
// Raft commit, dedupes it by (agent, seq). Low keeps counting the batch until
// a later synced commit covers the delete, so the aggregator is never told
// it may forget a sequence that could come back.
func (q *Queue) Ack(seq uint64) error {
	q.life.RLock()
	defer q.life.RUnlock()
	if q.closed {
		return ErrClosed
	}
	if !q.IsPending(seq) {
		return fmt.Errorf("%w: %d", ErrNotPending, seq)
	}
	if err := q.db.Delete(seqKey(famBatch, seq), pebble.NoSync); err != nil {
		return fmt.Errorf("queue: deleting batch %d: %w", seq, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if i, ok := q.findLocked(seq); ok {
		e := q.pending[i]
		q.pending = append(q.pending[:i], q.pending[i+1:]...)
		q.bytes -= e.size
		q.events -= e.events
		q.unsynced = append(q.unsynced, seq)
	}
	return nil
}

// Quarantine moves a batch the aggregator permanently rejected to the
// dead-letter family, in a synced commit, and logs it. Nothing is dropped
// silently: dead letters stay on disk for an operator and are counted.
func (q *Queue) Quarantine(seq uint64, reason string) error {
	q.life.RLock()
	defer q.life.RUnlock()
	if q.closed {
		return ErrClosed
	}
	return q.quarantine(seq, reason)
}

// quarantine is Quarantine for callers that hold the life read lock.
func (q *Queue) quarantine(seq uint64, reason string) error {
	if !q.IsPending(seq) {
		return fmt.Errorf("%w: %d", ErrNotPending, seq)
	}
	v, err := q.get(seqKey(famBatch, seq))
	if err != nil {
		return err
	}
	if v == nil {
		return fmt.Errorf("%w: %d", ErrNotPending, seq)
	}
	dl, err := wire.Marshal(&deadLetter{Reason: reason, At: time.Now().UnixMilli(), Batch: v})
	if err != nil {
		return fmt.Errorf("queue: encoding dead letter %d: %w", seq, err)
	}
	pb := q.db.NewBatch()
	defer pb.Close()
	if err := pb.Delete(seqKey(famBatch, seq), nil); err != nil {
		return err
	}
	if err := pb.Set(seqKey(famDead, seq), dl, nil); err != nil {
		return err
	}
	q.mu.Lock()
	mark := q.ackMarkLocked()
	q.mu.Unlock()
	err = pb.Commit(pebble.Sync)
	q.fsyncs.Add(1)
	if err != nil {
		return fmt.Errorf("queue: quarantining batch %d: %w", seq, err)
	}
	var events int64
	q.mu.Lock()
	q.syncedLocked(mark)
	if i, ok := q.findLocked(seq); ok {
		e := q.pending[i]
		events = e.events
		q.pending = append(q.pending[:i], q.pending[i+1:]...)
		q.bytes -= e.size
		q.events -= e.events
	}
	q.mu.Unlock()
	q.quarantined.Add(1)
	q.dead.Add(1)
	q.log.Error("queue: batch quarantined", "seq", seq, "events", events, "reason", reason)
	return nil
}

// Low returns the smallest sequence that may still be sent: the smallest
// pending (or acked but not yet durably deleted) batch, else the next
// sequence to be sealed. Every sequence below it is acked for good.
func (q *Queue) Low() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	low := q.nextBatch
	if len(q.pending) > 0 {
		low = min(low, q.pending[0].seq)
	}
	for _, s := range q.unsynced {
		low = min(low, s)
	}
	return low
}

// Bytes returns the bytes of queued records and batches (keys and values;
// dead letters and Pebble's own overhead are not counted).
func (q *Queue) Bytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes
}

// Events returns the number of queued events, in records and batches.
func (q *Queue) Events() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.events
}

// Budget returns the byte budget the queue was opened with.
func (q *Queue) Budget() int64 { return q.budget }

// Fsyncs counts synced Pebble commits made by this process.
func (q *Queue) Fsyncs() uint64 { return q.fsyncs.Load() }

// Appends counts records committed by this process.
func (q *Queue) Appends() uint64 { return q.appends.Load() }

// Quarantined counts batches quarantined by this process.
func (q *Queue) Quarantined() uint64 { return q.quarantined.Load() }

// DeadLetters counts the dead letters on disk (quarantined batches and
// undecodable records).
func (q *Queue) DeadLetters() uint64 { return q.dead.Load() }

// Meta returns the value stored under key, or nil when there is none.
func (q *Queue) Meta(key string) ([]byte, error) {
	q.life.RLock()
	defer q.life.RUnlock()
	if q.closed {
		return nil, ErrClosed
	}
	return q.get(metaKey(key))
}

// SetMeta stores val under key in a synced commit. Keys starting with
// "queue." are the queue's own.
func (q *Queue) SetMeta(key string, val []byte) error {
	if strings.HasPrefix(key, reservedPrefix) {
		return fmt.Errorf("%w: %q", ErrReservedMeta, key)
	}
	q.life.RLock()
	defer q.life.RUnlock()
	if q.closed {
		return ErrClosed
	}
	q.mu.Lock()
	mark := q.ackMarkLocked()
	q.mu.Unlock()
	err := q.db.Set(metaKey(key), val, pebble.Sync)
	q.fsyncs.Add(1)
	if err != nil {
		return fmt.Errorf("queue: setting meta %q: %w", key, err)
	}
	q.mu.Lock()
	q.syncedLocked(mark)
	q.mu.Unlock()
	return nil
}

// Close commits appends already waiting, then closes Pebble. Later calls
// return ErrClosed from every method; Close itself may be called again.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closing {
		q.mu.Unlock()
		q.wg.Wait()
		return nil
	}
	q.closing = true
	q.cond.Broadcast()
	q.mu.Unlock()
	q.wg.Wait()

	q.life.Lock()
	defer q.life.Unlock()
	if q.closed {
		return nil
	}
	q.closed = true
	if err := q.db.Close(); err != nil {
		return fmt.Errorf("queue: closing: %w", err)
	}
	return nil
}

// pebbleLogger sends Pebble's messages to slog.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...))
}

// Fatalf is called by Pebble on broken invariants (corruption), after which
// it must not continue; panicking lets the process die with the message
// rather than exit from library code.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error(msg)
	panic("pebble: " + msg)
}

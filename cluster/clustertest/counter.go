package clustertest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"

	"github.com/sightline/sightline/cluster"
)

// ErrRejected is the FSM response to the RejectCommand command; Node.Apply
// must hand it back as the error.
var ErrRejected = errors.New("clustertest: command rejected")

// RejectCommand is a command the CounterFSM answers with ErrRejected.
var RejectCommand = []byte("reject")

var (
	keyCount   = []byte("count")
	keyApplied = []byte("applied")
	keySeq     = []byte("seq")
)

// seqTag starts an IncrementCommand; add commands are 8 bytes, so the
// 9-byte form cannot be mistaken for one.
const seqTag = 'q'

// AddCommand returns the command that adds n to the counter. It is not
// idempotent: retry it only when the first try certainly did not commit.
func AddCommand(n uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, n)
}

// IncrementCommand returns the command that adds 1 unless an increment
// with a sequence number at or above seq was already applied, so a client
// may retry it after an ambiguous error (raft.ErrLeadershipLost) the way
// agents retry batches. One writer, increasing seq.
func IncrementCommand(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{seqTag}, seq)
}

// CounterFSM is a raft.BatchingFSM whose state (a counter and the applied
// index) is durable in its own Pebble, the way the aggregator's FSM is: it
// skips entries at or below its applied index, snapshots with
// cluster.CheckpointSnapshot and restores with cluster.RestoreCheckpoint.
type CounterFSM struct {
	dir string

	// mu guards db: Restore swaps it while readers may be in Close.
	mu sync.Mutex
	db *pebble.DB

	count    atomic.Uint64
	applied  atomic.Uint64
	seq      atomic.Uint64 // highest IncrementCommand sequence applied
	minSeen  atomic.Uint64 // lowest index delivered since open, 0 if none
	skipped  atomic.Uint64 // entries delivered at or below the applied index
	batches  atomic.Uint64 // ApplyBatch calls
	restores atomic.Uint64
}

var _ raft.BatchingFSM = (*CounterFSM)(nil)

// OpenCounterFSM opens (or creates) the counter's state in dir.
func OpenCounterFSM(dir string) (*CounterFSM, error) {
	// A crash may have left a checkpoint or a half-done restore behind.
	for _, d := range []string{"scratch", "restore"} {
		if err := os.RemoveAll(filepath.Join(dir, d)); err != nil {
			return nil, err
		}
	}
	f := &CounterFSM{dir: dir}
	if err := f.open(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *CounterFSM) open() error {
	db, err := pebble.Open(filepath.Join(f.dir, "state"), &pebble.Options{Logger: quietPebble{}})
	if err != nil {
		return fmt.Errorf("clustertest: open counter: %w", err)
	}
	var vals [3]uint64
	for i, key := range [][]byte{keyCount, keyApplied, keySeq} {
		if vals[i], err = getUint64(db, key); err != nil {
			_ = db.Close()
			return fmt.Errorf("clustertest: open counter: %w", err)
		}
	}
	f.count.Store(vals[0])
	f.applied.Store(vals[1])
	f.seq.Store(vals[2])
	f.db = db
	return nil
}

func getUint64(db *pebble.DB, key []byte) (uint64, error) {
	v, closer, err := db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer func() { _ = closer.Close() }()
	if len(v) != 8 {
		return 0, fmt.Errorf("key %s: %d bytes", key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// Count returns the counter.
func (f *CounterFSM) Count() uint64 { return f.count.Load() }

// Applied returns the index of the last entry applied.
func (f *CounterFSM) Applied() uint64 { return f.applied.Load() }

// MinSeen returns the lowest log index raft delivered since open, 0 if none.
func (f *CounterFSM) MinSeen() uint64 { return f.minSeen.Load() }

// Skipped returns how many delivered entries were at or below the applied
// index (replays after a restart).
func (f *CounterFSM) Skipped() uint64 { return f.skipped.Load() }

// Batches returns how many ApplyBatch calls raft made.
func (f *CounterFSM) Batches() uint64 { return f.batches.Load() }

// Restores returns how many times Restore ran.
func (f *CounterFSM) Restores() uint64 { return f.restores.Load() }

// Apply applies one entry.
func (f *CounterFSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies entries in one Pebble batch. Commands are AddCommand,
// IncrementCommand (response: the count) or RejectCommand (response:
// ErrRejected).
func (f *CounterFSM) ApplyBatch(logs []*raft.Log) []any {
	f.batches.Add(1)
	resp := make([]any, len(logs))
	count, applied, seq := f.count.Load(), f.applied.Load(), f.seq.Load()
	for i, l := range logs {
		if m := f.minSeen.Load(); m == 0 || l.Index < m {
			f.minSeen.Store(l.Index)
		}
		if l.Index <= applied {
			f.skipped.Add(1)
			continue
		}
		applied = l.Index
		if l.Type != raft.LogCommand {
			continue
		}
		switch {
		case len(l.Data) == 8:
			count += binary.BigEndian.Uint64(l.Data)
			resp[i] = count
		case len(l.Data) == 9 && l.Data[0] == seqTag:
			if q := binary.BigEndian.Uint64(l.Data[1:]); q > seq {
				seq = q
				count++
			}
			resp[i] = count
		case string(l.Data) == string(RejectCommand):
			resp[i] = ErrRejected
		default:
			resp[i] = fmt.Errorf("clustertest: undecodable command of %d bytes", len(l.Data))
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.db.NewBatch()
	defer func() { _ = b.Close() }()
	_ = b.Set(keyCount, binary.BigEndian.AppendUint64(nil, count), nil)
	_ = b.Set(keyApplied, binary.BigEndian.AppendUint64(nil, applied), nil)
	_ = b.Set(keySeq, binary.BigEndian.AppendUint64(nil, seq), nil)
	// NoSync: the raft log replays anything lost, and CheckpointSnapshot
	// syncs the WAL before raft may drop those entries.
	if err := b.Commit(pebble.NoSync); err != nil {
		for i := range resp {
			resp[i] = fmt.Errorf("clustertest: commit: %w", err)
		}
		return resp
	}
	f.count.Store(count)
	f.applied.Store(applied)
	f.seq.Store(seq)
	return resp
}

// Snapshot checkpoints the state.
func (f *CounterFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return cluster.CheckpointSnapshot(f.db, filepath.Join(f.dir, "scratch"))
}

// Restore replaces the state with a checkpoint stream.
func (f *CounterFSM) Restore(rc io.ReadCloser) error {
	defer func() { _ = rc.Close() }()
	tmp := filepath.Join(f.dir, "restore")
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := cluster.RestoreCheckpoint(rc, tmp); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.db.Close(); err != nil {
		return err
	}
	state := filepath.Join(f.dir, "state")
	if err := os.RemoveAll(state); err != nil {
		return err
	}
	if err := os.Rename(tmp, state); err != nil {
		return err
	}
	if err := f.open(); err != nil {
		return err
	}
	f.restores.Add(1)
	return nil
}

// Close closes the Pebble state.
func (f *CounterFSM) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db == nil {
		return nil
	}
	err := f.db.Close()
	f.db = nil
	return err
}

// quietPebble drops Pebble's informational logging in tests.
type quietPebble struct{}

func (quietPebble) Infof(string, ...any)  {}
func (quietPebble) Errorf(string, ...any) {}
func (quietPebble) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}

package aggregator

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"

	"github.com/hashicorp/raft"

	"github.com/sightline/sightline/cluster"
)

// FSM adapts the Processor to hashicorp/raft. It is thin on purpose: all
// behaviour lives in the processor, which tests drive without Raft.
type FSM struct {
	store   *Store
	proc    *Processor
	scratch string
	logger  *slog.Logger
	onFatal func(error)
}

// NewFSM returns the raft state machine over store. onFatal is called when
// a committed entry cannot be applied: the node must stop rather than
// diverge from its peers.
func NewFSM(store *Store, dataDir string, logger *slog.Logger, onFatal func(error)) *FSM {
	return &FSM{
		store:   store,
		proc:    NewProcessor(store),
		scratch: filepath.Join(dataDir, "snapshots-scratch"),
		logger:  logger,
		onFatal: onFatal,
	}
}

var _ raft.BatchingFSM = (*FSM)(nil)

// ApplyBatch implements raft.BatchingFSM.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	entries := make([]Entry, 0, len(logs))
	pos := make([]int, 0, len(logs))
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		entries = append(entries, Entry{Index: l.Index, Data: l.Data})
		pos = append(pos, i)
	}
	if len(entries) == 0 {
		return out
	}
	res, err := f.proc.Apply(entries)
	if err != nil {
		f.logger.Error("cannot apply committed entries; stopping this node", "first", entries[0].Index, "error", err)
		f.onFatal(err)
		for i := range out {
			out[i] = fmt.Errorf("apply failed: %w", err)
		}
		return out
	}
	for j, r := range res {
		out[pos[j]] = r
	}
	return out
}

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// Snapshot implements raft.FSM with a Pebble checkpoint. Raft calls it on
// the FSM goroutine, so the checkpoint is exactly the applied state.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	var snap raft.FSMSnapshot
	err := f.store.withDB(func(db *pebbleDB) error {
		var err error
		snap, err = cluster.CheckpointSnapshot(db, f.scratch)
		return err
	})
	return snap, err
}

// Restore implements raft.FSM.
func (f *FSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	return f.store.Restore(r, cluster.RestoreCheckpoint)
}

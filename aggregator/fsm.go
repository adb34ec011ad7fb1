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

// AppliedIndex is the Raft index the state reflects, for cluster.Start to
// tell whether the newest snapshot must be restored first.
func (f *FSM) AppliedIndex() (uint64, error) { return f.store.AppliedIndex() }

// ApplyBatch implements raft.BatchingFSM.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	entries := make([]Entry, len(logs))
	for i, l := range logs {
		entries[i].Index = l.Index
		if l.Type == raft.LogCommand {
			entries[i].Data = l.Data
			if entries[i].Data == nil {
				entries[i].Data = []byte{} // still a command, and an invalid one
			}
		}
	}
	res, err := f.proc.Apply(entries)
	if err != nil {
		f.logger.Error("cannot apply committed entries; stopping this node", "first", entries[0].Index, "error", err)
		f.onFatal(err)
		out := make([]any, len(logs))
		for i := range out {
			out[i] = fmt.Errorf("apply failed: %w", err)
		}
		return out
	}
	return res
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

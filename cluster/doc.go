// Package cluster owns the hashicorp/raft glue: the Pebble-backed log and
// stable store (LogStore), starting a raft Node with its TCP transport and
// file snapshot store, leader errors with hints (NotLeaderError), membership
// changes, and Pebble-checkpoint snapshots for an FSM whose state lives in
// its own Pebble (CheckpointSnapshot, RestoreCheckpoint).
//
// It must not know what the commands mean: the FSM is the aggregator's. It
// does no HTTP and no wire protocol; forwarding a write to the leader is the
// caller's job, using the hint in NotLeaderError.
//
// Why NoSnapshotRestoreOnStart: the FSM's state is durable in its own Pebble
// and records the index of the last entry it applied. Raft would otherwise
// restore the newest snapshot into the FSM on every start — copying the
// whole database back over a newer one. With the option set, raft only
// moves its applied index to the snapshot's and replays the log entries
// after it. The FSM therefore must (1) skip any entry whose index is not
// above its stored applied index, since entries it had applied after the
// snapshot are replayed, and (2) have everything up to a snapshot's index
// on disk when the snapshot is taken, because raft may then drop those log
// entries. CheckpointSnapshot syncs Pebble's WAL before checkpointing, which
// gives (2) even when the FSM commits with pebble.NoSync.
//
// The FSM's Restore (a follower catching up by InstallSnapshot) should
// RestoreCheckpoint into a fresh directory, close its current Pebble, swap
// the directories, and reopen: the snapshot carries its own applied index.
package cluster

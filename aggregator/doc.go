// Package aggregator owns the replicated state machine and what is built on
// it: the Raft command envelope, the processor that applies commands to the
// node's Pebble state (deduping by (agent, sequence) and by event id), the
// wire handler that acks a batch only after its Raft commit, and the admin
// HTTP API.
//
// It must not read clocks, randomness or anything but its store inside
// Apply, and must never run leader-only work on a follower. Raft mechanics
// (log store, transport, snapshots) live in package cluster; see DESIGN.md.
package aggregator

// Package queue is the agent's durable on-disk queue: one Pebble instance
// holding accepted requests (records) until they are sealed into numbered
// batches, and sealed batches until the aggregator acknowledges them.
//
// It owns durability (Append returns only after a synced commit shared by
// every concurrent caller), the batch sequence (never reused, persisted in
// the same commit that seals), and the disk budget. It must not know about
// HTTP, the network or the aggregator: the agent decides what to accept and
// the forwarder decides when to seal, send and ack.
package queue

// Package clustertest holds test helpers for code built on package cluster:
// a logger that shows output only when a test fails, a durable counter FSM
// (Pebble state, checkpoint snapshots, applied-index skipping) and helpers
// that start one node or an N-node raft cluster on loopback in temp dirs.
//
// It is imported by tests only and must not be imported by production code.
package clustertest

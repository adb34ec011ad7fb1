// Command sightline-bench is `make bench`: it measures Sightline's
// performance figures and prints each beside its target (ARCHITECTURE.md)
// and beside the raw baseline of this machine measured in the same run
// (raw Pebble synced commits, a bare net/http handler), with their ratio.
//
//	go run ./cmd/sightline-bench [-quick] [-only pebble,http,wire,agent,latency,aggregator,rss]
//
// Figures: agent single-event requests/s and batched events/s against an
// in-process agent whose Sender acks at once; durable-ack latency at a fixed
// open-loop rate; wire bytes per DXA event; one aggregator node's committed
// events/s over real QUIC; and the real binary's agent RSS under load and
// during an aggregator outage. Progress goes to stderr, the table to stdout.
//
// It owns measurement only: it drives the packages through their public API
// and the binary through its command line, never changes their settings,
// and asserts nothing. It exits 0 unless a measurement itself broke.
package main

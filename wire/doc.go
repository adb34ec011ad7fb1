// Package wire owns everything that crosses the network between agents and
// aggregators: the event model as it travels, the framed messages (magic,
// version, explicit type numbers, length, CRC32C, msgpack body), zstd batch
// payloads, the QUIC client and server (ALPN "sightline/1", TLS 1.3 with
// mutual auth), and the cluster CA helpers behind `sightline ca init`.
//
// It imports nothing of ours. It must not know about storage, Raft or HTTP:
// the aggregator and the agent plug handlers into it.
//
// Encoding rules: structs travel as msgpack arrays (field order is the
// format, so fields are only ever appended), message type numbers are
// written out and never reused, and golden byte tests pin every message.
// Decoding skips elements past the known fields and leaves missing ones
// zero (compat.go), so peers one version apart understand each other, and
// every body is structure-checked before decoding (check.go) so hostile
// lengths cannot make it allocate.
//
// Requests: one bidirectional QUIC stream per request; the client writes
// one frame and closes its side, the server answers with one frame
// (MsgAck, MsgConfig or MsgError with a stable code) and closes.
package wire

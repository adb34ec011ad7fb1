// Package agent is the Sightline edge agent: it takes events from pages over
// HTTP (POST /v1/collect), validates them, stores them durably in its queue
// (package agent/queue) and forwards them in sealed, numbered batches to the
// aggregator cluster, which it also long-polls for the site configuration.
//
// It answers 202 only after a synced commit, never deletes a batch before
// the aggregator acks it, and answers 503 with Retry-After instead of
// dropping data when its disk budget is spent (shedding rrweb replay data
// before analytics events once the queue passes shed_fraction). See
// DESIGN.md.
//
// Requests without an Origin header are accepted for any configured site:
// they come from server-side senders, not browsers, and CORS cannot apply
// to them. A request with an Origin must name one of its site's origins.
//
// It must not talk to the network itself: the aggregator connection comes in
// through the Sender and ConfigSource interfaces (the wire QUIC client in
// production, fakes in tests). It owns no storage format beyond its queue.
package agent

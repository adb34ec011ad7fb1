package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sightline/sightline/aggregator"
	"github.com/sightline/sightline/wire"
)

type aggFigure struct {
	eps   float64
	notes []string
}

// encodeBatches pre-encodes up to max distinct 1,000-event payloads (ten
// interleaved sessions each, fresh random ids throughout, since the
// aggregator dedupes by event id) or as many as fit in budget.
func encodeBatches(ctx context.Context, max int, budget time.Duration) ([][]byte, error) {
	start := time.Now()
	var out [][]byte
	events := make([]wire.Event, 1000)
	for i := 0; i < max && time.Since(start) < budget && ctx.Err() == nil; i++ {
		gens := make([]*dxaGen, 10)
		for j := range gens {
			gens[j] = newDXAGen(uint64(i*10+j)+uint64(start.UnixNano()), start.UnixMilli()-3600_000)
		}
		for j := range events {
			events[j] = gens[j%len(gens)].next()
		}
		payload, err := wire.EncodeEvents(events)
		if err != nil {
			return nil, err
		}
		out = append(out, payload)
	}
	return out, ctx.Err()
}

// benchAggregator is figure 5: one in-process aggregator node (bootstrapped
// single-node Raft in a temp dir, certificates from wire.InitCA) and
// p.aggSenders wire.Clients, each its own QUIC connection and agent id,
// pushing pre-encoded 1,000-event batches; counts acked events per second.
func benchAggregator(ctx context.Context, p *plan, dir string) (*aggFigure, error) {
	root := filepath.Join(dir, "aggregator")
	tlsDir := filepath.Join(root, "tls")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	if err := wire.InitCA(tlsDir, nil); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(root, "aggregator.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	logger := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := aggregator.DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.TLSDir, cfg.Bootstrap = "bench", filepath.Join(root, "n1"), tlsDir, true
	cfg.HTTP, cfg.Wire, cfg.Raft = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	node, err := aggregator.New(cfg, logger)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- node.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			progress("aggregator stopped with: %v", err)
		}
	}()

	// Encoding costs the CPU the node needs, so it all happens before the
	// clock starts; the budget bounds the run, and a node faster than the
	// pre-encoded batches last simply finishes early (rate is acked/time).
	budget := 3 * time.Second
	if p.quick {
		budget = time.Second
	}
	progress("aggregator: pre-encoding up to %d batches of 1,000 events (at most %v) while Raft elects", p.aggBatches, budget)
	t := time.Now()
	payloads, err := encodeBatches(ctx, p.aggBatches, budget)
	if err != nil {
		return nil, err
	}
	encodeEach := time.Since(t) / time.Duration(max(1, len(payloads)))

	clientTLS, err := wire.ClientTLS(tlsDir, "agent")
	if err != nil {
		return nil, err
	}
	clients := make([]*wire.Client, p.aggSenders)
	for i := range clients {
		clients[i] = wire.NewClient([]string{node.WireAddr()}, clientTLS, logger)
		defer clients[i].Close()
	}
	// One probe batch, repeated until the node leads and commits it.
	probe, err := wire.EncodeEvents([]wire.Event{newDXAGen(1, time.Now().UnixMilli()).next()})
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ack, err := clients[0].SendBatch(ctx, &wire.Batch{AgentID: "bench-probe", Seq: 1, Low: 1, Count: 1, Codec: wire.CodecZstdMsgpack, Payload: probe})
		if err == nil && ack.Status == wire.AckOK {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no committed probe batch after 30s (last: ack %+v, error %v)", ack, err)
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return nil, ctx.Err()
		}
	}

	progress("aggregator: %d senders pushing %d pre-encoded batches over QUIC (at most %v)", p.aggSenders, len(payloads), p.aggDur)
	var next, acked, retries atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	var lastAck atomic.Int64
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			agentID := fmt.Sprintf("bench-agent-%d", i)
			var seq uint64
			var my []time.Duration
			defer func() { mu.Lock(); lat = append(lat, my...); mu.Unlock() }()
			for ctx.Err() == nil && time.Since(start) < p.aggDur {
				k := int(next.Add(1)) - 1
				if k >= len(payloads) {
					return
				}
				seq++
				b := &wire.Batch{AgentID: agentID, Seq: seq, Low: seq, Count: 1000, Codec: wire.CodecZstdMsgpack, Payload: payloads[k]}
				for attempt := 0; ; attempt++ {
					t := time.Now()
					ack, err := c.SendBatch(ctx, b)
					if err == nil && ack.Status == wire.AckOK {
						my = append(my, time.Since(t))
						acked.Add(1000)
						lastAck.Store(int64(time.Since(start)))
						break
					}
					if err == nil {
						err = fmt.Errorf("batch %s/%d: ack status %d: %s", agentID, seq, ack.Status, ack.Message)
					}
					if (ack != nil && ack.Status == wire.AckRejected) || attempt >= 50 || ctx.Err() != nil {
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
						return
					}
					retries.Add(1)
					if !sleepCtx(ctx, 20*time.Millisecond) {
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	elapsed := time.Duration(lastAck.Load())
	if elapsed <= 0 || acked.Load() == 0 {
		return nil, errors.New("no batch acked")
	}
	f := &aggFigure{eps: float64(acked.Load()) / elapsed.Seconds()}
	st, err := node.Store().Stats(benchSite)
	if err != nil {
		return nil, fmt.Errorf("reading committed stats: %w", err)
	}
	if want := uint64(acked.Load()) + 1; st.Events != want {
		return nil, fmt.Errorf("store counts %d committed events, acked were %d (+1 probe)", st.Events, acked.Load())
	}
	slices.Sort(lat)
	f.notes = append(f.notes, fmt.Sprintf("aggregator: one bootstrapped node in this process (Raft log and FSM state on Pebble), %d wire.Clients (own QUIC connection and agent id each) "+
		"sending %s pre-encoded batches of 1,000 events (encoding took %v each, before the clock started) over %v; the store's committed count matches the acks; "+
		"batch ack latency p50 %s, p99 %s; %d retries; senders share the 2 CPUs with the node",
		p.aggSenders, commas(acked.Load()/1000), encodeEach.Round(10*time.Microsecond), elapsed.Round(time.Millisecond),
		ms(percentile(lat, 0.5)), ms(percentile(lat, 0.99)), retries.Load()))
	return f, ctx.Err()
}

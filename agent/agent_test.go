package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sightline/sightline/agent/queue"
	"github.com/sightline/sightline/wire"
)

// metricValue reads one series from reg; labels are name=value pairs.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

// httpPost posts a JSON collect body to a running agent.
func httpPost(t *testing.T, base string, v any) (int, http.Header, string) {
	t.Helper()
	resp, err := http.Post(base+"/v1/collect", "application/json", bytes.NewReader(mustJSON(t, v)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// uniqueBody is a request of n click events with ids prefix-0…
func uniqueBody(prefix string, n int) map[string]any {
	m := body(n)
	now := time.Now().UnixMilli()
	for i, e := range m["events"].([]any) {
		e.(map[string]any)["id"] = fmt.Sprintf("%s-%d", prefix, i)
		e.(map[string]any)["ts"] = now
	}
	return m
}

// TestAcceptedIsDurable: every 202 means the events are in the queue on
// disk; reopening the data dir finds each of them.
func TestAcceptedIsDurable(t *testing.T) {
	dir := t.TempDir()
	a := newAgent(t, testConfig(dir), nil, newFakeSource(demoConfig))
	if err := a.setConfig(demoConfig); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted := map[string]bool{}
	for w := range 16 {
		wg.Go(func() {
			for i := range 10 {
				prefix := fmt.Sprintf("w%d-r%d", w, i)
				m := uniqueBody(prefix, 3)
				resp := post(a.Agent, mustJSON(t, m), nil)
				if resp.Code != http.StatusAccepted {
					t.Errorf("status %d: %s", resp.Code, resp.Body)
					return
				}
				mu.Lock()
				for j := range 3 {
					accepted[fmt.Sprintf("%s-%d", prefix, j)] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if got := metricValue(t, a.reg, "sightline_agent_events_accepted_total"); int(got) != len(accepted) {
		t.Fatalf("events_accepted_total = %v, want %d", got, len(accepted))
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	q, err := queue.Open(queue.Options{Dir: filepath.Join(dir, "queue"), Budget: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	found := map[string]bool{}
	for {
		b, err := q.Seal(1000)
		if err != nil {
			t.Fatal(err)
		}
		if b == nil {
			break
		}
		evs, err := wire.DecodeEvents(b.Codec, b.Payload)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			found[e.ID] = true
		}
	}
	if len(found) != len(accepted) || len(accepted) != 16*10*3 {
		t.Fatalf("reopened queue has %d events, %d were accepted", len(found), len(accepted))
	}
	for id := range accepted {
		if !found[id] {
			t.Fatalf("accepted event %s missing after reopen", id)
		}
	}
	if q.Fsyncs() == 0 {
		t.Fatal("no synced commits")
	}
}

// TestDiskBudget: with the aggregator away the queue fills to its budget,
// the agent answers 503 with Retry-After, and accepts again once the
// aggregator acks.
func TestDiskBudget(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.MaxBodyBytes = 8 << 10
	cfg.DiskBudget = 32 << 10
	cfg.ShedFraction = 1
	sender := newFakeSender()
	var away sync.Mutex
	awayFlag := true
	sender.setBehave(func(b *wire.Batch, _ int) (*wire.Ack, error) {
		away.Lock()
		defer away.Unlock()
		if awayFlag {
			return &wire.Ack{Seq: b.Seq, Status: wire.AckUnavailable, Message: "no quorum"}, nil
		}
		return &wire.Ack{Seq: b.Seq, Status: wire.AckOK}, nil
	})
	a := newAgent(t, cfg, sender, newFakeSource(demoConfig))
	base, _ := run(t, a)
	waitFor(t, 10*time.Second, func() bool { return a.sites.Load() != nil })

	accepted := 0
	var hdr http.Header
	var text string
	for i := 0; ; i++ {
		if i > 10000 {
			t.Fatal("budget never reached")
		}
		m := uniqueBody(fmt.Sprintf("r%d", i), 5)
		ev0(m)["value"] = strings.Repeat(fmt.Sprint(i), 200) // some bulk per request
		code, h, b := httpPost(t, base, m)
		if code == http.StatusServiceUnavailable {
			hdr, text = h, b
			break
		}
		if code != http.StatusAccepted {
			t.Fatalf("status %d: %s", code, b)
		}
		accepted += 5
	}
	if hdr.Get("Retry-After") == "" || !strings.Contains(text, codeQueueFull) {
		t.Fatalf("503 without Retry-After or queue_full: %v %s", hdr, text)
	}
	if metricValue(t, a.reg, "sightline_agent_rejected_total", "reason", codeQueueFull) < 1 {
		t.Fatal("queue_full not counted")
	}

	away.Lock()
	awayFlag = false
	away.Unlock()
	waitFor(t, 20*time.Second, func() bool { return sender.applyCount() == accepted })
	code, _, b := httpPost(t, base, uniqueBody("after", 5))
	if code != http.StatusAccepted {
		t.Fatalf("after the aggregator caught up: %d %s", code, b)
	}
	waitFor(t, 20*time.Second, func() bool { return sender.applyCount() == accepted+5 })
	checkSender(t, sender)
}

func checkSender(t *testing.T, s *fakeSender) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.problems {
		t.Error(p)
	}
	for id, n := range s.events {
		if n != 1 {
			t.Errorf("event %s applied %d times", id, n)
		}
	}
}

// TestShedding: past shed_fraction of the budget, rrweb events are dropped
// (and counted) while analytics events are still accepted.
func TestShedding(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.MaxBodyBytes = 8 << 10
	cfg.DiskBudget = 64 << 10
	cfg.ShedFraction = 0.1
	a := newAgent(t, cfg, nil, nil)
	if err := a.setConfig(demoConfig); err != nil {
		t.Fatal(err)
	}
	mixed := func(prefix string) []byte {
		m := uniqueBody(prefix, 2)
		e := ev0(m)
		e["type"] = "rrweb"
		e["rrweb"] = map[string]any{"type": 3, "data": map[string]any{"source": 1, "pad": strings.Repeat("p", 500)}}
		return mustJSON(t, m)
	}
	// Below the threshold both kinds go in.
	if w := post(a.Agent, mixed("first"), nil); w.Code != http.StatusAccepted || strings.TrimSpace(w.Body.String()) != `{"accepted":2}` {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	for i := 0; float64(a.q.Bytes()) <= cfg.ShedFraction*float64(cfg.DiskBudget); i++ {
		m := uniqueBody(fmt.Sprintf("fill%d", i), 5)
		if w := post(a.Agent, mustJSON(t, m), nil); w.Code != http.StatusAccepted {
			t.Fatalf("fill: %d %s", w.Code, w.Body)
		}
	}
	w := post(a.Agent, mixed("late"), nil)
	if w.Code != http.StatusAccepted || strings.TrimSpace(w.Body.String()) != `{"accepted":1,"shed":1}` {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if got := metricValue(t, a.reg, "sightline_agent_shed_events_total"); got != 1 {
		t.Fatalf("shed_events_total = %v", got)
	}
	if got := metricValue(t, a.reg, "sightline_agent_shed_bytes_total"); got < 500 {
		t.Fatalf("shed_bytes_total = %v", got)
	}
	// Only rrweb events: nothing queued, all counted.
	m := uniqueBody("rr", 1)
	ev0(m)["type"], ev0(m)["rrweb"] = "rrweb", map[string]any{"type": 4}
	before := a.q.Events()
	if w := post(a.Agent, mustJSON(t, m), nil); w.Code != http.StatusAccepted || strings.TrimSpace(w.Body.String()) != `{"accepted":0,"shed":1}` {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if a.q.Events() != before {
		t.Fatal("shed request queued events")
	}
	for _, e := range sealAll(t, a.Agent) {
		if e.Type == wire.TypeRRWeb && strings.HasPrefix(e.ID, "late") {
			t.Fatal("shed rrweb event reached the queue")
		}
	}
}

// flakySender answers like an aggregator on a bad day: transport errors,
// lost acks after commit, unavailable and not-leader answers.
func flaky(seed uint64) func(b *wire.Batch, attempt int) (*wire.Ack, error) {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, seed))
	return func(b *wire.Batch, attempt int) (*wire.Ack, error) {
		mu.Lock()
		p := rng.IntN(100)
		mu.Unlock()
		switch {
		case p < 20:
			return nil, errors.New("fake: connection refused")
		case p < 30:
			return nil, errLostAck
		case p < 45:
			return &wire.Ack{Seq: b.Seq, Status: wire.AckUnavailable, Message: "electing"}, nil
		case p < 50:
			return &wire.Ack{Seq: b.Seq, Status: wire.AckNotLeader, Leader: "127.0.0.1:1"}, nil
		}
		return &wire.Ack{Seq: b.Seq, Status: wire.AckOK}, nil
	}
}

// TestForwarderExactlyOnce: against a flaky aggregator every accepted event
// is applied exactly once, resends carry the same seq and payload, and the
// queue ends empty.
func TestForwarderExactlyOnce(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.BatchMaxEvents = 7
	sender := newFakeSender()
	sender.setBehave(flaky(42))
	a := newAgent(t, cfg, sender, newFakeSource(demoConfig))
	base, _ := run(t, a)
	waitFor(t, 10*time.Second, func() bool { return a.sites.Load() != nil })

	want := map[string]wire.Event{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 25 {
				m := uniqueBody(fmt.Sprintf("w%d-%d", w, i), 1+(w+i)%5)
				code, _, b := httpPost(t, base, m)
				if code != http.StatusAccepted {
					t.Errorf("%d %s", code, b)
					return
				}
				mu.Lock()
				for _, e := range m["events"].([]any) {
					e := e.(map[string]any)
					want[e["id"].(string)] = wire.Event{ID: e["id"].(string), TS: e["ts"].(int64)}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	waitFor(t, 30*time.Second, func() bool {
		return sender.applyCount() == len(want) && a.q.Events() == 0
	})
	checkSender(t, sender)
	sender.mu.Lock()
	defer sender.mu.Unlock()
	for _, e := range sender.ordered {
		w, ok := want[e.ID]
		if !ok || w.TS != e.TS || e.Site != "demo" || e.Session != "sess-1" {
			t.Fatalf("applied event %+v does not match what was posted", e)
		}
	}
	retried := 0
	for _, n := range sender.attempts {
		if n > 1 {
			retried++
		}
	}
	if retried == 0 {
		t.Fatal("no batch was retried; the fake never failed")
	}
	if got := metricValue(t, a.reg, "sightline_agent_forward_retries_total"); got == 0 {
		t.Fatal("retries not counted")
	}
	if got := metricValue(t, a.reg, "sightline_agent_events_acked_total"); int(got) != len(want) {
		t.Fatalf("events_acked_total %v, want %d", got, len(want))
	}
}

// TestRestartResumesPending: batches sealed while the aggregator was away
// are sent after a restart with their original seq and payload.
func TestRestartResumesPending(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.BatchMaxEvents = 4
	away := newFakeSender()
	away.setBehave(func(b *wire.Batch, _ int) (*wire.Ack, error) { return nil, errors.New("fake: no route") })
	a1 := newAgent(t, cfg, away, newFakeSource(demoConfig))
	base, stop := run(t, a1)
	waitFor(t, 10*time.Second, func() bool { return a1.sites.Load() != nil })
	total := 0
	for i := range 10 {
		code, _, b := httpPost(t, base, uniqueBody(fmt.Sprintf("r%d", i), 3))
		if code != http.StatusAccepted {
			t.Fatalf("%d %s", code, b)
		}
		total += 3
	}
	waitFor(t, 10*time.Second, func() bool {
		n, _, _ := a1.q.Unsealed()
		return n == 0 && away.sendCount() >= a1.q.PendingCount()
	})
	id := a1.ID()
	stop()

	back := newFakeSender()
	a2 := newAgent(t, cfg, back, newFakeSource(demoConfig))
	if a2.ID() != id {
		t.Fatalf("agent id changed across restart: %s → %s", id, a2.ID())
	}
	run(t, a2)
	waitFor(t, 20*time.Second, func() bool { return back.applyCount() == total && a2.q.Events() == 0 })
	checkSender(t, back)
	away.mu.Lock()
	defer away.mu.Unlock()
	back.mu.Lock()
	defer back.mu.Unlock()
	for seq, p := range away.payloads {
		if q, ok := back.payloads[seq]; !ok || !bytes.Equal(p, q) {
			t.Fatalf("batch %d not resent with the same payload after restart", seq)
		}
	}
}

// TestConfigPersisted: the site config survives a restart, so an agent
// whose aggregators are away still accepts events; new versions are
// swapped in.
func TestConfigPersisted(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	src := newFakeSource(demoConfig)
	a1 := newAgent(t, cfg, nil, src)
	base, stop := run(t, a1)
	waitFor(t, 10*time.Second, func() bool { return a1.sites.Load() != nil })

	v2 := &wire.Config{Version: 2, Sites: append(append([]wire.Site{}, demoConfig.Sites...), wire.Site{ID: "shop", Origins: []string{"https://shop.example"}})}
	src.set(v2, nil)
	waitFor(t, 10*time.Second, func() bool {
		resp, err := http.Get(base + "/v1/config?site=shop")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	stop()

	down := newFakeSource(nil)
	down.set(nil, errors.New("fake: aggregators unreachable"))
	a2 := newAgent(t, cfg, nil, down)
	base2, _ := run(t, a2)
	resp, err := http.Get(base2 + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("readyz %d after restart with a stored config", resp.StatusCode)
	}
	m := uniqueBody("x", 1)
	m["site"] = "shop"
	if code, _, b := httpPost(t, base2, m); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, b)
	}
	waitFor(t, 10*time.Second, func() bool { return metricValue(t, a2.reg, "sightline_agent_config_fetch_errors_total") > 0 })
}

func TestQuarantine(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.BatchMaxEvents = 1
	sender := newFakeSender()
	sender.setBehave(func(b *wire.Batch, _ int) (*wire.Ack, error) {
		evs, _ := wire.DecodeEvents(b.Codec, b.Payload)
		if len(evs) == 1 && evs[0].ID == "poison-0" {
			return &wire.Ack{Seq: b.Seq, Status: wire.AckRejected, Message: "site deleted"}, nil
		}
		return &wire.Ack{Seq: b.Seq, Status: wire.AckOK}, nil
	})
	a := newAgent(t, cfg, sender, newFakeSource(demoConfig))
	base, _ := run(t, a)
	waitFor(t, 10*time.Second, func() bool { return a.sites.Load() != nil })
	for _, p := range []string{"ok1", "poison", "ok2"} {
		if code, _, b := httpPost(t, base, uniqueBody(p, 1)); code != http.StatusAccepted {
			t.Fatalf("%d %s", code, b)
		}
	}
	waitFor(t, 10*time.Second, func() bool { return a.q.Events() == 0 && a.q.DeadLetters() == 1 })
	if got := metricValue(t, a.reg, "sightline_agent_quarantined_batches_total"); got != 1 {
		t.Fatalf("quarantined_batches_total = %v", got)
	}
	if sender.applyCount() != 2 {
		t.Fatalf("applied %d events, want 2", sender.applyCount())
	}
}

func TestAgentID(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.AgentID = "edge-1"
	a := newAgent(t, cfg, nil, nil)
	first := a.ID()
	if !strings.HasPrefix(first, "edge-1~") {
		t.Fatalf("ID %q, want edge-1~<incarnation>", first)
	}
	_ = a.Close()
	cfg.AgentID = "edge-2"
	if _, err := New(cfg, newFakeSender(), newFakeSource(nil), nil, quietLogger()); !errors.Is(err, ErrAgentIDChanged) {
		t.Fatalf("New with a different agent_id: %v", err)
	}
	cfg.AgentID = ""
	b := newAgent(t, cfg, nil, nil)
	if b.ID() != first {
		t.Fatalf("stored id not kept: %q, want %q", b.ID(), first)
	}
	_ = b.Close()

	// The same name on a new data dir (a pod that lost its volume) is a new
	// incarnation: its sequences, restarting at 1, cannot collide with the
	// old queue's at the aggregator.
	cfg2 := testConfig(t.TempDir())
	cfg2.AgentID = "edge-1"
	c := newAgent(t, cfg2, nil, nil)
	if !strings.HasPrefix(c.ID(), "edge-1~") || c.ID() == first {
		t.Fatalf("new data dir with the same agent_id: id %q, want a new edge-1~ incarnation (old %q)", c.ID(), first)
	}
	_ = c.Close()

	gen := newAgent(t, testConfig(t.TempDir()), nil, nil)
	if !strings.HasPrefix(gen.ID(), "agent~") {
		t.Fatalf("generated id %q", gen.ID())
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	_, err := New(Config{}, newFakeSender(), newFakeSource(nil), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "data_dir: required") || !strings.Contains(err.Error(), "http: required") {
		t.Fatalf("err = %v", err)
	}
}

func TestBackoff(t *testing.T) {
	lo, hi := 100*time.Millisecond, 5*time.Second
	for n := 1; n < 80; n++ {
		for range 20 {
			d := backoff(lo, hi, n)
			ceil := min(hi, lo<<min(n-1, 30))
			if d < lo || d > ceil {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, lo, ceil)
			}
		}
	}
	if backoff(lo, hi, 1) != lo {
		t.Fatal("first retry should wait retry_min")
	}
}

// TestStopWhileAggregatorAway: Run returns promptly on cancel even with
// sends failing and backing off; nothing leaks (goleak checks).
func TestStopWhileAggregatorAway(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.RetryMin, cfg.RetryMax = time.Hour, time.Hour
	sender := newFakeSender()
	sender.setBehave(func(b *wire.Batch, _ int) (*wire.Ack, error) { return nil, errors.New("fake: down") })
	a := newAgent(t, cfg, sender, newFakeSource(demoConfig))
	base, stop := run(t, a)
	waitFor(t, 10*time.Second, func() bool { return a.sites.Load() != nil })
	if code, _, b := httpPost(t, base, uniqueBody("x", 2)); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, b)
	}
	waitFor(t, 10*time.Second, func() bool { return sender.sendCount() == 1 })
	stop()
	// With an hour of backoff, exactly one attempt was made: no busy loop.
	if n := sender.sendCount(); n != 1 {
		t.Fatalf("%d sends during backoff", n)
	}
}

func TestReadyzJSON(t *testing.T) {
	a := handlerAgent(t, nil)
	r, _ := http.NewRequestWithContext(context.Background(), "GET", "/readyz", nil)
	w := httptest.NewRecorder()
	a.Handler().ServeHTTP(w, r)
	var got map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || got["status"] != "ready" || got["agent_id"] != a.ID() {
		t.Fatalf("readyz %s", w.Body)
	}
}

// TestSealOnCount: with a long linger, reaching batch_max_events seals at
// once; the sealer is woken by the append, not by polling.
func TestSealOnCount(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.BatchLinger = time.Minute
	cfg.BatchMaxEvents = 5
	sender := newFakeSender()
	a := newAgent(t, cfg, sender, newFakeSource(demoConfig))
	base, _ := run(t, a)
	waitFor(t, 10*time.Second, func() bool { return a.sites.Load() != nil })
	if code, _, b := httpPost(t, base, uniqueBody("a", 3)); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, b)
	}
	if code, _, b := httpPost(t, base, uniqueBody("b", 2)); code != http.StatusAccepted {
		t.Fatalf("%d %s", code, b)
	}
	waitFor(t, 10*time.Second, func() bool { return sender.applyCount() == 5 })
	if got := metricValue(t, a.reg, "sightline_agent_batches_sealed_total"); got != 1 {
		t.Fatalf("batches_sealed_total = %v, want 1", got)
	}
}

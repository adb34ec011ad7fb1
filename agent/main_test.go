package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sightline/sightline/wire"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testNow is the agent clock in tests that fix it.
var testNow = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func testConfig(dir string) Config {
	cfg := DefaultConfig()
	cfg.DataDir = dir
	cfg.HTTP = "127.0.0.1:0"
	cfg.Aggregators = []string{"127.0.0.1:8443"}
	cfg.TLSDir = dir
	cfg.BatchLinger = 5 * time.Millisecond
	cfg.RetryMin = time.Millisecond
	cfg.RetryMax = 20 * time.Millisecond
	return cfg
}

var demoConfig = &wire.Config{Version: 1, Sites: []wire.Site{
	{ID: "demo", Origins: []string{"http://localhost:8080"}},
	{ID: "other", Origins: []string{"https://other.example"}},
}}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testAgent struct {
	*Agent
	reg *prometheus.Registry
}

// newAgent builds an agent on dir with the fakes; it is closed at cleanup.
func newAgent(t *testing.T, cfg Config, s Sender, src ConfigSource) *testAgent {
	t.Helper()
	if s == nil {
		s = newFakeSender()
	}
	if src == nil {
		src = newFakeSource(nil)
	}
	reg := prometheus.NewRegistry()
	a, err := New(cfg, s, src, reg, quietLogger())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return &testAgent{Agent: a, reg: reg}
}

// run starts Run on a, returns its base URL and a stop function that waits
// for Run to return (also called at cleanup).
func run(t *testing.T, a *testAgent) (string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitFor(t, 10*time.Second, func() bool { return a.Addr() != "" })
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return "http://" + a.Addr(), stop
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met before the deadline")
		}
		<-tick.C
	}
}

// post sends a collect request through the handler and returns the recorder.
func post(a *Agent, body []byte, hdr map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/v1/collect", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		if v == "" {
			r.Header.Del(k)
		} else {
			r.Header.Set(k, v)
		}
	}
	w := httptest.NewRecorder()
	a.Handler().ServeHTTP(w, r)
	return w
}

// fakeSender is an aggregator stand-in: it dedupes by (agent, seq) like the
// real FSM and records what it applied, and can be told to fail.
type fakeSender struct {
	mu       sync.Mutex
	behave   func(b *wire.Batch, attempt int) (*wire.Ack, error) // nil: ack every batch
	payloads map[uint64][]byte                                   // first payload seen per seq
	attempts map[uint64]int
	applied  map[uint64]bool
	events   map[string]int // event id → times applied
	ordered  []wire.Event
	lows     []uint64
	problems []string
	sends    int
}

func newFakeSender() *fakeSender {
	return &fakeSender{payloads: map[uint64][]byte{}, attempts: map[uint64]int{}, applied: map[uint64]bool{}, events: map[string]int{}}
}

// errLostAck simulates a batch committed whose ack never arrived.
var errLostAck = errors.New("fake: connection lost after commit")

func (f *fakeSender) SendBatch(ctx context.Context, b *wire.Batch) (*wire.Ack, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sends++
	if b.AgentID == "" {
		f.problems = append(f.problems, fmt.Sprintf("batch %d without agent id", b.Seq))
	}
	if b.Low > b.Seq {
		f.problems = append(f.problems, fmt.Sprintf("batch %d with low %d above it", b.Seq, b.Low))
	}
	f.lows = append(f.lows, b.Low)
	if p, ok := f.payloads[b.Seq]; ok && !bytes.Equal(p, b.Payload) {
		f.problems = append(f.problems, fmt.Sprintf("batch %d resent with a different payload", b.Seq))
	} else if !ok {
		f.payloads[b.Seq] = bytes.Clone(b.Payload)
	}
	f.attempts[b.Seq]++
	ack, err := &wire.Ack{Seq: b.Seq, Status: wire.AckOK}, error(nil)
	if f.behave != nil {
		ack, err = f.behave(b, f.attempts[b.Seq])
	}
	commit := err == nil && ack != nil && ack.Status == wire.AckOK
	if errors.Is(err, errLostAck) {
		commit = true
	}
	if commit && !f.applied[b.Seq] {
		f.applied[b.Seq] = true
		evs, derr := wire.DecodeEvents(b.Codec, b.Payload)
		if derr != nil {
			f.problems = append(f.problems, fmt.Sprintf("batch %d: %v", b.Seq, derr))
		}
		for _, e := range evs {
			f.events[e.ID]++
			f.ordered = append(f.ordered, e)
		}
	}
	return ack, err
}

func (f *fakeSender) setBehave(fn func(b *wire.Batch, attempt int) (*wire.Ack, error)) {
	f.mu.Lock()
	f.behave = fn
	f.mu.Unlock()
}

func (f *fakeSender) applyCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.events)
}

func (f *fakeSender) sendCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sends
}

// fakeSource serves a config like the aggregator's long poll.
type fakeSource struct {
	mu      sync.Mutex
	cfg     *wire.Config
	err     error
	changed chan struct{}
	fetches int
}

func newFakeSource(cfg *wire.Config) *fakeSource {
	return &fakeSource{cfg: cfg, changed: make(chan struct{})}
}

func (s *fakeSource) set(cfg *wire.Config, err error) {
	s.mu.Lock()
	s.cfg, s.err = cfg, err
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *fakeSource) FetchConfig(ctx context.Context, req *wire.ConfigRequest) (*wire.Config, error) {
	for {
		s.mu.Lock()
		s.fetches++
		cfg, err, ch := s.cfg, s.err, s.changed
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if cfg != nil && cfg.Version != req.Version {
			c := *cfg
			return &c, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

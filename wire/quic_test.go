package wire_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/sightline/sightline/wire"
	"github.com/sightline/sightline/wire/wiretest"
)

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// fakeHandler answers with the functions it is given and counts calls.
type fakeHandler struct {
	batch   func(ctx context.Context, b *wire.Batch) *wire.Ack
	config  func(ctx context.Context, req *wire.ConfigRequest) (*wire.Config, error)
	batches atomic.Int64
	configs atomic.Int64
}

func (h *fakeHandler) HandleBatch(ctx context.Context, b *wire.Batch) *wire.Ack {
	h.batches.Add(1)
	if h.batch != nil {
		return h.batch(ctx, b)
	}
	return &wire.Ack{Seq: b.Seq, Status: wire.AckOK}
}

func (h *fakeHandler) HandleConfig(ctx context.Context, req *wire.ConfigRequest) (*wire.Config, error) {
	h.configs.Add(1)
	if h.config != nil {
		return h.config(ctx, req)
	}
	return &wire.Config{Version: 1}, nil
}

func (h *fakeHandler) calls() int64 { return h.batches.Load() + h.configs.Load() }

// startServer runs a server on a loopback port until the test ends.
func startServer(t *testing.T, dir string, h wire.Handler) *wire.Server {
	t.Helper()
	return startServerAt(t, dir, "127.0.0.1:0", h)
}

func startServerAt(t *testing.T, dir, addr string, h wire.Handler) *wire.Server {
	t.Helper()
	conf, err := wire.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := wire.NewServer(addr, conf, h, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

func newClient(t *testing.T, dir string, addrs ...string) *wire.Client {
	t.Helper()
	conf, err := wire.ClientTLS(dir, wire.CertAgent)
	if err != nil {
		t.Fatal(err)
	}
	c := wire.NewClient(addrs, conf, quietLogger())
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testBatch(t *testing.T, seq uint64) *wire.Batch {
	t.Helper()
	events := []wire.Event{{Site: "demo", Session: "s1", ID: fmt.Sprintf("e%d", seq), Type: wire.TypeClick, TS: 1000 + int64(seq)}}
	payload, err := wire.EncodeEvents(events)
	if err != nil {
		t.Fatal(err)
	}
	return &wire.Batch{AgentID: "agent-1", Seq: seq, Low: seq, Count: 1, Codec: wire.CodecZstdMsgpack, Payload: payload}
}

func TestBatchRoundTrip(t *testing.T) {
	dir := wiretest.CertDir(t)
	var got *wire.Batch
	var mu sync.Mutex
	h := &fakeHandler{batch: func(_ context.Context, b *wire.Batch) *wire.Ack {
		mu.Lock()
		got = b
		mu.Unlock()
		return &wire.Ack{Status: wire.AckOK, Message: "committed"} // Seq left for the server to fill
	}}
	s := startServer(t, dir, h)
	c := newClient(t, dir, s.Addr().String())

	want := testBatch(t, 7)
	ack, err := c.SendBatch(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	if ack.Seq != 7 || ack.Status != wire.AckOK || ack.Message != "committed" {
		t.Errorf("ack %+v", ack)
	}
	mu.Lock()
	defer mu.Unlock()
	if got == nil || got.AgentID != "agent-1" || got.Seq != 7 || !bytes.Equal(got.Payload, want.Payload) {
		t.Fatalf("handler saw %+v", got)
	}
	events, err := wire.DecodeEvents(got.Codec, got.Payload)
	if err != nil || len(events) != 1 || events[0].ID != "e7" {
		t.Fatalf("events %+v %v", events, err)
	}
	if st := s.Stats(); st.Conns != 1 || st.Requests != 1 || st.BadFrames != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestPipelining holds every batch in the handler until all 64 have
// arrived, which can only happen when they are in flight together on the
// one connection.
func TestPipelining(t *testing.T) {
	const n = 64
	dir := wiretest.CertDir(t)
	var inflight atomic.Int64
	release := make(chan struct{})
	h := &fakeHandler{batch: func(ctx context.Context, b *wire.Batch) *wire.Ack {
		if inflight.Add(1) == n {
			close(release)
		}
		select {
		case <-release:
			return &wire.Ack{Seq: b.Seq, Status: wire.AckOK}
		case <-ctx.Done():
			return &wire.Ack{Seq: b.Seq, Status: wire.AckUnavailable}
		}
	}}
	s := startServer(t, dir, h)
	c := newClient(t, dir, s.Addr().String())

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			ack, err := c.SendBatch(context.Background(), testBatch(t, uint64(i+1)))
			if err == nil && (ack.Status != wire.AckOK || ack.Seq != uint64(i+1)) {
				err = fmt.Errorf("ack %+v", ack)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if st := s.Stats(); st.Conns != 1 || st.Requests != n {
		t.Errorf("want one connection and %d requests, got %+v", n, st)
	}
}

func TestServerCloseWhileSending(t *testing.T) {
	dir := wiretest.CertDir(t)
	entered := make(chan struct{}, 1)
	h := &fakeHandler{batch: func(ctx context.Context, b *wire.Batch) *wire.Ack {
		if b.Seq == 1 {
			// Hold one request in the handler until the server closes.
			entered <- struct{}{}
			<-ctx.Done()
			return &wire.Ack{Seq: b.Seq, Status: wire.AckUnavailable}
		}
		return &wire.Ack{Seq: b.Seq, Status: wire.AckOK}
	}}
	conf, err := wire.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := wire.NewServer("127.0.0.1:0", conf, h, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(context.Background()) }()
	c := newClient(t, dir, s.Addr().String())

	held := make(chan error, 1)
	go func() {
		ack, err := c.SendBatch(context.Background(), testBatch(t, 1))
		if err == nil && ack.Status != wire.AckUnavailable {
			err = fmt.Errorf("ack %+v", ack)
		}
		held <- err
	}()
	<-entered

	// Several senders keep going while the server closes.
	var wg sync.WaitGroup
	var sent, failed atomic.Int64
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				_, err := c.SendBatch(context.Background(), testBatch(t, uint64(1000*(g+1)+i)))
				if err != nil {
					failed.Add(1)
					return
				}
				sent.Add(1)
			}
		})
	}
	waitFor(t, 10*time.Second, "some batches sent", func() bool { return sent.Load() > 8 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	wg.Wait()
	// The held request ends either with the handler's answer to its
	// cancelled context or with the connection's close; it must not hang.
	if err := <-held; err != nil && !isClosedErr(err) {
		t.Errorf("held request: %v", err)
	}
	// Nothing listens any more: the dial can only time out, so a short
	// context keeps the test quick.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := c.SendBatch(ctx, testBatch(t, 5000)); err == nil {
		t.Error("send after server Close succeeded")
	}
	if err := s.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
}

func TestLeaderHint(t *testing.T) {
	dir := wiretest.CertDir(t)
	leader := &fakeHandler{}
	ls := startServer(t, dir, leader)
	follower := &fakeHandler{batch: func(_ context.Context, b *wire.Batch) *wire.Ack {
		return &wire.Ack{Seq: b.Seq, Status: wire.AckNotLeader, Leader: ls.Addr().String()}
	}}
	fs := startServer(t, dir, follower)
	c := newClient(t, dir, fs.Addr().String())

	ack, err := c.SendBatch(context.Background(), testBatch(t, 1))
	if err != nil || ack.Status != wire.AckOK {
		t.Fatalf("ack %+v, err %v", ack, err)
	}
	if follower.batches.Load() != 1 || leader.batches.Load() != 1 {
		t.Fatalf("follower %d, leader %d batches", follower.batches.Load(), leader.batches.Load())
	}
	if c.Target() != ls.Addr().String() {
		t.Errorf("target %s, want leader %s", c.Target(), ls.Addr())
	}
	// The next batch goes straight to the leader.
	if _, err := c.SendBatch(context.Background(), testBatch(t, 2)); err != nil {
		t.Fatal(err)
	}
	if follower.batches.Load() != 1 || leader.batches.Load() != 2 {
		t.Fatalf("follower %d, leader %d batches", follower.batches.Load(), leader.batches.Load())
	}
}

func TestNotLeaderWithoutHintRotates(t *testing.T) {
	dir := wiretest.CertDir(t)
	a := startServer(t, dir, &fakeHandler{batch: func(_ context.Context, b *wire.Batch) *wire.Ack {
		return &wire.Ack{Seq: b.Seq, Status: wire.AckNotLeader}
	}})
	bh := &fakeHandler{}
	b := startServer(t, dir, bh)
	c := newClient(t, dir, a.Addr().String(), b.Addr().String())

	ack, err := c.SendBatch(context.Background(), testBatch(t, 1))
	if err != nil || ack.Status != wire.AckNotLeader {
		t.Fatalf("ack %+v, err %v", ack, err)
	}
	if c.Target() != b.Addr().String() {
		t.Fatalf("target %s, want %s", c.Target(), b.Addr())
	}
	if ack, err := c.SendBatch(context.Background(), testBatch(t, 1)); err != nil || ack.Status != wire.AckOK {
		t.Fatalf("ack %+v, err %v", ack, err)
	}
}

func TestUnreachableHintRotates(t *testing.T) {
	dir := wiretest.CertDir(t)
	dead := deadAddr(t)
	a := startServer(t, dir, &fakeHandler{batch: func(_ context.Context, b *wire.Batch) *wire.Ack {
		return &wire.Ack{Seq: b.Seq, Status: wire.AckNotLeader, Leader: dead}
	}})
	bh := &fakeHandler{}
	b := startServer(t, dir, bh)
	c := newClient(t, dir, a.Addr().String(), b.Addr().String())

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := c.SendBatch(ctx, testBatch(t, 1)); err == nil {
		t.Fatal("send via an unreachable leader succeeded")
	}
	if c.Target() != b.Addr().String() {
		t.Fatalf("target %s, want %s", c.Target(), b.Addr())
	}
	if ack, err := c.SendBatch(context.Background(), testBatch(t, 1)); err != nil || ack.Status != wire.AckOK {
		t.Fatalf("ack %+v, err %v", ack, err)
	}
}

// isClosedErr reports whether err comes from the connection being closed
// or the stream being reset by the peer, rather than from a wrong answer.
func isClosedErr(err error) bool {
	var aerr *quic.ApplicationError
	var serr *quic.StreamError
	var terr *quic.TransportError
	return errors.As(err, &aerr) || errors.As(err, &serr) || errors.As(err, &terr) || errors.Is(err, net.ErrClosed)
}

// deadAddr returns a loopback UDP address nobody listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func TestAckStatusesAreNotErrors(t *testing.T) {
	dir := wiretest.CertDir(t)
	for _, status := range []uint8{wire.AckRejected, wire.AckUnavailable} {
		s := startServer(t, dir, &fakeHandler{batch: func(_ context.Context, b *wire.Batch) *wire.Ack {
			return &wire.Ack{Seq: b.Seq, Status: status, Message: "no"}
		}})
		c := newClient(t, dir, s.Addr().String())
		ack, err := c.SendBatch(context.Background(), testBatch(t, 3))
		if err != nil || ack.Status != status || ack.Message != "no" {
			t.Errorf("status %d: ack %+v err %v", status, ack, err)
		}
		if c.Target() != s.Addr().String() {
			t.Errorf("status %d moved the client", status)
		}
	}
}

func TestGarbageUDP(t *testing.T) {
	dir := wiretest.CertDir(t)
	h := &fakeHandler{}
	s := startServer(t, dir, h)
	pc, err := net.Dial("udp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		p := make([]byte, 1+r.IntN(1400))
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		switch i % 4 {
		case 0: // long header, QUIC v1, as an Initial would start
			p = append([]byte{0xc3, 0, 0, 0, 1, 8}, p...)
			for len(p) < 1200 {
				p = append(p, 0)
			}
		case 1: // short header
			p[0] = 0x40 | p[0]&0x3f
		case 2: // version negotiation trigger: unknown version
			p = append([]byte{0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8, 1, 2, 3, 4, 5, 6, 7, 8, 8, 1, 2, 3, 4, 5, 6, 7, 8}, make([]byte, 1200)...)
		}
		if _, err := pc.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	c := newClient(t, dir, s.Addr().String())
	if ack, err := c.SendBatch(context.Background(), testBatch(t, 1)); err != nil || ack.Status != wire.AckOK {
		t.Fatalf("after garbage: ack %+v err %v", ack, err)
	}
	if h.batches.Load() != 1 {
		t.Errorf("handler saw %d batches", h.batches.Load())
	}
}

func TestHandshakeRefused(t *testing.T) {
	dir := wiretest.CertDir(t)
	foreign := wiretest.CertDir(t)
	caPool := func(d string) *x509.CertPool {
		b, err := os.ReadFile(filepath.Join(d, "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		p := x509.NewCertPool()
		p.AppendCertsFromPEM(b)
		return p
	}
	foreignCert, err := tls.LoadX509KeyPair(filepath.Join(foreign, "agent.crt"), filepath.Join(foreign, "agent.key"))
	if err != nil {
		t.Fatal(err)
	}
	ourAgent, err := wire.ClientTLS(dir, wire.CertAgent)
	if err != nil {
		t.Fatal(err)
	}
	foreignAll, err := wire.ClientTLS(foreign, wire.CertAgent)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name          string
		conf          *tls.Config
		serverRefuses bool // the server, not the client, rejects
	}{
		{"no client certificate", &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: caPool(dir), NextProtos: []string{wire.ALPN}}, true},
		{"certificate from another CA", &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: caPool(dir), NextProtos: []string{wire.ALPN}, Certificates: []tls.Certificate{foreignCert}}, true},
		{"client trusts another CA", foreignAll, false},
		{"wrong ALPN", func() *tls.Config { c := ourAgent.Clone(); c.NextProtos = []string{"h3"}; return c }(), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &fakeHandler{}
			s := startServer(t, dir, h)
			c := wire.NewClient([]string{s.Addr().String()}, tc.conf, quietLogger())
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := c.SendBatch(ctx, testBatch(t, 1)); err == nil {
				t.Fatal("refused client got an answer")
			} else if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("refusal was a hang, not a handshake error: %v", err)
			}
			if tc.serverRefuses {
				waitFor(t, 5*time.Second, "refused handshake counted", func() bool { return s.Stats().RefusedHandshakes == 1 })
			}
			if n := h.calls(); n != 0 {
				t.Errorf("handler called %d times", n)
			}
			if st := s.Stats(); st.Requests != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestNodeCertificateAsClient: nodes talk to each other with node.crt.
func TestNodeCertificateAsClient(t *testing.T) {
	dir := wiretest.CertDir(t)
	s := startServer(t, dir, &fakeHandler{})
	conf, err := wire.ClientTLS(dir, wire.CertNode)
	if err != nil {
		t.Fatal(err)
	}
	c := wire.NewClient([]string{s.Addr().String()}, conf, quietLogger())
	defer c.Close()
	if _, err := c.SendBatch(context.Background(), testBatch(t, 1)); err != nil {
		t.Fatal(err)
	}
}

func TestConfigLongPoll(t *testing.T) {
	dir := wiretest.CertDir(t)
	var mu sync.Mutex
	cfg := &wire.Config{Version: 1, Sites: []wire.Site{{ID: "demo", Origins: []string{"http://localhost:8080"}}}}
	changed := make(chan struct{})
	var waiting atomic.Int64
	var sawDeadline atomic.Bool
	h := &fakeHandler{config: func(ctx context.Context, req *wire.ConfigRequest) (*wire.Config, error) {
		mu.Lock()
		cur, ch := cfg, changed
		mu.Unlock()
		if req.Version != cur.Version {
			return cur, nil
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) > time.Duration(req.WaitMillis)*time.Millisecond {
			sawDeadline.Store(true)
		}
		waiting.Add(1)
		defer waiting.Add(-1)
		select {
		case <-ch:
			mu.Lock()
			defer mu.Unlock()
			return cfg, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}}
	s := startServer(t, dir, h)
	c := newClient(t, dir, s.Addr().String())

	got, err := c.FetchConfig(context.Background(), &wire.ConfigRequest{AgentID: "a", Version: 0, WaitMillis: 60_000})
	if err != nil || got.Version != 1 || len(got.Sites) != 1 || got.Sites[0].ID != "demo" {
		t.Fatalf("stale version: %+v %v", got, err)
	}

	type result struct {
		cfg *wire.Config
		err error
	}
	res := make(chan result, 1)
	go func() {
		cfg, err := c.FetchConfig(context.Background(), &wire.ConfigRequest{AgentID: "a", Version: 1, WaitMillis: 60_000})
		res <- result{cfg, err}
	}()
	waitFor(t, 10*time.Second, "long poll parked in the handler", func() bool { return waiting.Load() == 1 })
	// A batch still goes through while the poll is parked.
	if _, err := c.SendBatch(context.Background(), testBatch(t, 1)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	cfg = &wire.Config{Version: 2, Sites: []wire.Site{{ID: "demo"}, {ID: "shop"}}}
	close(changed)
	mu.Unlock()
	r := <-res
	if r.err != nil || r.cfg.Version != 2 || len(r.cfg.Sites) != 2 {
		t.Fatalf("long poll: %+v %v", r.cfg, r.err)
	}
	if !sawDeadline.Load() {
		t.Error("handler context had no deadline beyond WaitMillis")
	}
}

func TestHandlerErrors(t *testing.T) {
	dir := wiretest.CertDir(t)
	h := &fakeHandler{
		config: func(_ context.Context, req *wire.ConfigRequest) (*wire.Config, error) {
			switch req.AgentID {
			case "typed":
				return nil, &wire.Error{Code: "not_found", Message: "no such agent"}
			case "plain":
				return nil, errors.New("disk on fire")
			case "nil":
				return nil, nil
			}
			panic("handler bug")
		},
		batch: func(_ context.Context, b *wire.Batch) *wire.Ack {
			if b.Seq == 1 {
				return nil
			}
			panic("handler bug")
		},
	}
	s := startServer(t, dir, h)
	c := newClient(t, dir, s.Addr().String())
	for agent, code := range map[string]string{"typed": "not_found", "plain": wire.CodeInternal, "nil": wire.CodeInternal, "panic": wire.CodeInternal} {
		_, err := c.FetchConfig(context.Background(), &wire.ConfigRequest{AgentID: agent})
		var werr *wire.Error
		if !errors.As(err, &werr) || werr.Code != code {
			t.Errorf("%s: %v, want code %s", agent, err, code)
		}
	}
	for seq := uint64(1); seq <= 2; seq++ {
		_, err := c.SendBatch(context.Background(), testBatch(t, seq))
		var werr *wire.Error
		if !errors.As(err, &werr) || werr.Code != wire.CodeInternal {
			t.Errorf("batch %d: %v", seq, err)
		}
	}
	if st := s.Stats(); st.HandlerPanics != 2 || st.Conns != 1 {
		t.Errorf("stats %+v", st)
	}
	if c.Target() != s.Addr().String() {
		t.Error("an error answer moved the client")
	}
}

func TestClientCancel(t *testing.T) {
	dir := wiretest.CertDir(t)
	var cancelled atomic.Bool
	entered := make(chan struct{}, 1)
	h := &fakeHandler{batch: func(ctx context.Context, b *wire.Batch) *wire.Ack {
		entered <- struct{}{}
		<-ctx.Done()
		cancelled.Store(true)
		return &wire.Ack{Seq: b.Seq}
	}}
	s := startServer(t, dir, h)
	c := newClient(t, dir, s.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.SendBatch(ctx, testBatch(t, 1))
		errc <- err
	}()
	<-entered
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	waitFor(t, 5*time.Second, "handler context cancelled", cancelled.Load)
	if c.Target() != s.Addr().String() {
		t.Error("the caller's cancel moved the client")
	}
}

func TestClientRedialsAfterServerRestart(t *testing.T) {
	dir := wiretest.CertDir(t)
	conf, err := wire.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := wire.NewServer("127.0.0.1:0", conf, &fakeHandler{}, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	addr := s1.Addr().String()
	go s1.Serve(context.Background())
	c := newClient(t, dir, addr)
	if _, err := c.SendBatch(context.Background(), testBatch(t, 1)); err != nil {
		t.Fatal(err)
	}
	s1.Close()

	h2 := &fakeHandler{}
	s2 := startServerAt(t, dir, addr, h2)
	var err2 error
	for i := 0; i < 5; i++ { // the first try may still meet the old connection
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err2 = c.SendBatch(ctx, testBatch(t, 2))
		cancel()
		if err2 == nil {
			break
		}
	}
	if err2 != nil {
		t.Fatalf("no success after restart: %v", err2)
	}
	if s2.Stats().Conns != 1 || h2.batches.Load() != 1 {
		t.Errorf("new server stats %+v", s2.Stats())
	}
}

func TestClientLifecycle(t *testing.T) {
	dir := wiretest.CertDir(t)
	conf, err := wire.ClientTLS(dir, wire.CertAgent)
	if err != nil {
		t.Fatal(err)
	}
	c := wire.NewClient(nil, conf, nil)
	if _, err := c.SendBatch(context.Background(), testBatch(t, 1)); !errors.Is(err, wire.ErrNoAddrs) {
		t.Errorf("no addrs: %v", err)
	}
	c.Close()
	c.Close()
	if _, err := c.SendBatch(context.Background(), testBatch(t, 1)); !errors.Is(err, wire.ErrClientClosed) {
		t.Errorf("after close: %v", err)
	}
	if _, err := c.FetchConfig(context.Background(), &wire.ConfigRequest{}); !errors.Is(err, wire.ErrClientClosed) {
		t.Errorf("after close: %v", err)
	}
}

func TestServerLifecycle(t *testing.T) {
	dir := wiretest.CertDir(t)
	conf, err := wire.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Close before Serve; Serve afterwards returns at once.
	s, err := wire.NewServer("127.0.0.1:0", conf, &fakeHandler{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(context.Background()); err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
	if err := s.Serve(context.Background()); !errors.Is(err, wire.ErrServing) {
		t.Fatalf("second Serve: %v", err)
	}

	// Cancelling Serve's context closes the server.
	s, err = wire.NewServer("127.0.0.1:0", conf, &fakeHandler{}, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	c := newClient(t, dir, s.Addr().String())
	if _, err := c.SendBatch(context.Background(), testBatch(t, 1)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	if _, err := wire.NewServer("127.0.0.1:0", conf, nil, nil); err == nil {
		t.Error("nil handler accepted")
	}
	if _, err := wire.NewServer("not an address", conf, &fakeHandler{}, nil); err == nil {
		t.Error("bad address accepted")
	}
}

// rawConn dials the server with quic-go directly so tests can send what the
// Client never would.
func rawConn(t *testing.T, dir string, addr string) *quic.Conn {
	t.Helper()
	conf, err := wire.ClientTLS(dir, wire.CertAgent)
	if err != nil {
		t.Fatal(err)
	}
	conf.ServerName = "localhost"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, addr, conf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.CloseWithError(0, "") })
	return conn
}

// rawRequest sends data on a new stream and returns the answer frame.
func rawRequest(t *testing.T, conn *quic.Conn, data []byte) (wire.MsgType, []byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, nil, err
	}
	_ = str.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := str.Write(data); err != nil {
		return 0, nil, err
	}
	str.Close()
	typ, body, err := wire.ReadFrame(str)
	str.CancelRead(0)
	return typ, body, err
}

func TestBadRequests(t *testing.T) {
	dir := wiretest.CertDir(t)
	h := &fakeHandler{}
	s := startServer(t, dir, h)
	frame := func(typ wire.MsgType, v any) []byte {
		body, err := wire.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return wire.AppendFrame(nil, typ, body)
	}
	good := frame(wire.MsgBatch, testBatch(t, 1))
	corrupt := append([]byte(nil), good...)
	corrupt[len(corrupt)-1] ^= 0xff
	tests := []struct {
		name string
		data []byte
		code string
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\n\r\n"), wire.CodeBadFrame},
		{"bad crc", corrupt, wire.CodeBadFrame},
		{"truncated", good[:len(good)-2], wire.CodeBadFrame},
		{"empty stream", nil, wire.CodeBadFrame},
		{"two frames", append(append([]byte(nil), good...), good...), wire.CodeBadFrame},
		{"too large", []byte{'S', 'L', 1, 2, 0x10, 0, 0, 0, 0, 0, 0, 0}, wire.CodeBadFrame},
		{"bad body", wire.AppendFrame(nil, wire.MsgBatch, []byte{0xc1}), wire.CodeBadMessage},
		{"wrong body type", frame(wire.MsgBatch, "a string"), wire.CodeBadMessage},
		{"answer type", frame(wire.MsgAck, &wire.Ack{}), wire.CodeUnknownType},
		{"unknown type", wire.AppendFrame(nil, wire.MsgType(200), []byte{0xc0}), wire.CodeUnknownType},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn := rawConn(t, dir, s.Addr().String())
			typ, body, err := rawRequest(t, conn, tc.data)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			var e wire.Error
			if typ != wire.MsgError || wire.Unmarshal(body, &e) != nil || e.Code != tc.code {
				t.Fatalf("answer %v %+v, want error %s", typ, e, tc.code)
			}
			// The connection still serves good requests after one bad one.
			typ, body, err = rawRequest(t, conn, good)
			var ack wire.Ack
			if err != nil || typ != wire.MsgAck || wire.Unmarshal(body, &ack) != nil || ack.Seq != 1 {
				t.Fatalf("good request after bad: %v %v", typ, err)
			}
		})
	}
	st := s.Stats()
	if st.BadFrames != 6 || st.BadMessages != 4 {
		t.Errorf("stats %+v", st)
	}
	if int(h.batches.Load()) != len(tests) {
		t.Errorf("handler saw %d batches, want only the %d good ones", h.batches.Load(), len(tests))
	}
}

func TestMisbehavingConnectionClosed(t *testing.T) {
	dir := wiretest.CertDir(t)
	s := startServer(t, dir, &fakeHandler{})
	conn := rawConn(t, dir, s.Addr().String())
	for i := 0; i < 3; i++ {
		if _, _, err := rawRequest(t, conn, []byte("junk")); err != nil && i < 2 {
			t.Fatalf("bad request %d: %v", i, err)
		}
	}
	select {
	case <-conn.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection not closed after repeated bad requests")
	}
	var aerr *quic.ApplicationError
	if err := context.Cause(conn.Context()); !errors.As(err, &aerr) || aerr.ErrorCode != wire.AppCodeProtocol || !aerr.Remote {
		t.Fatalf("close cause %v, want remote application error %d", err, wire.AppCodeProtocol)
	}
	if st := s.Stats(); st.ClosedConns != 1 {
		t.Errorf("stats %+v", st)
	}
	// Others are unaffected.
	c := newClient(t, dir, s.Addr().String())
	if _, err := c.SendBatch(context.Background(), testBatch(t, 1)); err != nil {
		t.Fatal(err)
	}
}

func TestServerNameRules(t *testing.T) {
	dir := wiretest.CertDir(t)
	s := startServer(t, dir, &fakeHandler{})
	_, port, _ := net.SplitHostPort(s.Addr().String())
	conf, err := wire.ClientTLS(dir, wire.CertAgent)
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"127.0.0.1:" + port, "localhost:" + port} {
		c := wire.NewClient([]string{addr}, conf, quietLogger())
		if _, err := c.SendBatch(context.Background(), testBatch(t, 1)); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
		c.Close()
	}
	// A ServerName the certificate does not carry is refused by the client.
	bad := conf.Clone()
	bad.ServerName = "elsewhere.test"
	c := wire.NewClient([]string{"127.0.0.1:" + port}, bad, quietLogger())
	defer c.Close()
	if _, err := c.SendBatch(context.Background(), testBatch(t, 1)); err == nil {
		t.Error("server certificate accepted for a name it does not carry")
	}
}

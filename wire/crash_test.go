package wire

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

type okHandler struct{}

func (okHandler) HandleBatch(_ context.Context, b *Batch) *Ack { return &Ack{Seq: b.Seq} }
func (okHandler) HandleConfig(context.Context, *ConfigRequest) (*Config, error) {
	return &Config{}, nil
}

// TestClientRecoversFromServerCrash drops the server's socket without
// telling the client, as a crash would, and restarts on the same port. The
// restarted server's stateless reset (same key, derived from the node key)
// must end the client's stale connection at once; without it the request
// would hang until the idle timeout.
func TestClientRecoversFromServerCrash(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	if err := InitCA(dir, nil); err != nil {
		t.Fatal(err)
	}
	sconf, err := ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	cconf, err := ClientTLS(dir, CertAgent)
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	s1, err := NewServer("127.0.0.1:0", sconf, okHandler{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	addr := s1.Addr().String()
	served := make(chan error, 1)
	go func() { served <- s1.Serve(context.Background()) }()
	c := NewClient([]string{addr}, cconf, quiet)
	defer c.Close()
	if _, err := c.SendBatch(context.Background(), &Batch{Seq: 1}); err != nil {
		t.Fatal(err)
	}

	// Crash: the socket goes away, so no CONNECTION_CLOSE can be sent.
	_ = s1.udp.Close()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	s2, err := NewServer(addr, sconf, okHandler{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	go s2.Serve(context.Background())

	// Generous compared with a reset's round trip, short of the 30s idle
	// timeout that would otherwise be the only way out.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = c.SendBatch(ctx, &Batch{Seq: 2})
	if err != nil {
		var reset *quic.StatelessResetError
		if !errors.As(err, &reset) {
			t.Fatalf("first request after restart: %v, want success or a stateless reset", err)
		}
		if _, err := c.SendBatch(ctx, &Batch{Seq: 3}); err != nil {
			t.Fatalf("request after reset: %v", err)
		}
	}
	if s2.Stats().Conns != 1 {
		t.Errorf("restarted server stats %+v", s2.Stats())
	}
}

package wire

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Server errors.
var (
	// ErrServing means Serve was called a second time.
	ErrServing = errors.New("wire: server already serving")
	// ErrNilAck means the handler returned no Ack for a batch.
	ErrNilAck = errors.New("wire: handler returned no ack")
)

// Error codes sent in MsgError answers. They are stable: peers switch on them.
const (
	CodeBadFrame    = "bad_frame"    // the request frame could not be read
	CodeBadMessage  = "bad_message"  // the frame was fine, its body did not decode
	CodeUnknownType = "unknown_type" // the server does not accept this message type
	CodeInternal    = "internal"     // the handler failed
)

// QUIC application error codes on connections and streams.
const (
	AppCodeOK        quic.ApplicationErrorCode = 0 // normal close (shutdown, client close)
	AppCodeProtocol  quic.ApplicationErrorCode = 1 // the peer broke the protocol too often
	StreamCodeCancel quic.StreamErrorCode      = 1 // the local side gave up on the request
	StreamCodeBad    quic.StreamErrorCode      = 2 // the peer sent more than one frame
)

// Server timing and limits.
const (
	// MaxStreamsPerConn bounds the requests one connection may have in
	// flight; it is how far an agent can pipeline.
	MaxStreamsPerConn = 256
	// RequestReadTimeout bounds how long a request frame may take to arrive.
	RequestReadTimeout = 30 * time.Second
	// AnswerWriteTimeout bounds how long writing an answer may take.
	AnswerWriteTimeout = 30 * time.Second
	// MaxConfigWait caps ConfigRequest.WaitMillis on both ends.
	MaxConfigWait = 5 * time.Minute
	// configSlack is added to the long-poll wait so the answer can travel.
	configSlack = 10 * time.Second
	// maxBadRequests is how many unreadable requests a connection may send
	// before it is closed with AppCodeProtocol. One bad request still gets
	// its MsgError answer, which closing at once would throw away.
	maxBadRequests  = 3
	keepAlivePeriod = 10 * time.Second
	maxIdleTimeout  = 30 * time.Second
)

func quicConfig() *quic.Config {
	return &quic.Config{
		MaxIncomingStreams:    MaxStreamsPerConn,
		MaxIncomingUniStreams: -1, // the protocol uses bidirectional streams only
		KeepAlivePeriod:       keepAlivePeriod,
		MaxIdleTimeout:        maxIdleTimeout,
		HandshakeIdleTimeout:  5 * time.Second,
	}
}

// Handler answers requests. The aggregator implements it. Both methods are
// called concurrently, once per request; ctx ends when the client gives up
// on the request or the server closes.
type Handler interface {
	// HandleBatch returns the Ack for b; it must not return nil.
	HandleBatch(ctx context.Context, b *Batch) *Ack
	// HandleConfig answers at once when req.Version is stale, otherwise
	// waits up to req.WaitMillis for a change. A returned *Error is sent to
	// the client as is; any other error is sent as CodeInternal.
	HandleConfig(ctx context.Context, req *ConfigRequest) (*Config, error)
}

// ServerStats counts what the server has seen, for metrics and tests.
type ServerStats struct {
	Conns             uint64 // connections that completed the handshake
	RefusedHandshakes uint64 // handshakes refused for the client certificate
	Requests          uint64 // requests dispatched to the handler
	BadFrames         uint64 // requests whose frame could not be read
	BadMessages       uint64 // frames with an undecodable body or unknown type
	ClosedConns       uint64 // connections closed for misbehaving
	HandlerPanics     uint64 // handler calls that panicked
}

type serverCounters struct {
	conns, refused, requests, badFrames, badMessages, closedConns, panics atomic.Uint64
}

// Server accepts QUIC connections from agents (and nodes) and answers one
// request per bidirectional stream.
type Server struct {
	h   Handler
	log *slog.Logger
	udp *net.UDPConn
	tr  *quic.Transport
	ln  *quic.Listener

	ctx    context.Context // ends on Close; parent of every handler context
	cancel context.CancelFunc
	stats  serverCounters

	serving   atomic.Bool
	closeOnce sync.Once

	mu     sync.Mutex
	closed bool
	conns  map[*quic.Conn]struct{}
	wg     sync.WaitGroup // one per connection goroutine
}

// NewServer listens on the UDP address addr at once (so Addr works with
// port 0) with tlsConf (see ServerTLS). Requests are answered by h once
// Serve runs. A nil logger means slog.Default().
func NewServer(addr string, tlsConf *tls.Config, h Handler, logger *slog.Logger) (*Server, error) {
	if h == nil {
		return nil, errors.New("wire: NewServer: nil handler")
	}
	if tlsConf == nil {
		return nil, errors.New("wire: NewServer: nil TLS config")
	}
	if logger == nil {
		logger = slog.Default()
	}
	uaddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("wire: listen address %q: %w", addr, err)
	}
	udp, err := net.ListenUDP("udp", uaddr)
	if err != nil {
		return nil, fmt.Errorf("wire: listening on %s: %w", addr, err)
	}
	s := &Server{h: h, log: logger, udp: udp, conns: map[*quic.Conn]struct{}{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	conf := verifyingClientCerts(tlsConf, func(err error) {
		s.stats.refused.Add(1)
		s.log.Warn("wire: refused handshake", "err", err)
	})
	s.tr = &quic.Transport{Conn: udp, StatelessResetKey: resetKey(tlsConf)}
	s.ln, err = s.tr.Listen(conf, quicConfig())
	if err != nil {
		s.cancel()
		_ = s.tr.Close()
		_ = udp.Close()
		return nil, fmt.Errorf("wire: listening on %s: %w", addr, err)
	}
	return s, nil
}

// resetKey derives the stateless reset key from the node's private key, so
// it is secret and survives restarts: a restarted node then answers packets
// of connections it no longer knows with a stateless reset, and clients
// redial at once instead of waiting for their idle timeout.
func resetKey(conf *tls.Config) *quic.StatelessResetKey {
	if len(conf.Certificates) == 0 {
		return nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(conf.Certificates[0].PrivateKey)
	if err != nil {
		return nil
	}
	k := quic.StatelessResetKey(sha256.Sum256(append([]byte("sightline/1 stateless reset key\x00"), der...)))
	return &k
}

// Addr is the UDP address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() ServerStats {
	c := &s.stats
	return ServerStats{
		Conns:             c.conns.Load(),
		RefusedHandshakes: c.refused.Load(),
		Requests:          c.requests.Load(),
		BadFrames:         c.badFrames.Load(),
		BadMessages:       c.badMessages.Load(),
		ClosedConns:       c.closedConns.Load(),
		HandlerPanics:     c.panics.Load(),
	}
}

// Serve accepts connections until ctx is done or Close is called; either
// way the server is closed when Serve returns, and it returns nil. Serve
// may be called only once.
func (s *Server) Serve(ctx context.Context) error {
	if !s.serving.CompareAndSwap(false, true) {
		return ErrServing
	}
	stop := context.AfterFunc(ctx, func() { _ = s.Close() })
	defer stop()
	for {
		conn, err := s.ln.Accept(s.ctx)
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
				return s.Close()
			}
			// Accept fails only when the listener is gone; closing makes
			// the state match what the caller sees.
			_ = s.Close()
			return fmt.Errorf("wire: accepting connections: %w", err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = conn.CloseWithError(AppCodeOK, "server closing")
			continue
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.stats.conns.Add(1)
		go s.serveConn(conn)
	}
}

// Close stops the listener, closes every connection and waits for request
// goroutines to finish (handler contexts are cancelled). It is idempotent
// and safe before, during and after Serve; it must not be called from a
// Handler.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.mu.Lock()
		s.closed = true
		conns := make([]*quic.Conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		_ = s.ln.Close()
		for _, c := range conns {
			_ = c.CloseWithError(AppCodeOK, "server closing")
		}
		_ = s.tr.Close()
		_ = s.udp.Close()
		s.wg.Wait()
	})
	return nil
}

// serveConn accepts streams on one connection until it ends.
func (s *Server) serveConn(conn *quic.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
	}()
	log := s.log.With("remote", conn.RemoteAddr().String())
	var streams sync.WaitGroup
	defer streams.Wait()
	var bad atomic.Int32
	misbehaved := func(reason string) {
		if bad.Add(1) == maxBadRequests {
			s.stats.closedConns.Add(1)
			log.Warn("wire: closing misbehaving connection", "reason", reason)
			_ = conn.CloseWithError(AppCodeProtocol, "too many bad requests: "+reason)
		}
	}
	for {
		str, err := conn.AcceptStream(s.ctx)
		if err != nil {
			return
		}
		streams.Go(func() { s.serveStream(str, log, misbehaved) })
	}
}

// serveStream reads one request frame, dispatches it and writes one answer.
func (s *Server) serveStream(str *quic.Stream, log *slog.Logger, misbehaved func(string)) {
	_ = str.SetReadDeadline(time.Now().Add(RequestReadTimeout))
	t, body, err := readRequest(str)
	if err != nil {
		var serr *quic.StreamError
		if errors.As(err, &serr) || s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
			// The client cancelled, or the connection is going away:
			// nobody is left to read an answer.
			str.CancelRead(StreamCodeCancel)
			str.CancelWrite(StreamCodeCancel)
			return
		}
		var aerr *quic.ApplicationError
		var terr *quic.TransportError
		var ierr *quic.IdleTimeoutError
		if errors.As(err, &aerr) || errors.As(err, &terr) || errors.As(err, &ierr) {
			return
		}
		s.stats.badFrames.Add(1)
		log.Warn("wire: bad request frame", "err", err)
		s.answerError(str, CodeBadFrame, err.Error())
		misbehaved(CodeBadFrame)
		return
	}

	ctx, cancel := context.WithCancel(str.Context())
	stop := context.AfterFunc(s.ctx, cancel)
	defer func() {
		stop()
		cancel()
	}()

	var (
		ansType MsgType
		ans     any
		code    string
		msg     string
	)
	switch t {
	case MsgBatch:
		var b Batch
		if err := Unmarshal(body, &b); err != nil {
			code, msg = CodeBadMessage, err.Error()
			break
		}
		s.stats.requests.Add(1)
		ack, err := s.callBatch(ctx, &b)
		if err != nil {
			code, msg = CodeInternal, err.Error()
			break
		}
		if ack.Seq == 0 {
			ack.Seq = b.Seq
		}
		ansType, ans = MsgAck, ack
	case MsgConfigRequest:
		var req ConfigRequest
		if err := Unmarshal(body, &req); err != nil {
			code, msg = CodeBadMessage, err.Error()
			break
		}
		s.stats.requests.Add(1)
		wait := min(time.Duration(req.WaitMillis)*time.Millisecond, MaxConfigWait)
		cctx, ccancel := context.WithTimeout(ctx, wait+configSlack)
		cfg, err := s.callConfig(cctx, &req)
		ccancel()
		var werr *Error
		switch {
		case errors.As(err, &werr):
			code, msg = werr.Code, werr.Message
		case err != nil:
			code, msg = CodeInternal, err.Error()
		case cfg == nil:
			code, msg = CodeInternal, "handler returned no config"
		default:
			ansType, ans = MsgConfig, cfg
		}
	default:
		code, msg = CodeUnknownType, fmt.Sprintf("server does not accept %v frames", t)
	}
	if code != "" {
		if code == CodeBadMessage || code == CodeUnknownType {
			s.stats.badMessages.Add(1)
			log.Warn("wire: bad request", "type", t.String(), "code", code, "err", msg)
			misbehaved(code)
		} else if code == CodeInternal {
			log.Error("wire: request failed", "type", t.String(), "err", msg)
		}
		s.answerError(str, code, msg)
		return
	}
	s.answer(str, ansType, ans)
}

// readRequest reads exactly one frame and then the end of the stream: a
// client sends one frame per stream and closes its side.
func readRequest(str *quic.Stream) (MsgType, []byte, error) {
	t, body, err := ReadFrame(str)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("wire: stream ended before a whole frame header: %w", io.ErrUnexpectedEOF)
		}
		return 0, nil, err
	}
	var one [1]byte
	n, err := io.ReadFull(str, one[:])
	switch {
	case n > 0:
		return 0, nil, errors.New("wire: more than one frame on a request stream")
	case errors.Is(err, io.EOF):
		return t, body, nil
	default:
		return 0, nil, err
	}
}

func (s *Server) callBatch(ctx context.Context, b *Batch) (ack *Ack, err error) {
	defer s.recoverHandler(&err)
	ack = s.h.HandleBatch(ctx, b)
	if ack == nil {
		return nil, ErrNilAck
	}
	return ack, nil
}

func (s *Server) callConfig(ctx context.Context, req *ConfigRequest) (cfg *Config, err error) {
	defer s.recoverHandler(&err)
	return s.h.HandleConfig(ctx, req)
}

// recoverHandler turns a handler panic into an internal error: one bad
// request must not take down every agent's connection.
func (s *Server) recoverHandler(err *error) {
	if r := recover(); r != nil {
		s.stats.panics.Add(1)
		*err = fmt.Errorf("wire: handler panic: %v", r)
	}
}

func (s *Server) answerError(str *quic.Stream, code, msg string) {
	s.answer(str, MsgError, &Error{Code: code, Message: msg})
}

// answer writes one frame and closes the stream; failures only mean the
// client is gone, so they are not reported further.
func (s *Server) answer(str *quic.Stream, t MsgType, v any) {
	body, err := Marshal(v)
	if err != nil {
		s.log.Error("wire: encoding answer", "type", t.String(), "err", err)
		body, _ = Marshal(&Error{Code: CodeInternal, Message: "encoding answer failed"})
		t = MsgError
	}
	str.CancelRead(StreamCodeBad) // no-op when the request was read to its end
	_ = str.SetWriteDeadline(time.Now().Add(AnswerWriteTimeout))
	if err := WriteFrame(str, t, body); err != nil {
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			s.log.Debug("wire: writing answer", "err", err)
		}
		str.CancelWrite(StreamCodeCancel)
		return
	}
	_ = str.Close()
}

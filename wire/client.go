package wire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Client errors.
var (
	// ErrClientClosed means the Client was closed.
	ErrClientClosed = errors.New("wire: client closed")
	// ErrNoAddrs means the Client was built without aggregator addresses.
	ErrNoAddrs = errors.New("wire: no aggregator addresses")
	// ErrAckMismatch means the server acked another sequence than was sent.
	ErrAckMismatch = errors.New("wire: ack for another batch")
)

// Client timing.
const (
	// DefaultRequestTimeout bounds a request whose context has no deadline.
	DefaultRequestTimeout = 30 * time.Second
	// DialTimeout bounds one connection attempt.
	DialTimeout = 10 * time.Second
)

// Client sends requests to an aggregator cluster. It keeps one QUIC
// connection per aggregator address, dialled on first use and again after
// it is lost, and runs every request on its own stream of that connection,
// so many requests can be in flight at once. It follows leader hints. It
// never sleeps or retries on its own beyond one immediate retry at a
// hinted leader: backoff belongs to the caller. Safe for concurrent use.
type Client struct {
	tlsConf *tls.Config
	log     *slog.Logger
	addrs   []string

	ctx    context.Context // ends on Close; aborts dials
	cancel context.CancelFunc
	wg     sync.WaitGroup // dial goroutines

	mu     sync.Mutex
	closed bool
	idx    int    // position in addrs that rotation continues from
	cur    string // current target: addrs[idx] or a leader hint
	conns  map[string]*clientConn
	udp    *net.UDPConn
	tr     *quic.Transport
}

// clientConn is one connection, or the attempt to make it. ready is closed
// when the attempt ends; conn and err are set before.
type clientConn struct {
	ready chan struct{}
	conn  *quic.Conn
	err   error
}

// NewClient returns a client for the aggregators at addrs ("host:port").
// tlsConf comes from ClientTLS; see there for how server names are checked.
// Nothing is dialled until the first request. A nil logger means
// slog.Default().
func NewClient(addrs []string, tlsConf *tls.Config, logger *slog.Logger) *Client {
	if logger == nil {
		logger = slog.Default()
	}
	c := &Client{
		tlsConf: tlsConf,
		log:     logger,
		addrs:   append([]string(nil), addrs...),
		conns:   map[string]*clientConn{},
	}
	if len(c.addrs) > 0 {
		c.cur = c.addrs[0]
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c
}

// Target returns the address the next request goes to.
func (c *Client) Target() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// SendBatch sends b and returns the aggregator's Ack. An AckNotLeader with a
// leader address moves the client to that leader and is retried there once
// at once; without an address (or when that leader cannot be reached) the
// client moves to its next address. Rejected and unavailable acks are
// returned as acks. Transport failures move the client to its next address
// and are returned as errors; a MsgError answer is returned as *Error.
func (c *Client) SendBatch(ctx context.Context, b *Batch) (*Ack, error) {
	body, err := Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("wire: encoding batch: %w", err)
	}
	frame := AppendFrame(make([]byte, 0, FrameHeaderSize+len(body)), MsgBatch, body)
	addr, err := c.target()
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		var ack Ack
		if err := c.roundTrip(ctx, addr, frame, MsgAck, &ack, 0); err != nil {
			return nil, err
		}
		if ack.Seq != b.Seq {
			return nil, fmt.Errorf("%w: sent seq %d, got ack for %d from %s", ErrAckMismatch, b.Seq, ack.Seq, addr)
		}
		if ack.Status != AckNotLeader {
			return &ack, nil
		}
		if ack.Leader == "" || ack.Leader == addr || attempt > 0 {
			if ack.Leader != "" && ack.Leader != addr {
				c.follow(addr, ack.Leader) // remember the newest hint for the next call
			} else {
				c.rotate(addr)
			}
			return &ack, nil
		}
		c.log.Debug("wire: following leader hint", "from", addr, "leader", ack.Leader)
		c.follow(addr, ack.Leader)
		addr = ack.Leader
	}
}

// FetchConfig asks for the agent configuration. The request may stay open
// up to req.WaitMillis (capped at MaxConfigWait) while the server waits for
// a change, so ctx must leave room for the wait: a deadline that ends
// sooner fails the request like any transport failure, which moves the
// client to its next address. A MsgError answer is returned as *Error.
func (c *Client) FetchConfig(ctx context.Context, req *ConfigRequest) (*Config, error) {
	body, err := Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("wire: encoding config request: %w", err)
	}
	frame := AppendFrame(make([]byte, 0, FrameHeaderSize+len(body)), MsgConfigRequest, body)
	addr, err := c.target()
	if err != nil {
		return nil, err
	}
	wait := min(time.Duration(req.WaitMillis)*time.Millisecond, MaxConfigWait)
	var cfg Config
	if err := c.roundTrip(ctx, addr, frame, MsgConfig, &cfg, wait+configSlack); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Close closes every connection and waits for dial attempts to end.
// Requests in flight fail. Idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.cancel()
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()

	c.wg.Wait() // every attempt has ended, so conn and err are final
	for _, cc := range conns {
		if cc.conn != nil {
			_ = cc.conn.CloseWithError(AppCodeOK, "client closing")
		}
	}
	c.mu.Lock()
	tr, udp := c.tr, c.udp
	c.mu.Unlock()
	if tr != nil {
		_ = tr.Close()
		_ = udp.Close()
	}
	return nil
}

func (c *Client) target() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return "", ErrClientClosed
	}
	if c.cur == "" {
		return "", ErrNoAddrs
	}
	return c.cur, nil
}

// follow moves the target from 'from' to a hinted leader, unless another
// request has moved it already.
func (c *Client) follow(from, leader string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == from {
		c.cur = leader
	}
}

// rotate moves the target past a failed address, unless another request
// has moved it already (so concurrent failures skip one address, not many).
func (c *Client) rotate(from string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != from || len(c.addrs) == 0 {
		return
	}
	c.idx = (c.idx + 1) % len(c.addrs)
	c.cur = c.addrs[c.idx]
}

// roundTrip sends one request frame on a new stream to addr and decodes the
// answer into v. Failures other than a MsgError answer rotate the target.
// timeout, when non-zero, replaces DefaultRequestTimeout for contexts
// without a deadline and extends it for the long poll.
func (c *Client) roundTrip(ctx context.Context, addr string, frame []byte, want MsgType, v any, timeout time.Duration) error {
	if timeout == 0 {
		timeout = DefaultRequestTimeout
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := c.exchange(ctx, addr, frame, want, v)
	if err == nil {
		return nil
	}
	var werr *Error
	if errors.As(err, &werr) {
		return err
	}
	if errors.Is(parent.Err(), context.Canceled) {
		// The caller gave up; that says nothing about the aggregator.
		return fmt.Errorf("wire: request to %s: %w", addr, parent.Err())
	}
	switch {
	case conn == nil:
	case connGone(err):
		// Forget it now: the connection's context may be cancelled a
		// moment after its streams fail, and the next request must not
		// pick the dying connection in between.
		c.drop(addr, conn)
	case ctx.Err() != nil && parent.Err() == nil:
		// Our own generous timeout passed without an answer on an open
		// connection: the aggregator is likely gone without the connection
		// noticing yet, so dial afresh next time instead of waiting for
		// the idle timeout. A caller's shorter deadline says less and does
		// not cost the other requests on the connection.
		c.drop(addr, conn)
	}
	c.rotate(addr)
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w (%w)", cerr, err)
	}
	return fmt.Errorf("wire: request to %s: %w", addr, err)
}

// connGone reports whether err means the whole connection is closed, not
// just one stream.
func connGone(err error) bool {
	var (
		app   *quic.ApplicationError
		tr    *quic.TransportError
		reset *quic.StatelessResetError
		idle  *quic.IdleTimeoutError
		hs    *quic.HandshakeTimeoutError
		vn    *quic.VersionNegotiationError
	)
	return errors.As(err, &app) || errors.As(err, &tr) || errors.As(err, &reset) || errors.As(err, &idle) ||
		errors.As(err, &hs) || errors.As(err, &vn) || errors.Is(err, net.ErrClosed)
}

// drop forgets conn as the connection to addr and closes it.
func (c *Client) drop(addr string, conn *quic.Conn) {
	c.mu.Lock()
	if cc := c.conns[addr]; cc != nil && cc.conn == conn {
		delete(c.conns, addr)
	}
	c.mu.Unlock()
	_ = conn.CloseWithError(AppCodeOK, "request timed out")
}

// exchange runs one request on a new stream and returns the connection it
// used (nil when there was none).
func (c *Client) exchange(ctx context.Context, addr string, frame []byte, want MsgType, v any) (*quic.Conn, error) {
	conn, err := c.conn(ctx, addr)
	if err != nil {
		return nil, err
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return conn, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = str.SetDeadline(dl)
	}
	// Cancellation unblocks Read and Write through the deadline; the
	// stream is then reset below.
	stop := context.AfterFunc(ctx, func() { _ = str.SetDeadline(time.Now()) })
	defer stop()
	ok := false
	defer func() {
		if !ok {
			str.CancelRead(StreamCodeCancel)
			str.CancelWrite(StreamCodeCancel)
		}
	}()
	if _, err := str.Write(frame); err != nil {
		return conn, err
	}
	if err := str.Close(); err != nil {
		return conn, err
	}
	if err := ReadMessage(str, want, v); err != nil {
		var werr *Error
		if errors.As(err, &werr) {
			ok = true
			str.CancelRead(StreamCodeCancel) // no-op if the stream already ended
		}
		return conn, err
	}
	// Reading the end of the stream completes it, which frees the stream's
	// slot on both sides.
	var one [1]byte
	n, err := io.ReadFull(str, one[:])
	if n > 0 {
		return conn, fmt.Errorf("wire: %s sent more than one frame", addr)
	}
	if !errors.Is(err, io.EOF) {
		return conn, err
	}
	ok = true
	return conn, nil
}

// conn returns a live connection to addr, dialling when there is none.
// Concurrent callers share one dial.
func (c *Client) conn(ctx context.Context, addr string) (*quic.Conn, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClientClosed
	}
	cc := c.conns[addr]
	if cc != nil {
		select {
		case <-cc.ready:
			if cc.err != nil || cc.conn.Context().Err() != nil {
				delete(c.conns, addr) // gone: dial again below
				cc = nil
			}
		default:
		}
	}
	if cc == nil {
		tr, err := c.transportLocked()
		if err != nil {
			c.mu.Unlock()
			return nil, err
		}
		cc = &clientConn{ready: make(chan struct{})}
		c.conns[addr] = cc
		c.wg.Add(1)
		go c.dial(tr, addr, cc)
	}
	c.mu.Unlock()

	select {
	case <-cc.ready:
		if cc.err != nil {
			return nil, cc.err
		}
		return cc.conn, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// transportLocked returns the one UDP socket all connections share,
// opening it on first use.
func (c *Client) transportLocked() (*quic.Transport, error) {
	if c.tr != nil {
		return c.tr, nil
	}
	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		return nil, fmt.Errorf("wire: opening UDP socket: %w", err)
	}
	c.udp = udp
	c.tr = &quic.Transport{Conn: udp}
	return c.tr, nil
}

func (c *Client) dial(tr *quic.Transport, addr string, cc *clientConn) {
	defer c.wg.Done()
	defer close(cc.ready)
	ctx, cancel := context.WithTimeout(c.ctx, DialTimeout)
	defer cancel()
	if c.tlsConf == nil {
		cc.err = errors.New("wire: client has no TLS config")
		return
	}
	uaddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		cc.err = fmt.Errorf("wire: resolving %s: %w", addr, err)
		return
	}
	conf := c.tlsConf.Clone()
	conf.ServerName = serverNameFor(c.tlsConf, addr)
	conn, err := tr.Dial(ctx, uaddr, conf, quicConfig())
	if err != nil {
		cc.err = fmt.Errorf("wire: dialling %s: %w", addr, err)
		return
	}
	c.log.Debug("wire: connected", "addr", addr)
	cc.conn = conn
}

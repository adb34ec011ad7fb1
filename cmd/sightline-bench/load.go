package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The load generator speaks HTTP/1.1 over raw keep-alive TCP connections
// with pre-rendered requests. Go's net/http client costs several times the
// CPU of the server it measures; on a 2-core machine that would put the
// generator, not the server, on the critical path. The same generator
// drives the net/http baseline and the agent, so their ratio is fair.

// requestTimeout bounds one request; a server that stalls longer counts an
// error instead of hanging the run.
const requestTimeout = 10 * time.Second

// httpConn is one keep-alive HTTP/1.1 connection, dialled on first use and
// again after an error or a "Connection: close".
type httpConn struct {
	addr string
	c    net.Conn
	br   *bufio.Reader
}

func (h *httpConn) close() {
	if h.c != nil {
		h.c.Close()
		h.c, h.br = nil, nil
	}
}

// roundTrip writes one complete request and reads the answer's status,
// discarding its body.
func (h *httpConn) roundTrip(req []byte) (int, error) {
	if h.c == nil {
		c, err := net.DialTimeout("tcp", h.addr, requestTimeout)
		if err != nil {
			return 0, err
		}
		h.c, h.br = c, bufio.NewReaderSize(c, 8<<10)
	}
	_ = h.c.SetDeadline(time.Now().Add(requestTimeout))
	if _, err := h.c.Write(req); err != nil {
		h.close()
		return 0, err
	}
	status, closeConn, err := readResponse(h.br)
	if err != nil {
		h.close()
		return 0, err
	}
	if closeConn {
		h.close()
	}
	return status, nil
}

var errBadResponse = errors.New("malformed HTTP response")

// readResponse reads one HTTP/1.1 response: status line, headers and a
// body framed by Content-Length or chunked encoding.
func readResponse(br *bufio.Reader) (status int, closeConn bool, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, false, fmt.Errorf("%w: status line %q", errBadResponse, line)
	}
	if status, err = strconv.Atoi(string(line[9:12])); err != nil {
		return 0, false, fmt.Errorf("%w: status line %q", errBadResponse, line)
	}
	length, chunked := -1, false
	for {
		line, err = br.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		if len(line) <= 2 {
			break
		}
		name, value, ok := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(":"))
		if !ok {
			return 0, false, fmt.Errorf("%w: header %q", errBadResponse, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
				return 0, false, fmt.Errorf("%w: Content-Length %q", errBadResponse, value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.Contains(bytes.ToLower(value), []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			closeConn = bytes.EqualFold(value, []byte("close"))
		}
	}
	switch {
	case chunked:
		err = discardChunked(br)
	case length > 0:
		_, err = br.Discard(length)
	case length < 0 && status != 204 && status != 304:
		// No framing: the body runs to the end of the connection.
		closeConn = true
	}
	return status, closeConn, err
}

func discardChunked(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		sizeText, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
		size, err := strconv.ParseUint(string(bytes.TrimSpace(sizeText)), 16, 32)
		if err != nil {
			return fmt.Errorf("%w: chunk size %q", errBadResponse, line)
		}
		if size == 0 {
			for { // trailers, up to the empty line
				line, err = br.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(line) <= 2 {
					return nil
				}
			}
		}
		if _, err := br.Discard(int(size) + 2); err != nil {
			return err
		}
	}
}

// collectLoad renders collect requests: JSON bodies of perReq events of
// one site, each with a fresh random UUID and the current time, cycling
// through pre-rendered event tails.
type collectLoad struct {
	head   string // request line and headers up to "Content-Length: "
	site   string
	tails  []string
	perReq int
}

func newCollectLoad(addr string, perReq int) *collectLoad {
	g := newDXAGen(42, time.Now().UnixMilli())
	tails := make([]string, 509) // prime, so request boundaries drift over the tails
	for i := range tails {
		tails[i] = eventTail(g.next())
	}
	return &collectLoad{
		head: "POST /v1/collect HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\n" +
			"Origin: " + benchOrigin + "\r\nUser-Agent: sightline-bench\r\nContent-Length: ",
		site:   benchSite,
		tails:  tails,
		perReq: perReq,
	}
}

// loadWorker is the per-connection state of the load generator.
type loadWorker struct {
	conn    httpConn
	rng     *rand.Rand
	session string
	n       int
	body    []byte
	req     []byte
}

func newLoadWorker(addr string, seed uint64) *loadWorker {
	w := &loadWorker{conn: httpConn{addr: addr}, rng: rand.New(rand.NewPCG(seed, 7))}
	w.session = string(appendUUID(nil, w.rng))
	return w
}

// build renders the worker's next request into w.req.
func (l *collectLoad) build(w *loadWorker) []byte {
	b := append(w.body[:0], `{"site":"`...)
	b = append(b, l.site...)
	b = append(b, `","session":"`...)
	b = append(b, w.session...)
	b = append(b, `","events":[`...)
	now := time.Now().UnixMilli()
	for i := range l.perReq {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":"`...)
		b = appendUUID(b, w.rng)
		b = append(b, `","ts":`...)
		b = strconv.AppendInt(b, now, 10)
		b = append(b, l.tails[w.n%len(l.tails)]...)
		w.n++
	}
	b = append(b, "]}"...)
	w.body = b
	r := append(w.req[:0], l.head...)
	r = strconv.AppendInt(r, int64(len(b)), 10)
	r = append(r, "\r\n\r\n"...)
	r = append(r, b...)
	w.req = r
	return r
}

func appendUUID(dst []byte, rng *rand.Rand) []byte {
	var b [16]byte
	v1, v2 := rng.Uint64(), rng.Uint64()
	for j := range 8 {
		b[j], b[8+j] = byte(v1>>(8*j)), byte(v2>>(8*j))
	}
	return append(dst, formatUUID(b)...)
}

// tally counts answers by status code and keeps the first error.
type tally struct {
	mu       sync.Mutex
	statuses map[int]uint64
	errs     uint64
	firstErr error
}

func (t *tally) add(statuses map[int]uint64, errs uint64, firstErr error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.statuses == nil {
		t.statuses = map[int]uint64{}
	}
	for k, v := range statuses {
		t.statuses[k] += v
	}
	t.errs += errs
	if t.firstErr == nil {
		t.firstErr = firstErr
	}
}

// ok returns the number of 2xx answers.
func (t *tally) ok() uint64 {
	var n uint64
	for k, v := range t.statuses {
		if k/100 == 2 {
			n += v
		}
	}
	return n
}

// failures describes the non-2xx answers and errors, or "" when there were none.
func (t *tally) failures() string {
	var parts []string
	codes := make([]int, 0, len(t.statuses))
	for k := range t.statuses {
		if k/100 != 2 {
			codes = append(codes, k)
		}
	}
	slices.Sort(codes)
	for _, k := range codes {
		parts = append(parts, fmt.Sprintf("%s× HTTP %d", commas(int64(t.statuses[k])), k))
	}
	if t.errs > 0 {
		parts = append(parts, fmt.Sprintf("%s× error (first: %v)", commas(int64(t.errs)), t.firstErr))
	}
	if len(parts) == 0 {
		return ""
	}
	s := parts[0]
	for _, p := range parts[1:] {
		s += ", " + p
	}
	return s
}

// closedResult is what a closed-loop run measured inside its window.
type closedResult struct {
	tally
	elapsed time.Duration
}

func (r *closedResult) perSecond() float64 { return float64(r.ok()) / r.elapsed.Seconds() }

// runClosed keeps workers requests in flight (each worker sends its next
// request as soon as the previous one is answered) for warmup+dur and
// counts the answers that arrive in the last dur.
func runClosed(ctx context.Context, addr string, workers int, warmup, dur time.Duration, l *collectLoad) *closedResult {
	start := time.Now()
	from, until := start.Add(warmup), start.Add(warmup+dur)
	res := &closedResult{elapsed: dur}
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := newLoadWorker(addr, uint64(i)+uint64(start.UnixNano()))
			defer w.conn.close()
			statuses := map[int]uint64{}
			var errs uint64
			var firstErr error
			for ctx.Err() == nil {
				req := l.build(w)
				status, err := w.conn.roundTrip(req)
				now := time.Now()
				if now.After(until) {
					break
				}
				if now.Before(from) {
					continue
				}
				if err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					sleepCtx(ctx, 10*time.Millisecond) // a refused dial would otherwise spin
					continue
				}
				statuses[status]++
			}
			res.add(statuses, errs, firstErr)
		}()
	}
	wg.Wait()
	return res
}

// openResult is what an open-loop run measured.
type openResult struct {
	tally
	sent      int             // requests scheduled
	skipped   int             // scheduled but never sent: ctx ended first
	intended  []time.Duration // from the scheduled send time to the answer
	service   []time.Duration // from the actual send to the answer
	maxBehind time.Duration   // worst lag of a send behind its schedule
}

// runOpen sends requests at a fixed rate for dur regardless of how fast they
// are answered (open loop), over up to conns connections, and records each
// latency from the request's scheduled time, so a stalled server cannot
// hide its stall by slowing the sender (coordinated omission). When ctx
// ends, requests not yet sent are skipped.
func runOpen(ctx context.Context, addr string, rate float64, dur time.Duration, conns int, l *collectLoad) *openResult {
	total := int(rate * dur.Seconds())
	interval := time.Duration(float64(time.Second) / rate)
	jobs := make(chan time.Time, total)
	res := &openResult{sent: total}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var behind atomic.Int64
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := newLoadWorker(addr, uint64(i)+uint64(time.Now().UnixNano()))
			defer w.conn.close()
			statuses := map[int]uint64{}
			var errs uint64
			var firstErr error
			var lat, svc []time.Duration
			var skipped int
			defer func() { mu.Lock(); res.skipped += skipped; mu.Unlock() }()
			for at := range jobs {
				if ctx.Err() != nil {
					skipped++ // drain
					continue
				}
				req := l.build(w)
				sent := time.Now()
				for lag := int64(sent.Sub(at)); ; {
					old := behind.Load()
					if lag <= old || behind.CompareAndSwap(old, lag) {
						break
					}
				}
				status, err := w.conn.roundTrip(req)
				done := time.Now()
				if err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				statuses[status]++
				lat = append(lat, done.Sub(at))
				svc = append(svc, done.Sub(sent))
			}
			res.add(statuses, errs, firstErr)
			mu.Lock()
			res.intended = append(res.intended, lat...)
			res.service = append(res.service, svc...)
			mu.Unlock()
		}()
	}
	start := time.Now()
	for i := 0; i < total && ctx.Err() == nil; {
		now := time.Now()
		// Hand out every request whose time has come, then sleep to the next.
		for ; i < total; i++ {
			at := start.Add(time.Duration(i) * interval)
			if at.After(now) {
				break
			}
			jobs <- at
		}
		if i < total {
			sleepCtx(ctx, time.Until(start.Add(time.Duration(i)*interval)))
		}
	}
	close(jobs)
	wg.Wait()
	slices.Sort(res.intended)
	slices.Sort(res.service)
	res.maxBehind = time.Duration(behind.Load())
	return res
}

// percentile returns the nearest-rank p-quantile (0 < p ≤ 1) of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(len(sorted))*p)) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// sleepCtx sleeps for d or until ctx ends and reports whether ctx is live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

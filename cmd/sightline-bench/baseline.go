package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/sightline/sightline/wire"
)

// baselines are the raw figures of this machine that the Sightline figures
// are compared with. Zero means not measured in this run.
type baselines struct {
	pebbleEvents    float64 // events/s in synced 1,000-event batch commits
	pebbleCommits   float64 // commits/s of the same
	pebbleSingle    float64 // synced single-record commits/s from 64 goroutines
	pebbleP50       time.Duration
	pebbleP99       time.Duration // one synced single-record commit, one writer
	pebbleValueSize float64       // mean bytes per stored event value
	httpRPS         float64       // bare net/http small JSON POSTs/s, closed loop
	httpP50         time.Duration // bare net/http at the latency figure's open-loop rate
	httpP99         time.Duration
}

// eventValues returns n realistic events, each msgpack-encoded alone the
// way a queue would store it, and their mean size.
func eventValues(n int) ([][]byte, float64, error) {
	vals := make([][]byte, n)
	var total int
	for i := range vals {
		g := newDXAGen(uint64(i/50), time.Now().UnixMilli()) // sessions of 50 events
		for range i % 50 {
			g.next()
		}
		ev := g.next()
		v, err := wire.Marshal(&ev)
		if err != nil {
			return nil, 0, err
		}
		vals[i] = v
		total += len(v)
	}
	return vals, float64(total) / float64(n), nil
}

// quietPebbleLogger keeps Pebble's informational lines out of the output.
type quietPebbleLogger struct{}

func (quietPebbleLogger) Infof(string, ...any)  {}
func (quietPebbleLogger) Errorf(string, ...any) {}
func (quietPebbleLogger) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pebble fatal: "+format+"\n", args...)
	os.Exit(2)
}

func openPebble(dir string) (*pebble.DB, error) {
	return pebble.Open(dir, &pebble.Options{
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             quietPebbleLogger{},
	})
}

// benchPebble measures raw Pebble: synced commits of 1,000-event batches
// from one writer, synced single-record commits from 64 goroutines (Pebble
// groups concurrent syncs itself), and the latency of one synced
// single-record commit from one writer.
func benchPebble(ctx context.Context, p *plan, dir string, b *baselines) (err error) {
	vals, mean, err := eventValues(4096)
	if err != nil {
		return err
	}
	b.pebbleValueSize = mean
	db, err := openPebble(filepath.Join(dir, "pebble"))
	if err != nil {
		return fmt.Errorf("opening pebble: %w", err)
	}
	defer func() {
		if cerr := db.Close(); err == nil {
			err = cerr
		}
	}()
	key := func(fam byte, seq uint64) []byte {
		k := make([]byte, 9)
		k[0] = fam
		binary.BigEndian.PutUint64(k[1:], seq)
		return k
	}

	progress("pebble: synced commits of 1,000 events (~%.0f B each) for %v", mean, p.pebbleDur)
	var seq uint64
	var commits int
	start := time.Now()
	for time.Since(start) < p.pebbleDur && ctx.Err() == nil {
		batch := db.NewBatch()
		for range 1000 {
			if err := batch.Set(key('b', seq), vals[seq%uint64(len(vals))], nil); err != nil {
				return err
			}
			seq++
		}
		if err := batch.Commit(pebble.Sync); err != nil {
			return err
		}
		batch.Close()
		commits++
	}
	el := time.Since(start).Seconds()
	b.pebbleCommits = float64(commits) / el
	b.pebbleEvents = float64(commits*1000) / el

	progress("pebble: synced single-record commits from 64 goroutines for %v", p.pebbleDur)
	var n atomic.Int64
	var next atomic.Uint64
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	start = time.Now()
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < p.pebbleDur && ctx.Err() == nil {
				s := next.Add(1)
				if err := db.Set(key('s', s), vals[s%uint64(len(vals))], pebble.Sync); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	b.pebbleSingle = float64(n.Load()) / time.Since(start).Seconds()

	progress("pebble: latency of one synced single-record commit, one writer, for %v", p.pebbleLatDur)
	var lat []time.Duration
	start = time.Now()
	for time.Since(start) < p.pebbleLatDur && ctx.Err() == nil {
		s := next.Add(1)
		t := time.Now()
		if err := db.Set(key('s', s), vals[s%uint64(len(vals))], pebble.Sync); err != nil {
			return err
		}
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	b.pebbleP50, b.pebbleP99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return ctx.Err()
}

// bareServer is the net/http baseline: a handler that reads a small JSON
// POST and answers 202 with a small JSON body, nothing else.
type bareServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

func startBareServer() (*bareServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &bareServer{ln: ln, done: make(chan struct{})}
	s.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"accepted":1}`)
	})}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			progress("net/http baseline server: %v", err)
		}
	}()
	return s, nil
}

func (s *bareServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	<-s.done
}

// benchHTTP measures the bare net/http server with the load generator and
// request bodies the agent figures use: closed loop with p.workers
// connections, then open loop at the latency figure's rate.
func benchHTTP(ctx context.Context, p *plan, b *baselines) error {
	s, err := startBareServer()
	if err != nil {
		return err
	}
	defer s.close()
	addr := s.ln.Addr().String()
	progress("net/http: single-event POSTs, %d keep-alive connections, %v (+%v warm-up)", p.workers, p.closedDur, p.warmup)
	r := runClosed(ctx, addr, p.workers, p.warmup, p.closedDur, newCollectLoad(addr, 1))
	if f := r.failures(); f != "" {
		return fmt.Errorf("net/http baseline: %s", f)
	}
	b.httpRPS = r.perSecond()
	progress("net/http: open loop at %s req/s for %v", commas(int64(p.latRate)), p.latDur)
	o := runOpen(ctx, addr, p.latRate, p.latDur, p.workers, newCollectLoad(addr, 1))
	if f := o.failures(); f != "" {
		return fmt.Errorf("net/http baseline (open loop): %s", f)
	}
	b.httpP50, b.httpP99 = percentile(o.intended, 0.50), percentile(o.intended, 0.99)
	return ctx.Err()
}

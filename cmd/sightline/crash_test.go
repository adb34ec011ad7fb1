package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// loadGen posts collect requests like a fleet of browsers would: each worker
// is one session; a request that does not get a 202 is either retried with
// the same event ids (as the recorder does) or abandoned.
type loadGen struct {
	site      string
	target    func() string
	perReq    int
	retryRate float64 // share of failed requests retried rather than abandoned

	mu        sync.Mutex
	acked     map[string]map[string]bool // session → event ids that got a 202
	abandoned map[string]map[string]bool // session → ids never acknowledged
	statuses  map[int]int
	stop      chan struct{}
	wg        sync.WaitGroup
}

func newLoadGen(site string, target func() string, workers, perReq int) *loadGen {
	g := &loadGen{site: site, target: target, perReq: perReq, retryRate: 0.5,
		acked: map[string]map[string]bool{}, abandoned: map[string]map[string]bool{},
		statuses: map[int]int{}, stop: make(chan struct{})}
	for w := range workers {
		session := fmt.Sprintf("sess-%d", w)
		g.acked[session], g.abandoned[session] = map[string]bool{}, map[string]bool{}
		g.wg.Add(1)
		go g.worker(w, session)
	}
	return g
}

func (g *loadGen) worker(w int, session string) {
	defer g.wg.Done()
	client := &http.Client{Timeout: 5 * time.Second}
	rng := rand.New(rand.NewPCG(uint64(w), 42))
	for k := 0; ; k++ {
		prefix := fmt.Sprintf("w%d-r%d", w, k)
		body := collectBody(g.site, session, prefix, g.perReq)
		for {
			select {
			case <-g.stop:
				g.record(session, prefix, false)
				return
			default:
			}
			code, _ := post(client, g.target(), body)
			g.mu.Lock()
			g.statuses[code]++
			g.mu.Unlock()
			if code == http.StatusAccepted {
				g.record(session, prefix, true)
				break
			}
			if rng.Float64() >= g.retryRate {
				g.record(session, prefix, false)
				break
			}
			// The agent is down or full: back off a little, then resend the
			// very same request.
			select {
			case <-g.stop:
				g.record(session, prefix, false)
				return
			case <-time.After(time.Duration(10+rng.IntN(40)) * time.Millisecond):
			}
		}
	}
}

func (g *loadGen) record(session, prefix string, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	dst := g.abandoned[session]
	if ok {
		dst = g.acked[session]
	}
	for i := range g.perReq {
		dst[fmt.Sprintf("%s-%d", prefix, i)] = true
	}
}

func (g *loadGen) halt() {
	close(g.stop)
	g.wg.Wait()
}

func (g *loadGen) ackedCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, ids := range g.acked {
		n += len(ids)
	}
	return n
}

// verify checks exactly-once: every acknowledged event is stored exactly
// once, no event is stored twice, and nothing unknown was stored.
func (g *loadGen) verify(t *testing.T, c *testCluster) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	total, ackedTotal := 0, 0
	for session, acked := range g.acked {
		ackedTotal += len(acked)
		stored, err := c.sessionEventIDs(session)
		if err != nil {
			t.Fatal(err)
		}
		for id, n := range stored {
			if n != 1 {
				t.Errorf("%s: event %s stored %d times", session, id, n)
			}
			if !acked[id] && !g.abandoned[session][id] {
				t.Errorf("%s: stored event %s was never sent", session, id)
			}
		}
		for id := range acked {
			if stored[id] == 0 {
				t.Errorf("%s: event %s got a 202 but is not stored", session, id)
			}
		}
		total += len(stored)
	}
	if got := c.events(); got != total {
		t.Errorf("stats count %d events, sessions hold %d", got, total)
	}
	t.Logf("acked %d events, stored %d (the rest were abandoned without a 202), statuses %v", ackedTotal, total, g.statuses)
}

// metric reads one unlabelled sample from a Prometheus text endpoint.
func metric(addr, name string) (float64, bool) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// waitDrained waits until the agent has nothing queued or in flight.
func waitDrained(t *testing.T, a *testAgent) {
	t.Helper()
	waitFor(t, 60*time.Second, a.name+" to drain its queue", func() bool {
		q, ok1 := metric(a.http, "sightline_agent_queue_events")
		f, ok2 := metric(a.http, "sightline_agent_batches_in_flight")
		return ok1 && ok2 && q == 0 && f == 0
	})
}

// TestAgentKill9UnderLoad is acceptance 2 of the foundation: the agent is
// killed with SIGKILL at random moments while a load generator posts; every
// event that got a 202 is counted exactly once, and nothing twice.
func TestAgentKill9UnderLoad(t *testing.T) {
	c := newTestCluster(t)
	a := c.startAgent(t, "agent", "")
	g := newLoadGen(c.site, func() string { return a.http }, 4, 10)
	rng := rand.New(rand.NewPCG(1, 2))
	const kills = 20
	for i := range kills {
		// A random moment: somewhere in the next 50-300ms of load.
		<-time.After(time.Duration(50+rng.IntN(250)) * time.Millisecond)
		a.kill()
		a.restart(t)
		t.Logf("kill %d/%d done, %d events acked so far", i+1, kills, g.ackedCount())
	}
	<-time.After(200 * time.Millisecond)
	g.halt()
	waitDrained(t, a)
	g.verify(t, c)
	if g.ackedCount() == 0 {
		t.Fatal("no request was acknowledged at all")
	}
}

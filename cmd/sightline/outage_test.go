package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAggregatorOutage is acceptance 3: with the aggregator stopped under
// load the agent keeps answering 202 from its queue; when it returns,
// everything arrives exactly once. Then the aggregator is killed with
// SIGKILL and restarted, and keeps every acknowledged batch.
func TestAggregatorOutage(t *testing.T) {
	c := newTestCluster(t)
	a := c.startAgent(t, "agent", "")
	g := newLoadGen(c.site, func() string { return a.http }, 3, 20)
	waitFor(t, 30*time.Second, "first events to be committed", func() bool { return c.events() > 0 })

	c.agg.stop()
	before := g.ackedCount()
	waitFor(t, 30*time.Second, "the agent to keep acknowledging while the aggregator is away", func() bool {
		return g.ackedCount() > before+500
	})
	if n := c.events(); n != -1 {
		t.Fatalf("aggregator still answers (%d events) after stop", n)
	}
	c.restartAggregator()
	<-time.After(300 * time.Millisecond) // some load against the returned cluster
	g.halt()
	waitDrained(t, a)
	g.verify(t, c)

	committed := c.events()
	c.agg.kill()
	c.restartAggregator()
	waitFor(t, 30*time.Second, "the aggregator to answer after kill -9", func() bool { return c.events() >= 0 })
	if got := c.events(); got != committed {
		t.Fatalf("after kill -9 and restart: %d events, want %d", got, committed)
	}
	g.verify(t, c)
}

// TestDiskBudget is acceptance 4: with a tiny budget and the aggregator
// away, the agent answers 503 with Retry-After once full, never crashes,
// and delivers everything it accepted once the aggregator returns.
func TestDiskBudget(t *testing.T) {
	c := newTestCluster(t)
	a := c.startAgent(t, "agent", "disk_budget: 65536\nmax_body_bytes: 16384\n")
	c.agg.stop()

	client := &http.Client{Timeout: 5 * time.Second}
	accepted, full := 0, 0
	var retryAfter string
	for i := 0; full < 20 && i < 10000; i++ {
		code, h := post(client, a.http, collectBody(c.site, "budget", fmt.Sprintf("r%d", i), 10))
		switch code {
		case http.StatusAccepted:
			accepted += 10
		case http.StatusServiceUnavailable:
			full++
			retryAfter = h.Get("Retry-After")
		default:
			t.Fatalf("request %d: status %d", i, code)
		}
	}
	if full == 0 {
		t.Fatalf("accepted %d events into a 64 KiB budget without a 503", accepted)
	}
	if retryAfter == "" {
		t.Fatal("503 without Retry-After")
	}
	resp, err := http.Get("http://" + a.http + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("agent unhealthy while full: %v", err)
	}
	resp.Body.Close()
	t.Logf("accepted %d events, then %d answers of 503 (Retry-After %s)", accepted, full, retryAfter)

	c.restartAggregator()
	waitFor(t, 60*time.Second, "all accepted events to be delivered", func() bool { return c.events() == accepted })
	waitDrained(t, a)
	if got := c.events(); got != accepted {
		t.Fatalf("delivered %d events, accepted %d", got, accepted)
	}
	// With the queue drained there is room again.
	if code, _ := post(client, a.http, collectBody(c.site, "budget", "after", 10)); code != http.StatusAccepted {
		t.Fatalf("after draining: status %d, want 202", code)
	}
}

// TestBadInput is acceptance 5 at the process level: every kind of bad
// request gets a clear error, nothing crashes and nothing is stored.
func TestBadInput(t *testing.T) {
	c := newTestCluster(t)
	a := c.startAgent(t, "agent", "max_body_bytes: 65536\n")
	gz := func(b []byte) []byte {
		var buf bytes.Buffer
		w := gzip.NewWriter(&buf)
		w.Write(b)
		w.Close()
		return buf.Bytes()
	}
	big := bytes.Repeat([]byte(" "), 100<<10)
	cases := []struct {
		name, ctype, encoding string
		body                  []byte
		origin                string
		want                  int
		field                 string
	}{
		{"malformed json", "application/json", "", []byte(`{"site":"load",`), "", 400, ""},
		{"wrong type", "application/json", "", []byte(`{"site":"load","session":"s","events":[{"id":"x","type":"click","ts":"yesterday"}]}`), "", 400, "ts"},
		{"unknown event type", "application/json", "", []byte(`{"site":"load","session":"s","events":[{"id":"x","type":"hover","ts":1}]}`), "", 400, "events[0].type"},
		{"missing session", "application/json", "", []byte(`{"site":"load","events":[]}`), "", 400, "session"},
		{"unknown site", "application/json", "", collectBody("nope", "s", "x", 1), "", 403, ""},
		{"foreign origin", "application/json", "", collectBody("load", "s", "x", 1), "http://evil.example", 403, ""},
		{"oversized body", "application/json", "", big, "", 413, ""},
		{"gzip bomb", "application/json", "gzip", gz(bytes.Repeat([]byte("a"), 10<<20)), "", 413, ""},
		{"unsupported content type", "image/png", "", []byte("x"), "", 415, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "http://"+a.http+"/v1/collect", bytes.NewReader(tc.body))
			req.Header.Set("Content-Type", tc.ctype)
			if tc.encoding != "" {
				req.Header.Set("Content-Encoding", tc.encoding)
			}
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
			}
			if !bytes.Contains(body, []byte(`"error"`)) || !bytes.Contains(body, []byte(`"message"`)) {
				t.Fatalf("error body is not {\"error\":{…}}: %s", body)
			}
			if tc.field != "" && !bytes.Contains(body, []byte(tc.field)) {
				t.Fatalf("error does not name %q: %s", tc.field, body)
			}
		})
	}

	// Garbage on the QUIC port: the aggregator must shrug it off.
	conn, err := net.Dial("udp", c.wire)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		conn.Write(bytes.Repeat([]byte{byte(i)}, 1200))
	}
	conn.Close()

	// An agent whose certificate comes from another CA is refused: what it
	// accepts locally never reaches the cluster.
	foreign := filepath.Join(t.TempDir(), "foreign")
	if out, err := exec.Command(binPath, "ca", "init", "--dir", foreign).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	rogueHTTP := freePort(t, "tcp")
	rogue := startProc(t, "rogue-agent", "agent", "--data-dir", filepath.Join(t.TempDir(), "rogue"),
		"--http", rogueHTTP, "--aggregators", c.wire, "--tls-dir", foreign)
	waitFor(t, 30*time.Second, "the rogue agent to log a refused handshake", func() bool {
		b, _ := readFile(rogue.log)
		return strings.Contains(strings.ToLower(b), "certificate") || strings.Contains(strings.ToLower(b), "handshake") || strings.Contains(strings.ToLower(b), "tls")
	})

	// Still alive, still correct, nothing stored from any of it.
	a2 := c.startAgent(t, "agent2", "")
	if code, _ := post(http.DefaultClient, a2.http, collectBody(c.site, "good", "ok", 5)); code != http.StatusAccepted {
		t.Fatalf("a good request after the bad ones: status %d", code)
	}
	waitFor(t, 30*time.Second, "the good events", func() bool { return c.events() == 5 })
	waitDrained(t, a)
	if got := c.events(); got != 5 {
		t.Fatalf("stored %d events, want only the 5 good ones", got)
	}
}

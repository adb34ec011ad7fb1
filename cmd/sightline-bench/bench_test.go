package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sightline/sightline/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCommas(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{{0, "0"}, {999, "999"}, {1000, "1,000"}, {31200, "31,200"}, {1234567, "1,234,567"}, {-25000, "-25,000"}} {
		if got := commas(tc.in); got != tc.want {
			t.Errorf("commas(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 50}, {0.99, 99}, {1, 100}, {0.001, 1}} {
		if got := percentile(d, tc.p); got != tc.want {
			t.Errorf("percentile(1..100, %v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile(nil) = %v, want 0", got)
	}
}

func TestSelectFigures(t *testing.T) {
	for _, tc := range []struct {
		only    string
		want    []string
		wantErr bool
	}{
		{"", figureNames, false},
		{"wire", []string{"wire"}, false},
		{"agent", []string{"agent", "pebble", "http"}, false},
		{"aggregator, rss", []string{"aggregator", "pebble", "rss"}, false},
		{"nope", nil, true},
		{",", nil, true},
	} {
		sel, err := selectFigures(tc.only)
		if (err != nil) != tc.wantErr {
			t.Errorf("selectFigures(%q) error = %v, want error %v", tc.only, err, tc.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if len(sel) != len(tc.want) {
			t.Errorf("selectFigures(%q) = %v, want %v", tc.only, sel, tc.want)
		}
		for _, n := range tc.want {
			if !sel[n] {
				t.Errorf("selectFigures(%q) lacks %q", tc.only, n)
			}
		}
	}
}

func TestReadResponse(t *testing.T) {
	for _, tc := range []struct {
		name      string
		raw       string
		status    int
		closeConn bool
	}{
		{"content-length", "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"accepted\":1}\n", 202, false},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nTrailer: v\r\n\r\n", 200, false},
		{"close", "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}", 503, true},
		{"no framing", "HTTP/1.0 200 OK\r\n\r\nbody", 200, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A second response follows, so a body read short or long shows.
			br := bufio.NewReader(strings.NewReader(tc.raw + "HTTP/1.1 204 No Content\r\n\r\n"))
			status, closeConn, err := readResponse(br)
			if err != nil {
				t.Fatal(err)
			}
			if status != tc.status || closeConn != tc.closeConn {
				t.Fatalf("got status %d close %v, want %d %v", status, closeConn, tc.status, tc.closeConn)
			}
			if closeConn {
				return
			}
			if status, _, err := readResponse(br); err != nil || status != 204 {
				t.Fatalf("next response: status %d, error %v", status, err)
			}
		})
	}
	for _, bad := range []string{"", "garbage\r\n", "HTTP/1.1 2x2 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"} {
		if _, _, err := readResponse(bufio.NewReader(strings.NewReader(bad))); err == nil {
			t.Errorf("readResponse(%q) succeeded", bad)
		}
	}
}

// collectBody is the collect payload shape of ARCHITECTURE.md.
type collectBody struct {
	Site    string `json:"site"`
	Session string `json:"session"`
	User    string `json:"user"`
	Events  []struct {
		ID     string          `json:"id"`
		Type   string          `json:"type"`
		TS     int64           `json:"ts"`
		URL    string          `json:"url"`
		Target *targetJSON     `json:"target"`
		Name   string          `json:"name"`
		Props  json.RawMessage `json:"props"`
	} `json:"events"`
}

func TestCollectLoadBuildsValidRequests(t *testing.T) {
	l := newCollectLoad("127.0.0.1:1", 50)
	w := newLoadWorker("127.0.0.1:1", 1)
	seen := map[string]bool{}
	for range 3 {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(l.build(w))))
		if err != nil {
			t.Fatal(err)
		}
		if req.Method != "POST" || req.URL.Path != "/v1/collect" || req.Header.Get("Origin") != benchOrigin {
			t.Fatalf("request %s %s Origin %q", req.Method, req.URL, req.Header.Get("Origin"))
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			t.Fatal(err)
		}
		var cb collectBody
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cb); err != nil {
			t.Fatalf("body does not decode: %v\n%s", err, body)
		}
		if cb.Site != benchSite || cb.Session == "" || len(cb.Events) != 50 {
			t.Fatalf("site %q session %q, %d events", cb.Site, cb.Session, len(cb.Events))
		}
		for _, ev := range cb.Events {
			if seen[ev.ID] || len(ev.ID) != 36 || !wire.KnownType(ev.Type) || ev.TS == 0 || ev.URL == "" {
				t.Fatalf("bad or repeated event %+v", ev)
			}
			seen[ev.ID] = true
		}
	}
}

func TestCollectJSONMatchesEvents(t *testing.T) {
	g := newDXAGen(3, 1_700_000_000_000)
	events := make([]wire.Event, 200)
	for i := range events {
		events[i] = g.next()
	}
	var cb collectBody
	if err := json.Unmarshal(collectJSON(events), &cb); err != nil {
		t.Fatal(err)
	}
	if cb.Session != events[0].Session || cb.User != events[0].User || len(cb.Events) != len(events) {
		t.Fatalf("session %q user %q, %d events", cb.Session, cb.User, len(cb.Events))
	}
	for i, ev := range cb.Events {
		want := events[i]
		if ev.ID != want.ID || ev.Type != want.Type || ev.TS != want.TS || ev.URL != want.URL || ev.Name != want.Name {
			t.Fatalf("event %d: got %+v, want %+v", i, ev, want)
		}
		if (ev.Target == nil) != (want.Target.Sel == "" && want.Target.Tag == "") {
			t.Fatalf("event %d: target %+v, want %+v", i, ev.Target, want.Target)
		}
		if !bytes.Equal(ev.Props, want.Props) {
			t.Fatalf("event %d: props %s, want %s", i, ev.Props, want.Props)
		}
	}
}

func TestWireBytes(t *testing.T) {
	wb, err := benchWireBytes()
	if err != nil {
		t.Fatal(err)
	}
	if !(wb.perEvent > 0 && wb.perEvent < wb.msgpackPerEvent && wb.msgpackPerEvent > 0 && wb.jsonPerEvent > 0) {
		t.Fatalf("implausible sizes: %+v", wb)
	}
}

func TestLoadAgainstServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Query().Get("fail") != "" {
			http.Error(w, "no", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()

	c := runClosed(ctx, addr, 4, 0, 100*time.Millisecond, newCollectLoad(addr, 1))
	if c.ok() == 0 || c.failures() != "" {
		t.Fatalf("closed loop: %d ok, failures %q", c.ok(), c.failures())
	}
	o := runOpen(ctx, addr, 200, 100*time.Millisecond, 4, newCollectLoad(addr, 2))
	if o.sent != 20 || int(o.ok()) != o.sent || len(o.intended) != o.sent || len(o.service) != o.sent {
		t.Fatalf("open loop: sent %d, ok %d, %d latencies; failures %q", o.sent, o.ok(), len(o.intended), o.failures())
	}
	for i := range o.intended {
		if o.intended[i] < 0 || o.service[i] < 0 {
			t.Fatalf("negative latency at %d", i)
		}
	}
}

// TestInprocAgentAcceptsLoad checks that the agent takes the generated
// bodies as they are: any drift in the collect format shows here rather
// than as a mysteriously low figure.
func TestInprocAgentAcceptsLoad(t *testing.T) {
	ctx := context.Background()
	ia, err := startInprocAgent(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	o := runOpen(ctx, ia.addr, 100, 200*time.Millisecond, 4, newCollectLoad(ia.addr, 50))
	drained := ia.drained(ctx, 10*time.Second)
	if err := ia.stop(); err != nil {
		t.Fatal(err)
	}
	if int(o.ok()) != o.sent || o.failures() != "" {
		t.Fatalf("%d of %d accepted; failures: %s", o.ok(), o.sent, o.failures())
	}
	if !drained {
		t.Fatalf("forwarder acked %d events, want %d", ia.sender.events.Load(), o.sent*50)
	}
}

func TestReportAligns(t *testing.T) {
	r := &report{}
	r.add("agent single-event requests/s", "31,200", "≥ 25,000", ref{"net/http 40,100 req/s", "0.78×"}, ref{"Pebble 9,000/s", "3.47×"})
	r.add("wire bytes", "40.1 B", "≤ 100 B")
	var b bytes.Buffer
	r.print(&b)
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines:\n%s", len(lines), b.String())
	}
	col := func(line, s string) int { return len([]rune(line[:strings.Index(line, s)])) }
	if col(lines[0], "baseline") != col(lines[1], "net/http") || col(lines[1], "net/http") != col(lines[2], "Pebble") {
		t.Fatalf("baseline column not aligned:\n%s", b.String())
	}
}

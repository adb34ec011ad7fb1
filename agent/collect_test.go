package agent

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sightline/sightline/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// handlerAgent is an agent used through Handler only, with sites configured
// and the clock fixed at testNow.
func handlerAgent(t *testing.T, mutate func(*Config)) *testAgent {
	t.Helper()
	cfg := testConfig(t.TempDir())
	if mutate != nil {
		mutate(&cfg)
	}
	a := newAgent(t, cfg, nil, nil)
	a.now = func() time.Time { return testNow }
	if err := a.setConfig(demoConfig); err != nil {
		t.Fatal(err)
	}
	return a
}

func event(i int) map[string]any {
	return map[string]any{
		"id": fmt.Sprintf("e%d", i), "type": "click", "ts": testNow.UnixMilli() - 1000,
		"url":    "http://localhost:8080/cart",
		"target": map[string]any{"sel": "button#go", "tag": "button", "id": "go", "cls": []any{"btn", "primary"}, "text": "Go"},
	}
}

func body(n int) map[string]any {
	evs := make([]any, n)
	for i := range evs {
		evs[i] = event(i)
	}
	return map[string]any{"site": "demo", "session": "sess-1", "user": "u-1", "events": evs}
}

func ev0(m map[string]any) map[string]any { return m["events"].([]any)[0].(map[string]any) }

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustMsgpack(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type errBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
	} `json:"error"`
}

func decodeErr(t *testing.T, b []byte) errBody {
	t.Helper()
	var e errBody
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("error body %q: %v", b, err)
	}
	if e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("error body %q lacks code or message", b)
	}
	return e
}

func TestCollectValidation(t *testing.T) {
	a := handlerAgent(t, func(c *Config) { c.MaxEventsPerRequest = 10 })
	now := testNow.UnixMilli()
	type tc struct {
		name   string
		raw    string                 // body as is, when set
		mutate func(m map[string]any) // applied to body(2) otherwise
		hdr    map[string]string
		status int
		code   string
		field  string
		msg    string // substring of the message, when set
	}
	cases := []tc{
		{name: "truncated", raw: `{"site":"demo",`, status: 400, code: codeMalformed, msg: "at byte"},
		{name: "garbage", raw: `not json`, status: 400, code: codeMalformed, msg: "invalid JSON"},
		{name: "trailing", raw: `{"site":"demo"} {}`, status: 400, code: codeMalformed},
		{name: "not an object", raw: `[1,2]`, status: 400, code: codeMalformed, msg: "JSON object"},
		{name: "empty body", raw: ``, status: 400, code: codeMalformed},
		{name: "site type", mutate: func(m map[string]any) { m["site"] = 5 }, status: 400, code: codeInvalidField, field: "site", msg: "must be a string"},
		{name: "site missing", mutate: func(m map[string]any) { delete(m, "site") }, status: 400, code: codeMissingField, field: "site"},
		{name: "session missing", mutate: func(m map[string]any) { delete(m, "session") }, status: 400, code: codeMissingField, field: "session"},
		{name: "session long", mutate: func(m map[string]any) { m["session"] = strings.Repeat("s", 129) }, status: 400, code: codeInvalidField, field: "session"},
		{name: "session NUL", mutate: func(m map[string]any) { m["session"] = "a\x00b" }, status: 400, code: codeInvalidField, field: "session", msg: "control character"},
		{name: "site control", mutate: func(m map[string]any) { m["site"] = "de\nmo" }, status: 400, code: codeInvalidField, field: "site", msg: "control character"},
		{name: "id control", mutate: func(m map[string]any) { m["events"].([]any)[0].(map[string]any)["id"] = "e\x01" }, status: 400, code: codeInvalidField, field: "events[0].id", msg: "control character"},
		{name: "user long", mutate: func(m map[string]any) { m["user"] = strings.Repeat("u", 257) }, status: 400, code: codeInvalidField, field: "user"},
		{name: "user type", mutate: func(m map[string]any) { m["user"] = []int{1} }, status: 400, code: codeInvalidField, field: "user"},
		{name: "events missing", mutate: func(m map[string]any) { delete(m, "events") }, status: 400, code: codeMissingField, field: "events"},
		{name: "events empty", mutate: func(m map[string]any) { m["events"] = []any{} }, status: 400, code: codeMissingField, field: "events"},
		{name: "events object", mutate: func(m map[string]any) { m["events"] = map[string]any{} }, status: 400, code: codeInvalidField, field: "events", msg: "must be an array"},
		{name: "too many", mutate: func(m map[string]any) { m["events"] = body(11)["events"] }, status: 400, code: codeTooManyEvents, field: "events", msg: "at most 10"},
		{name: "event not object", mutate: func(m map[string]any) { m["events"].([]any)[1] = 7 }, status: 400, code: codeInvalidField, field: "events[1]", msg: "an object"},
		{name: "id missing", mutate: func(m map[string]any) { delete(m["events"].([]any)[1].(map[string]any), "id") }, status: 400, code: codeMissingField, field: "events[1].id"},
		{name: "id long", mutate: func(m map[string]any) { ev0(m)["id"] = strings.Repeat("i", 129) }, status: 400, code: codeInvalidField, field: "events[0].id"},
		{name: "id type", mutate: func(m map[string]any) { ev0(m)["id"] = 12 }, status: 400, code: codeInvalidField, field: "events[0].id"},
		{name: "type missing", mutate: func(m map[string]any) { delete(ev0(m), "type") }, status: 400, code: codeMissingField, field: "events[0].type"},
		{name: "type unknown", mutate: func(m map[string]any) { ev0(m)["type"] = "hover" }, status: 400, code: codeInvalidField, field: "events[0].type", msg: `"hover"`},
		{name: "ts missing", mutate: func(m map[string]any) { delete(ev0(m), "ts") }, status: 400, code: codeInvalidField, field: "events[0].ts"},
		{name: "ts negative", mutate: func(m map[string]any) { ev0(m)["ts"] = -5 }, status: 400, code: codeInvalidField, field: "events[0].ts"},
		{name: "ts string", mutate: func(m map[string]any) { ev0(m)["ts"] = "1700000000000" }, status: 400, code: codeInvalidField, field: "events[0].ts", msg: "an integer"},
		{name: "ts float", mutate: func(m map[string]any) { ev0(m)["ts"] = 1.5 }, status: 400, code: codeInvalidField, field: "events[0].ts"},
		{name: "ts old", mutate: func(m map[string]any) { ev0(m)["ts"] = now - (8 * 24 * time.Hour).Milliseconds() }, status: 400, code: codeInvalidField, field: "events[0].ts", msg: "max_event_age"},
		{name: "ts future", mutate: func(m map[string]any) { ev0(m)["ts"] = now + (11 * time.Minute).Milliseconds() }, status: 400, code: codeInvalidField, field: "events[0].ts", msg: "max_clock_skew"},
		{name: "url long", mutate: func(m map[string]any) { ev0(m)["url"] = "http://x/" + strings.Repeat("a", 4096) }, status: 400, code: codeInvalidField, field: "events[0].url"},
		{name: "target type", mutate: func(m map[string]any) { ev0(m)["target"] = "button" }, status: 400, code: codeInvalidField, field: "events[0].target", msg: "an object"},
		{name: "cls element", mutate: func(m map[string]any) { ev0(m)["target"].(map[string]any)["cls"] = []any{"a", 3} }, status: 400, code: codeInvalidField, field: "events[0].target.cls"},
		{name: "props array", mutate: func(m map[string]any) { ev0(m)["props"] = []int{1} }, status: 400, code: codeInvalidField, field: "events[0].props", msg: "object"},
		{name: "props string", mutate: func(m map[string]any) { ev0(m)["props"] = "x" }, status: 400, code: codeInvalidField, field: "events[0].props"},
		{name: "rrweb missing", mutate: func(m map[string]any) { ev0(m)["type"] = "rrweb" }, status: 400, code: codeMissingField, field: "events[0].rrweb"},
		{name: "rrweb not object", mutate: func(m map[string]any) { ev0(m)["type"] = "rrweb"; ev0(m)["rrweb"] = []int{2} }, status: 400, code: codeInvalidField, field: "events[0].rrweb"},
		{name: "unknown site", mutate: func(m map[string]any) { m["site"] = "nope" }, status: 403, code: codeUnknownSite, field: "site"},
		{name: "origin of other site", hdr: map[string]string{"Origin": "https://other.example"}, status: 403, code: codeOriginNotAllowed},
		{name: "origin unknown", hdr: map[string]string{"Origin": "https://evil.example"}, status: 403, code: codeOriginNotAllowed},
		{name: "content type", hdr: map[string]string{"Content-Type": "application/xml"}, status: 415, code: codeUnsupportedType},
		{name: "content type bad", hdr: map[string]string{"Content-Type": ";;"}, status: 415, code: codeUnsupportedType},
		{name: "encoding br", hdr: map[string]string{"Content-Encoding": "br"}, status: 415, code: codeUnsupportedEnc},
		{name: "gzip header but plain", hdr: map[string]string{"Content-Encoding": "gzip"}, status: 400, code: codeMalformed, msg: "gzip"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := []byte(c.raw)
			if c.raw == "" && c.name != "empty body" {
				m := body(2)
				if c.mutate != nil {
					c.mutate(m)
				}
				b = mustJSON(t, m)
			}
			w := post(a.Agent, b, c.hdr)
			if w.Code != c.status {
				t.Fatalf("status %d, want %d; body %s", w.Code, c.status, w.Body)
			}
			e := decodeErr(t, w.Body.Bytes())
			if e.Error.Code != c.code || e.Error.Field != c.field {
				t.Fatalf("error %+v, want code %q field %q", e.Error, c.code, c.field)
			}
			if !strings.Contains(e.Error.Message, c.msg) {
				t.Fatalf("message %q lacks %q", e.Error.Message, c.msg)
			}
			if w.Header().Get("Access-Control-Allow-Origin") != "" && c.code == codeOriginNotAllowed {
				t.Fatal("CORS header on a refused origin")
			}
		})
	}
	if got := a.q.Events(); got != 0 {
		t.Fatalf("%d events queued by refused requests (all-or-nothing)", got)
	}
}

func TestCollectMsgpackValidation(t *testing.T) {
	a := handlerAgent(t, nil)
	cases := []struct {
		name   string
		body   func() []byte
		code   string
		field  string
		status int
	}{
		{"not a map", func() []byte { return mustMsgpack(t, []int{1}) }, codeMalformed, "", 400},
		{"truncated", func() []byte { b := mustMsgpack(t, body(1)); return b[:len(b)-3] }, codeMalformed, "user", 400},
		{"trailing", func() []byte { return append(mustMsgpack(t, body(1)), 0xc0) }, codeMalformed, "", 400},
		{"site int", func() []byte { m := body(1); m["site"] = 3; return mustMsgpack(t, m) }, codeInvalidField, "site", 400},
		{"ts float", func() []byte { m := body(1); ev0(m)["ts"] = 1.5; return mustMsgpack(t, m) }, codeInvalidField, "events[0].ts", 400},
		{"ts huge", func() []byte { m := body(1); ev0(m)["ts"] = uint64(1 << 63); return mustMsgpack(t, m) }, codeInvalidField, "events[0].ts", 400},
		{"cls int", func() []byte {
			m := body(1)
			ev0(m)["target"].(map[string]any)["cls"] = []any{1}
			return mustMsgpack(t, m)
		}, codeInvalidField, "events[0].target.cls[0]", 400},
		{"props array", func() []byte { m := body(1); ev0(m)["props"] = []int{1}; return mustMsgpack(t, m) }, codeInvalidField, "events[0].props", 400},
		{"props binary", func() []byte {
			m := body(1)
			ev0(m)["props"] = map[string]any{"b": []byte{1, 2}}
			return mustMsgpack(t, m)
		}, codeInvalidField, "events[0].props", 400},
		{"key not string", func() []byte {
			m := body(1)
			ev0(m)["props"] = map[int]any{1: "x"}
			return mustMsgpack(t, m)
		}, codeInvalidField, "events[0].props", 400},
		{"invalid utf8", func() []byte { m := body(1); ev0(m)["id"] = "a\xffb"; return mustMsgpack(t, m) }, codeInvalidField, "events[0].id", 400},
		{"too many", func() []byte { return mustMsgpack(t, body(1001)) }, codeTooManyEvents, "events", 400},
		{"array header lies", func() []byte {
			// "events" claims 2^32-1 elements: refused before allocating.
			return append(mustMsgpack(t, map[string]any{"site": "demo"})[:0:0],
				0x81, 0xa6, 'e', 'v', 'e', 'n', 't', 's', 0xdd, 0xff, 0xff, 0xff, 0xff)
		}, codeTooManyEvents, "events", 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := post(a.Agent, c.body(), map[string]string{"Content-Type": "application/msgpack"})
			if w.Code != c.status {
				t.Fatalf("status %d, want %d; body %s", w.Code, c.status, w.Body)
			}
			e := decodeErr(t, w.Body.Bytes())
			if e.Error.Code != c.code || e.Error.Field != c.field {
				t.Fatalf("error %+v, want code %q field %q", e.Error, c.code, c.field)
			}
		})
	}
}

// sealAll seals everything queued and returns the events in order.
func sealAll(t *testing.T, a *Agent) []wire.Event {
	t.Helper()
	var out []wire.Event
	for {
		b, err := a.q.Seal(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		if b == nil {
			return out
		}
		evs, err := wire.DecodeEvents(b.Codec, b.Payload)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, evs...)
		if err := a.q.Ack(b.Seq); err != nil {
			t.Fatal(err)
		}
	}
}

func gz(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCollectFormats(t *testing.T) {
	a := handlerAgent(t, nil)
	m := body(2)
	ev0(m)["props"] = map[string]any{"plan": "pro", "n": 3, "tags": []any{"a", "b"}, "nested": map[string]any{"x": nil, "y": true, "z": 1.25}}
	ev0(m)["value"] = "v"
	ev0(m)["name"] = "checkout"
	rr := event(9)
	rr["type"] = "rrweb"
	rr["rrweb"] = map[string]any{"type": 2, "data": map[string]any{"node": map[string]any{"id": 1, "text": "a\"b\u2028<"}}, "timestamp": 5}
	m["events"] = append(m["events"].([]any), rr)
	jsonBody := mustJSON(t, m)
	// Whitespace in props must not survive: props are kept compact.
	spaced := bytes.Replace(jsonBody, []byte(`"props":{`), []byte(`"props" :  {  `), 1)
	mp := mustMsgpack(t, m)

	cases := []struct {
		name string
		body []byte
		hdr  map[string]string
	}{
		{"json", spaced, nil},
		{"json charset", jsonBody, map[string]string{"Content-Type": "application/json; charset=utf-8"}},
		{"text/plain beacon", jsonBody, map[string]string{"Content-Type": "text/plain;charset=UTF-8"}},
		{"no content type", jsonBody, map[string]string{"Content-Type": ""}},
		{"gzip json", gz(t, jsonBody), map[string]string{"Content-Encoding": "gzip"}},
		{"msgpack", mp, map[string]string{"Content-Type": "application/msgpack"}},
		{"x-msgpack gzip", gz(t, mp), map[string]string{"Content-Type": "application/x-msgpack", "Content-Encoding": "gzip"}},
		{"allowed origin", jsonBody, map[string]string{"Origin": "http://localhost:8080"}},
	}
	var want []wire.Event
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := post(a.Agent, c.body, c.hdr)
			if w.Code != http.StatusAccepted || strings.TrimSpace(w.Body.String()) != `{"accepted":3}` {
				t.Fatalf("got %d %s", w.Code, w.Body)
			}
			if o := c.hdr["Origin"]; o != "" && w.Header().Get("Access-Control-Allow-Origin") != o {
				t.Fatalf("no CORS header for allowed origin: %v", w.Header())
			}
			got := sealAll(t, a.Agent)
			if len(got) != 3 {
				t.Fatalf("%d events queued, want 3", len(got))
			}
			e := got[0]
			if e.Site != "demo" || e.Session != "sess-1" || e.User != "u-1" || e.Recv != testNow.UnixMilli() ||
				e.ID != "e0" || e.Type != "click" || e.Value != "v" || e.Name != "checkout" ||
				!reflect.DeepEqual(e.Target, wire.Target{Sel: "button#go", Tag: "button", ID: "go", Cls: []string{"btn", "primary"}, Text: "Go"}) {
				t.Fatalf("event 0 = %+v", e)
			}
			if bytes.ContainsAny(e.Props, " \n") {
				t.Fatalf("props not compact: %s", e.Props)
			}
			if got[1].Props != nil || got[2].RRWeb == nil {
				t.Fatalf("props/rrweb presence wrong: %q %q", got[1].Props, got[2].RRWeb)
			}
			if i == 0 {
				want = got
				return
			}
			for j := range got {
				if !sameJSON(t, got[j].Props, want[j].Props) || !sameJSON(t, got[j].RRWeb, want[j].RRWeb) {
					t.Fatalf("event %d: props/rrweb differ from the JSON case:\n%s %s\n%s %s", j, got[j].Props, got[j].RRWeb, want[j].Props, want[j].RRWeb)
				}
				g, w := got[j], want[j]
				g.Props, g.RRWeb, w.Props, w.RRWeb = nil, nil, nil, nil
				if !reflect.DeepEqual(g, w) {
					t.Fatalf("event %d differs from the JSON case:\n%+v\n%+v", j, g, w)
				}
			}
		})
	}
}

func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return reflect.DeepEqual(x, y)
}

func TestCollectTooLarge(t *testing.T) {
	a := handlerAgent(t, func(c *Config) { c.MaxBodyBytes = 4096; c.DiskBudget = 1 << 20 })
	big := body(1)
	ev0(big)["value"] = strings.Repeat("x", 5000)
	bomb := gz(t, append(mustJSON(t, body(1))[:0:0], bytes.Repeat([]byte(" "), 2<<20)...))
	if len(bomb) > 4096 {
		t.Fatalf("bomb is %d bytes compressed, want under the limit", len(bomb))
	}
	noise := make([]byte, 6000)
	_, _ = rand.Read(noise)
	cases := []struct {
		name string
		body []byte
		hdr  map[string]string
	}{
		{"plain", mustJSON(t, big), nil},
		{"gzip over the limit compressed", gz(t, noise), map[string]string{"Content-Encoding": "gzip"}},
		{"gzip bomb", bomb, map[string]string{"Content-Encoding": "gzip"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := post(a.Agent, c.body, c.hdr)
			if w.Code != http.StatusRequestEntityTooLarge {
				t.Fatalf("status %d, want 413; %s", w.Code, w.Body)
			}
			if e := decodeErr(t, w.Body.Bytes()); e.Error.Code != codeTooLarge {
				t.Fatalf("code %q", e.Error.Code)
			}
		})
	}
}

func TestMethodAndRoutes(t *testing.T) {
	a := handlerAgent(t, nil)
	do := func(method, target string, hdr map[string]string) *http.Response {
		r, _ := http.NewRequestWithContext(context.Background(), method, target, nil)
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		a.Handler().ServeHTTP(w, r)
		return w.Result()
	}
	cases := []struct {
		method, target string
		hdr            map[string]string
		status         int
		check          func(t *testing.T, r *http.Response, body string)
	}{
		{"GET", "/v1/collect", nil, 405, func(t *testing.T, r *http.Response, body string) {
			if r.Header.Get("Allow") != "POST, OPTIONS" || !strings.Contains(body, codeMethodNotAllowed) {
				t.Fatalf("Allow %q body %s", r.Header.Get("Allow"), body)
			}
		}},
		{"OPTIONS", "/v1/collect", map[string]string{"Origin": "http://localhost:8080", "Access-Control-Request-Method": "POST"}, 204,
			func(t *testing.T, r *http.Response, _ string) {
				h := r.Header
				if h.Get("Access-Control-Allow-Origin") != "http://localhost:8080" || h.Get("Access-Control-Allow-Methods") != "POST" ||
					h.Get("Access-Control-Allow-Headers") != "Content-Type, Content-Encoding" || h.Get("Access-Control-Max-Age") != "600" ||
					h.Get("Vary") != "Origin" {
					t.Fatalf("preflight headers %v", h)
				}
			}},
		{"OPTIONS", "/v1/collect", map[string]string{"Origin": "HTTP://LOCALHOST:8080"}, 204, nil},
		{"OPTIONS", "/v1/collect", map[string]string{"Origin": "https://evil.example"}, 403, func(t *testing.T, r *http.Response, body string) {
			if r.Header.Get("Access-Control-Allow-Origin") != "" || !strings.Contains(body, codeOriginNotAllowed) {
				t.Fatalf("refused preflight: %v %s", r.Header, body)
			}
		}},
		{"GET", "/v1/config?site=demo", map[string]string{"Origin": "http://localhost:8080"}, 200, func(t *testing.T, r *http.Response, body string) {
			if strings.TrimSpace(body) != `{"site":"demo","origins":["http://localhost:8080"]}` {
				t.Fatalf("config body %s", body)
			}
			if r.Header.Get("Access-Control-Allow-Origin") != "http://localhost:8080" {
				t.Fatal("no CORS header on /v1/config")
			}
		}},
		{"GET", "/v1/config?site=nope", nil, 404, func(t *testing.T, r *http.Response, body string) {
			if !strings.Contains(body, codeUnknownSite) {
				t.Fatal(body)
			}
		}},
		{"GET", "/v1/config", nil, 400, nil},
		{"POST", "/v1/config?site=demo", nil, 405, nil},
		{"GET", "/healthz", nil, 200, nil},
		{"GET", "/readyz", nil, 200, nil},
		{"GET", "/nope", nil, 404, nil},
		{"GET", "/metrics", nil, 200, func(t *testing.T, r *http.Response, body string) {
			for _, name := range []string{"sightline_agent_queue_bytes", "sightline_agent_fsyncs_total", "sightline_agent_append_seconds"} {
				if !strings.Contains(body, name) {
					t.Fatalf("/metrics lacks %s", name)
				}
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.target, func(t *testing.T) {
			r := do(c.method, c.target, c.hdr)
			var buf bytes.Buffer
			_, _ = buf.ReadFrom(r.Body)
			if r.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", r.StatusCode, c.status, buf.String())
			}
			if c.check != nil {
				c.check(t, r, buf.String())
			}
		})
	}
}

func TestNotReady(t *testing.T) {
	a := newAgent(t, testConfig(t.TempDir()), nil, nil)
	w := post(a.Agent, mustJSON(t, body(1)), nil)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("status %d Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
	if e := decodeErr(t, w.Body.Bytes()); e.Error.Code != codeNotReady {
		t.Fatalf("code %q", e.Error.Code)
	}
	r := httptest.NewRecorder()
	a.Handler().ServeHTTP(r, httptest.NewRequest("GET", "/readyz", nil))
	if r.Code != http.StatusServiceUnavailable || !strings.Contains(r.Body.String(), "site configuration") {
		t.Fatalf("readyz %d %s", r.Code, r.Body)
	}
}

func TestDecodeLimitsPayloadShape(t *testing.T) {
	// A request of only rrweb events through the decoder keeps rrweb bytes
	// exactly as compact JSON.
	lim := limits{maxEvents: 10, maxAge: time.Hour, maxSkew: time.Minute, now: testNow}
	b := []byte(`{"site":"demo","session":"s","events":[{"id":"r","type":"rrweb","ts":` +
		fmt.Sprint(testNow.UnixMilli()) + `,"rrweb":{ "type" : 3 , "data" : {"source":2} }}]}`)
	req, err := decodeJSON(b, lim)
	if err != nil {
		t.Fatal(err)
	}
	if string(req.Events[0].RRWeb) != `{"type":3,"data":{"source":2}}` {
		t.Fatalf("rrweb = %s", req.Events[0].RRWeb)
	}
}

// TestInputValuesNotRecorded: with no censor rule allowing them, the values
// of input and key-press events never reach the queue, whatever the client
// sends; other events keep theirs.
func TestInputValuesNotRecorded(t *testing.T) {
	lim := limits{maxEvents: 10, maxAge: time.Hour, maxSkew: time.Minute, now: testNow}
	ts := testNow.UnixMilli()
	body := fmt.Sprintf(`{"site":"demo","session":"s","events":[
		{"id":"1","type":"input","ts":%d,"value":"hunter2"},
		{"id":"2","type":"keypress","ts":%d,"value":"k"},
		{"id":"3","type":"select","ts":%d,"value":"team"}]}`, ts, ts, ts)
	for _, decode := range []func([]byte, limits) (*collectRequest, *apiError){decodeJSON, decodeJSONSlow} {
		req, apiErr := decode([]byte(body), lim)
		if apiErr != nil {
			t.Fatal(apiErr)
		}
		if v := req.Events[0].Value + req.Events[1].Value; v != "" {
			t.Fatalf("input/keypress values kept: %q", v)
		}
		if req.Events[2].Value != "team" {
			t.Fatalf("select value = %q, want team", req.Events[2].Value)
		}
	}
}

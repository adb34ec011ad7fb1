package agent

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sightline/sightline/wire"
)

var fuzzLimits = limits{maxEvents: 50, maxAge: 7 * 24 * time.Hour, maxSkew: 10 * time.Minute, now: testNow}

// checkDecoded holds for every body a decoder accepts.
func checkDecoded(t *testing.T, req *collectRequest, aerr *apiError) {
	if aerr != nil {
		if req != nil {
			t.Fatal("both a request and an error")
		}
		if aerr.Status != 400 || aerr.Code == "" || aerr.Message == "" {
			t.Fatalf("bad error %+v", aerr)
		}
		if _, err := json.Marshal(aerr); err != nil {
			t.Fatalf("error does not encode: %v", err)
		}
		return
	}
	if req.Site == "" || req.Session == "" || len(req.Events) == 0 || len(req.Events) > fuzzLimits.maxEvents {
		t.Fatalf("accepted an invalid envelope: %+v", req)
	}
	for i, e := range req.Events {
		if e.ID == "" || !wire.KnownType(e.Type) || e.TS <= 0 || len(e.URL) > maxURLLen ||
			e.Site != req.Site || e.Session != req.Session || e.User != req.User {
			t.Fatalf("event %d invalid: %+v", i, e)
		}
		for _, obj := range [][]byte{e.Props, e.RRWeb} {
			if obj == nil {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal(obj, &m); err != nil || !json.Valid(obj) {
				t.Fatalf("event %d: props/rrweb %q is not a JSON object: %v", i, obj, err)
			}
		}
		if e.Type == wire.TypeRRWeb && e.RRWeb == nil {
			t.Fatalf("event %d: rrweb without rrweb data", i)
		}
	}
	// Whatever was accepted must also go onto the queue's encoding.
	if _, err := wire.EncodeEvents(req.Events); err != nil {
		t.Fatalf("accepted events do not encode: %v", err)
	}
}

func fuzzSeeds() []map[string]any {
	ok := body(2)
	rr := body(1)
	ev0(rr)["type"], ev0(rr)["rrweb"] = "rrweb", map[string]any{"type": 2, "data": map[string]any{"node": []any{1, "x", nil, true, 2.5}}}
	props := body(1)
	ev0(props)["props"] = map[string]any{"plan": "pro", "tags": []any{"a"}, "deep": map[string]any{"k": map[string]any{}}}
	bad := body(1)
	ev0(bad)["ts"] = "soon"
	return []map[string]any{ok, rr, props, bad, {"site": "demo"}, {}}
}

func FuzzCollectJSON(f *testing.F) {
	for _, m := range fuzzSeeds() {
		f.Add(mustJSON(f, m))
	}
	for _, s := range []string{``, `null`, `[]`, `{"events":[null]}`, `{"site":"demo","session":"s","events":[{"id":"x","type":"click","ts":1e3}]}`,
		`{"site":"d","session":"s","events":[{"id":"x","type":"rrweb","ts":` + fmt.Sprint(testNow.UnixMilli()) + `,"rrweb":{"a":[[[[[]]]]]}}]}`,
		`{"site":"\ud800","session":"s","events":[{}]}`, strings.Repeat("[", 20000)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, aerr := decodeJSON(b, fuzzLimits)
		checkDecoded(t, req, aerr)
	})
}

func FuzzCollectMsgpack(f *testing.F) {
	for _, m := range fuzzSeeds() {
		f.Add(mustMsgpack(f, m))
	}
	for _, s := range [][]byte{{}, {0xc0}, {0x90}, {0x81, 0xa6, 'e', 'v', 'e', 'n', 't', 's', 0xdd, 0xff, 0xff, 0xff, 0xff},
		{0x81, 0xa4, 's', 'i', 't', 'e', 0xdb, 0xff, 0xff, 0xff, 0xff}, {0xdf, 0xff, 0xff, 0xff, 0xff},
		append([]byte{0x81, 0xa5, 'p', 'r', 'o', 'p', 's'}, []byte(strings.Repeat("\x91", 20000))...)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, aerr := decodeMsgpack(b, fuzzLimits)
		checkDecoded(t, req, aerr)
		if req != nil {
			for _, e := range req.Events {
				for _, s := range []string{e.Site, e.Session, e.User, e.ID, e.URL, e.Value, e.Name, e.Target.Text} {
					if !utf8.ValidString(s) {
						t.Fatalf("invalid UTF-8 accepted: %q", s)
					}
				}
			}
		}
	})
}

// TestAppendJSONString checks the msgpack→JSON string escaper against
// encoding/json on awkward strings.
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", `q"b\s`, "\x00\x01\x1f\n\r\t", "é中😀", "\u2028\u2029", "</script>"} {
		got := appendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil || back != s {
			t.Fatalf("%q → %s → %q, %v", s, got, back, err)
		}
	}
}

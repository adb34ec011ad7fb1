package wire

import (
	"bytes"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.hex from the current encoding")

// goldenEvent is a fixed DXA event with every field set.
func goldenEvent() Event {
	return Event{
		Site:    "demo",
		Session: "s-7f3a9c",
		User:    "u-1001",
		ID:      "e-000001",
		Type:    TypeClick,
		TS:      1_767_225_600_123,
		Recv:    1_767_225_600_150,
		URL:     "http://localhost:8080/checkout?step=2",
		Target: Target{
			Sel:  "form#pay > button.primary",
			Tag:  "button",
			ID:   "pay-now",
			Cls:  []string{"btn", "primary"},
			Text: "Pay now",
		},
		Value: "",
		Name:  "",
		Props: []byte(`{"plan":"pro"}`),
		RRWeb: []byte(`{"type":3,"data":{"source":2,"type":2,"id":42}}`),
	}
}

// goldenCases pins one fixed value of every message. Batch.Payload is fixed
// bytes rather than EncodeEvents output so that a zstd library upgrade
// cannot move the golden file.
var goldenCases = []struct {
	name string
	typ  MsgType
	v    any
	new  func() any
}{
	{"batch", MsgBatch, &Batch{AgentID: "agent-1", Seq: 42, Low: 40, Count: 2, Codec: CodecZstdMsgpack, Payload: []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x01}}, func() any { return new(Batch) }},
	{"ack", MsgAck, &Ack{Seq: 42, Status: AckNotLeader, Leader: "127.0.0.1:8443", Message: "not the leader"}, func() any { return new(Ack) }},
	{"config_request", MsgConfigRequest, &ConfigRequest{AgentID: "agent-1", Version: 7, WaitMillis: 30000}, func() any { return new(ConfigRequest) }},
	{"config", MsgConfig, &Config{Version: 7, Sites: []Site{
		{ID: "demo", Origins: []string{"http://localhost:8080"}},
		{ID: "shop", Origins: []string{"https://shop.test", "https://www.shop.test"}},
	}}, func() any { return new(Config) }},
	{"error", MsgError, &Error{Code: CodeBadFrame, Message: "wire: bad frame magic"}, func() any { return new(Error) }},
}

func TestGoldenMessages(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			body, err := Marshal(tc.v)
			if err != nil {
				t.Fatal(err)
			}
			frame := AppendFrame(nil, tc.typ, body)
			checkGolden(t, tc.name, frame)

			// The header is exactly magic, version, type, length, CRC32C.
			want := []byte{'S', 'L', FrameVersion, byte(tc.typ)}
			want = append(want, byte(len(body)>>24), byte(len(body)>>16), byte(len(body)>>8), byte(len(body)))
			if !bytes.Equal(frame[:8], want) {
				t.Errorf("header = % x, want % x", frame[:8], want)
			}

			typ, got, n, err := DecodeFrame(frame)
			if err != nil || typ != tc.typ || n != len(frame) || !bytes.Equal(got, body) {
				t.Fatalf("DecodeFrame = %v, %d, %v", typ, n, err)
			}
			v := tc.new()
			if err := Unmarshal(got, v); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(v, tc.v) {
				t.Errorf("round trip:\n got %+v\nwant %+v", v, tc.v)
			}
		})
	}
}

// TestGoldenHeaders pins the complete 12 header bytes, CRC included, of
// every golden frame, independently of the .hex files.
func TestGoldenHeaders(t *testing.T) {
	want := map[string]string{
		"batch":          "534c0102 00000015 0f81b1c1",
		"ack":            "534c0103 00000021 25854e8e",
		"config_request": "534c0104 0000000d 855801a8",
		"config":         "534c0105 0000004f a1018c8b",
		"error":          "534c0106 00000021 83f29d94",
	}
	for _, tc := range goldenCases {
		body, err := Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		frame := AppendFrame(nil, tc.typ, body)
		w := strings.ReplaceAll(want[tc.name], " ", "")
		if got := hex.EncodeToString(frame[:FrameHeaderSize]); got != w {
			t.Errorf("%s: header = %s, want %s", tc.name, got, w)
		}
	}
}

// TestGoldenEvent pins the msgpack encoding of one Event. Events never
// travel in a frame of their own (they ride inside a Batch payload), so the
// golden file holds the bare msgpack body.
func TestGoldenEvent(t *testing.T) {
	ev := goldenEvent()
	body, err := Marshal(&ev)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "event", body)
	var got Event
	if err := Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ev) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, ev)
	}
	// Structs travel as arrays: 13 fields, fixarray header 0x9d.
	if body[0] != 0x9d {
		t.Errorf("event body starts with %#x, want fixarray of 13 (0x9d)", body[0])
	}
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name+".hex")
	if *update {
		if err := os.WriteFile(path, []byte(formatHex(got)), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./wire -run Golden -update to create it)", err)
	}
	want, err := hex.DecodeString(strings.Join(strings.Fields(string(raw)), ""))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s: encoding changed\n got %s\nwant %s\nAn intended format change needs -update and a note in the change.", path, formatHex(got), formatHex(want))
	}
}

// formatHex writes 16 bytes per line so diffs of golden files stay readable.
func formatHex(b []byte) string {
	var sb strings.Builder
	for len(b) > 0 {
		n := min(16, len(b))
		sb.WriteString(hex.EncodeToString(b[:n]))
		sb.WriteByte('\n')
		b = b[n:]
	}
	return sb.String()
}

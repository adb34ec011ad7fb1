package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fuzzSeeds returns every golden frame, a frame holding an encoded event
// batch, and a few near misses.
func fuzzSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	for _, tc := range goldenCases {
		body, err := Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, AppendFrame(nil, tc.typ, body))
	}
	payload, err := EncodeEvents([]Event{goldenEvent(), {Site: "s", Type: TypePageview}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := Marshal(&Batch{AgentID: "a", Seq: 1, Count: 2, Codec: CodecZstdMsgpack, Payload: payload})
	seeds = append(seeds,
		AppendFrame(nil, MsgBatch, body),
		AppendFrame(nil, MsgBatch, nil),
		AppendFrame(nil, MsgType(99), []byte{0xc0}),
		[]byte("SL"),
		[]byte{'S', 'L', 1, 2, 0, 0xff, 0xff, 0xff, 0, 0, 0, 0},
	)
	return seeds
}

// messageTypes returns a fresh value of every message for decoding.
func messageTypes() []any {
	return []any{new(Batch), new(Ack), new(ConfigRequest), new(Config), new(Error), new(Event)}
}

// FuzzDecodeFrame feeds arbitrary bytes to DecodeFrame and every message
// decoder. Anything that decodes must re-encode to a value that decodes to
// the same thing.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		typ, body, n, err := DecodeFrame(data)
		if err != nil {
			if n != 0 || body != nil {
				t.Fatalf("error with n=%d body=%d bytes", n, len(body))
			}
			return
		}
		if n < FrameHeaderSize || n > len(data) || len(body) != n-FrameHeaderSize {
			t.Fatalf("n=%d, body %d bytes, input %d bytes", n, len(body), len(data))
		}
		if !bytes.Equal(AppendFrame(nil, typ, body), data[:n]) {
			t.Fatalf("re-framing differs")
		}
		for _, v := range messageTypes() {
			if err := Unmarshal(body, v); err != nil {
				continue
			}
			again, err := Marshal(v)
			if err != nil {
				t.Fatalf("%T decoded but does not encode: %v", v, err)
			}
			w := reflect.New(reflect.TypeOf(v).Elem()).Interface()
			if err := Unmarshal(again, w); err != nil {
				t.Fatalf("%T re-encoding does not decode: %v", v, err)
			}
			if !reflect.DeepEqual(v, w) {
				t.Fatalf("%T not stable:\n%+v\n%+v", v, v, w)
			}
			if b, ok := v.(*Batch); ok {
				_, _ = DecodeEvents(b.Codec, b.Payload)
			}
		}
	})
}

// FuzzDecodeEvents feeds arbitrary payloads to DecodeEvents.
func FuzzDecodeEvents(f *testing.F) {
	good, err := EncodeEvents([]Event{goldenEvent()})
	if err != nil {
		f.Fatal(err)
	}
	many, _ := EncodeEvents(dxaEvents(20, 1))
	f.Add(CodecZstdMsgpack, good)
	f.Add(CodecZstdMsgpack, many)
	f.Add(CodecZstdMsgpack, []byte{})
	f.Add(uint8(0), good)
	f.Add(CodecZstdMsgpack, zenc.EncodeAll([]byte{0x91, 0x9d}, nil))
	f.Fuzz(func(t *testing.T, codec uint8, payload []byte) {
		events, err := DecodeEvents(codec, payload)
		if err != nil {
			if !errors.Is(err, ErrBadPayload) {
				t.Fatalf("error %v does not wrap ErrBadPayload", err)
			}
			return
		}
		again, err := EncodeEvents(events)
		if err != nil {
			t.Fatalf("decoded events do not encode: %v", err)
		}
		back, err := DecodeEvents(CodecZstdMsgpack, again)
		if err != nil {
			t.Fatalf("re-encoded events do not decode: %v", err)
		}
		if len(back) != len(events) || (len(events) > 0 && !reflect.DeepEqual(back, events)) {
			t.Fatalf("events not stable")
		}
	})
}

// FuzzReadMessage reads messages of every type from an arbitrary stream,
// as the server and client do.
func FuzzReadMessage(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		wants := []MsgType{MsgBatch, MsgAck, MsgConfigRequest, MsgConfig, MsgError}
		for i, v := range messageTypes()[:len(wants)] {
			err := ReadMessage(bytes.NewReader(data), wants[i], v)
			if err == nil {
				continue
			}
			var werr *Error
			if errors.As(err, &werr) && wants[i] == MsgError {
				t.Fatalf("MsgError read as *Error although it was wanted")
			}
			if errors.Is(err, io.EOF) && len(data) != 0 {
				t.Fatalf("io.EOF with %d bytes of input", len(data))
			}
		}
	})
}

// TestFuzzSeedFiles writes the seed corpus in testdata/fuzz when run with
// -update, and otherwise checks that every fuzz target has one.
func TestFuzzSeedFiles(t *testing.T) {
	frames := fuzzSeeds(t)
	good, err := EncodeEvents(dxaEvents(5, 2))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]string{}
	for i, fr := range frames {
		name := fmt.Sprintf("seed-%02d", i)
		files["FuzzDecodeFrame/"+name] = []string{fmt.Sprintf("[]byte(%q)", fr)}
		files["FuzzReadMessage/"+name] = []string{fmt.Sprintf("[]byte(%q)", append(append([]byte(nil), fr...), frames[0]...))}
	}
	files["FuzzDecodeEvents/seed-00"] = []string{"byte('\\x01')", fmt.Sprintf("[]byte(%q)", good)}
	files["FuzzDecodeEvents/seed-01"] = []string{"byte('\\x01')", fmt.Sprintf("[]byte(%q)", good[:len(good)/2])}
	files["FuzzDecodeEvents/seed-02"] = []string{"byte('\\x02')", fmt.Sprintf("[]byte(%q)", good)}
	for name, lines := range files {
		path := filepath.Join("testdata", "fuzz", filepath.FromSlash(name))
		content := "go test fuzz v1\n" + strings.Join(lines, "\n") + "\n"
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := os.Stat(path); err != nil {
			t.Errorf("seed file missing (run with -update): %v", err)
		}
	}
}

package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

// TestFrameHeaderBytes pins the header layout with the standard CRC32C
// check value (CRC32C("123456789") = 0xe3069283).
func TestFrameHeaderBytes(t *testing.T) {
	got := AppendFrame(nil, MsgAck, []byte("123456789"))
	want, _ := hex.DecodeString("534c0103" + "00000009" + "e3069283" + hex.EncodeToString([]byte("123456789")))
	if !bytes.Equal(got, want) {
		t.Fatalf("frame = % x\nwant    % x", got, want)
	}
	if got := AppendFrame(nil, MsgBatch, nil); !bytes.Equal(got, []byte{'S', 'L', 1, 2, 0, 0, 0, 0, 0, 0, 0, 0}) {
		t.Fatalf("empty frame = % x", got)
	}
}

func TestMsgTypeNumbers(t *testing.T) {
	// The numbers are the format; this fails if someone renumbers.
	for typ, n := range map[MsgType]uint8{MsgBatch: 2, MsgAck: 3, MsgConfigRequest: 4, MsgConfig: 5, MsgError: 6} {
		if uint8(typ) != n {
			t.Errorf("%v = %d, want %d", typ, uint8(typ), n)
		}
	}
	if MsgType(99).String() != "msgtype(99)" {
		t.Errorf("unknown type string = %q", MsgType(99).String())
	}
}

func TestFrameErrors(t *testing.T) {
	good := AppendFrame(nil, MsgError, []byte{0x92, 0xa1, 'x', 0xa1, 'y'})
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, io.ErrUnexpectedEOF},
		{"short header", good[:FrameHeaderSize-1], io.ErrUnexpectedEOF},
		{"bad magic", mut(func(b []byte) []byte { b[0] = 'X'; return b }), ErrBadMagic},
		{"bad version", mut(func(b []byte) []byte { b[2] = 2; return b }), ErrBadVersion},
		{"too large", mut(func(b []byte) []byte { b[4] = 0x01; b[5] = 0x00; b[6] = 0x00; b[7] = 0x01; return b }), ErrFrameTooLarge},
		{"max+1", mut(func(b []byte) []byte { b[4], b[5], b[6], b[7] = 0x01, 0x00, 0x00, 0x01; return b }), ErrFrameTooLarge},
		{"bad crc", mut(func(b []byte) []byte { b[8] ^= 0xff; return b }), ErrBadChecksum},
		{"body flipped", mut(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ErrBadChecksum},
		{"truncated body", good[:len(good)-1], io.ErrUnexpectedEOF},
		{"header only", good[:FrameHeaderSize], io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, err := DecodeFrame(tc.in); !errors.Is(err, tc.want) {
				t.Errorf("DecodeFrame: %v, want %v", err, tc.want)
			}
			_, _, err := ReadFrame(bytes.NewReader(tc.in))
			want := tc.want
			if len(tc.in) == 0 {
				want = io.EOF // nothing at all is a clean end of stream
			}
			if !errors.Is(err, want) {
				t.Errorf("ReadFrame: %v, want %v", err, want)
			}
		})
	}
}

func TestDecodeFrameConsumesOne(t *testing.T) {
	a := AppendFrame(nil, MsgAck, []byte{0x90})
	b := AppendFrame(a, MsgError, []byte{0x92, 0xa0, 0xa0})
	typ, body, n, err := DecodeFrame(b)
	if err != nil || typ != MsgAck || n != len(a) || !bytes.Equal(body, []byte{0x90}) {
		t.Fatalf("first frame: %v %x %d %v", typ, body, n, err)
	}
	typ, _, n2, err := DecodeFrame(b[n:])
	if err != nil || typ != MsgError || n+n2 != len(b) {
		t.Fatalf("second frame: %v %d %v", typ, n2, err)
	}
}

func TestReadFrameLargeBody(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 200_000) // 3.2 MB, past the eager-read size
	frame := AppendFrame(nil, MsgBatch, body)
	// A one-byte-at-a-time reader would take too long; iotest-like small
	// chunks still exercise the growing path.
	typ, got, err := ReadFrame(&chunkReader{b: frame, n: 7919})
	if err != nil || typ != MsgBatch || !bytes.Equal(got, body) {
		t.Fatalf("ReadFrame: %v %d bytes %v", typ, len(got), err)
	}
	_, _, err = ReadFrame(&chunkReader{b: frame[:len(frame)-1], n: 7919})
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated large body: %v", err)
	}
}

type chunkReader struct {
	b []byte
	n int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[n:]
	return n, nil
}

func TestMessageRoundTrips(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteMessage(&buf, tc.typ, tc.v); err != nil {
				t.Fatal(err)
			}
			v := tc.new()
			err := ReadMessage(&buf, tc.typ, v)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(v, tc.v) {
				t.Errorf("got %+v want %+v", v, tc.v)
			}
		})
	}
}

func TestReadMessageErrors(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteMessage(&buf, MsgError, &Error{Code: CodeInternal, Message: "boom"}); err != nil {
		t.Fatal(err)
	}
	var ack Ack
	err := ReadMessage(bytes.NewReader(buf.Bytes()), MsgAck, &ack)
	var werr *Error
	if !errors.As(err, &werr) || werr.Code != CodeInternal || werr.Message != "boom" {
		t.Fatalf("MsgError frame: %v", err)
	}
	if err.Error() != "internal: boom" {
		t.Errorf("Error() = %q", err.Error())
	}

	buf.Reset()
	_ = WriteMessage(&buf, MsgConfig, &Config{Version: 1})
	if err := ReadMessage(&buf, MsgAck, &ack); err == nil || !strings.Contains(err.Error(), "got config frame, want ack") {
		t.Errorf("wrong type: %v", err)
	}

	// Trailing bytes after the body's value are refused.
	body, _ := Marshal(&Ack{Seq: 1})
	frame := AppendFrame(nil, MsgAck, append(body, 0xc0))
	if err := ReadMessage(bytes.NewReader(frame), MsgAck, &ack); !errors.Is(err, ErrBadMsgpack) {
		t.Errorf("trailing bytes: %v", err)
	}
}

// TestUnmarshalForwardCompatible checks that a newer peer's appended field
// is ignored and an older peer's missing field is left zero.
func TestUnmarshalForwardCompatible(t *testing.T) {
	newer := []byte{0x95, 0x2a, 0x00, 0xa0, 0xa0, 0xa3, 'n', 'e', 'w'} // Ack + one extra field
	var ack Ack
	if err := Unmarshal(newer, &ack); err != nil || ack.Seq != 42 {
		t.Fatalf("newer: %+v %v", ack, err)
	}
	older := []byte{0x92, 0x2a, 0x01} // Ack without Leader and Message
	ack = Ack{}
	if err := Unmarshal(older, &ack); err != nil || ack.Seq != 42 || ack.Status != AckNotLeader || ack.Leader != "" {
		t.Fatalf("older: %+v %v", ack, err)
	}
}

func TestCheckMsgpack(t *testing.T) {
	tests := []struct {
		name string
		hex  string
		ok   bool
	}{
		{"nil", "c0", true},
		{"fixint", "7f", true},
		{"negfixint", "e0", true},
		{"fixarray", "93010203", true},
		{"fixmap", "81a1610c", true},
		{"nested", "9191919190", true},
		{"str8", "d903616263", true},
		{"bin16", "c500026162", true},
		{"ext8", "c7020161 62", true},
		{"fixext4", "d60100000000", true},
		{"float64", "cb0000000000000000", true},
		{"empty", "", false},
		{"never used", "c1", false},
		{"trailing", "c0c0", false},
		{"array too long", "9301", false},
		{"array32 huge", "ddffffffff", false},
		{"map32 huge", "dfffffffff", false},
		{"array16 vs bytes", "dc0004010203", false},
		{"str truncated", "a3ab", false},
		{"bin32 huge", "c6ffffffff", false},
		{"len truncated", "c600", false},
		{"uint64 truncated", "cf0000", false},
		{"too deep", strings.Repeat("91", maxMsgpackDepth+1) + "c0", false},
		{"deep ok", strings.Repeat("91", maxMsgpackDepth) + "c0", true},
	}
	for _, tc := range tests {
		b, err := hex.DecodeString(strings.ReplaceAll(tc.hex, " ", ""))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		err = checkMsgpack(b)
		if (err == nil) != tc.ok {
			t.Errorf("%s: checkMsgpack(%s) = %v, want ok=%v", tc.name, tc.hex, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadMsgpack) {
			t.Errorf("%s: error %v does not wrap ErrBadMsgpack", tc.name, err)
		}
	}
	// Every golden body passes.
	for _, tc := range goldenCases {
		body, _ := Marshal(tc.v)
		if err := checkMsgpack(body); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// TestUnmarshalHostileLength is the case the structure check exists for: a
// few bytes declaring four billion sites must fail fast, not allocate.
func TestUnmarshalHostileLength(t *testing.T) {
	var cfg Config
	err := Unmarshal([]byte{0x92, 0x01, 0xdd, 0xff, 0xff, 0xff, 0xff}, &cfg)
	if !errors.Is(err, ErrBadMsgpack) {
		t.Fatalf("got %v", err)
	}
}

func TestUnmarshalErrorNamesField(t *testing.T) {
	// Ack with a string where Status (uint8) belongs.
	var ack Ack
	err := Unmarshal([]byte{0x94, 0x01, 0xa1, 'x', 0xa0, 0xa0}, &ack)
	if err == nil || !strings.Contains(err.Error(), "Ack.Status") {
		t.Fatalf("got %v, want the field named", err)
	}
	// Nested: a Site inside a Config.
	var cfg Config
	err = Unmarshal([]byte{0x92, 0x01, 0x91, 0x92, 0xa1, 'd', 0x05}, &cfg)
	if err == nil || !strings.Contains(err.Error(), "Site.Origins") {
		t.Fatalf("got %v, want the nested field named", err)
	}
	// nil decodes to the zero value.
	ack = Ack{Seq: 9}
	if err := Unmarshal([]byte{0xc0}, &ack); err != nil || ack.Seq != 0 {
		t.Fatalf("nil: %+v %v", ack, err)
	}
}

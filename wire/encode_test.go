package wire

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"
)

// reflectEvent mirrors Event without its EncodeMsgpack, so the reflection
// encoder's bytes can be compared with the hand-written encoder's.
type reflectEvent struct {
	_msgpack struct{} `msgpack:",as_array"`

	Site, Session, User, ID, Type string
	TS, Recv                      int64
	URL                           string
	Target                        reflectTarget
	Value, Name                   string
	Props, RRWeb                  []byte
}

type reflectTarget struct {
	_msgpack struct{} `msgpack:",as_array"`

	Sel, Tag, ID string
	Cls          []string
	Text         string
}

func TestEventEncoderMatchesReflection(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	str := func() string {
		n := []int{0, 1, 31, 32, 255, 256, 70000}[rng.IntN(7)]
		return string(bytes.Repeat([]byte{byte('a' + rng.IntN(26))}, n))
	}
	blob := func() []byte {
		switch rng.IntN(3) {
		case 0:
			return nil
		case 1:
			return []byte{}
		}
		return []byte(`{"k":` + str() + `}`)
	}
	ints := []int64{0, 1, -1, -32, -33, 127, 128, 255, 256, 65535, 65536, math.MaxInt32, math.MaxInt32 + 1,
		math.MinInt32, math.MinInt32 - 1, 1_732_200_000_000, math.MaxInt64, math.MinInt64}
	for i := range 2000 {
		var cls []string
		switch rng.IntN(3) {
		case 1:
			cls = []string{}
		case 2:
			cls = []string{str(), str()}
		}
		ev := Event{Site: str(), Session: str(), User: str(), ID: str(), Type: str(),
			TS: ints[rng.IntN(len(ints))], Recv: ints[rng.IntN(len(ints))], URL: str(),
			Target: Target{Sel: str(), Tag: str(), ID: str(), Cls: cls, Text: str()},
			Value:  str(), Name: str(), Props: blob(), RRWeb: blob()}
		mirror := reflectEvent{Site: ev.Site, Session: ev.Session, User: ev.User, ID: ev.ID, Type: ev.Type,
			TS: ev.TS, Recv: ev.Recv, URL: ev.URL,
			Target: reflectTarget{Sel: ev.Target.Sel, Tag: ev.Target.Tag, ID: ev.Target.ID, Cls: ev.Target.Cls, Text: ev.Target.Text},
			Value:  ev.Value, Name: ev.Name, Props: ev.Props, RRWeb: ev.RRWeb}
		got, err := Marshal(&ev)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Marshal(&mirror)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("event %d: hand-written encoding differs from reflection:\n got %x\nwant %x", i, got[:min(64, len(got))], want[:min(64, len(want))])
		}
		var back Event
		if err := Unmarshal(got, &back); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if back.TS != ev.TS || back.Recv != ev.Recv || back.Target.Text != ev.Target.Text || len(back.Target.Cls) != len(ev.Target.Cls) {
			t.Fatalf("event %d: round trip changed it", i)
		}
	}
	// A slice of events (the record and batch form) matches too.
	evs := []Event{{ID: "a", TS: 5}, {ID: "b", Target: Target{Cls: []string{"x"}}}}
	got, _ := Marshal(evs)
	want, _ := Marshal([]reflectEvent{{ID: "a", TS: 5}, {ID: "b", Target: reflectTarget{Cls: []string{"x"}}}})
	if !bytes.Equal(got, want) {
		t.Fatalf("[]Event: got %x want %x", got, want)
	}
}

func TestMarshalBareEvent(t *testing.T) {
	ev := Event{ID: "a", TS: 1, Target: Target{Cls: []string{"c"}}}
	byValue, err := Marshal(ev)
	if err != nil {
		t.Fatalf("Marshal(Event value): %v", err)
	}
	byPtr, _ := Marshal(&ev)
	if !bytes.Equal(byValue, byPtr) {
		t.Fatal("value and pointer encode differently")
	}
	if _, err := Marshal(ev.Target); err != nil {
		t.Fatalf("Marshal(Target value): %v", err)
	}
}

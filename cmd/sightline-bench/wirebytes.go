package main

import (
	"fmt"
	"reflect"
	"strconv"
	"time"

	"github.com/sightline/sightline/wire"
)

// wireBytes is figure 4: what 1,000 DXA events of one session cost on the
// wire, framed as a batch exactly as the agent sends it.
type wireBytes struct {
	perEvent        float64 // framed batch bytes / events
	msgpackPerEvent float64 // uncompressed msgpack array / events
	jsonPerEvent    float64 // collect JSON body / events
	mix             string
}

func benchWireBytes() (*wireBytes, error) {
	const n = 1000
	g := newDXAGen(7, time.Now().UnixMilli())
	events := make([]wire.Event, n)
	types := map[string]int{}
	for i := range events {
		events[i] = g.next()
		types[events[i].Type]++
	}
	payload, err := wire.EncodeEvents(events)
	if err != nil {
		return nil, fmt.Errorf("encoding events: %w", err)
	}
	back, err := wire.DecodeEvents(wire.CodecZstdMsgpack, payload)
	if err != nil {
		return nil, fmt.Errorf("decoding events back: %w", err)
	}
	if !reflect.DeepEqual(normalized(back), normalized(events)) {
		return nil, fmt.Errorf("events do not survive EncodeEvents/DecodeEvents unchanged")
	}
	body, err := wire.Marshal(&wire.Batch{
		AgentID: "agent-" + g.uuid(), Seq: 123456, Low: 123450, Count: n,
		Codec: wire.CodecZstdMsgpack, Payload: payload,
	})
	if err != nil {
		return nil, err
	}
	frame := wire.AppendFrame(nil, wire.MsgBatch, body)
	raw, err := wire.Marshal(events)
	if err != nil {
		return nil, err
	}
	jsonBody := collectJSON(events)
	mix := ""
	for _, t := range []string{wire.TypePageview, wire.TypeClick, wire.TypeInput, wire.TypeSelect, wire.TypeSubmit, wire.TypeCustom} {
		if mix != "" {
			mix += " "
		}
		mix += fmt.Sprintf("%s %d", t, types[t])
	}
	return &wireBytes{
		perEvent:        float64(len(frame)) / n,
		msgpackPerEvent: float64(len(raw)) / n,
		jsonPerEvent:    float64(len(jsonBody)) / n,
		mix:             mix,
	}, nil
}

// collectJSON renders events of one session as one collect request body.
func collectJSON(events []wire.Event) []byte {
	b := []byte(`{"site":"` + benchSite + `","session":"` + events[0].Session + `",`)
	if u := events[0].User; u != "" {
		b = append(b, `"user":"`+u+`",`...)
	}
	b = append(b, `"events":[`...)
	for i, ev := range events {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":"`+ev.ID+`","ts":`...)
		b = strconv.AppendInt(b, ev.TS, 10)
		b = append(b, eventTail(ev)...)
	}
	return append(b, "]}"...)
}

// normalized maps empty byte slices to nil so a decode that returns []byte{}
// for an absent field compares equal.
func normalized(evs []wire.Event) []wire.Event {
	out := make([]wire.Event, len(evs))
	for i, ev := range evs {
		if len(ev.Props) == 0 {
			ev.Props = nil
		}
		if len(ev.RRWeb) == 0 {
			ev.RRWeb = nil
		}
		if len(ev.Target.Cls) == 0 {
			ev.Target.Cls = nil
		}
		out[i] = ev
	}
	return out
}

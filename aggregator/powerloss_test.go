package aggregator

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestProcessorPowerLoss: once Apply returns (and the leader acks the
// agent), the applied state and index survive power loss. Raft does not
// replay entries at or below the last snapshot on restart, so state that
// fell back behind it would be lost for good; the test fails if the apply
// commit is not synced.
func TestProcessorPowerLoss(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s, err := openStore("state", fs, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := &applier{t: t, p: NewProcessor(s)}
	for seq := uint64(1); seq <= 20; seq++ {
		a.apply(ingest(t, "a1", seq, seq, events("demo", fmt.Sprint("s", seq%4), fmt.Sprint("e", seq))))
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	s.Close()

	s2, err := openStore("state", crashed, nil)
	if err != nil {
		t.Fatalf("reopening after power loss: %v", err)
	}
	defer s2.Close()
	if idx, err := s2.AppliedIndex(); err != nil || idx != 20 {
		t.Fatalf("applied index after power loss = %d, %v; want 20", idx, err)
	}
	wantStats(t, s2, "demo", 20, 4)
	// The dedupe markers survived too: a resend is still a duplicate.
	res, err := NewProcessor(s2).Apply([]Entry{{Index: 21, Data: ingest(t, "a1", 20, 20, events("demo", "s0", "e20"))}})
	if err != nil || !res[0].(IngestResult).Duplicate {
		t.Fatalf("resent batch after power loss = %+v, %v; want duplicate", res, err)
	}
}

package cluster

import (
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/raft"
)

// TestLogStorePowerLoss: whatever the store acknowledged (appends, a
// truncated suffix, stable values) is still so after power loss, when only
// fsynced data survives. Raft relies on it for its vote and its log; the
// test fails if any write is committed without sync.
func TestLogStorePowerLoss(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s, err := openLogStore("log", fs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(sampleLogs(1, 100)); err != nil {
		t.Fatal(err)
	}
	// A new leader overwrites a conflicting suffix.
	if err := s.DeleteRange(51, 100); err != nil {
		t.Fatal(err)
	}
	replaced := sampleLogs(51, 60)
	for _, l := range replaced {
		l.Term += 100
	}
	if err := s.StoreLogs(replaced); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 117); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("n2")); err != nil {
		t.Fatal(err)
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	s.Close()

	s2, err := openLogStore("log", crashed, nil)
	if err != nil {
		t.Fatalf("reopening after power loss: %v", err)
	}
	defer s2.Close()
	for _, l := range sampleLogs(1, 50) {
		assertLog(t, s2, l)
	}
	for _, l := range replaced {
		assertLog(t, s2, l)
	}
	var l raft.Log
	if err := s2.GetLog(61, &l); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("truncated entry 61 came back after power loss: %v %+v", err, l)
	}
	assertBounds(t, s2, 1, 60)
	if term, err := s2.GetUint64([]byte("CurrentTerm")); err != nil || term != 117 {
		t.Fatalf("CurrentTerm after power loss = %d, %v", term, err)
	}
	if v, err := s2.Get([]byte("LastVoteCand")); err != nil || string(v) != "n2" {
		t.Fatalf("LastVoteCand after power loss = %q, %v", v, err)
	}
}

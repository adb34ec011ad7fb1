package cluster

import (
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestHCLogAdapterKeepsRaftQuiet(t *testing.T) {
	logger, buf := testLogger(t)
	h := newHCLogger(logger, raftLogLevel).Named("raft").With("peer", "n2")
	h.Debug("debug line")
	h.Info("info line")
	h.Warn("warn line", "term", 3)
	h.Error("error line")
	h.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error}).Print("std line")
	out := buf.String()
	for _, absent := range []string{"debug line", "info line"} {
		if strings.Contains(out, absent) {
			t.Errorf("%q passed the Warn floor:\n%s", absent, out)
		}
	}
	for _, present := range []string{
		`level=WARN msg="warn line" component=raft logger=raft peer=n2 term=3`,
		`level=ERROR msg="error line"`,
		`level=ERROR msg="std line"`,
	} {
		if !strings.Contains(out, present) {
			t.Errorf("missing %q in:\n%s", present, out)
		}
	}
	if h.IsInfo() || !h.IsWarn() {
		t.Errorf("IsInfo=%v IsWarn=%v, want false true", h.IsInfo(), h.IsWarn())
	}
}

package cluster

import (
	"bytes"
	"context"
	"fmt"
	"github.com/cockroachdb/pebble/v2"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// raftLogLevel is the lowest hclog level passed on to slog: raft reports
// every election, heartbeat hiccup and snapshot at Info, which drowns the
// node's own logs, so only warnings and errors get through.
const raftLogLevel = hclog.Warn

// hclogAdapter lets hashicorp/raft log through a *slog.Logger.
type hclogAdapter struct {
	l       *slog.Logger
	name    string
	implied []any
	min     hclog.Level
}

var _ hclog.Logger = (*hclogAdapter)(nil)

// newHCLogger adapts l for raft; records carry component=raft.
func newHCLogger(l *slog.Logger, min hclog.Level) hclog.Logger {
	return &hclogAdapter{l: l.With("component", "raft"), min: min}
}

func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Info, hclog.NoLevel, hclog.DefaultLevel:
		return slog.LevelInfo
	case hclog.Warn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (a *hclogAdapter) enabled(level hclog.Level) bool {
	if level == hclog.Off || level < a.min {
		return false
	}
	return a.l.Enabled(context.Background(), slogLevel(level))
}

func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	// Raft warns when a heartbeat times out, which is also how every node,
	// a lone demo node included, starts its first election. Routine at
	// start-up, so it is demoted to info (below raftLogLevel, so dropped);
	// a leader that goes quiet later still shows as the election that
	// follows and in the cluster status.
	if level == hclog.Warn && msg == "heartbeat timeout reached, starting election" {
		level = hclog.Info
	}
	if !a.enabled(level) {
		return
	}
	attrs := make([]any, 0, len(a.implied)+len(args)+2)
	if a.name != "" {
		attrs = append(attrs, "logger", a.name)
	}
	attrs = append(attrs, a.implied...)
	attrs = append(attrs, args...)
	a.l.Log(context.Background(), slogLevel(level), msg, attrs...)
}

func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hclogAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }
func (a *hclogAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }
func (a *hclogAdapter) IsInfo() bool  { return a.enabled(hclog.Info) }
func (a *hclogAdapter) IsWarn() bool  { return a.enabled(hclog.Warn) }
func (a *hclogAdapter) IsError() bool { return a.enabled(hclog.Error) }

func (a *hclogAdapter) ImpliedArgs() []any { return a.implied }

func (a *hclogAdapter) With(args ...any) hclog.Logger {
	c := *a
	c.implied = append(append([]any(nil), a.implied...), args...)
	return &c
}

func (a *hclogAdapter) Name() string { return a.name }

func (a *hclogAdapter) Named(name string) hclog.Logger {
	c := *a
	if c.name != "" {
		c.name += "." + name
	} else {
		c.name = name
	}
	return &c
}

func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *a
	c.name = name
	return &c
}

// SetLevel is ignored: the slog handler owns the level, and the raft floor
// is fixed so that a library cannot turn its chatter back on.
func (a *hclogAdapter) SetLevel(hclog.Level) {}

func (a *hclogAdapter) GetLevel() hclog.Level { return a.min }

func (a *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(opts), "", 0)
}

func (a *hclogAdapter) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	level := hclog.Info
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		level = opts.ForceLevel
	}
	return &stdWriter{a: a, level: level}
}

type stdWriter struct {
	a     *hclogAdapter
	level hclog.Level
}

func (w *stdWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(bytes.TrimRight(p, "\n")))
	if msg != "" {
		w.a.Log(w.level, msg)
	}
	return len(p), nil
}

// PebbleLogger returns the adapter that routes a Pebble instance's messages
// to l, for the other Pebble instances of a node (the FSM's state).
func PebbleLogger(l *slog.Logger) pebble.Logger { return pebbleLogger{l: l} }

// pebbleLogger routes Pebble's own messages to slog. Pebble's Info lines
// (WAL recovery, compactions) are routine, so they go out at Debug.
type pebbleLogger struct {
	l *slog.Logger
}

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...))
}

// Fatalf is called by Pebble on a broken internal invariant and must not
// return (Pebble's default exits the process); panicking lets the caller's
// process decide while never continuing on a corrupt store.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, "fatal", true)
	panic("pebble: " + msg)
}

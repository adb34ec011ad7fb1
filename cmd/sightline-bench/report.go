package main

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// row is one line of the table; refs beyond the first go on lines of
// their own under it.
type row struct {
	figure, measured, target string
	refs                     []ref
}

// ref is a baseline a figure is compared with, and measured/baseline.
type ref struct{ text, ratio string }

type report struct {
	header []string
	rows   []row
	notes  []string
	failed []string
	shares []string // machine CPU shares per figure
}

func (r *report) add(figure, measured, target string, refs ...ref) {
	r.rows = append(r.rows, row{figure: figure, measured: measured, target: target, refs: refs})
}

func (r *report) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// build turns the measurements into rows; anything not measured is left out.
func (r *report) build(p *plan, b *baselines, wb *wireBytes, ag *agentFigures, lat *latencyFigure, agg *aggFigure, rss *rssFigure) {
	const none = "—"
	if b.pebbleEvents > 0 {
		r.add("baseline: raw Pebble events/s, synced 1,000-event commits", rate(b.pebbleEvents), none)
		r.add("baseline: raw Pebble commits/s, same", rate(b.pebbleCommits), none)
		r.add("baseline: raw Pebble synced 1-record commits/s, 64 goroutines", rate(b.pebbleSingle), none)
		r.add("baseline: raw Pebble one synced commit p50 / p99", ms(b.pebbleP50)+" / "+ms(b.pebbleP99), none)
		r.note("raw Pebble: default options, values are single msgpack-encoded wire.Events of %.0f B on average; the reference VM of ARCHITECTURE.md did ~578,000 events/s at 1,000 events per commit", b.pebbleValueSize)
	}
	if b.httpRPS > 0 {
		r.add(fmt.Sprintf("baseline: bare net/http req/s, small JSON POSTs, %d conns", p.workers), rate(b.httpRPS), none)
		r.add(fmt.Sprintf("baseline: bare net/http p50 / p99 at %s req/s", rate(p.latRate)), ms(b.httpP50)+" / "+ms(b.httpP99), none)
		r.note("bare net/http: a handler that reads the body and answers 202 {\"accepted\":1}, driven with the same generator and bodies as the agent (the reference VM did ~27,000 req/s)")
	}
	if ag != nil {
		r.add("agent single-event requests/s", rate(ag.singleRPS), "≥ 25,000",
			refRate("net/http", b.httpRPS, "req/s", ag.singleRPS),
			refRate("Pebble 1-record ×64", b.pebbleSingle, "commits/s", ag.singleRPS))
		r.add("agent events/s in 50-event requests", rate(ag.batchEPS), "≥ 250,000",
			refRate("Pebble 1,000-ev commits", b.pebbleEvents, "ev/s", ag.batchEPS))
		r.add("agent 50-event requests/s", rate(ag.batchRPS), none,
			refRate("net/http", b.httpRPS, "req/s", ag.batchRPS))
		r.notes = append(r.notes, ag.notes...)
	}
	if lat != nil {
		at := " @ " + rate(p.latRate) + " req/s"
		r.add("durable-ack latency p50"+at, ms(lat.p50), none, refMs("net/http p50", b.httpP50, lat.p50))
		r.add("durable-ack latency p99"+at, ms(lat.p99), "≤ 5 ms",
			refMs("net/http p99", b.httpP99, lat.p99),
			refMs("Pebble 1 synced commit p99", b.pebbleP99, lat.p99))
		r.notes = append(r.notes, lat.notes...)
	}
	if wb != nil {
		r.add("wire bytes per DXA event (1,000-event batch)", fmt.Sprintf("%.1f B", wb.perEvent), "≤ 100 B",
			ref{fmt.Sprintf("msgpack uncompressed %.1f B", wb.msgpackPerEvent), ratio(wb.perEvent, wb.msgpackPerEvent)},
			ref{fmt.Sprintf("collect JSON %.1f B", wb.jsonPerEvent), ratio(wb.perEvent, wb.jsonPerEvent)})
		r.note("wire bytes: 1,000 events of one session (%s), random UUID ids as the recorder sends them, wire.EncodeEvents (msgpack+zstd) in a wire.Batch frame incl. 12-byte header", wb.mix)
	}
	if agg != nil {
		r.add("aggregator committed events/s, 1 node", rate(agg.eps), none+" (report)",
			refRate("Pebble 1,000-ev commits", b.pebbleEvents, "ev/s", agg.eps))
		r.notes = append(r.notes, agg.notes...)
	}
	if rss != nil {
		mib := func(kb int64) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }
		idle := ref{"idle agent " + mib(rss.idleKB), ""}
		r.add(fmt.Sprintf("agent RSS at %s events/s, steady (median)", rate(p.rssRate*50)), mib(rss.steadyKB), "≤ 48 MiB",
			ref{idle.text, ratio(float64(rss.steadyKB), float64(rss.idleKB))})
		r.add(fmt.Sprintf("agent RSS at %s events/s, max", rate(p.rssRate*50)), mib(rss.maxKB), "≤ 48 MiB")
		r.add("  events/s the agent accepted meanwhile", rate(rss.achievedEPS), rate(p.rssRate*50)+" offered")
		r.add(fmt.Sprintf("agent RSS after %v aggregator outage", p.rssOutageDur), mib(rss.outageEndKB), "not growing",
			ref{"steady " + mib(rss.steadyKB), ratio(float64(rss.outageEndKB), float64(rss.steadyKB))})
		r.notes = append(r.notes, rss.notes...)
	}
}

func refRate(name string, base float64, unit string, measured float64) ref {
	if base <= 0 {
		return ref{name + " not measured", ""}
	}
	return ref{name + " " + rate(base) + " " + unit, ratio(measured, base)}
}

func refMs(name string, base, measured time.Duration) ref {
	if base <= 0 {
		return ref{name + " not measured", ""}
	}
	return ref{name + " " + ms(base), ratio(float64(measured), float64(base))}
}

func (r *report) print(w io.Writer) {
	cols := [5]string{"figure", "measured", "target", "baseline", "ratio"}
	var lines [][5]string
	for _, row := range r.rows {
		l := [5]string{row.figure, row.measured, row.target}
		if len(row.refs) > 0 {
			l[3], l[4] = row.refs[0].text, row.refs[0].ratio
		}
		lines = append(lines, l)
		for _, rf := range row.refs[min(1, len(row.refs)):] {
			lines = append(lines, [5]string{"", "", "", rf.text, rf.ratio})
		}
	}
	var width [5]int
	for i, c := range cols {
		width[i] = utf8.RuneCountInString(c)
	}
	for _, l := range lines {
		for i, c := range l {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	pad := func(s string, n int, right bool) string {
		fill := strings.Repeat(" ", n-utf8.RuneCountInString(s))
		if right {
			return fill + s
		}
		return s + fill
	}
	printLine := func(l [5]string) {
		s := "  " + pad(l[0], width[0], false) + "  " + pad(l[1], width[1], true) + "  " + pad(l[2], width[2], false) +
			"  " + pad(l[3], width[3], false) + "  " + pad(l[4], width[4], true)
		fmt.Fprintln(w, strings.TrimRight(s, " "))
	}
	printLine(cols)
	for _, l := range lines {
		printLine(l)
	}
	if len(r.notes) > 0 {
		fmt.Fprintln(w, "\nnotes:")
		for _, n := range r.notes {
			fmt.Fprintln(w, "  - "+n)
		}
	}
	if len(r.failed) > 0 {
		fmt.Fprintln(w, "\nFAILED measurements:")
		for _, f := range r.failed {
			fmt.Fprintln(w, "  - "+f)
		}
	}
}

// commas formats n with thousands separators.
func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func rate(v float64) string { return commas(int64(math.Round(v))) }

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + " ms"
}

func ratio(measured, base float64) string {
	if base <= 0 || measured < 0 {
		return ""
	}
	return strconv.FormatFloat(measured/base, 'f', 2, 64) + "×"
}

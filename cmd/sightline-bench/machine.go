package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSnap is a reading of the machine's CPU counters (/proc/stat, in clock
// ticks) and of the CPU time this process and its waited-for children used,
// so a run can say how much of the machine it actually had: on a shared or
// oversubscribed VM every figure, baselines included, drops together.
type cpuSnap struct {
	ok                bool
	busy, steal, idle float64 // seconds, all CPUs
	mine              float64 // seconds of CPU used by this process and its children
	at                time.Time
}

// clockTick is USER_HZ; 100 on every Linux architecture Go supports.
const clockTick = 100

func readCPU() cpuSnap {
	s := cpuSnap{at: time.Now()}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return s
	}
	v := make([]float64, 8)
	for i := range v {
		n, err := strconv.ParseFloat(f[i+1], 64)
		if err != nil {
			return s
		}
		v[i] = n / clockTick
	}
	// user nice system idle iowait irq softirq steal
	s.busy = v[0] + v[1] + v[2] + v[5] + v[6]
	s.idle = v[3] + v[4]
	s.steal = v[7]
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			s.mine += time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
		}
	}
	s.ok = true
	return s
}

// machineShare describes the CPU between two readings as shares of all CPUs:
// this run (with its child processes), other processes, steal, idle.
func machineShare(a, b cpuSnap) string {
	if !a.ok || !b.ok {
		return "CPU shares unknown"
	}
	total := (b.busy - a.busy) + (b.idle - a.idle) + (b.steal - a.steal)
	if total <= 0 {
		return "CPU shares unknown"
	}
	mine := b.mine - a.mine
	others := max(0, (b.busy-a.busy)-mine)
	pct := func(x float64) string { return fmt.Sprintf("%.0f%%", 100*x/total) }
	return fmt.Sprintf("bench %s, others %s, steal %s, idle %s",
		pct(mine), pct(others), pct(b.steal-a.steal), pct(b.idle-a.idle))
}

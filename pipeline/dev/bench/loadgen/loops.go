package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Report is what loadgen prints: latencies in milliseconds, of the requests answered.
type Report struct {
	Mode         string            `json:"mode"`
	Proto        string            `json:"proto"`
	API          string            `json:"api"`
	Targets      []string          `json:"targets"`
	Concurrency  int               `json:"concurrency,omitempty"`
	Rate         float64           `json:"rate,omitempty"`
	Seconds      float64           `json:"seconds"`
	Requests     int               `json:"requests"`
	Errors       int               `json:"errors"`
	ErrorKinds   map[string]int    `json:"error_kinds"`
	ErrorSamples map[string]string `json:"error_samples"`
	RequestsPerS float64           `json:"requests_per_s"`
	P50Ms        *float64          `json:"p50_ms"`
	P99Ms        *float64          `json:"p99_ms"`
	P999Ms       *float64          `json:"p999_ms"`
	MaxMs        *float64          `json:"max_ms"`
	MeanMs       *float64          `json:"mean_ms"`
	CPUSeconds   float64           `json:"cpu_s"`
	MaxLagMs     float64           `json:"max_lag_ms,omitempty"`
}

// tally collects the outcomes of one caller (closed loop) or of all (open loop, locked).
type tally struct {
	latencies []time.Duration
	errors    map[string]int
	samples   map[string]string
}

func newTally() *tally {
	return &tally{errors: map[string]int{}, samples: map[string]string{}}
}

func (t *tally) add(latency time.Duration, err error) {
	if err == nil {
		t.latencies = append(t.latencies, latency)
		return
	}
	kind, message := "error", err.Error()
	var ce *callError
	if errors.As(err, &ce) {
		kind, message = ce.Kind, ce.Message
	}
	t.errors[kind]++
	if _, seen := t.samples[kind]; !seen {
		t.samples[kind] = message
	}
}

// window says when the measured window opens and closes, on stderr, and this process's
// CPU time over it.
type window struct {
	from, to time.Time
	cpu      float64
	closed   chan struct{}
}

func newWindow(o options) *window {
	from := time.Now().Add(o.warmup)
	return &window{from: from, to: from.Add(o.duration), closed: make(chan struct{})}
}

func (w *window) inside(t time.Time) bool { return !t.Before(w.from) && t.Before(w.to) }

// watch marks the window on stderr; it returns when the window has closed.
func (w *window) watch() {
	time.Sleep(time.Until(w.from))
	started := cpuSeconds()
	fmt.Fprintln(os.Stderr, "measuring")
	time.Sleep(time.Until(w.to))
	w.cpu = cpuSeconds() - started
	fmt.Fprintln(os.Stderr, "measured")
	close(w.closed)
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

// closedLoop runs o.concurrency callers until the window closes; a caller's requests are
// counted when they are answered inside the window.
func closedLoop(callers []Caller, rows int, o options) *Report {
	w := newWindow(o)
	tallies := make([]*tally, o.concurrency)
	var wg sync.WaitGroup
	for c := range o.concurrency {
		t := newTally()
		tallies[c] = t
		call := callers[c%len(callers)]
		wg.Go(func() {
			row := (c * 37) % rows // callers start on different rows
			for time.Now().Before(w.to) {
				sent := time.Now()
				err := call(row)
				if done := time.Now(); w.inside(done) {
					t.add(done.Sub(sent), err)
				}
				row = (row + 1) % rows
			}
		})
	}
	w.watch()
	wg.Wait()
	report := summarize(tallies, w, o)
	report.Mode, report.Concurrency = "closed", o.concurrency
	return report
}

// openLoop sends request n when it is due (n / o.rate seconds after the start) until the
// window closes, at most o.maxInFlight at once; the requests due inside the window count,
// each with its latency from its due time.
func openLoop(callers []Caller, rows int, o options) *Report {
	start := time.Now()
	w := newWindow(o)
	t := newTally()
	var mu sync.Mutex
	var wg sync.WaitGroup
	slots := make(chan struct{}, o.maxInFlight)
	go w.watch()
	var maxLag time.Duration
	interval := float64(time.Second) / o.rate
	for n := 0; ; n++ {
		due := start.Add(time.Duration(float64(n) * interval))
		if !due.Before(w.to) {
			break
		}
		time.Sleep(time.Until(due)) // returns at once when it is already late
		slots <- struct{}{}
		counted := w.inside(due)
		if lag := time.Since(due); counted && lag > maxLag {
			maxLag = lag
		}
		call := callers[n%len(callers)]
		wg.Go(func() {
			defer func() { <-slots }()
			err := call(n % rows)
			latency := time.Since(due)
			if counted {
				mu.Lock()
				t.add(latency, err)
				mu.Unlock()
			}
		})
	}
	<-w.closed
	wg.Wait()
	report := summarize([]*tally{t}, w, o)
	report.Mode, report.Rate = "open", o.rate
	report.MaxLagMs = ms(maxLag)
	return report
}

func summarize(tallies []*tally, w *window, o options) *Report {
	all := newTally()
	for _, t := range tallies {
		all.latencies = append(all.latencies, t.latencies...)
		for kind, n := range t.errors {
			all.errors[kind] += n
			if _, seen := all.samples[kind]; !seen {
				all.samples[kind] = t.samples[kind]
			}
		}
	}
	slices.Sort(all.latencies)
	errs := 0
	for _, n := range all.errors {
		errs += n
	}
	seconds := o.duration.Seconds()
	r := &Report{
		Proto: o.proto, API: o.api, Targets: o.targets, Seconds: seconds,
		Requests: len(all.latencies), Errors: errs, ErrorKinds: all.errors, ErrorSamples: all.samples,
		RequestsPerS: float64(len(all.latencies)) / seconds, CPUSeconds: w.cpu,
	}
	if n := len(all.latencies); n > 0 {
		r.P50Ms, r.P99Ms, r.P999Ms = quantile(all.latencies, 0.5), quantile(all.latencies, 0.99), quantile(all.latencies, 0.999)
		maxMs := ms(all.latencies[n-1])
		var total time.Duration
		for _, l := range all.latencies {
			total += l
		}
		meanMs := ms(total / time.Duration(n))
		r.MaxMs, r.MeanMs = &maxMs, &meanMs
	}
	return r
}

// quantile is the nearest-rank quantile of sorted latencies, in milliseconds.
func quantile(sorted []time.Duration, q float64) *float64 {
	rank := int(math.Ceil(q*float64(len(sorted)))) - 1
	v := ms(sorted[max(rank, 0)])
	return &v
}

func ms(d time.Duration) float64 {
	return math.Round(float64(d)/1e3) / 1e3
}

// Command loadgen is the load generator of the front-door benchmark
// (pipeline/dev/bench/doors.py): it calls one door of a server, one row per request, and
// prints what it measured as one JSON object on stdout.
//
// Closed loop (-concurrency N): N callers, each sending its next request as soon as the
// previous one is answered, for -warmup and then -duration; the requests answered within
// the -duration window are counted and their latencies kept.
//
// Open loop (-rate R): request n is due R/s apart from the start, whatever the server
// does; its latency runs from its due time, so a server (or a caller) that falls behind
// shows up as latency instead of lowering the rate. Requests due within the window count.
//
// Doors: -proto http -api predict (POST /predict {"data": row}), -proto http -api oip
// (POST /v2/models/<m>/infer, JSON tensor), -proto grpc -api predict (/Predictor/Predict),
// -proto grpc -api oip (inference.GRPCInferenceService/ModelInfer, raw FP32). HTTP keeps
// connections alive (net/http); gRPC shares -conns connections per target. With several
// -targets, callers (closed loop) or requests (open loop) take them in turn.
//
// On stderr it writes "measuring" when the window opens and "measured" when it closes,
// so a caller can sample the server's CPU time over exactly that window. The gRPC code is
// generated from schemas/*.proto at build time and is not committed.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

// options are the command line.
type options struct {
	proto       string
	api         string
	targets     []string
	rowsPath    string
	model       string
	input       string
	concurrency int
	rate        float64
	duration    time.Duration
	warmup      time.Duration
	timeout     time.Duration
	conns       int
	maxInFlight int
}

func parseOptions() (options, error) {
	var o options
	var targets string
	flag.StringVar(&o.proto, "proto", "http", "http or grpc")
	flag.StringVar(&o.api, "api", "predict", "predict (the seed's API) or oip (Open Inference Protocol v2)")
	flag.StringVar(&targets, "targets", "", "comma-separated: HTTP base URLs (http://127.0.0.1:8080) or gRPC host:port")
	flag.StringVar(&o.rowsPath, "rows", "", `JSON file: {"rows": [[...], ...]} or [[...], ...]`)
	flag.StringVar(&o.model, "model", "", "model to ask (predict: empty means the server's default; oip: required)")
	flag.StringVar(&o.input, "input", "features", "the model's input tensor name (oip)")
	flag.IntVar(&o.concurrency, "concurrency", 1, "closed loop: callers")
	flag.Float64Var(&o.rate, "rate", 0, "open loop: requests per second (0: closed loop)")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "measured window")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "load before the window, not measured")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Second, "per request")
	flag.IntVar(&o.conns, "conns", 1, "gRPC connections per target")
	flag.IntVar(&o.maxInFlight, "max-in-flight", 1024, "open loop: requests outstanding at most (later ones wait, and their wait counts)")
	flag.Parse()
	for _, t := range strings.Split(targets, ",") {
		if t = strings.TrimSpace(t); t != "" {
			o.targets = append(o.targets, t)
		}
	}
	switch {
	case o.proto != "http" && o.proto != "grpc":
		return o, fmt.Errorf("-proto must be http or grpc, got %q", o.proto)
	case o.api != "predict" && o.api != "oip":
		return o, fmt.Errorf("-api must be predict or oip, got %q", o.api)
	case o.api == "oip" && o.model == "":
		return o, fmt.Errorf("-api oip needs -model (the path names the model)")
	case len(o.targets) == 0:
		return o, fmt.Errorf("-targets is required (a URL or host:port, or several, comma-separated)")
	case o.rowsPath == "":
		return o, fmt.Errorf("-rows is required (a JSON file of rows)")
	case o.rate < 0 || (o.rate == 0 && o.concurrency < 1):
		return o, fmt.Errorf("give -rate > 0 (open loop) or -concurrency >= 1 (closed loop), got %g and %d", o.rate, o.concurrency)
	case o.duration <= 0 || o.warmup < 0 || o.timeout <= 0 || o.conns < 1 || o.maxInFlight < 1:
		return o, fmt.Errorf("-duration and -timeout must be > 0, -warmup >= 0, -conns and -max-in-flight >= 1")
	}
	return o, nil
}

func main() {
	o, err := parseOptions()
	if err != nil {
		fail(err)
	}
	rows, err := readRows(o.rowsPath)
	if err != nil {
		fail(err)
	}
	callers, closeAll, err := newCallers(o, rows)
	if err != nil {
		fail(err)
	}
	defer closeAll()
	var report *Report
	if o.rate > 0 {
		report = openLoop(callers, len(rows), o)
	} else {
		report = closedLoop(callers, len(rows), o)
	}
	if err := json.NewEncoder(os.Stdout).Encode(report); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
	os.Exit(2)
}

// readRows reads the rows with their numbers as written, so HTTP bodies carry them at
// full precision.
func readRows(path string) ([][]json.Number, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	decode := func(target any) error {
		d := json.NewDecoder(strings.NewReader(string(raw)))
		d.UseNumber()
		return d.Decode(target)
	}
	var doc struct {
		Rows [][]json.Number `json:"rows"`
	}
	if err := decode(&doc); err != nil || len(doc.Rows) == 0 {
		var rows [][]json.Number
		if err2 := decode(&rows); err2 != nil || len(rows) == 0 {
			return nil, fmt.Errorf(`%s must hold {"rows": [[...], ...]} or [[...], ...] with at least one row`, path)
		}
		return rows, nil
	}
	return doc.Rows, nil
}

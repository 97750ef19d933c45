package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"example.com/doorsloadgen/inferencepb"
	"example.com/doorsloadgen/predictionpb"
)

// A Caller sends the request of one row and returns nil when the server answered it
// with a prediction.
type Caller func(row int) error

// callError is a failed request: Kind groups failures in the report (an HTTP status, a
// gRPC code, "transport"), Message is one example.
type callError struct {
	Kind    string
	Message string
}

func (e *callError) Error() string { return e.Kind + ": " + e.Message }

// newCallers returns one Caller per target (per gRPC connection), and a function that
// closes their connections.
func newCallers(o options, rows [][]json.Number) ([]Caller, func(), error) {
	if o.proto == "http" {
		return httpCallers(o, rows)
	}
	return grpcCallers(o, rows)
}

func httpCallers(o options, rows [][]json.Number) ([]Caller, func(), error) {
	idle := o.concurrency
	if o.rate > 0 {
		idle = o.maxInFlight
	}
	transport := &http.Transport{
		MaxIdleConns:        0, // no overall bound: MaxIdleConnsPerHost is the one that matters
		MaxIdleConnsPerHost: idle,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	client := &http.Client{Transport: transport, Timeout: o.timeout}
	bodies, path, want := httpBodies(o, rows)
	callers := make([]Caller, 0, len(o.targets))
	for _, target := range o.targets {
		url := strings.TrimRight(target, "/") + path
		callers = append(callers, func(row int) error { return post(client, url, bodies[row], want) })
	}
	return callers, transport.CloseIdleConnections, nil
}

// httpBodies encodes every row's request once, with its numbers as written in the rows
// file; it returns them, the path, and what every good answer contains.
func httpBodies(o options, rows [][]json.Number) ([][]byte, string, []byte) {
	bodies := make([][]byte, len(rows))
	for i, row := range rows {
		values := make([]string, len(row))
		for j, v := range row {
			values[j] = v.String()
		}
		data := "[" + strings.Join(values, ",") + "]"
		if o.api == "oip" {
			bodies[i] = fmt.Appendf(nil, `{"inputs":[{"name":%q,"shape":[1,%d],"datatype":"FP32","data":%s}]}`,
				o.input, len(row), data)
		} else if o.model != "" {
			bodies[i] = fmt.Appendf(nil, `{"data":%s,"model":%q}`, data, o.model)
		} else {
			bodies[i] = fmt.Appendf(nil, `{"data":%s}`, data)
		}
	}
	if o.api == "oip" {
		return bodies, "/v2/models/" + o.model + "/infer", []byte(`"outputs"`)
	}
	return bodies, "/predict", []byte(`"prediction"`)
}

func post(client *http.Client, url string, body, want []byte) error {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return &callError{"request", err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return &callError{"transport", err.Error()}
	}
	answer, err := io.ReadAll(resp.Body) // read to the end, so the connection is kept
	resp.Body.Close()
	switch {
	case err != nil:
		return &callError{"transport", err.Error()}
	case resp.StatusCode != http.StatusOK:
		return &callError{"http " + strconv.Itoa(resp.StatusCode), clip(answer)}
	case !bytes.Contains(answer, want):
		return &callError{"bad answer", clip(answer)}
	}
	return nil
}

func grpcCallers(o options, rows [][]json.Number) ([]Caller, func(), error) {
	var conns []*grpc.ClientConn
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	var callers []Caller
	for _, target := range o.targets {
		for range o.conns {
			conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("gRPC target %q: %w", target, err)
			}
			conns = append(conns, conn)
			if o.api == "oip" {
				callers = append(callers, modelInferCaller(conn, o, rows))
			} else {
				callers = append(callers, predictCaller(conn, o, rows))
			}
		}
	}
	return callers, closeAll, nil
}

func float32s(row []json.Number) []float32 {
	values := make([]float32, len(row))
	for j, v := range row {
		f, err := strconv.ParseFloat(v.String(), 32)
		if err != nil {
			fail(fmt.Errorf("row value %q is not a number: %w", v, err))
		}
		values[j] = float32(f)
	}
	return values
}

func predictCaller(conn *grpc.ClientConn, o options, rows [][]json.Number) Caller {
	client := predictionpb.NewPredictorClient(conn)
	requests := make([]*predictionpb.PredictRequest, len(rows))
	for i, row := range rows {
		requests[i] = &predictionpb.PredictRequest{Features: float32s(row), Model: o.model}
	}
	return unaryCaller(client.Predict, requests, o.timeout,
		func(r *predictionpb.PredictResponse) bool { return r.GetModel() != "" })
}

func modelInferCaller(conn *grpc.ClientConn, o options, rows [][]json.Number) Caller {
	client := inferencepb.NewGRPCInferenceServiceClient(conn)
	requests := make([]*inferencepb.ModelInferRequest, len(rows))
	for i, row := range rows {
		raw := make([]byte, 0, 4*len(row))
		for _, v := range float32s(row) {
			raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(v))
		}
		requests[i] = &inferencepb.ModelInferRequest{
			ModelName: o.model,
			Inputs: []*inferencepb.ModelInferRequest_InferInputTensor{
				{Name: o.input, Datatype: "FP32", Shape: []int64{1, int64(len(row))}},
			},
			RawInputContents: [][]byte{raw},
		}
	}
	return unaryCaller(client.ModelInfer, requests, o.timeout,
		func(r *inferencepb.ModelInferResponse) bool { return len(r.GetOutputs()) > 0 })
}

// unaryCaller calls one gRPC method with the request made for the row; ok says whether
// an answer carries a prediction.
func unaryCaller[Req any, Resp interface{ String() string }](
	call func(context.Context, Req, ...grpc.CallOption) (Resp, error),
	requests []Req, timeout time.Duration, ok func(Resp) bool,
) Caller {
	return func(row int) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		resp, err := call(ctx, requests[row])
		if err != nil {
			return grpcError(err)
		}
		if !ok(resp) {
			return &callError{"bad answer", clip([]byte(resp.String()))}
		}
		return nil
	}
}

func grpcError(err error) error {
	st, _ := status.FromError(err)
	return &callError{"grpc " + st.Code().String(), st.Message()}
}

func clip(b []byte) string {
	if len(b) > 300 {
		b = b[:300]
	}
	return string(b)
}

// A Go client of `pipeline serve`, as the seed's Go callers use it: gRPC /Predictor/Predict
// and HTTP POST /predict, one row per call, plus one Open Inference Protocol ModelInfer over
// gRPC with every row as a raw FP32 tensor. The gRPC code is generated from
// schemas/prediction.proto and schemas/inference.proto (tests/doors/test_go_client.py does
// it into a copy of this module; the generated packages are not committed).
//
// Usage: pipelineclient -grpc 127.0.0.1:8001 -http http://127.0.0.1:8000 [-model NAME] < rows.json
// where rows.json is a JSON array of rows. It prints one JSON object per line for each call:
// the answer, or the gRPC status code and message / the HTTP status and error it got.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"example.com/pipelineclient/inferencepb"
	"example.com/pipelineclient/predictionpb"
)

const callTimeout = 10 * time.Second

type line map[string]any

func main() {
	grpcAddr := flag.String("grpc", "127.0.0.1:8001", "gRPC address (host:port)")
	httpURL := flag.String("http", "http://127.0.0.1:8000", "HTTP base URL")
	model := flag.String("model", "", "model to ask (empty: the server's default; ModelInfer needs one)")
	flag.Parse()

	var rows [][]float32
	if err := json.NewDecoder(os.Stdin).Decode(&rows); err != nil {
		log.Fatalf("stdin must be a JSON array of rows: %v", err)
	}
	conn, err := grpc.NewClient(*grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	predictor := predictionpb.NewPredictorClient(conn)
	httpClient := &http.Client{Timeout: callTimeout}

	out := json.NewEncoder(os.Stdout)
	for i, row := range rows {
		emit(out, predict(predictor, row, *model), "grpc", i)
		emit(out, postPredict(httpClient, *httpURL, row, *model), "http", i)
	}
	if *model != "" && len(rows) > 0 {
		inference := inferencepb.NewGRPCInferenceServiceClient(conn)
		emit(out, modelInfer(inference, rows, *model), "grpc-oip", -1)
	}
}

func emit(out *json.Encoder, l line, door string, row int) {
	l["door"] = door
	if row >= 0 {
		l["row"] = row
	}
	if err := out.Encode(l); err != nil {
		log.Fatal(err)
	}
}

func failed(err error) line {
	st, _ := status.FromError(err)
	return line{"code": st.Code().String(), "message": st.Message()}
}

// predict asks /Predictor/Predict for one row.
func predict(client predictionpb.PredictorClient, row []float32, model string) line {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	resp, err := client.Predict(ctx, &predictionpb.PredictRequest{Features: row, Model: model})
	if err != nil {
		return failed(err)
	}
	return line{
		"prediction": resp.GetPrediction(), "confidence": resp.GetConfidence(),
		"model": resp.GetModel(), "version": resp.GetVersion(), "label": resp.GetLabel(),
	}
}

// postPredict POSTs {"data": row} to /predict.
func postPredict(client *http.Client, baseURL string, row []float32, model string) line {
	request := map[string]any{"data": row}
	if model != "" {
		request["model"] = model
	}
	body, err := json.Marshal(request)
	if err != nil {
		log.Fatal(err)
	}
	resp, err := client.Post(baseURL+"/predict", "application/json", bytes.NewReader(body))
	if err != nil {
		return line{"transport_error": err.Error()}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return line{"status": resp.StatusCode, "transport_error": err.Error()}
	}
	var doc struct {
		Prediction float64 `json:"prediction"`
		Confidence float64 `json:"confidence"`
		Model      string  `json:"model"`
		Version    string  `json:"version"`
		Label      string  `json:"label"`
		Error      string  `json:"error"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return line{"status": resp.StatusCode, "body": string(raw)}
	}
	if resp.StatusCode != http.StatusOK {
		return line{"status": resp.StatusCode, "error": doc.Error}
	}
	return line{
		"status": resp.StatusCode, "prediction": doc.Prediction, "confidence": doc.Confidence,
		"model": doc.Model, "version": doc.Version, "label": doc.Label,
	}
}

// modelInfer sends every row as one [rows, features] FP32 tensor in raw_input_contents and
// decodes the raw_output_contents.
func modelInfer(client inferencepb.GRPCInferenceServiceClient, rows [][]float32, model string) line {
	raw := make([]byte, 0, 4*len(rows)*len(rows[0]))
	for _, row := range rows {
		for _, v := range row {
			raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(v))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	resp, err := client.ModelInfer(ctx, &inferencepb.ModelInferRequest{
		ModelName: model,
		Id:        "go-1",
		Inputs: []*inferencepb.ModelInferRequest_InferInputTensor{
			{Name: "features", Datatype: "FP32", Shape: []int64{int64(len(rows)), int64(len(rows[0]))}},
		},
		RawInputContents: [][]byte{raw},
	})
	if err != nil {
		return failed(err)
	}
	outputs := line{}
	for j, tensor := range resp.GetOutputs() {
		data, err := decode(tensor.GetDatatype(), resp.GetRawOutputContents()[j])
		if err != nil {
			return line{"decode_error": err.Error()}
		}
		outputs[tensor.GetName()] = line{"datatype": tensor.GetDatatype(), "shape": tensor.GetShape(), "data": data}
	}
	return line{"id": resp.GetId(), "model": resp.GetModelName(), "version": resp.GetModelVersion(), "outputs": outputs}
}

// decode reads a flat little-endian tensor of the datatypes the example models answer with.
func decode(datatype string, raw []byte) ([]any, error) {
	size := map[string]int{"FP32": 4, "FP64": 8, "INT32": 4, "INT64": 8}[datatype]
	if size == 0 || len(raw)%size != 0 {
		return nil, fmt.Errorf("cannot decode %d bytes of %s", len(raw), datatype)
	}
	values := make([]any, 0, len(raw)/size)
	for at := 0; at < len(raw); at += size {
		switch datatype {
		case "FP32":
			values = append(values, math.Float32frombits(binary.LittleEndian.Uint32(raw[at:])))
		case "FP64":
			values = append(values, math.Float64frombits(binary.LittleEndian.Uint64(raw[at:])))
		case "INT32":
			values = append(values, int32(binary.LittleEndian.Uint32(raw[at:])))
		case "INT64":
			values = append(values, int64(binary.LittleEndian.Uint64(raw[at:])))
		}
	}
	return values, nil
}

// Sends feature events to a `pipeline run` worker: plain UTF-8 JSON values, or with a
// Schema Registry, Avro values in Confluent's framing (`pipeline run --value-format avro`).
// Usage: featureproducer BOOTSTRAP TOPIC MODEL COUNT RUN_ID [REGISTRY_URL SCHEMA_FILE]
// The event ids are RUN_ID-0 ... RUN_ID-(COUNT-1); the key is an entity id, kept on the
// prediction. With REGISTRY_URL (e.g. http://127.0.0.1:8081/apis/ccompat/v7) and
// SCHEMA_FILE (schemas/feature-event.avsc), the schema is registered under TOPIC-value and
// each event framed with its id by franz-go's sr.Serde, encoded by hamba/avro.
// tests/integration/test_producers.py builds and runs this program both ways.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"
)

// One row of the breast cancer data set: the 30 features breast-cancer-mlp takes.
var features = []float64{
	13.8, 15.79, 90.43, 584.1, 0.1007, 0.128, 0.07789, 0.05069, 0.1662, 0.06566,
	0.2787, 0.6205, 1.957, 23.35, 0.004717, 0.02065, 0.01759, 0.009206, 0.0122, 0.00313,
	16.57, 20.86, 110.3, 812.4, 0.1411, 0.3542, 0.2779, 0.1383, 0.2589, 0.103,
}

// --8<-- [start:event]
type featureEvent struct {
	ID       string    `json:"id"`
	Model    string    `json:"model,omitempty"`
	TS       int64     `json:"ts,omitempty"` // ms since the epoch
	Features []float64 `json:"features"`
}

// --8<-- [end:event]

// --8<-- [start:avro-event]
// The same event as a record of schemas/feature-event.avsc: a null model, version or ts is
// their absence, so they are pointers.
type avroEvent struct {
	ID       string    `avro:"id"`
	Model    *string   `avro:"model"`
	Version  *string   `avro:"version"`
	TS       *int64    `avro:"ts"`
	Features []float64 `avro:"features"`
}

// --8<-- [end:avro-event]

func main() {
	if len(os.Args) != 6 && len(os.Args) != 8 {
		fmt.Fprintln(os.Stderr,
			"usage: featureproducer BOOTSTRAP TOPIC MODEL COUNT RUN_ID [REGISTRY_URL SCHEMA_FILE]")
		os.Exit(2)
	}
	bootstrap, topic, model, runID := os.Args[1], os.Args[2], os.Args[3], os.Args[5]
	count, err := strconv.Atoi(os.Args[4])
	if err != nil {
		fmt.Fprintln(os.Stderr, "COUNT must be an integer:", err)
		os.Exit(2)
	}
	encode := encodeJSON
	if len(os.Args) == 8 {
		encode, err = avroEncoder(os.Args[6], os.Args[7], topic)
		if err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(1)
		}
	}
	if err := produce(bootstrap, topic, model, count, runID, encode); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	fmt.Printf("sent %d events to %s\n", count, topic)
}

// encodeJSON writes the event as plain UTF-8 JSON: no magic byte, no schema id.
func encodeJSON(event featureEvent) ([]byte, error) {
	return json.Marshal(event)
}

// avroEncoder registers the Avro schema in schemaFile under topic's subject and returns an
// encoder of events as framed Avro values of it.
func avroEncoder(registryURL, schemaFile, topic string) (func(featureEvent) ([]byte, error), error) {
	// --8<-- [start:avro]
	text, err := os.ReadFile(schemaFile)
	if err != nil {
		return nil, err
	}
	schema, err := avro.Parse(string(text))
	if err != nil {
		return nil, fmt.Errorf("%s is not an Avro schema: %w", schemaFile, err)
	}
	registry, err := sr.NewClient(sr.URLs(registryURL))
	if err != nil {
		return nil, err
	}
	registered, err := registry.CreateSchema(context.Background(), topic+"-value",
		sr.Schema{Schema: string(text), Type: sr.TypeAvro})
	if err != nil {
		return nil, fmt.Errorf("registering %s under %s-value: %w", schemaFile, topic, err)
	}
	var serde sr.Serde // writes the magic byte 0 and the schema id before each payload
	serde.Register(registered.ID, avroEvent{},
		sr.EncodeFn(func(v any) ([]byte, error) { return avro.Marshal(schema, v) }))
	return func(event featureEvent) ([]byte, error) {
		model, ts := event.Model, event.TS
		return serde.Encode(avroEvent{ID: event.ID, Model: &model, TS: &ts, Features: event.Features})
	}, nil
	// --8<-- [end:avro]
}

func produce(bootstrap, topic, model string, count int, runID string,
	encode func(featureEvent) ([]byte, error)) error {
	// --8<-- [start:producer]
	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(bootstrap, ",")...),
		kgo.DefaultProduceTopic(topic),
		kgo.RequiredAcks(kgo.AllISRAcks()), // idempotent by default
	)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := context.Background()
	records := make([]*kgo.Record, 0, count)
	for i := 0; i < count; i++ {
		event := featureEvent{
			ID:       fmt.Sprintf("%s-%d", runID, i),
			Model:    model,
			TS:       time.Now().UnixMilli(),
			Features: features,
		}
		value, err := encode(event)
		if err != nil {
			return err
		}
		records = append(records, &kgo.Record{
			Key:   []byte(fmt.Sprintf("entity-%d", i%10)),
			Value: value,
			Headers: []kgo.RecordHeader{
				{Key: "traceparent", Value: []byte(fmt.Sprintf("00-%032x-%016x-01", i+1, i+1))},
			},
		})
	}
	// ProduceSync waits for every acknowledgement and returns the first error.
	return client.ProduceSync(ctx, records...).FirstErr()
	// --8<-- [end:producer]
}

// Sends feature events to a `pipeline run` worker: plain UTF-8 JSON values, no Schema
// Registry framing. Usage: featureproducer BOOTSTRAP TOPIC MODEL COUNT RUN_ID
// The event ids are RUN_ID-0 ... RUN_ID-(COUNT-1); the key is an entity id, kept on the
// prediction. tests/integration/test_producers.py builds and runs this program.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
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

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: featureproducer BOOTSTRAP TOPIC MODEL COUNT RUN_ID")
		os.Exit(2)
	}
	bootstrap, topic, model, runID := os.Args[1], os.Args[2], os.Args[3], os.Args[5]
	count, err := strconv.Atoi(os.Args[4])
	if err != nil {
		fmt.Fprintln(os.Stderr, "COUNT must be an integer:", err)
		os.Exit(2)
	}
	if err := produce(bootstrap, topic, model, count, runID); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	fmt.Printf("sent %d events to %s\n", count, topic)
}

func produce(bootstrap, topic, model string, count int, runID string) error {
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
		value, err := json.Marshal(event) // plain UTF-8 JSON: no magic byte, no schema id
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

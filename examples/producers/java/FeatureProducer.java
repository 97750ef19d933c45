// Sends feature events to a `pipeline run` worker: plain UTF-8 JSON values, no Schema
// Registry framing. Usage: java FeatureProducer BOOTSTRAP TOPIC MODEL COUNT RUN_ID
// The event ids are RUN_ID-0 ... RUN_ID-(COUNT-1); the key is an entity id, kept on the
// prediction. tests/integration/test_producers.py builds and runs this file.
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

public final class FeatureProducer {
    // One row of the breast cancer data set: the 30 features breast-cancer-mlp takes.
    private static final String FEATURES = "[13.8, 15.79, 90.43, 584.1, 0.1007, 0.128, "
        + "0.07789, 0.05069, 0.1662, 0.06566, 0.2787, 0.6205, 1.957, 23.35, 0.004717, "
        + "0.02065, 0.01759, 0.009206, 0.0122, 0.00313, 16.57, 20.86, 110.3, 812.4, 0.1411, "
        + "0.3542, 0.2779, 0.1383, 0.2589, 0.103]";

    public static void main(String[] args) throws Exception {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        String bootstrap = args[0], topic = args[1], model = args[2], runId = args[4];
        int count = Integer.parseInt(args[3]);

        // --8<-- [start:producer]
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        // Plain strings: the value is UTF-8 JSON text. Not KafkaJsonSchemaSerializer,
        // whose magic byte and schema id prefix the worker refuses (decode InvalidJson).
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            List<Future<RecordMetadata>> sent = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                String value = "{\"id\": \"" + runId + "-" + i + "\", \"model\": \"" + model
                    + "\", \"ts\": " + System.currentTimeMillis()
                    + ", \"features\": " + FEATURES + "}";
                ProducerRecord<String, String> record =
                    new ProducerRecord<>(topic, "entity-" + (i % 10), value);
                record.headers().add("traceparent", traceparent(i));
                sent.add(producer.send(record));
            }
            for (Future<RecordMetadata> future : sent) {
                future.get();  // throws if the broker did not acknowledge it
            }
        }
        // --8<-- [end:producer]
        System.out.println("sent " + count + " events to " + topic);
    }

    private static byte[] traceparent(int i) {
        String trace = String.format("00-%032x-%016x-01", i + 1, i + 1);
        return trace.getBytes(StandardCharsets.UTF_8);
    }
}

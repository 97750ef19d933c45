// Sends feature events to a `pipeline run` worker: plain UTF-8 JSON values, or with a
// Schema Registry, Avro values in Confluent's framing (`pipeline run --value-format avro`).
// Usage: java FeatureProducer BOOTSTRAP TOPIC MODEL COUNT RUN_ID [REGISTRY_URL SCHEMA_FILE]
// The event ids are RUN_ID-0 ... RUN_ID-(COUNT-1); the key is an entity id, kept on the
// prediction. With REGISTRY_URL (e.g. http://127.0.0.1:8081/apis/ccompat/v7) and
// SCHEMA_FILE (schemas/feature-event.avsc), the schema is registered under TOPIC-value
// through the registry's Confluent-compatible REST API and each event is written by Apache
// Avro's encoder after the magic byte 0 and the schema id: what Confluent's
// KafkaAvroSerializer writes (that jar is not on Maven Central; Apache Avro is).
// tests/integration/test_producers.py builds and runs this file both ways.
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;
import java.util.function.Function;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class FeatureProducer {
    // One row of the breast cancer data set: the 30 features breast-cancer-mlp takes.
    private static final double[] FEATURES = {
        13.8, 15.79, 90.43, 584.1, 0.1007, 0.128, 0.07789, 0.05069, 0.1662, 0.06566,
        0.2787, 0.6205, 1.957, 23.35, 0.004717, 0.02065, 0.01759, 0.009206, 0.0122, 0.00313,
        16.57, 20.86, 110.3, 812.4, 0.1411, 0.3542, 0.2779, 0.1383, 0.2589, 0.103,
    };

    /** One feature event, before it is written as JSON text or as an Avro record. */
    private record Event(String id, String model, long ts, double[] features) {}

    public static void main(String[] args) throws Exception {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        if (args.length != 5 && args.length != 7) {
            System.err.println("usage: java FeatureProducer BOOTSTRAP TOPIC MODEL COUNT RUN_ID"
                + " [REGISTRY_URL SCHEMA_FILE]");
            System.exit(2);
        }
        String bootstrap = args[0], topic = args[1], model = args[2], runId = args[4];
        int count = Integer.parseInt(args[3]);
        Function<Event, byte[]> encode = args.length == 7
            ? avroEncoder(args[5], Path.of(args[6]), topic)
            : FeatureProducer::json;

        // --8<-- [start:producer]
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        // The value is bytes: UTF-8 JSON text (what `pipeline run` reads by default), or a
        // framed Avro value (`pipeline run --value-format avro`).
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(props)) {
            List<Future<RecordMetadata>> sent = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                Event event = new Event(runId + "-" + i, model, System.currentTimeMillis(), FEATURES);
                ProducerRecord<String, byte[]> record =
                    new ProducerRecord<>(topic, "entity-" + (i % 10), encode.apply(event));
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

    /** The event as plain UTF-8 JSON text: no magic byte, no schema id. */
    private static byte[] json(Event event) {
        StringBuilder features = new StringBuilder();
        for (double value : event.features()) {
            features.append(features.length() == 0 ? "" : ", ").append(value);
        }
        String value = "{\"id\": \"" + event.id() + "\", \"model\": \"" + event.model()
            + "\", \"ts\": " + event.ts() + ", \"features\": [" + features + "]}";
        return value.getBytes(StandardCharsets.UTF_8);
    }

    // --8<-- [start:avro]
    /**
     * Registers the Avro schema in schemaFile under topic's subject and returns an encoder of
     * events as framed Avro values of it: the magic byte 0, the schema id (4 bytes, big
     * endian), then the record in Avro's binary encoding.
     */
    private static Function<Event, byte[]> avroEncoder(String registryUrl, Path schemaFile,
            String topic) throws IOException, InterruptedException {
        String text = Files.readString(schemaFile);
        Schema schema = new Schema.Parser().parse(text);
        int schemaId = register(registryUrl, topic + "-value", text);
        GenericDatumWriter<GenericRecord> writer = new GenericDatumWriter<>(schema);
        return event -> {
            GenericRecord record = new GenericData.Record(schema);
            record.put("id", event.id());
            record.put("model", event.model());  // a union with null: null is its absence
            record.put("ts", event.ts());
            List<Double> features = new ArrayList<>();
            for (double value : event.features()) {
                features.add(value);
            }
            record.put("features", features);
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            out.write(0);
            out.writeBytes(ByteBuffer.allocate(4).putInt(schemaId).array());
            BinaryEncoder encoder = EncoderFactory.get().binaryEncoder(out, null);
            try {
                writer.write(record, encoder);
                encoder.flush();
            } catch (IOException e) {
                throw new IllegalArgumentException("event " + event.id() + " does not fit "
                    + schemaFile + ": " + e.getMessage(), e);
            }
            return out.toByteArray();
        };
    }

    /** POST the schema to SUBJECT's versions; the registry answers {"id": N}. */
    private static int register(String registryUrl, String subject, String schema)
            throws IOException, InterruptedException {
        String body = "{\"schema\": \"" + schema.replace("\\", "\\\\").replace("\"", "\\\"")
            .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + "\"}";
        HttpRequest request = HttpRequest.newBuilder(
                URI.create(registryUrl + "/subjects/" + subject + "/versions"))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .POST(HttpRequest.BodyPublishers.ofString(body))
            .build();
        HttpResponse<String> response =
            HttpClient.newHttpClient().send(request, HttpResponse.BodyHandlers.ofString());
        Matcher id = Pattern.compile("\"id\"\\s*:\\s*(\\d+)").matcher(response.body());
        if (response.statusCode() != 200 || !id.find()) {
            throw new IOException("the registry at " + registryUrl + " refused the schema under "
                + subject + ": HTTP " + response.statusCode() + " " + response.body());
        }
        return Integer.parseInt(id.group(1));
    }
    // --8<-- [end:avro]

    private static byte[] traceparent(int i) {
        String trace = String.format("00-%032x-%016x-01", i + 1, i + 1);
        return trace.getBytes(StandardCharsets.UTF_8);
    }
}

package xcloud.bench;

import io.debezium.embedded.Connect;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.ChangeEvent;
import java.io.FileInputStream;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.connect.header.Header;
import org.apache.kafka.connect.source.SourceRecord;

/**
 * Debezium's embedded engine publishing the project's outbox to Kafka, for the bench.
 *
 * <p>One properties file: keys starting with {@code producer.} configure the Kafka producer
 * (prefix stripped), every other key goes to the engine (connector, Outbox Event Router,
 * offsets). The change consumer does what Debezium Server's Kafka sink does: send a batch,
 * wait for every acknowledgement, then mark the batch processed, so an offset is only
 * committed for records the broker holds. The records arrive as Connect records, after the
 * transforms; the key (a string) and the value (the payload's bytes) are written as they
 * are, as StringConverter and ByteArrayConverter would.
 */
public final class OutboxDebezium {
    public static void main(String[] args) throws Exception {
        Properties all = new Properties();
        try (InputStream in = new FileInputStream(args[0])) {
            all.load(in);
        }
        Properties engineProps = new Properties();
        Map<String, Object> producerProps = new java.util.HashMap<>();
        for (String name : all.stringPropertyNames()) {
            if (name.startsWith("producer.")) {
                producerProps.put(name.substring("producer.".length()), all.getProperty(name));
            } else {
                engineProps.setProperty(name, all.getProperty(name));
            }
        }
        KafkaProducer<byte[], byte[]> producer =
                new KafkaProducer<>(producerProps, new ByteArraySerializer(), new ByteArraySerializer());

        DebeziumEngine.ChangeConsumer<ChangeEvent<SourceRecord, SourceRecord>> sink = (records, committer) -> {
            List<Future<RecordMetadata>> acks = new ArrayList<>(records.size());
            for (ChangeEvent<SourceRecord, SourceRecord> event : records) {
                SourceRecord record = event.value();
                if (record.value() == null) {
                    continue; // nothing the router turned into an event
                }
                RecordHeaders headers = new RecordHeaders();
                for (Header header : record.headers()) {
                    headers.add(header.key(), bytes(header.value()));
                }
                acks.add(producer.send(new ProducerRecord<>(
                        record.topic(), null, bytes(record.key()), bytes(record.value()), headers)));
            }
            for (Future<RecordMetadata> ack : acks) {
                try {
                    ack.get();
                } catch (java.util.concurrent.ExecutionException e) {
                    // The engine stops on this; nothing of this batch is marked processed.
                    throw new RuntimeException("Kafka refused a record", e.getCause());
                }
            }
            for (ChangeEvent<SourceRecord, SourceRecord> event : records) {
                committer.markProcessed(event);
            }
            committer.markBatchFinished();
        };

        CountDownLatch done = new CountDownLatch(1);
        DebeziumEngine<ChangeEvent<SourceRecord, SourceRecord>> engine = DebeziumEngine
                .create(Connect.class)
                .using(engineProps)
                .notifying(sink)
                .using((success, message, error) -> {
                    if (!success) {
                        System.err.println("debezium: engine stopped: " + message);
                        if (error != null) {
                            error.printStackTrace();
                        }
                    }
                    done.countDown();
                })
                .build();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                engine.close();
                done.await();
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                producer.close();
            }
        }));
        ExecutorService executor = Executors.newSingleThreadExecutor();
        executor.execute(engine);
        done.await();
        executor.shutdown();
        System.exit(1); // only reached when the engine stopped on its own (an error)
    }

    private static byte[] bytes(Object value) {
        if (value == null) {
            return null;
        }
        if (value instanceof byte[] b) {
            return b;
        }
        if (value instanceof java.nio.ByteBuffer buffer) {
            byte[] b = new byte[buffer.remaining()];
            buffer.duplicate().get(b);
            return b;
        }
        return value.toString().getBytes(StandardCharsets.UTF_8);
    }
}

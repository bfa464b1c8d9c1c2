// Runs Debezium's embedded engine (PostgreSQL connector, JsonConverter with
// schemas.enable=false, or true with a fifth argument "true") and writes every record as one JSON line
// {"destination", "key", "value"} until a record of public.zz_end arrives.
// Started by run.py: java -cp <jars> GoldenRunner.java <port> <dbname> <out> [<tx metadata> [<schemas>]]
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;
import java.io.FileWriter;
import java.io.PrintWriter;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;

public class GoldenRunner {
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.setProperty("name", "golden");
        p.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        p.setProperty("offset.storage", "org.apache.kafka.connect.storage.MemoryOffsetBackingStore");
        p.setProperty("offset.flush.interval.ms", "1000");
        p.setProperty("database.hostname", "127.0.0.1");
        p.setProperty("database.port", args[0]);
        p.setProperty("database.user", "postgres");
        p.setProperty("database.password", "");
        p.setProperty("database.dbname", args[1]);
        p.setProperty("topic.prefix", "golden");
        p.setProperty("plugin.name", "pgoutput");
        p.setProperty("slot.name", "golden_dbz");
        p.setProperty("publication.name", "golden_pub");
        p.setProperty("publication.autocreate.mode", "disabled");
        p.setProperty("snapshot.mode", "initial");
        p.setProperty("skipped.operations", "none");
        p.setProperty("converter.schemas.enable", args.length > 4 ? args[4] : "false");
        p.setProperty("provide.transaction.metadata", args.length > 3 ? args[3] : "false");
        CountDownLatch done = new CountDownLatch(1);
        PrintWriter out = new PrintWriter(new FileWriter(args[2]), true);
        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class)
            .using(p)
            .notifying(record -> {
                synchronized (out) {
                    out.println("{\"destination\":\"" + record.destination() + "\",\"key\":"
                        + record.key() + ",\"value\":" + record.value() + "}");
                }
                if (record.destination().endsWith(".zz_end")) {
                    done.countDown();
                }
            })
            .using((success, message, error) -> {
                if (!success) {
                    System.err.println("debezium stopped: " + message);
                    if (error != null) error.printStackTrace();
                }
                done.countDown();
            })
            .build();
        ExecutorService executor = Executors.newSingleThreadExecutor();
        executor.execute(engine);
        System.out.println("started");
        boolean finished = done.await(300, TimeUnit.SECONDS);
        engine.close();
        executor.shutdown();
        executor.awaitTermination(30, TimeUnit.SECONDS);
        out.close();
        System.exit(finished ? 0 : 1);
    }
}

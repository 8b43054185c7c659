// Readiness probe for scripts/services: waits until a Kafka broker answers real metadata
// requests (DescribeCluster + ListTopics) through the AdminClient.
//
// Compiled once by scripts/lib/kafka.sh against the cached Kafka jars; not part of kgate.
//
// Usage: KgateKafkaProbe BOOTSTRAP [--wait-ms N] [--pid PID] [--cluster-id ID] [--quiet]
// Exit codes: 0 ready, 1 not ready before the deadline, 3 the watched pid died,
//             4 a broker answered but with another cluster id, 2 usage.

import java.time.Duration;
import java.util.Collection;
import java.util.Optional;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.common.Node;

public final class KgateKafkaProbe {
    public static void main(String[] args) {
        if (args.length < 1) {
            System.err.println("usage: KgateKafkaProbe BOOTSTRAP [--wait-ms N] [--pid PID] [--cluster-id ID] [--quiet]");
            System.exit(2);
        }
        String bootstrap = args[0];
        long waitMs = 5000;
        long pid = -1;
        String expectedClusterId = null;
        boolean quiet = false;
        for (int i = 1; i < args.length; i++) {
            switch (args[i]) {
                case "--wait-ms": waitMs = Long.parseLong(args[++i]); break;
                case "--pid": pid = Long.parseLong(args[++i]); break;
                case "--cluster-id": expectedClusterId = args[++i]; break;
                case "--quiet": quiet = true; break;
                default:
                    System.err.println("unknown argument: " + args[i]);
                    System.exit(2);
            }
        }

        int attemptMs = 3000;
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "kgate-services-probe");
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, attemptMs);
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, attemptMs);
        p.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, 200);
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, 100);
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 500);
        p.put(AdminClientConfig.SOCKET_CONNECTION_SETUP_TIMEOUT_MS_CONFIG, 1000);
        p.put(AdminClientConfig.SOCKET_CONNECTION_SETUP_TIMEOUT_MAX_MS_CONFIG, 2000);

        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(waitMs);
        String lastError = "no attempt made";
        int code = 1;
        Admin admin = Admin.create(p);
        try {
            while (true) {
                if (pid > 0) {
                    Optional<ProcessHandle> ph = ProcessHandle.of(pid);
                    if (ph.isEmpty() || !ph.get().isAlive()) {
                        System.err.println();
                        System.err.println("process " + pid + " exited");
                        code = 3;
                        break;
                    }
                }
                try {
                    DescribeClusterResult r =
                            admin.describeCluster(new DescribeClusterOptions().timeoutMs(attemptMs));
                    Collection<Node> nodes = r.nodes().get(attemptMs, TimeUnit.MILLISECONDS);
                    String clusterId = r.clusterId().get(attemptMs, TimeUnit.MILLISECONDS);
                    if (nodes.isEmpty()) {
                        lastError = "broker answered but reports no live broker yet";
                    } else if (expectedClusterId != null && !expectedClusterId.equals(clusterId)) {
                        System.err.println();
                        System.err.println("a broker answered on " + bootstrap + " but its cluster id is "
                                + clusterId + ", expected " + expectedClusterId);
                        code = 4;
                        break;
                    } else {
                        int topics = admin.listTopics(new ListTopicsOptions().timeoutMs(attemptMs).listInternal(true))
                                .names().get(attemptMs, TimeUnit.MILLISECONDS).size();
                        System.out.println("cluster " + clusterId + ", " + nodes.size() + " broker(s), "
                                + topics + " topic(s)");
                        code = 0;
                        break;
                    }
                } catch (ExecutionException e) {
                    Throwable c = e.getCause() != null ? e.getCause() : e;
                    lastError = c.getClass().getSimpleName() + ": " + c.getMessage();
                } catch (Exception e) {
                    lastError = e.getClass().getSimpleName() + ": " + e.getMessage();
                }
                if (System.nanoTime() >= deadline) {
                    if (!quiet) {
                        System.err.println();
                        System.err.println("not ready after " + waitMs + " ms: " + lastError);
                    }
                    code = 1;
                    break;
                }
                if (!quiet) {
                    System.err.print(".");
                    System.err.flush();
                }
                try {
                    Thread.sleep(500);
                } catch (InterruptedException ie) {
                    Thread.currentThread().interrupt();
                    break;
                }
            }
        } finally {
            admin.close(Duration.ofSeconds(2));
        }
        System.exit(code);
    }
}

// Readiness probe for scripts/services: waits until a Kafka broker answers real metadata
// requests (DescribeCluster + ListTopics) through the AdminClient.
//
// Compiled once by scripts/lib/kafka.sh against the cached Kafka jars; not part of kgate.
//
// Usage: KgateKafkaProbe BOOTSTRAP [--wait-ms N] [--pid PID] [--cluster-id ID] [--quiet]
//                        [--add-scram NAME=PASSWORD] [--also LABEL BOOTSTRAP PROPERTIES-FILE]...
//   --add-scram  once BOOTSTRAP answers, upserts the user's SCRAM-SHA-256 and SCRAM-SHA-512
//                credentials (for a broker formatted before it had SCRAM users)
//   --also       then waits until the listener at BOOTSTRAP answers a client configured with the
//                properties in the file (security.protocol, ssl.*, sasl.*) too
// Exit codes: 0 ready, 1 not ready before the deadline, 3 the watched pid died,
//             4 a broker answered but with another cluster id, 5 --add-scram failed, 2 usage.

import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Optional;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
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
        String scramUser = null;
        String scramPassword = null;
        List<String[]> also = new ArrayList<>();
        for (int i = 1; i < args.length; i++) {
            switch (args[i]) {
                case "--wait-ms": waitMs = Long.parseLong(args[++i]); break;
                case "--pid": pid = Long.parseLong(args[++i]); break;
                case "--cluster-id": expectedClusterId = args[++i]; break;
                case "--quiet": quiet = true; break;
                case "--add-scram": {
                    String[] kv = args[++i].split("=", 2);
                    if (kv.length != 2) {
                        System.err.println("--add-scram wants NAME=PASSWORD");
                        System.exit(2);
                    }
                    scramUser = kv[0];
                    scramPassword = kv[1];
                    break;
                }
                case "--also":
                    also.add(new String[] {args[++i], args[++i], args[++i]});
                    break;
                default:
                    System.err.println("unknown argument: " + args[i]);
                    System.exit(2);
            }
        }

        Properties p = clientProps(bootstrap);
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(waitMs);
        String lastError = "no attempt made";
        int code = 1;
        String summary = "";
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
                            admin.describeCluster(new DescribeClusterOptions().timeoutMs(ATTEMPT_MS));
                    Collection<Node> nodes = r.nodes().get(ATTEMPT_MS, TimeUnit.MILLISECONDS);
                    String clusterId = r.clusterId().get(ATTEMPT_MS, TimeUnit.MILLISECONDS);
                    if (nodes.isEmpty()) {
                        lastError = "broker answered but reports no live broker yet";
                    } else if (expectedClusterId != null && !expectedClusterId.equals(clusterId)) {
                        System.err.println();
                        System.err.println("a broker answered on " + bootstrap + " but its cluster id is "
                                + clusterId + ", expected " + expectedClusterId);
                        code = 4;
                        break;
                    } else {
                        int topics = admin.listTopics(new ListTopicsOptions().timeoutMs(ATTEMPT_MS).listInternal(true))
                                .names().get(ATTEMPT_MS, TimeUnit.MILLISECONDS).size();
                        summary = "cluster " + clusterId + ", " + nodes.size() + " broker(s), "
                                + topics + " topic(s)";
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
            if (code == 0 && scramUser != null) {
                try {
                    // One request per mechanism: a request may alter a user only once.
                    for (ScramMechanism m : new ScramMechanism[] {ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512}) {
                        List<UserScramCredentialAlteration> upsert = List.of(
                                new UserScramCredentialUpsertion(scramUser, new ScramCredentialInfo(m, 8192), scramPassword));
                        admin.alterUserScramCredentials(upsert).all().get(ATTEMPT_MS * 3L, TimeUnit.MILLISECONDS);
                    }
                    summary += "; SCRAM user " + scramUser + " added";
                } catch (Exception e) {
                    Throwable c = e.getCause() != null ? e.getCause() : e;
                    System.err.println();
                    System.err.println("could not add the SCRAM user " + scramUser + ": " + c.getClass().getSimpleName() + ": " + c.getMessage());
                    code = 5;
                }
            }
        } finally {
            admin.close(Duration.ofSeconds(2));
        }
        for (String[] a : also) {
            if (code != 0) {
                break;
            }
            String result = probeListener(a[0], a[1], a[2], deadline, pid, quiet);
            if (result == null) {
                summary += "; " + a[0] + " " + a[1] + " ok";
            } else {
                System.err.println();
                System.err.println(result);
                code = result.startsWith("process ") ? 3 : 1;
            }
        }
        if (code == 0) {
            System.out.println(summary);
        }
        System.exit(code);
    }

    private static final int ATTEMPT_MS = 3000;

    private static Properties clientProps(String bootstrap) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "kgate-services-probe");
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, ATTEMPT_MS);
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, ATTEMPT_MS);
        p.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, 200);
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, 100);
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 500);
        p.put(AdminClientConfig.SOCKET_CONNECTION_SETUP_TIMEOUT_MS_CONFIG, 1000);
        p.put(AdminClientConfig.SOCKET_CONNECTION_SETUP_TIMEOUT_MAX_MS_CONFIG, 2000);
        return p;
    }

    // Waits until the listener at BOOTSTRAP answers DescribeCluster with the security settings in
    // PROPS; null when it did, else why not.
    private static String probeListener(String label, String bootstrap, String props, long deadline,
                                        long pid, boolean quiet) {
        Properties p = clientProps(bootstrap);
        try (InputStream in = new FileInputStream(props)) {
            p.load(in);
        } catch (IOException e) {
            return label + " " + bootstrap + ": cannot read " + props + ": " + e.getMessage();
        }
        String lastError = "no attempt made";
        try (Admin admin = Admin.create(p)) {
            while (true) {
                if (pid > 0) {
                    Optional<ProcessHandle> ph = ProcessHandle.of(pid);
                    if (ph.isEmpty() || !ph.get().isAlive()) {
                        return "process " + pid + " exited";
                    }
                }
                try {
                    admin.describeCluster(new DescribeClusterOptions().timeoutMs(ATTEMPT_MS))
                            .nodes().get(ATTEMPT_MS, TimeUnit.MILLISECONDS);
                    return null;
                } catch (ExecutionException e) {
                    Throwable c = e.getCause() != null ? e.getCause() : e;
                    lastError = c.getClass().getSimpleName() + ": " + c.getMessage();
                } catch (Exception e) {
                    lastError = e.getClass().getSimpleName() + ": " + e.getMessage();
                }
                if (System.nanoTime() >= deadline) {
                    return label + " " + bootstrap + " not ready: " + lastError;
                }
                if (!quiet) {
                    System.err.print(".");
                    System.err.flush();
                }
                try {
                    Thread.sleep(500);
                } catch (InterruptedException ie) {
                    Thread.currentThread().interrupt();
                    return label + " " + bootstrap + ": interrupted";
                }
            }
        }
    }
}

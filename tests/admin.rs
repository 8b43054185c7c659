//! `kgate cluster`, `kgate topics` and `kgate groups` against the real local Kafka, through the
//! real binary: a topic's life (create with partitions, retention and a config → list →
//! describe with watermarks and config sources → alter → add partitions → delete), a consumer
//! group's lag and offset resets, and the errors. Run through `scripts/test admin`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use common::*;

/// Runs `kgate ARGS --brokers B` with stdin not a terminal: (exit code, stdout, stderr).
fn kgate(args: &[&str]) -> (i32, String, String) {
    let brokers = brokers();
    let out = Command::new(kgate_bin())
        .args(args)
        .args(["--brokers", &brokers])
        .env_remove("KGATE_CONFIG")
        .env("KGATE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kgate ARGS --output json`, which must succeed; its parsed output.
fn kjson(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let (code, out, err) = kgate(&all);
    assert_eq!(code, 0, "kgate {args:?} failed:\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kgate {args:?}: {e}:\n{out}"))
}

/// The config entry `name` of a `topics describe` JSON answer.
fn config<'a>(detail: &'a Value, name: &str) -> &'a Value {
    detail["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no config {name} in {detail}"))
}

/// Produces `per_partition` records to each of `partitions` partitions, record i of a
/// partition stamped `base_ms + i * 1000`; waits until Kafka has them all.
fn produce(topic: &str, partitions: i32, per_partition: i64, base_ms: i64) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for part in 0..partitions {
        for i in 0..per_partition {
            let key = format!("k{part}-{i}");
            let value = format!("{{\"i\":{i}}}");
            p.send(
                BaseRecord::to(topic)
                    .partition(part)
                    .key(&key)
                    .payload(&value)
                    .timestamp(base_ms + i * 1000),
            )
            .unwrap();
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn partitions_of(detail: &Value) -> &Vec<Value> {
    detail["partitions"].as_array().unwrap()
}

#[test]
fn cluster_shows_brokers_controller_and_counts() {
    // A fresh broker has no topic yet: make one so that the counts have something to count.
    let topic = unique("admin.cluster");
    let (code, _, err) = kgate(&["topics", "create", &topic, "--partitions", "2"]);
    assert_eq!(code, 0, "{err}");
    let c = kjson(&["cluster"]);
    let brokers = c["brokers"].as_array().unwrap();
    assert!(!brokers.is_empty(), "{c}");
    assert!(
        c["cluster_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{c}"
    );
    let controller = c["controller_id"].as_i64().unwrap();
    assert_eq!(
        brokers.iter().filter(|b| b["controller"] == true).count(),
        1,
        "{c}"
    );
    assert!(brokers.iter().any(|b| b["id"] == controller), "{c}");
    assert!(c["topics"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["partitions"].as_u64().unwrap() > c["topics"].as_u64().unwrap());
    // The table names the same cluster id.
    let (code, out, err) = kgate(&["cluster"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(c["cluster_id"].as_str().unwrap()), "{out}");
}

#[test]
fn topic_create_list_describe_alter_grow_delete() {
    let topic = unique("admin.topic");
    let pattern = format!("^{}$", regex_escape(&topic));

    // Create: 3 partitions, 1 day retention, one more topic config.
    let created = kjson(&[
        "topics",
        "create",
        &topic,
        "--partitions",
        "3",
        "--replication-factor",
        "1",
        "--retention",
        "1d",
        "--config",
        "max.message.bytes=2097152",
    ]);
    assert_eq!(created["created"], topic.as_str());

    // Creating it again fails, naming the topic.
    let (code, _, err) = kgate(&["topics", "create", &topic, "--partitions", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("topic {topic} exists")), "{err}");

    // List by pattern: just this one, with its partitions and retention.
    let listed = kjson(&["topics", "list", "--pattern", &pattern]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], topic.as_str());
    assert_eq!(listed[0]["partitions"], 3);
    assert_eq!(listed[0]["replication_factor"], 1);
    assert_eq!(listed[0]["retention_ms"], 86_400_000);
    assert_eq!(listed[0]["cleanup_policy"], "delete");
    assert_eq!(listed[0]["messages"], 0);

    // 3 × 7 records: each partition's watermarks 0..7, 21 messages.
    produce(&topic, 3, 7, now_ms() - 60_000);
    let d = kjson(&["topics", "describe", &topic]);
    assert_eq!(d["messages"], 21, "{d}");
    let parts = partitions_of(&d);
    assert_eq!(parts.len(), 3);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["id"], i as i64);
        assert_eq!((p["low"].as_i64(), p["high"].as_i64()), (Some(0), Some(7)));
        assert_eq!(p["messages"], 7);
        assert!(p["leader"].as_i64().unwrap() >= 0, "{p}");
        assert_eq!(p["replicas"].as_array().unwrap().len(), 1);
        assert_eq!(p["isr"], p["replicas"]);
    }
    let retention = config(&d, "retention.ms");
    assert_eq!(retention["value"], "86400000");
    assert_eq!(retention["source"], "dynamic_topic");
    assert_eq!(retention["default"], false);
    let mmb = config(&d, "max.message.bytes");
    assert_eq!(mmb["value"], "2097152");
    assert_eq!(mmb["source"], "dynamic_topic");
    // Every config is there, defaults marked as such.
    let defaults = d["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["default"] == true && c["source"] == "default")
        .count();
    assert!(defaults > 5, "{d}");
    assert_eq!(
        kjson(&["topics", "list", "--pattern", &pattern])[0]["messages"],
        21
    );
    // The table shows the non-default configs with their source.
    let (code, out, err) = kgate(&["topics", "describe", &topic]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("retention.ms"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("(1d)") && line.ends_with("dynamic_topic"),
        "{line}"
    );

    // Alter the retention: the other config set on the topic is kept.
    let altered = kjson(&["topics", "alter", &topic, "--retention", "2d"]);
    assert_eq!(altered["configs"][0]["old"], "86400000", "{altered}");
    assert_eq!(altered["configs"][0]["new"], "172800000", "{altered}");
    let d = kjson(&["topics", "describe", &topic]);
    assert_eq!(config(&d, "retention.ms")["value"], "172800000");
    assert_eq!(config(&d, "max.message.bytes")["value"], "2097152");
    assert_eq!(config(&d, "max.message.bytes")["source"], "dynamic_topic");

    // Grow to 5 partitions; the records stay.
    kjson(&["topics", "alter", &topic, "--partitions", "5"]);
    let d = kjson(&["topics", "describe", &topic]);
    assert_eq!(partitions_of(&d).len(), 5);
    assert_eq!(d["messages"], 21);
    // Fewer partitions: a usage error naming the count.
    let (code, _, err) = kgate(&["topics", "alter", &topic, "--partitions", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has 5 partition(s)"), "{err}");

    // Delete: refused without --yes when stdin is not a terminal; the topic stays.
    let (code, _, err) = kgate(&["topics", "delete", &topic]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(kjson(&["topics", "describe", &topic])["messages"], 21);
    let deleted = kjson(&["topics", "delete", &topic, "--yes"]);
    assert_eq!(deleted["deleted"], topic.as_str());
    // Gone: describing it names it (the broker may take a moment to forget it).
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (code, _, err) = kgate(&["topics", "describe", &topic]);
        last = err;
        if code == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        last.contains(&format!("topic {topic} does not exist")),
        "{last}"
    );
    assert!(kjson(&["topics", "list", "--pattern", &pattern])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn describing_or_deleting_a_missing_topic_names_it() {
    let topic = unique("admin.missing");
    for args in [
        vec!["topics", "describe", topic.as_str()],
        vec!["topics", "delete", topic.as_str(), "--yes"],
        vec!["topics", "alter", topic.as_str(), "--retention", "1h"],
    ] {
        let (code, _, err) = kgate(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("topic {topic} does not exist")),
            "{args:?}: {err}"
        );
    }
    // The broker's refusals name the topic, Kafka's error code and the fix.
    let (code, _, err) = kgate(&[
        "topics",
        "create",
        &topic,
        "--partitions",
        "1",
        "--replication-factor",
        "99",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "cannot create topic {topic}: INVALID_REPLICATION_FACTOR: the replication factor must be at least 1 and at most the number of brokers"
        )),
        "{err}"
    );
    let (code, _, err) = kgate(&[
        "topics",
        "create",
        &topic,
        "--partitions",
        "1",
        "--config",
        "no.such.key=1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot create topic {topic}: INVALID_CONFIG")),
        "{err}"
    );
    // Neither made it.
    let (code, _, _) = kgate(&["topics", "describe", &topic]);
    assert_eq!(code, 1);
    // A missing group is named too.
    let group = unique("admin-missing");
    for args in [
        vec!["groups", "describe", group.as_str()],
        vec!["groups", "delete", group.as_str(), "--yes"],
    ] {
        let (code, _, err) = kgate(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("consumer group {group} does not exist")),
            "{args:?}: {err}"
        );
    }
    // Usage errors exit 2.
    let (code, _, err) = kgate(&["topics", "list", "--pattern", "("]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = kgate(&["groups", "reset-offsets", "g", "--topic", &topic]);
    assert_eq!(code, 2, "{err}");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

/// (committed, lag) per partition of `topic` in a `groups describe` JSON answer.
fn offsets(detail: &Value, topic: &str) -> Vec<(i64, i64)> {
    detail["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["topic"] == topic)
        .map(|p| (p["committed"].as_i64().unwrap(), p["lag"].as_i64().unwrap()))
        .collect()
}

/// A `reset-offsets` run; its new offsets by partition.
fn reset(group: &str, topic: &str, to: &[&str], execute: bool) -> Vec<i64> {
    let mut args = vec!["groups", "reset-offsets", group, "--topic", topic];
    args.extend(to);
    if execute {
        args.push("--execute");
    }
    let r = kjson(&args);
    assert_eq!(r["executed"], execute);
    r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["new"].as_i64().unwrap())
        .collect()
}

#[test]
fn group_lag_reset_offsets_and_delete() {
    let topic = unique("admin.group");
    let group = unique("admin-group");
    kjson(&["topics", "create", &topic, "--partitions", "2"]);
    // 2 × 10 records, stamped a second apart from an hour ago.
    let base = (now_ms() - 3_600_000) / 1000 * 1000;
    produce(&topic, 2, 10, base);

    // A member of the group reads, and commits 7 on partition 0 and 4 on partition 1.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &group)
        .set("client.id", "admin-test-consumer")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read < 20 && Instant::now() < deadline {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
            read += 1;
        }
    }
    assert_eq!(read, 20, "the test consumer did not read the topic");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(7))
        .unwrap();
    tpl.add_partition_offset(&topic, 1, Offset::Offset(4))
        .unwrap();
    consumer.commit(&tpl, CommitMode::Sync).unwrap();

    // Active: one member holding both partitions; lag 3 + 6.
    let d = kjson(&["groups", "describe", &group]);
    assert_eq!(d["state"], "Stable", "{d}");
    let members = d["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{d}");
    assert_eq!(members[0]["client_id"], "admin-test-consumer");
    assert_eq!(members[0]["assignment"][0]["topic"], topic.as_str());
    assert_eq!(
        members[0]["assignment"][0]["partitions"],
        serde_json::json!([0, 1])
    );
    assert_eq!(offsets(&d, &topic), vec![(7, 3), (4, 6)]);
    assert_eq!(d["total_lag"], 9);
    for p in d["partitions"].as_array().unwrap() {
        assert_eq!(p["end"], 10);
        assert_eq!(p["member"], members[0]["id"]);
    }
    // Resetting while it is active is refused, naming the group and its member.
    let (code, _, err) = kgate(&[
        "groups",
        "reset-offsets",
        &group,
        "--topic",
        &topic,
        "--to-earliest",
        "--execute",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("consumer group {group} is active"))
            && err.contains("admin-test-consumer"),
        "{err}"
    );
    // So is deleting it.
    let (code, _, err) = kgate(&["groups", "delete", &group, "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is active"), "{err}");

    // The member leaves; the group is empty and keeps its offsets.
    drop(consumer);
    let deadline = Instant::now() + Duration::from_secs(60);
    let d = loop {
        let d = kjson(&["groups", "describe", &group]);
        if d["members"].as_array().unwrap().is_empty() || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(d["state"], "Empty", "{d}");
    assert_eq!(offsets(&d, &topic), vec![(7, 3), (4, 6)]);
    assert_eq!(d["total_lag"], 9);
    let listed = kjson(&["groups", "list"]);
    let g = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == group.as_str())
        .unwrap_or_else(|| panic!("{group} not in {listed}"));
    assert_eq!(g["members"], 0);
    assert_eq!(g["lag"], 9);

    // A dry run shows the change and commits nothing.
    assert_eq!(reset(&group, &topic, &["--to-earliest"], false), vec![0, 0]);
    let (code, out, _) = kgate(&[
        "groups",
        "reset-offsets",
        &group,
        "--topic",
        &topic,
        "--to-latest",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("dry run: nothing committed"), "{out}");
    let describe = || kjson(&["groups", "describe", &group]);
    assert_eq!(offsets(&describe(), &topic), vec![(7, 3), (4, 6)]);

    // --execute moves them.
    assert_eq!(reset(&group, &topic, &["--to-earliest"], true), vec![0, 0]);
    assert_eq!(offsets(&describe(), &topic), vec![(0, 10), (0, 10)]);
    assert_eq!(describe()["total_lag"], 20);
    assert_eq!(
        reset(&group, &topic, &["--to-offset", "4"], true),
        vec![4, 4]
    );
    assert_eq!(offsets(&describe(), &topic), vec![(4, 6), (4, 6)]);
    assert_eq!(
        reset(&group, &topic, &["--shift-by", "3"], true),
        vec![7, 7]
    );
    assert_eq!(
        reset(&group, &topic, &["--shift-by", "-2"], true),
        vec![5, 5]
    );
    // Beyond the end: kept at the end.
    assert_eq!(
        reset(&group, &topic, &["--to-offset", "99"], true),
        vec![10, 10]
    );
    // Record i is stamped base + i s: 2.5 s after base, the first at or after it is 3.
    let at =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis((base + 2_500) as u64))
            .to_string();
    assert_eq!(
        reset(&group, &topic, &["--to-datetime", &at], true),
        vec![3, 3]
    );
    assert_eq!(offsets(&describe(), &topic), vec![(3, 7), (3, 7)]);
    assert_eq!(describe()["total_lag"], 14);
    assert_eq!(reset(&group, &topic, &["--to-latest"], true), vec![10, 10]);
    assert_eq!(describe()["total_lag"], 0);

    // Delete: refused without --yes off a terminal, then done.
    let (code, _, err) = kgate(&["groups", "delete", &group]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(describe()["group"], group.as_str());
    assert_eq!(
        kjson(&["groups", "delete", &group, "--yes"])["deleted"],
        group.as_str()
    );
    let (code, _, err) = kgate(&["groups", "describe", &group]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("consumer group {group} does not exist")),
        "{err}"
    );
    kjson(&["topics", "delete", &topic, "--yes"]);
}

/// A config file whose `kafka:` section logs in over SASL_SSL with `password`.
fn sasl_config(dir: &std::path::Path, password: &str) -> String {
    let brokers = std::env::var("KGATE_SASL_SSL_BROKERS")
        .expect("KGATE_SASL_SSL_BROKERS: run through `scripts/test admin`");
    let ca = std::path::PathBuf::from(
        std::env::var("KGATE_TLS_DIR").expect("KGATE_TLS_DIR: run through `scripts/test admin`"),
    )
    .join("ca.pem");
    let path = write_config(
        dir,
        &format!(
            "kafka:\n  brokers: ['{brokers}']\n  security: {{protocol: SASL_SSL, sasl: {{mechanism: SCRAM-SHA-512, username: kgate, password: '{password}'}}, tls: {{ca: '{}'}}}}\npipelines:\n  - name: unused\n    source: {{websocket: {{urls: ['ws://127.0.0.1:1/']}}}}\n    topic: unused\n",
            ca.display()
        ),
    );
    path.to_str().unwrap().to_string()
}

#[test]
fn config_file_security_is_used_and_a_refused_login_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = sasl_config(dir.path(), "kgate-secret");
    let topic = unique("admin.sasl");
    // Over SASL_SSL: --config FILE and --config KEY=VALUE side by side.
    kjson(&[
        "topics",
        "create",
        &topic,
        "--partitions",
        "2",
        "--config",
        &good,
        "--config",
        "retention.ms=3600000",
    ]);
    let d = kjson(&["topics", "describe", &topic, "--config", &good]);
    assert_eq!(partitions_of(&d).len(), 2);
    assert_eq!(config(&d, "retention.ms")["value"], "3600000");
    let c = kjson(&["cluster", "--config", &good]);
    let sasl_port = std::env::var("KGATE_SASL_SSL_BROKERS").unwrap();
    let sasl_port: i64 = sasl_port.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        c["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["port"] == sasl_port),
        "{c}"
    );
    kjson(&["topics", "delete", &topic, "--yes", "--config", &good]);

    // A wrong password: exit 1, one line naming the broker, the user and the fix; never the
    // password.
    let dir2 = tempfile::tempdir().unwrap();
    let bad = sasl_config(dir2.path(), "not-the-password-42");
    let (code, out, err) = kgate(&["topics", "list", "--config", &bad]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused the SASL SCRAM-SHA-512 login of user \"kgate\"")
            && err.contains("kafka.security.sasl"),
        "{err}"
    );
    assert!(!err.contains("not-the-password-42") && !out.contains("not-the-password-42"));
    // A config with errors is a usage error.
    let broken = write_config(dir2.path(), "kafka: {brokers: 7}\n");
    let (code, _, err) = kgate(&["groups", "list", "--config", broken.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
}

/// `kgate ARGS --brokers B` on a pseudo-terminal (util-linux `script`), `typed` on its stdin:
/// (exit code, what the terminal showed).
fn kgate_on_terminal(args: &[&str], typed: &str) -> (i32, String) {
    let cmd = format!("{} {} --brokers {}", kgate_bin(), args.join(" "), brokers());
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("KGATE_CONFIG")
        .env("KGATE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "util-linux `script` runs a command on a pseudo-terminal (apt-get install bsdutils)",
        );
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{typed}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn delete_asks_on_a_terminal() {
    let topic = unique("admin.ask");
    kjson(&["topics", "create", &topic, "--partitions", "2"]);
    produce(&topic, 2, 3, now_ms());
    // Anything but the topic's name keeps it.
    let (code, shown) = kgate_on_terminal(&["topics", "delete", &topic], "yes");
    assert_eq!(code, 1, "{shown}");
    assert!(
        shown.contains(&format!(
            "Delete topic {topic} and its 6 message(s) in 2 partition(s)? Type `{topic}` to confirm"
        )),
        "{shown}"
    );
    assert!(shown.contains("not confirmed"), "{shown}");
    assert_eq!(kjson(&["topics", "describe", &topic])["messages"], 6);
    // Its name deletes it.
    let (code, shown) = kgate_on_terminal(&["topics", "delete", &topic], &topic);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains(&format!("deleted topic {topic}")), "{shown}");
    let pattern = format!("^{}$", regex_escape(&topic));
    wait_until(
        Duration::from_secs(30),
        || {
            kjson(&["topics", "list", "--pattern", &pattern])
                .as_array()
                .unwrap()
                .is_empty()
        },
        "the deleted topic to leave the list",
    );
}

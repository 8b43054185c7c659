//! `kgate dlq inspect` against the real local Kafka: a gateway dead-letters bad input, the
//! command reads it back. Run through `scripts/test`, which starts the broker.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs `kgate dlq inspect ARGS`; returns stdout, panicking with stderr on failure.
fn inspect(args: &[&str]) -> String {
    let out = Command::new(kgate_bin())
        .args(["dlq", "inspect", "--brokers", &brokers()])
        .args(args)
        // scripts/test exports the registry: each call here says whether it wants one.
        .env_remove("KGATE_REGISTRY_URL")
        .env_remove("KGATE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kgate dlq inspect {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// JSON output: the record lines and the summary line.
fn json_lines(text: &str) -> (Vec<serde_json::Value>, serde_json::Value) {
    let mut records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = records.pop().expect("a summary line");
    assert!(summary.get("summary").is_some(), "{text}");
    (records, summary["summary"].clone())
}

/// 3 malformed JSON messages and 2 without the key's field → inspect shows the 5 with their
/// error types, filters by error type, caps the list with --max but counts everything.
#[tokio::test(flavor = "multi_thread")]
async fn inspect_shows_filters_and_counts_what_the_gateway_dead_lettered() {
    let topic = unique("dlqcmd");
    let dlq = unique("dlqcmd.dlq");
    let msgs = vec![
        r#"{"exchange":"kraken","symbol":"BTC-USD","seq":1}"#.to_string(),
        r#"{"exchange":"kraken","symbol":"#.to_string(),
        r#"{"exchange":"kraken","seq":3}"#.to_string(),
        "not json at all".to_string(),
        r#"{"exchange":"coinbase","seq":5}"#.to_string(),
        r#"[1, 2"#.to_string(),
        r#"{"exchange":"coinbase","symbol":"ETH-USD","seq":7}"#.to_string(),
    ];
    let url = serve_messages(msgs.clone(), Duration::ZERO).await;
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "kafka:\n  brokers: ['{}']\nmetrics:\n  listen: '127.0.0.1:{mport}'\ndlq: {{topic: '{dlq}'}}\nshutdown_timeout: 20s\npipelines:\n  - name: market\n    source: {{websocket: {{urls: ['{url}']}}}}\n    topic: {topic}\n    key: '${{exchange}}|${{symbol}}'\n",
        brokers()
    );
    let mut gw = spawn_run(dir.path(), &cfg);
    let (b, d) = (brokers(), dlq.clone());
    let bad = tokio::task::spawn_blocking(move || consume(&b, &d, 5, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(bad.len(), 5, "{}", gw.log_text());
    let s = stop(&mut gw, 30);
    assert_eq!((s["delivered"], s["dead-lettered"]), (2, 5));

    let d = dlq.clone();
    let (all, one, invalid, table, missing_table) = tokio::task::spawn_blocking(move || {
        (
            inspect(&["--topic", &d, "--output", "json"]),
            inspect(&["--topic", &d, "--output", "json", "--max", "1"]),
            inspect(&[
                "--topic",
                &d,
                "--output",
                "json",
                "--error-type",
                "invalid_json",
            ]),
            inspect(&["--topic", &d]),
            inspect(&[
                "--topic",
                &d,
                "--error-type",
                "missing_field",
                "--since",
                "1h",
            ]),
        )
    })
    .await
    .unwrap();

    let (records, summary) = json_lines(&all);
    assert_eq!(records.len(), 5, "{all}");
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["headers"]["error_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types.iter().filter(|t| **t == "invalid_json").count(),
        3,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| **t == "missing_field").count(),
        2,
        "{types:?}"
    );
    for r in &records {
        assert_eq!(r["headers"]["source_topic"], topic.as_str(), "{r}");
        assert!(r["headers"]["received_at"].as_str().unwrap().ends_with('Z'));
        assert!(r["headers"]["error_message"].is_string());
    }
    // The values are the rejected bytes: JSON when they parse, else text.
    let missing = records
        .iter()
        .find(|r| r["headers"]["error_type"] == "missing_field")
        .unwrap();
    assert_eq!(missing["value_as"], "json");
    assert!(missing["value"]["exchange"].is_string(), "{missing}");
    assert!(records
        .iter()
        .any(|r| r["value"] == "not json at all" && r["value_as"] == "text"));
    assert_eq!(summary["matched"], 5);
    assert_eq!(summary["by_error_type"]["invalid_json"], 3);
    assert_eq!(summary["by_error_type"]["missing_field"], 2);
    assert_eq!(summary["by_source_topic"][&topic], 5);

    let (records, summary) = json_lines(&one);
    assert_eq!(records.len(), 1, "{one}");
    assert_eq!(summary["matched"], 5, "{one}");
    assert_eq!(summary["shown"], 1, "{one}");

    let (records, summary) = json_lines(&invalid);
    assert_eq!(records.len(), 3, "{invalid}");
    assert!(records
        .iter()
        .all(|r| r["headers"]["error_type"] == "invalid_json"));
    assert_eq!(summary["matched"], 3);
    assert_eq!(summary["read"], 5);

    println!("{table}");
    assert!(table.starts_with("TIME"), "{table}");
    assert!(table.contains("invalid_json"), "{table}");
    assert!(table.contains("missing_field"), "{table}");
    assert!(table.contains(&topic), "{table}");
    assert!(table.contains("5 of 5 records"), "{table}");
    assert!(missing_table.contains("2 of 5 records"), "{missing_table}");
    assert!(!missing_table.contains("invalid_json"), "{missing_table}");
}

/// A topic that does not exist and a broker that does not answer: exit 1 with what to fix.
#[test]
fn inspect_names_the_broker_and_the_fix() {
    let out = Command::new(kgate_bin())
        .args(["dlq", "inspect", "--brokers", &brokers(), "--topic"])
        .arg(unique("nosuch.dlq"))
        .env_remove("KGATE_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("does not exist") && err.contains(&brokers()),
        "{err}"
    );

    let out = Command::new(kgate_bin())
        .args(["dlq", "inspect", "--topic", "x", "--error-type", "nope"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid_json"), "{err}");
}

/// Produces one DLQ-like record to `topic` with kgate's headers.
async fn produce(topic: &str, error_type: &str, value: &[u8], timestamp: i64) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "source_topic",
            value: Some("probe.v1"),
        })
        .insert(Header {
            key: "error_type",
            value: Some(error_type),
        })
        .insert(Header {
            key: "error_message",
            value: Some("Kafka refused it"),
        });
    p.send(
        FutureRecord::<(), _>::to(topic)
            .payload(value)
            .headers(headers)
            .timestamp(timestamp),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
}

/// A value in the Confluent Avro wire format is decoded through the registry; `--since` starts
/// at the first record written in that window (by the records' timestamps).
#[tokio::test(flavor = "multi_thread")]
async fn inspect_decodes_avro_and_starts_at_since() {
    let topic = unique("dlqcmd.avro.dlq");
    let subject = format!("{}-value", unique("dlqcmd-probe"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.avsc");
    std::fs::write(
        &file,
        r#"{"type":"record","name":"DlqProbe","fields":[{"name":"n","type":"long"},{"name":"s","type":"string"}]}"#,
    )
    .unwrap();
    let out = Command::new(kgate_bin())
        .args(["schemas", "register", &subject, "--json", "--registry"])
        .arg(registry())
        .arg("--file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_u64()
        .unwrap();
    // {"n": 3, "s": "hi"}: magic byte, schema id, zigzag long 3, string of length 2.
    let mut avro = vec![0u8];
    avro.extend_from_slice(&u32::try_from(id).unwrap().to_be_bytes());
    avro.extend_from_slice(&[0x06, 0x04, b'h', b'i']);
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    produce(&topic, "invalid_json", b"{old", now - 2 * 3600 * 1000).await;
    produce(&topic, "produce_failed", &avro, now).await;

    let t = topic.clone();
    let (all, since, table) = tokio::task::spawn_blocking(move || {
        let reg = registry();
        (
            inspect(&["--topic", &t, "--output", "json", "--registry", &reg]),
            inspect(&["--topic", &t, "--output", "json", "--since", "1h"]),
            inspect(&["--topic", &t, "--registry", &reg]),
        )
    })
    .await
    .unwrap();
    let (records, summary) = json_lines(&all);
    assert_eq!(records.len(), 2, "{all}");
    // Newest last.
    assert_eq!(records[0]["value"], "{old", "{all}");
    assert_eq!(records[1]["value_as"], "avro", "{all}");
    assert_eq!(
        records[1]["value"],
        serde_json::json!({"n": 3, "s": "hi"}),
        "{all}"
    );
    assert_eq!(summary["by_error_type"]["produce_failed"], 1);

    let (records, summary) = json_lines(&since);
    assert_eq!(records.len(), 1, "{since}");
    assert_eq!(summary["read"], 1, "{since}");
    // Without a registry the Avro bytes are not UTF-8: base64.
    assert_eq!(records[0]["value_as"], "base64", "{since}");

    assert!(table.contains(r#"{"n":3,"s":"hi"}"#), "{table}");
    assert!(table.contains("produce_failed"), "{table}");
}

/// A DLQ written in a transaction ends with a commit marker that no poll returns: inspect
/// still stops at once.
#[tokio::test(flavor = "multi_thread")]
async fn inspect_stops_at_a_transaction_marker() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let topic = unique("dlqcmd.tx.dlq");
    let t = topic.clone();
    let out = tokio::task::spawn_blocking(move || {
        let p: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("transactional.id", unique("dlqcmd-tx"))
            .create()
            .unwrap();
        p.init_transactions(Duration::from_secs(30)).unwrap();
        p.begin_transaction().unwrap();
        for i in 0..2 {
            let headers = OwnedHeaders::new().insert(Header {
                key: "error_type",
                value: Some("invalid_json"),
            });
            p.send(
                BaseRecord::<(), _>::to(&t)
                    .payload(&format!("bad {i}"))
                    .headers(headers),
            )
            .unwrap();
        }
        p.commit_transaction(Duration::from_secs(30)).unwrap();
        let started = std::time::Instant::now();
        let out = inspect(&["--topic", &t, "--output", "json"]);
        (out, started.elapsed())
    })
    .await
    .unwrap();
    let (records, summary) = json_lines(&out.0);
    assert_eq!(records.len(), 2, "{}", out.0);
    assert_eq!(summary["by_error_type"]["invalid_json"], 2);
    assert!(out.1 < Duration::from_secs(10), "took {:?}", out.1);
}

// ---------------------------------------------------------------------------------------------
// kgate dlq replay

/// One record as read back, headers in order.
#[derive(Debug, Clone)]
struct Full {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Full {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn seq(&self) -> u64 {
        serde_json::from_slice::<serde_json::Value>(&self.value).unwrap()["seq"]
            .as_u64()
            .unwrap()
    }
}

/// Creates `name` with `partitions` partitions (and the `config` settings).
fn create_topic(name: &str, partitions: i32, config: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in config {
        t = t.set(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(admin.create_topics([&t], &AdminOptions::new()))
        .unwrap();
    for x in r {
        x.unwrap();
    }
}

/// What the record looked like before kgate dead-lettered it.
#[derive(Debug, Clone)]
struct Original {
    key: Option<String>,
    value: Vec<u8>,
    headers: Vec<(String, String)>,
}

/// kgate's DLQ headers for a record meant for `source_topic`, as the producing sink writes
/// them (after the input's), and `extra` after them.
fn kgate_headers(source_topic: &str, error_type: &str) -> Vec<(String, String)> {
    [
        ("source", "market:websocket"),
        ("pipeline", "market"),
        ("source_topic", source_topic),
        ("error_type", error_type),
        ("error_message", "Kafka refused it"),
        ("received_at", "2026-12-07T04:00:00.000Z"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Writes DLQ records: each original with `dlq_headers` appended (as kgate does).
fn write_dlq(topic: &str, recs: &[(Original, Vec<(String, String)>)]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (o, extra) in recs {
        let mut h = OwnedHeaders::new();
        for (k, v) in o.headers.iter().chain(extra) {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(&o.value[..])
            .headers(h);
        if let Some(k) = &o.key {
            r = r.key(k.as_bytes());
        }
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    p.poll(Duration::from_millis(20));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Reads `topic` from the beginning as a read_committed consumer: until `want` records came and
/// then nothing new for 2 s, or `timeout`; with `stop_at_want`, as soon as `want` came.
fn read_topic(topic: &str, want: usize, timeout: Duration, stop_at_want: bool) -> Vec<Full> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq-replay-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let t = &md.topics()[0];
    assert!(t.error().is_none(), "{topic}: {:?}", t.error());
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in t.partitions() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last_new = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(Full {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|hd| {
                                    (
                                        hd.key.to_string(),
                                        String::from_utf8_lossy(hd.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
                last_new = std::time::Instant::now();
                if stop_at_want && out.len() >= want {
                    break;
                }
            }
            Some(Err(e)) => eprintln!("read {topic}: {e}"),
            None => {
                if out.len() >= want && last_new.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
        }
    }
    out
}

/// Runs `kgate dlq replay ARGS` to its end; returns (exit code, stdout, stderr).
fn replay(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(kgate_bin())
        .args(["dlq", "replay", "--brokers", &brokers()])
        .args(args)
        .env_remove("KGATE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `kgate dlq replay ARGS --output json`, expecting exit 0; returns its report.
fn replay_ok(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let (code, out, err) = replay(&all);
    assert_eq!(code, 0, "kgate dlq replay {args:?}:\n{out}\n{err}");
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(last).unwrap_or_else(|e| panic!("{e}: {out}"))
        ["replay"]
        .clone()
}

fn original(seq: u64, extra_headers: &[(&str, &str)]) -> Original {
    let mut headers = vec![
        ("trace_id".to_string(), format!("t-{seq}")),
        // An input header named like one of kgate's: kept (kgate's own comes after it).
        ("source".to_string(), "device-7".to_string()),
    ];
    headers.extend(
        extra_headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    Original {
        key: (!seq.is_multiple_of(5)).then(|| format!("key-{seq}")),
        value: format!(
            r#"{{"seq":{seq},"pad":"{}"}}"#,
            "x".repeat((seq % 7) as usize)
        )
        .into_bytes(),
        headers,
    }
}

/// 30 DLQ records from two source topics → each source topic gets exactly its records back:
/// the original bytes, key and headers, kgate's DLQ headers taken off, `replayed_from` and
/// `replay_count` added (an earlier replay's count + 1). A second run sends nothing: the first
/// committed everything.
#[test]
fn replay_sends_each_record_back_to_its_source_topic() {
    let a = unique("replay.a");
    let b = unique("replay.b");
    let dlq = unique("replay.src.dlq");
    create_topic(&a, 3, &[]);
    create_topic(&b, 1, &[]);
    create_topic(&dlq, 2, &[]);
    let mut recs = Vec::new();
    for seq in 0..30u64 {
        let target = if seq.is_multiple_of(3) { &b } else { &a };
        // Some were replayed before: their replay_count goes on from there.
        let earlier: &[(&str, &str)] = if seq % 10 == 1 {
            &[("replayed_from", "old.dlq[0]@7"), ("replay_count", "1")]
        } else {
            &[]
        };
        let o = original(seq, earlier);
        recs.push((o, kgate_headers(target, "produce_failed")));
    }
    write_dlq(&dlq, &recs);
    let in_dlq = read_topic(&dlq, 30, Duration::from_secs(60), false);
    assert_eq!(in_dlq.len(), 30);

    let report = replay_ok(&["--topic", &dlq]);
    assert_eq!(report["read"], 30, "{report}");
    assert_eq!(report["sent"], 30, "{report}");
    assert_eq!(report["by_target"][&a], 20, "{report}");
    assert_eq!(report["by_target"][&b], 10, "{report}");
    assert_eq!(report["sent_to_dlq"], 0, "{report}");

    let got_a = read_topic(&a, 20, Duration::from_secs(60), false);
    let got_b = read_topic(&b, 10, Duration::from_secs(60), false);
    assert_eq!(got_a.len(), 20);
    assert_eq!(got_b.len(), 10);
    let mut seen = std::collections::BTreeSet::new();
    for (got, topic) in [(&got_a, &a), (&got_b, &b)] {
        for r in got.iter() {
            let seq = r.seq();
            assert!(seen.insert(seq), "seq {seq} twice");
            let (o, dlq_headers) = &recs[seq as usize];
            assert_eq!(dlq_headers[2].1, *topic, "seq {seq} went to {topic}");
            let from = in_dlq.iter().find(|d| d.seq() == seq).unwrap();
            assert_eq!(r.value, o.value);
            assert_eq!(r.key.as_deref(), o.key.as_ref().map(|k| k.as_bytes()));
            let mut want: Vec<(String, String)> = o
                .headers
                .iter()
                .filter(|(k, _)| k != "replayed_from" && k != "replay_count")
                .cloned()
                .collect();
            let count = if seq % 10 == 1 { "2" } else { "1" };
            want.push((
                "replayed_from".into(),
                format!("{dlq}[{}]@{}", from.partition, from.offset),
            ));
            want.push(("replay_count".into(), count.into()));
            assert_eq!(r.headers, want, "seq {seq}");
        }
    }
    assert_eq!(seen.len(), 30);

    // Committed: nothing left for this group.
    let again = replay_ok(&["--topic", &dlq]);
    assert_eq!(again["read"], 0, "{again}");
    assert_eq!(again["sent"], 0, "{again}");
    assert_eq!(read_topic(&a, 20, Duration::from_secs(30), false).len(), 20);
}

/// 20,000 DLQ records replayed at a pace slow enough to SIGKILL the replay mid-way; started
/// again, it goes on: every record is in the target exactly once for a read_committed reader.
#[test]
fn a_killed_replay_resumes_without_duplicates_or_gaps() {
    const N: u64 = 20_000;
    let target = unique("replay.kill");
    let dlq = unique("replay.kill.dlq");
    create_topic(&target, 3, &[]);
    create_topic(&dlq, 2, &[]);
    let recs: Vec<_> = (0..N)
        .map(|seq| {
            (
                Original {
                    key: Some(format!("k{}", seq % 97)),
                    value: format!(r#"{{"seq":{seq}}}"#).into_bytes(),
                    headers: vec![],
                },
                kgate_headers(&target, "produce_failed"),
            )
        })
        .collect();
    write_dlq(&dlq, &recs);

    let mut first = spawn_kgate(&[
        "dlq",
        "replay",
        "--brokers",
        &brokers(),
        "--topic",
        &dlq,
        "--rate",
        "2000/s",
    ]);
    // Some, not all, committed in the target.
    let before = read_topic(&target, 2000, Duration::from_secs(120), true);
    assert!(before.len() >= 2000, "{}", first.log_text());
    first.signal("-KILL");
    first.wait(Duration::from_secs(10));
    let at_kill = read_topic(&target, 2000, Duration::from_secs(60), false).len() as u64;
    assert!(
        at_kill < N,
        "the replay finished before it was killed; slow it down ({at_kill} of {N})"
    );

    let report = replay_ok(&["--topic", &dlq]);
    assert_eq!(report["interrupted"], false, "{report}");
    let got = read_topic(&target, N as usize, Duration::from_secs(120), false);
    let mut seen = std::collections::BTreeMap::new();
    for r in &got {
        *seen.entry(r.seq()).or_insert(0u32) += 1;
        assert!(r.header("replayed_from").unwrap().starts_with(&dlq));
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{} duplicated, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    let missing: Vec<u64> = (0..N).filter(|s| !seen.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(got.len() as u64, N);
    // The restart sent exactly the ones the killed run had not committed.
    assert_eq!(report["sent"].as_u64().unwrap(), N - at_kill, "{report}");
}

/// --dry-run prints what would be sent and where, sends and commits nothing: a real run
/// afterwards replays everything.
#[test]
fn a_dry_run_sends_and_commits_nothing() {
    let target = unique("replay.dry");
    let dlq = unique("replay.dry.dlq");
    create_topic(&target, 1, &[]);
    create_topic(&dlq, 1, &[]);
    let recs: Vec<_> = (0..5)
        .map(|seq| (original(seq, &[]), kgate_headers(&target, "produce_failed")))
        .collect();
    write_dlq(&dlq, &recs);
    let (code, out, err) = replay(&["--topic", &dlq, "--dry-run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("TIME"), "{out}");
    let rows = out
        .lines()
        .filter(|l| l.contains("produce_failed") && l.contains(&format!("→ {target}")))
        .count();
    assert_eq!(rows, 5, "{out}");
    assert!(out.contains("5 would be sent"), "{out}");
    assert!(read_topic(&target, 0, Duration::from_secs(5), false).is_empty());

    let report = replay_ok(&["--topic", &dlq]);
    assert_eq!(report["read"], 5, "{report}");
    assert_eq!(report["sent"], 5, "{report}");
    assert_eq!(
        read_topic(&target, 5, Duration::from_secs(60), false).len(),
        5
    );
}

/// --error-type selects (the others are committed: another group replays them), a record at
/// --max-attempts is not sent (exhausted), a too_large record is not sent (only its first bytes
/// are in the DLQ), and a record whose target does not exist goes back to the DLQ with
/// replay_count + 1, until --max-attempts: never a loop.
#[test]
fn replay_filters_and_sends_refused_records_back_to_the_dlq_until_exhausted() {
    let target = unique("replay.f");
    let missing = unique("replay.missing");
    let dlq = unique("replay.f.dlq");
    create_topic(&target, 1, &[]);
    create_topic(&dlq, 1, &[]);
    let mut recs = Vec::new();
    for seq in 0..3 {
        recs.push((original(seq, &[]), kgate_headers(&target, "produce_failed")));
    }
    for seq in 3..5 {
        recs.push((original(seq, &[]), kgate_headers(&target, "invalid_json")));
    }
    recs.push((
        original(5, &[("replay_count", "3")]),
        kgate_headers(&target, "produce_failed"),
    ));
    recs.push((original(6, &[]), kgate_headers(&missing, "produce_failed")));
    let mut truncated = kgate_headers(&target, "too_large");
    truncated.push(("original_size".into(), "5000000".into()));
    truncated.push(("original_sha256".into(), "ab".repeat(32)));
    recs.push((original(7, &[]), truncated));
    write_dlq(&dlq, &recs);

    let report = replay_ok(&["--topic", &dlq, "--error-type", "produce_failed"]);
    assert_eq!(report["read"], 8, "{report}");
    assert_eq!(report["skipped_by_filter"], 3, "{report}");
    assert_eq!(report["selected"], 5, "{report}");
    assert_eq!(report["sent"], 3, "{report}");
    assert_eq!(report["exhausted"], 1, "{report}");
    assert_eq!(report["sent_to_dlq"], 1, "{report}");
    let got = read_topic(&target, 3, Duration::from_secs(60), false);
    let seqs: Vec<u64> = got.iter().map(Full::seq).collect();
    assert_eq!(seqs, vec![0, 1, 2]);

    // The refused one is back in the DLQ, as the 9th record.
    let in_dlq = read_topic(&dlq, 9, Duration::from_secs(60), false);
    assert_eq!(in_dlq.len(), 9);
    let back = &in_dlq[8];
    assert_eq!(back.seq(), 6);
    assert_eq!(back.value, recs[6].0.value);
    assert_eq!(back.header("replay_count"), Some("1"));
    assert_eq!(
        back.header("replayed_from"),
        Some(format!("{dlq}[0]@6").as_str())
    );
    assert_eq!(back.header("error_type"), Some("produce_failed"));
    assert_eq!(back.header("source_topic"), Some(missing.as_str()));
    assert!(
        back.header("error_message")
            .unwrap()
            .contains("does not exist"),
        "{back:?}"
    );
    assert_eq!(back.header("trace_id"), Some("t-6"));
    // The missing topic was not created by the replay.
    {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        let md = c
            .fetch_metadata(Some(&missing), Duration::from_secs(10))
            .unwrap();
        assert!(md.topics()[0].error().is_some(), "{missing} was created");
    }

    // The same group, another filter: the invalid_json ones were committed already.
    let again = replay_ok(&["--topic", &dlq, "--error-type", "invalid_json"]);
    assert_eq!(again["read"], 1, "{again}");
    assert_eq!(again["sent"], 0, "{again}");
    // Another group replays them.
    let other = unique("replay-other");
    let other = replay_ok(&[
        "--topic",
        &dlq,
        "--error-type",
        "invalid_json",
        "--group",
        &other,
    ]);
    assert_eq!(other["sent"], 2, "{other}");
    assert_eq!(
        read_topic(&target, 5, Duration::from_secs(60), false).len(),
        5
    );
    // A too_large record holds only its first bytes: never replayed.
    let large = replay_ok(&[
        "--topic",
        &dlq,
        "--error-type",
        "too_large",
        "--group",
        &unique("replay-large"),
    ]);
    assert_eq!(large["selected"], 1, "{large}");
    assert_eq!(large["too_large"], 1, "{large}");
    assert_eq!(large["sent"], 0, "{large}");

    // The refused record again, in a third group, with --max-attempts 2: back once more
    // (replay_count 2), then exhausted.
    let g = unique("replay-attempts");
    let r1 = replay_ok(&[
        "--topic",
        &dlq,
        "--group",
        &g,
        "--source-topic",
        &missing,
        "--max-attempts",
        "2",
    ]);
    assert_eq!(r1["selected"], 2, "{r1}"); // seq 6 as written (count 0) and as sent back (count 1)
    assert_eq!(r1["sent_to_dlq"], 2, "{r1}");
    let r2 = replay_ok(&[
        "--topic",
        &dlq,
        "--group",
        &g,
        "--source-topic",
        &missing,
        "--max-attempts",
        "2",
    ]);
    assert_eq!(r2["read"], 2, "{r2}");
    assert_eq!(r2["sent_to_dlq"], 1, "{r2}"); // count 1 → 2
    assert_eq!(r2["exhausted"], 1, "{r2}"); // count 2
    let r3 = replay_ok(&[
        "--topic",
        &dlq,
        "--group",
        &g,
        "--source-topic",
        &missing,
        "--max-attempts",
        "2",
    ]);
    assert_eq!(r3["read"], 1, "{r3}");
    assert_eq!(r3["exhausted"], 1, "{r3}");
    assert_eq!(r3["sent_to_dlq"], 0, "{r3}");
    let r4 = replay_ok(&["--topic", &dlq, "--group", &g, "--max-attempts", "2"]);
    assert_eq!(r4["read"], 0, "{r4}");
}

/// A record the target topic refuses (larger than its max.message.bytes) goes back to the DLQ
/// as too_large; the records sent with it in the same batch are delivered.
#[test]
fn a_record_the_target_refuses_goes_back_to_the_dlq_and_the_rest_is_sent() {
    let target = unique("replay.small");
    let dlq = unique("replay.small.dlq");
    create_topic(&target, 1, &[("max.message.bytes", "2000")]);
    create_topic(&dlq, 1, &[]);
    let mut recs: Vec<_> = (0..6)
        .map(|seq| (original(seq, &[]), kgate_headers(&target, "produce_failed")))
        .collect();
    // Random text, so that compression cannot shrink it under the limit.
    let mut big = original(6, &[]);
    big.value = format!(r#"{{"seq":6,"pad":"{}"}}"#, random_text(8000)).into_bytes();
    recs.insert(3, (big, kgate_headers(&target, "produce_failed")));
    write_dlq(&dlq, &recs);

    let report = replay_ok(&["--topic", &dlq]);
    assert_eq!(report["sent"], 6, "{report}");
    assert_eq!(report["sent_to_dlq"], 1, "{report}");
    assert_eq!(
        report["back_to_dlq_by_error_type"]["too_large"], 1,
        "{report}"
    );
    let got = read_topic(&target, 6, Duration::from_secs(60), false);
    let mut seqs: Vec<u64> = got.iter().map(Full::seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4, 5]);
    let in_dlq = read_topic(&dlq, 8, Duration::from_secs(60), false);
    assert_eq!(in_dlq.len(), 8);
    assert_eq!(in_dlq[7].seq(), 6);
    assert_eq!(in_dlq[7].header("error_type"), Some("too_large"));
    assert_eq!(in_dlq[7].header("replay_count"), Some("1"));
    assert_eq!(in_dlq[7].value, recs[3].0.value);
}

/// --to the DLQ itself, a reserved topic or one that does not exist is refused before anything
/// is read.
#[test]
fn replay_refuses_the_dlq_and_reserved_topics_as_targets() {
    for to in ["events.v1.dlq", "__consumer_offsets", "_schemas"] {
        let (code, out, err) = replay(&["--topic", "events.v1.dlq", "--to", to]);
        assert_eq!(code, 2, "{to}: {out}\n{err}");
        assert!(err.contains(to), "{err}");
    }
    // A --to that does not exist: nothing is read, the DLQ stays as it is.
    let dlq = unique("replay.to.dlq");
    let gone = unique("replay.gone");
    create_topic(&dlq, 1, &[]);
    write_dlq(
        &dlq,
        &[(original(0, &[]), kgate_headers("t", "produce_failed"))],
    );
    let (code, out, err) = replay(&["--topic", &dlq, "--to", &gone]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains(&gone) && err.contains("does not exist") && err.contains(&brokers()),
        "{err}"
    );
    assert_eq!(read_topic(&dlq, 1, Duration::from_secs(30), false).len(), 1);
}

/// SIGINT mid-way: the replay commits its batch and exits 130; run again it sends the rest.
/// Meanwhile --metrics-listen serves kafka_dlq_replayed_total.
#[test]
fn an_interrupted_replay_commits_its_batch_and_goes_on() {
    const N: u64 = 6_000;
    let target = unique("replay.int");
    let dlq = unique("replay.int.dlq");
    create_topic(&target, 2, &[]);
    create_topic(&dlq, 3, &[]);
    let recs: Vec<_> = (0..N)
        .map(|seq| {
            (
                Original {
                    key: None,
                    value: format!(r#"{{"seq":{seq}}}"#).into_bytes(),
                    headers: vec![("h".into(), seq.to_string())],
                },
                kgate_headers(&target, "schema_unavailable"),
            )
        })
        .collect();
    write_dlq(&dlq, &recs);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut first = spawn_kgate(&[
        "dlq",
        "replay",
        "--brokers",
        &brokers(),
        "--topic",
        &dlq,
        "--rate",
        "1000",
        "--metrics-listen",
        &addr,
    ]);
    let before = read_topic(&target, 500, Duration::from_secs(120), true);
    assert!(before.len() >= 500, "{}", first.log_text());
    let (status, body) = http_get(&addr, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    let replayed = metric(
        &body,
        "kafka_dlq_replayed_total",
        &[
            &format!("dlq_topic=\"{dlq}\""),
            &format!("target_topic=\"{target}\""),
        ],
    );
    assert!(replayed >= 1.0, "{body}");
    first.signal("-INT");
    let status = first.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{}", first.log_text());
    let at_stop = read_topic(&target, 500, Duration::from_secs(60), false).len() as u64;
    assert!(at_stop < N, "finished before the SIGINT ({at_stop})");

    let report = replay_ok(&["--topic", &dlq]);
    assert_eq!(report["sent"].as_u64().unwrap(), N - at_stop, "{report}");
    let got = read_topic(&target, N as usize, Duration::from_secs(120), false);
    let seqs: std::collections::BTreeSet<u64> = got.iter().map(Full::seq).collect();
    assert_eq!(got.len() as u64, N);
    assert_eq!(seqs.len() as u64, N);
}

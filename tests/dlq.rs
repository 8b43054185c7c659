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

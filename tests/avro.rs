//! Avro through the real registry (Apicurio, Confluent API) and the real Kafka: the TradeEvent
//! round trip checked by an independent decoder (Python fastavro), unions and logical types,
//! schema evolution without a restart, mismatches to the DLQ, a registry that goes away.
//! Run through `scripts/test`, which starts Kafka and the registry.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// `kgate schemas register SUBJECT --file F` against `url`; panics with its output on failure.
fn register(url: &str, subject: &str, schema: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.avsc");
    std::fs::write(&f, schema).unwrap();
    let out = Command::new(kgate_bin())
        .args([
            "schemas",
            "register",
            subject,
            "--file",
            f.to_str().unwrap(),
            "--registry",
            url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "register {subject}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The id of a subject's latest version, read with a plain HTTP GET.
fn latest_id(url: &str, subject: &str) -> u64 {
    let rest = url.trim_start_matches("http://");
    let (addr, base) = rest.split_once('/').unwrap();
    let (status, body) =
        http_get(addr, &format!("/{base}/subjects/{subject}/versions/latest")).unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_u64()
        .unwrap()
}

fn config(url: &str, metrics_port: u16, dlq: &str, extra: &str, pipelines: &str) -> String {
    format!(
        "kafka:\n  brokers: ['{}']\nschema_registry:\n  url: '{url}'\n{extra}metrics:\n  listen: '127.0.0.1:{metrics_port}'\ndlq: {{topic: '{dlq}'}}\nshutdown_timeout: 20s\npipelines:\n{pipelines}",
        brokers()
    )
}

/// The trade service's case: synth trade feeds, `@context` renamed, TradeEvent Avro with the
/// latest version of `<topic>-value`; fastavro reads back exactly what was sent.
#[test]
fn trade_events_round_trip_through_the_registry() {
    let url = registry();
    let topic = unique("TradeEvent");
    let schema = std::fs::read_to_string(repo().join("schemas/TradeEvent.avsc")).unwrap();
    register(&url, &format!("{topic}-value"), &schema);
    let (_feed, ws) = spawn_synth("trades", &["--rate", "0", "--count", "500"]);
    let dir = tempfile::tempdir().unwrap();
    let mport = free_port();
    let mut gw = spawn_run(
        dir.path(),
        &config(
            &url,
            mport,
            &unique("avro.dlq"),
            "",
            &format!(
                "  - name: trades\n    source: {{websocket: {{urls: ['{ws}']}}}}\n    transforms:\n      - rename: {{from: /tradeCredential/@context, to: /tradeCredential/context}}\n    topic: {topic}\n    key: '${{exchange}}|${{symbol}}'\n    format: avro\n"
            ),
        ),
    );
    let recs = consume(&brokers(), &topic, 500, Duration::from_secs(90));
    assert_eq!(recs.len(), 500, "log:\n{}", gw.log_text());
    let id = latest_id(&url, &format!("{topic}-value"));
    let decoded = fastavro(&url, &recs);
    let mut seqs = BTreeSet::new();
    for ((sid, v), r) in decoded.iter().zip(&recs) {
        assert_eq!(*sid, id, "schema id in the wire format");
        assert_eq!(r.value[0], 0, "magic byte");
        let vc = &v["tradeCredential"];
        assert_eq!(
            vc["context"][0], "https://www.w3.org/2018/credentials/v1",
            "{v}"
        );
        assert_eq!(
            r.key_str(),
            format!(
                "{}|{}",
                v["exchange"].as_str().unwrap(),
                v["symbol"].as_str().unwrap()
            )
        );
        seqs.insert(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (1..=500).collect::<BTreeSet<u64>>());
    // kgate's own decoder (`kgate schemas decode`, the one tail and the UI use) reads the same.
    let hex: String = recs[0].value.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new(kgate_bin())
        .args(["schemas", "decode", &hex, "--registry", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ours["id"].as_u64(), Some(id));
    assert_eq!(ours["value"]["seq"], decoded[0].1["seq"]);
    assert_eq!(
        ours["value"]["tradeCredential"]["context"],
        decoded[0].1["tradeCredential"]["context"]
    );
    let s = stop(&mut gw, 30);
    assert_eq!(s["delivered"], 500);
}

const MATRIX: &str = r#"{"type":"record","name":"Matrix","namespace":"io.kgate.test","fields":[
 {"name":"id","type":"string"},
 {"name":"opt","type":["null","string"],"default":null},
 {"name":"opt_last","type":["long","null"]},
 {"name":"wide","type":["null","int","string","double"]},
 {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
 {"name":"ts_us","type":{"type":"long","logicalType":"timestamp-micros"}},
 {"name":"day","type":{"type":"int","logicalType":"date"}},
 {"name":"tod","type":{"type":"int","logicalType":"time-millis"}},
 {"name":"uid","type":{"type":"string","logicalType":"uuid"}},
 {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":20,"scale":4}},
 {"name":"amount","type":{"type":"fixed","name":"Amt","size":12,"logicalType":"decimal","precision":24,"scale":2}},
 {"name":"side","type":{"type":"enum","name":"Side","symbols":["BUY","SELL"]}},
 {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
 {"name":"attrs","type":{"type":"map","values":"long"},"default":{}},
 {"name":"venue","type":["null",{"type":"record","name":"Venue","fields":[{"name":"mic","type":"string"}]}],"default":null}
]}"#;

/// Plain JSON (no union wrapping) for unions and logical types, checked by fastavro; records
/// that do not fit go to the DLQ as `schema_mismatch` naming the path, and are counted.
#[tokio::test(flavor = "multi_thread")]
async fn unions_and_logical_types_from_plain_json_and_mismatches_to_the_dlq() {
    let url = registry();
    let topic = unique("matrix");
    let dlq = unique("matrix.dlq");
    register(&url, &format!("{topic}-value"), MATRIX);
    let good = json!({"id":"a","opt":"x","opt_last":7,"wide":3,"ts":"2026-11-25T10:00:00.123Z",
        "ts_us":"2026-11-25T10:00:00.123456+01:00","day":"2026-11-25","tod":"10:11:12.500",
        "uid":"6f1c0b8e-3c44-4a5e-9d2f-1b2a3c4d5e6f","price":"12345678901234.5678",
        "amount":"-0.05","side":"SELL","tags":["t1"],"attrs":{"n":1},"venue":{"mic":"XNAS"}});
    let minimal = json!({"id":"b","opt_last":null,"wide":"text","ts":1764064800123i64,
        "ts_us":1764064800123456i64,"day":20417,"tod":36672500,
        "uid":"6f1c0b8e-3c44-4a5e-9d2f-1b2a3c4d5e6f","price":0.5,"amount":"1.00","side":"BUY"});
    let wide_double = json!({"id":"c","opt_last":null,"wide":2.5,"ts":0,"ts_us":0,"day":0,"tod":0,
        "uid":"6f1c0b8e-3c44-4a5e-9d2f-1b2a3c4d5e6f","price":"1","amount":"1","side":"BUY"});
    let bad_enum = json!({"id":"d","opt_last":null,"wide":1,"ts":0,"ts_us":0,"day":0,"tod":0,
        "uid":"6f1c0b8e-3c44-4a5e-9d2f-1b2a3c4d5e6f","price":"1","amount":"1","side":"HOLD"});
    let bad_nested = json!({"id":"e","opt_last":null,"wide":1,"ts":0,"ts_us":0,"day":0,"tod":0,
        "uid":"6f1c0b8e-3c44-4a5e-9d2f-1b2a3c4d5e6f","price":"1","amount":"1","side":"BUY",
        "attrs":{"n":"not a number"}});
    let msgs: Vec<String> = [&good, &bad_enum, &minimal, &bad_nested, &wide_double]
        .iter()
        .map(|v| v.to_string())
        .collect();
    let ws = serve_messages(msgs.clone(), Duration::from_millis(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let mport = free_port();
    let mut gw = spawn_run(
        dir.path(),
        &config(
            &url,
            mport,
            &dlq,
            "",
            &format!(
                "  - name: matrix\n    source: {{websocket: {{urls: ['{ws}']}}}}\n    topic: {topic}\n    key: '${{id}}'\n    format: avro\n"
            ),
        ),
    );
    let b = brokers();
    let t = topic.clone();
    let recs = tokio::task::spawn_blocking(move || consume(&b, &t, 3, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(recs.len(), 3, "log:\n{}", gw.log_text());
    let decoded = fastavro(&url, &recs);
    let by_id = |k: &str| {
        decoded
            .iter()
            .find(|(_, v)| v["id"] == k)
            .unwrap_or_else(|| panic!("record {k} in {decoded:?}"))
            .1
            .clone()
    };
    let a = by_id("a");
    assert_eq!(a["opt"], "x");
    assert_eq!(a["opt_last"], 7);
    assert_eq!(a["wide"], 3);
    assert_eq!(a["ts"], "2026-11-25T10:00:00.123000+00:00");
    assert_eq!(a["ts_us"], "2026-11-25T09:00:00.123456+00:00");
    assert_eq!(a["day"], "2026-11-25");
    assert_eq!(a["tod"], "10:11:12.500000");
    assert_eq!(a["uid"], "6f1c0b8e-3c44-4a5e-9d2f-1b2a3c4d5e6f");
    assert_eq!(a["price"], "12345678901234.5678");
    assert_eq!(a["amount"], "-0.05");
    assert_eq!(a["side"], "SELL");
    assert_eq!(a["tags"], json!(["t1"]));
    assert_eq!(a["attrs"], json!({"n": 1}));
    assert_eq!(a["venue"], json!({"mic": "XNAS"}));
    let m = by_id("b");
    assert_eq!(m["opt"], Value::Null, "missing optional → its default");
    assert_eq!(m["opt_last"], Value::Null);
    assert_eq!(m["wide"], "text");
    assert_eq!(m["ts"], "2025-11-25T10:00:00.123000+00:00");
    assert_eq!(m["day"], "2025-11-25");
    assert_eq!(m["price"], "0.5000");
    assert_eq!(m["tags"], json!([]));
    assert_eq!(m["venue"], Value::Null);
    assert_eq!(by_id("c")["wide"], 2.5);

    let b = brokers();
    let d = dlq.clone();
    let dead = tokio::task::spawn_blocking(move || consume(&b, &d, 2, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(dead.len(), 2);
    for r in &dead {
        assert_eq!(r.headers["error_type"], "schema_mismatch");
        assert_eq!(r.headers["source_topic"], topic);
        let original: Value = serde_json::from_slice(&r.value).unwrap();
        let msg = &r.headers["error_message"];
        match original["id"].as_str().unwrap() {
            "d" => assert!(
                msg.contains("/side") && msg.contains("HOLD") && msg.contains("BUY"),
                "{msg}"
            ),
            "e" => assert!(
                msg.contains("/attrs/n") && msg.contains("long") && msg.contains("not a number"),
                "{msg}"
            ),
            other => panic!("unexpected DLQ record {other}"),
        }
    }
    let (_, text) = http_get(&format!("127.0.0.1:{mport}"), "/metrics").unwrap();
    assert_eq!(
        metric(
            &text,
            "kafka_producer_encode_errors_total",
            &[
                &format!("topic=\"{topic}\""),
                "error_type=\"schema_mismatch\""
            ]
        ),
        2.0
    );
    stop(&mut gw, 30);
}

const V1: &str = r#"{"type":"record","name":"Evo","namespace":"io.kgate.test","fields":[{"name":"seq","type":"long"}]}"#;
const V2: &str = r#"{"type":"record","name":"Evo","namespace":"io.kgate.test","fields":[{"name":"seq","type":"long"},{"name":"note","type":["null","string"],"default":null}]}"#;

/// A new version registered while kgate runs is used after the next refresh, with no restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_schema_version_is_used_after_refresh_without_restart() {
    let url = registry();
    let topic = unique("evo");
    let subject = format!("{topic}-value");
    register(&url, &subject, V1);
    let v1 = latest_id(&url, &subject);
    let msgs: Vec<String> = (1..=400)
        .map(|i| format!(r#"{{"seq":{i},"note":"n{i}"}}"#))
        .collect();
    let ws = serve_messages(msgs, Duration::from_millis(25)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        dir.path(),
        &config(
            &url,
            free_port(),
            &unique("evo.dlq"),
            "  refresh: 1s\n",
            &format!(
                "  - name: evo\n    source: {{websocket: {{urls: ['{ws}']}}}}\n    topic: {topic}\n    format: avro\n"
            ),
        ),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    register(&url, &subject, V2);
    let v2 = latest_id(&url, &subject);
    assert_ne!(v1, v2);
    let b = brokers();
    let t = topic.clone();
    let recs = tokio::task::spawn_blocking(move || consume(&b, &t, 400, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(recs.len(), 400, "log:\n{}", gw.log_text());
    let decoded = fastavro(&url, &recs);
    let ids: Vec<u64> = decoded.iter().map(|(id, _)| *id).collect();
    let first_v2 = ids
        .iter()
        .position(|id| *id == v2)
        .expect("records with the v2 id");
    assert!(first_v2 > 0, "the first records use v1");
    assert!(ids[..first_v2].iter().all(|id| *id == v1));
    assert!(ids[first_v2..].iter().all(|id| *id == v2), "no going back");
    assert_eq!(decoded[0].1.get("note"), None, "v1 has no note");
    assert_eq!(decoded.last().unwrap().1["note"], "n400", "v2 carries it");
    stop(&mut gw, 30);
}

/// A missing subject fails `check` and `run` at start with the subject, the URL and the fix.
#[test]
fn a_missing_subject_fails_at_start_with_the_fix() {
    let url = registry();
    let topic = unique("nosubject");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config(
            &url,
            free_port(),
            &unique("ns.dlq"),
            "",
            &format!(
                "  - name: p\n    source: {{websocket: {{urls: ['ws://127.0.0.1:9/ws']}}}}\n    topic: {topic}\n    format: avro\n"
            ),
        ),
    );
    for cmd in ["check", "run"] {
        let out = Command::new(kgate_bin())
            .args([cmd, "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd} must fail");
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("{topic}-value")), "{cmd}: {text}");
        assert!(text.contains(&url), "{cmd}: {text}");
        assert!(text.contains("kgate schemas register"), "{cmd}: {text}");
    }
}

/// The registry stops mid-stream: the cached schema keeps encoding, refresh failures are
/// counted and logged, and every record arrives.
#[tokio::test(flavor = "multi_thread")]
async fn records_keep_flowing_when_the_registry_goes_away() {
    // A registry of its own, on other ports, so that stopping it disturbs no other test.
    let port = free_port().to_string();
    let state = tempfile::tempdir().unwrap();
    let envs = [
        ("REGISTRY_PORT", port.as_str()),
        ("KGATE_STATE_DIR", state.path().to_str().unwrap()),
    ];
    let up = services(&["up", "registry"], &envs);
    assert!(
        up.status.success(),
        "second registry: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    struct Down<'a>(&'a [(&'a str, &'a str)]);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            services(&["down", "registry"], self.0);
        }
    }
    let _down = Down(&envs);
    let url = format!("http://127.0.0.1:{port}/apis/ccompat/v7");
    let topic = unique("regdown");
    register(&url, &format!("{topic}-value"), V1);
    let msgs: Vec<String> = (1..=300).map(|i| format!(r#"{{"seq":{i}}}"#)).collect();
    let ws = serve_messages(msgs, Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let mport = free_port();
    let mut gw = spawn_run(
        dir.path(),
        &config(
            &url,
            mport,
            &unique("regdown.dlq"),
            "  refresh: 1s\n",
            &format!(
                "  - name: regdown\n    source: {{websocket: {{urls: ['{ws}']}}}}\n    topic: {topic}\n    format: avro\n"
            ),
        ),
    );
    let b = brokers();
    let t = topic.clone();
    let first = tokio::task::spawn_blocking(move || consume(&b, &t, 20, Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(first.len() >= 20, "log:\n{}", gw.log_text());
    let down = services(&["down", "registry"], &envs);
    assert!(down.status.success());
    let b = brokers();
    let t = topic.clone();
    let recs = tokio::task::spawn_blocking(move || consume(&b, &t, 300, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(recs.len(), 300, "log:\n{}", gw.log_text());
    let seqs: BTreeSet<u64> = recs
        .iter()
        .map(|r| {
            // The Avro body of {seq: long} is the zig-zag varint of seq.
            let (mut n, mut shift) = (0u64, 0);
            for b in &r.value[5..] {
                n |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            n >> 1
        })
        .collect();
    assert_eq!(seqs, (1..=300).collect::<BTreeSet<u64>>());
    let (_, text) = http_get(&format!("127.0.0.1:{mport}"), "/metrics").unwrap();
    assert!(
        metric(&text, "kgate_schema_refresh_errors_total", &[&topic]) >= 1.0,
        "refresh failures are counted"
    );
    let s = stop(&mut gw, 30);
    assert_eq!(s["delivered"], 300);
    assert!(gw.log_text().contains("schema refresh failed"));
}

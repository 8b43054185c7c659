//! The spine against the real local Kafka: fan-in, DLQ, SIGTERM, broker down, stalled feed,
//! config errors. Run through `scripts/test`, which starts the broker.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;

fn config(brokers: &str, metrics_port: u16, dlq: &str, pipelines: &str) -> String {
    format!(
        "kafka:\n  brokers: ['{brokers}']\nmetrics:\n  listen: '127.0.0.1:{metrics_port}'\n  labels: {{env: test}}\ndlq: {{topic: '{dlq}'}}\nshutdown_timeout: 20s\npipelines:\n{pipelines}"
    )
}

/// (a) three synth feeds × 2,000 messages fanned in → exactly 6,000 records, no duplicates,
/// keys as templated, `@context` renamed.
#[test]
fn fan_in_three_feeds_exactly_once_with_keys_and_rename() {
    let topic = unique("fanin");
    let dlq = unique("fanin.dlq");
    let feeds: Vec<_> = (0..3)
        .map(|_| spawn_synth("trades", &["--rate", "0", "--count", "2000"]))
        .collect();
    let urls: Vec<String> = feeds.iter().map(|(_, u)| format!("'{u}'")).collect();
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        dir.path(),
        &config(
            &brokers(),
            mport,
            &dlq,
            &format!(
                "  - name: trades\n    source: {{websocket: {{urls: [{}]}}}}\n    transforms:\n      - rename: {{from: /tradeCredential/@context, to: /tradeCredential/context}}\n    topic: {topic}\n    key: '${{exchange}}|${{symbol}}'\n    headers: {{feed: '${{feed}}'}}\n",
                urls.join(", ")
            ),
        ),
    );
    let recs = consume(&brokers(), &topic, 6000, Duration::from_secs(90));
    let (set, dups) = seqs(&recs);
    assert_eq!(dups, 0, "duplicates in Kafka");
    assert_eq!(
        recs.len(),
        6000,
        "records in Kafka; log:\n{}",
        gw.log_text()
    );
    for (_, url) in &feeds {
        let port = url
            .trim_start_matches("ws://127.0.0.1:")
            .trim_end_matches("/ws");
        let source = format!("synth-{port}");
        let got: BTreeSet<u64> = set
            .iter()
            .filter(|(s, _)| *s == source)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(
            got,
            (1..=2000).collect::<BTreeSet<u64>>(),
            "sequence of {source}"
        );
    }
    for r in &recs {
        let v = r.json();
        assert_eq!(
            r.key_str(),
            format!(
                "{}|{}",
                v["exchange"].as_str().unwrap(),
                v["symbol"].as_str().unwrap()
            )
        );
        assert!(
            v["tradeCredential"].get("@context").is_none(),
            "@context left in {v}"
        );
        assert!(
            v["tradeCredential"]["context"].is_array(),
            "context missing in {v}"
        );
        assert_eq!(r.headers.get("feed").map(String::as_str), Some("trades"));
    }
    let (status, text) = http_get(&format!("127.0.0.1:{mport}"), "/metrics").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &text,
            "kafka_messages_published_total",
            &[&topic, "env=\"test\""]
        ),
        6000.0
    );
    assert_eq!(
        metric(
            &text,
            "kafka_producer_websocket_messages_received_total",
            &[]
        ),
        6000.0
    );
    assert_eq!(
        metric(
            &text,
            "kafka_producer_request_duration_seconds_count",
            &[&topic]
        ),
        6000.0
    );
    assert_eq!(
        metric(&text, "kafka_producer_websocket_connections_total", &[]),
        3.0
    );
    assert_eq!(
        http_get(&format!("127.0.0.1:{mport}"), "/healthz")
            .unwrap()
            .0,
        200
    );
    let s = stop(&mut gw, 30);
    assert_eq!(
        (s["accepted"], s["delivered"], s["undelivered"]),
        (6000, 6000, 0)
    );
}

/// (b) malformed JSON and a missing key field → DLQ records with their headers; the stream goes on.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_goes_to_the_dlq_and_the_stream_goes_on() {
    let topic = unique("dlqtest");
    let dlq = unique("dlqtest.dlq");
    let msgs = vec![
        r#"{"exchange":"kraken","symbol":"BTC-USD","seq":1}"#.to_string(),
        r#"{"exchange":"kraken","symbol":"#.to_string(),
        r#"{"exchange":"kraken","seq":3}"#.to_string(),
        r#"{"exchange":"coinbase","symbol":"ETH-USD","seq":4}"#.to_string(),
    ];
    let url = serve_messages(msgs.clone(), Duration::ZERO).await;
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &brokers(),
        mport,
        &dlq,
        &format!("  - name: market\n    source: {{websocket: {{urls: ['{url}']}}}}\n    topic: {topic}\n    key: '${{exchange}}|${{symbol}}'\n"),
    );
    let mut gw = spawn_run(dir.path(), &cfg);
    let b = brokers();
    let (t2, d2) = (topic.clone(), dlq.clone());
    let good = tokio::task::spawn_blocking(move || consume(&b, &t2, 2, Duration::from_secs(60)));
    let b = brokers();
    let bad = tokio::task::spawn_blocking(move || consume(&b, &d2, 2, Duration::from_secs(60)));
    let (good, bad) = (good.await.unwrap(), bad.await.unwrap());
    assert_eq!(good.len(), 2, "{}", gw.log_text());
    let seqs: Vec<u64> = good
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 4]);
    assert_eq!(bad.len(), 2, "{}", gw.log_text());
    let invalid = bad
        .iter()
        .find(|r| r.headers["error_type"] == "invalid_json")
        .expect("invalid_json record");
    assert_eq!(invalid.value, msgs[1].as_bytes());
    assert_eq!(invalid.headers["source_topic"], topic);
    assert!(
        invalid.headers["source"].contains(&url),
        "{:?}",
        invalid.headers
    );
    assert!(
        invalid.headers["error_message"].contains("JSON"),
        "{:?}",
        invalid.headers
    );
    assert!(invalid.headers["received_at"].ends_with('Z'));
    let missing = bad
        .iter()
        .find(|r| r.headers["error_type"] == "missing_field")
        .expect("missing_field record");
    assert_eq!(missing.value, msgs[2].as_bytes());
    assert!(
        missing.headers["error_message"].contains("symbol"),
        "{:?}",
        missing.headers
    );
    assert_eq!(missing.headers["source_topic"], topic);

    let text = http_get(&format!("127.0.0.1:{mport}"), "/metrics")
        .unwrap()
        .1;
    assert_eq!(
        metric(
            &text,
            "kafka_dlq_published_total",
            &["error_type=\"invalid_json\"", &dlq]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "kafka_dlq_published_total",
            &["error_type=\"missing_field\"", &topic]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "kgate_events_rejected_total",
            &["pipeline=\"market\""]
        ),
        2.0
    );
    let s = stop(&mut gw, 30);
    assert_eq!((s["delivered"], s["dead-lettered"]), (2, 2));
}

/// (c) SIGTERM mid-stream at full rate → every message the gateway received is in Kafka, once,
/// and (one feed, sent in order) they are exactly the first N of the feed.
#[test]
fn sigterm_mid_stream_loses_nothing_received() {
    let topic = unique("sigterm");
    let (_synth, url) = spawn_synth("ticker", &["--rate", "0"]);
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        dir.path(),
        &config(&brokers(), mport, &unique("sigterm.dlq"), &format!("  - name: ticks\n    source: {{websocket: {{urls: ['{url}']}}}}\n    topic: {topic}\n    key: '${{exchange}}|${{symbol}}'\n")),
    );
    // Let it run at full speed for a while, then stop it mid-stream.
    wait_until(
        Duration::from_secs(30),
        || {
            http_get(&format!("127.0.0.1:{mport}"), "/metrics")
                .map(|(_, t)| metric(&t, "kafka_messages_published_total", &[]) > 5000.0)
                .unwrap_or(false)
        },
        "records flowing",
    );
    std::thread::sleep(Duration::from_millis(500));
    let s = stop(&mut gw, 40);
    let accepted = s["accepted"];
    assert!(accepted > 5000);
    assert_eq!(s["delivered"], accepted, "{s:?}");
    assert_eq!(s["undelivered"], 0);
    let recs = consume(
        &brokers(),
        &topic,
        accepted as usize,
        Duration::from_secs(60),
    );
    let (set, dups) = seqs(&recs);
    assert_eq!(dups, 0);
    assert_eq!(recs.len() as u64, accepted);
    let got: Vec<u64> = set.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        got,
        (1..=accepted).collect::<Vec<_>>(),
        "a gap in the received prefix"
    );
}

/// (d) broker down at start → `check` fails clearly; `run` keeps retrying and flows once the
/// broker is up, losing nothing it accepted.
#[test]
fn broker_down_at_start_then_up_loses_nothing() {
    let kport = free_port();
    let cport = free_port();
    let state = tempfile::tempdir().unwrap();
    let envs = [
        ("KAFKA_PORT", kport.to_string()),
        ("KAFKA_CONTROLLER_PORT", cport.to_string()),
        (
            "KGATE_STATE_DIR",
            state.path().to_str().unwrap().to_string(),
        ),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    struct Down<'a>(&'a [(&'a str, &'a str)]);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            services(&["down", "kafka"], self.0);
        }
    }
    let _down = Down(&envs);
    let broker = format!("127.0.0.1:{kport}");
    let topic = unique("outage");
    // The feed starts after `check`, whose test connection would otherwise take messages.
    let synth_port = free_port();
    let url = format!("ws://127.0.0.1:{synth_port}/ws");
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&broker, mport, "events.v1.dlq", &format!("  - name: ticks\n    source: {{websocket: {{urls: ['{url}'], backoff_max: 1s}}}}\n    topic: {topic}\n    key: '${{exchange}}|${{symbol}}'\n"));
    let path = write_config(dir.path(), &cfg);

    let out = Command::new(kgate_bin())
        .args([
            "check",
            "--config",
            path.to_str().unwrap(),
            "--timeout",
            "2s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "check passed with the broker down:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("FAIL kafka {broker}: cannot reach Kafka")),
        "{stdout}"
    );
    assert!(stdout.contains("is the broker running"), "{stdout}");

    let listen = format!("127.0.0.1:{synth_port}");
    let _synth = spawn_kgate(&[
        "synth", "--listen", &listen, "--feed", "ticker", "--rate", "2000", "--count", "3000",
        "--id", "outage",
    ]);
    let mut gw = spawn_kgate(&["run", "--config", path.to_str().unwrap()]);
    // The gateway accepts while the broker is down (buffer of 10,000 > 3,000), then waits.
    wait_until(
        Duration::from_secs(20),
        || {
            http_get(&format!("127.0.0.1:{mport}"), "/metrics")
                .map(|(_, t)| {
                    metric(&t, "kafka_producer_websocket_messages_received_total", &[]) >= 1000.0
                })
                .unwrap_or(false)
        },
        "messages received while the broker is down",
    );
    assert_eq!(
        http_get(&format!("127.0.0.1:{mport}"), "/readyz")
            .unwrap()
            .0,
        503
    );
    let up = services(&["up", "kafka"], &envs);
    assert!(
        up.status.success(),
        "{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );

    let recs = consume(&broker, &topic, 3000, Duration::from_secs(120));
    let (set, dups) = seqs(&recs);
    assert_eq!(dups, 0, "duplicates after the outage");
    if recs.len() != 3000 {
        let metrics = http_get(&format!("127.0.0.1:{mport}"), "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        let missing: Vec<u64> = (1..=3000u64)
            .filter(|n| !set.iter().any(|(_, s)| s == n))
            .take(20)
            .collect();
        let dlq = consume(&broker, "events.v1.dlq", 1, Duration::from_secs(5));
        panic!(
            "{} of 3000 records in Kafka; first missing seqs {missing:?}; {} in the DLQ {:?}\nmetrics:\n{}\nlog:\n{}",
            recs.len(),
            dlq.len(),
            dlq.first().map(|r| &r.headers),
            metrics.lines().filter(|l| !l.starts_with('#') && !l.contains("_bucket")).collect::<Vec<_>>().join("\n"),
            gw.log_text()
        );
    }
    assert_eq!(
        set.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        (1..=3000).collect::<Vec<_>>()
    );
    wait_until(
        Duration::from_secs(20),
        || http_get(&format!("127.0.0.1:{mport}"), "/readyz").map(|r| r.0) == Some(200),
        "/readyz to turn ready",
    );
    let s = stop(&mut gw, 30);
    assert_eq!((s["accepted"], s["delivered"]), (3000, 3000));
}

/// (e) a feed that stalls past `timeout` → reconnect, counted; the messages before the stall arrive.
#[test]
fn stalled_feed_reconnects_and_is_counted() {
    let topic = unique("stall");
    let (_synth, url) = spawn_synth("iot", &["--rate", "0", "--stall-after", "5"]);
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        dir.path(),
        &config(&brokers(), mport, &unique("stall.dlq"), &format!("  - name: iot\n    source: {{websocket: {{urls: ['{url}'], timeout: 1s, ping_interval: 300ms, backoff_initial: 100ms, backoff_max: 200ms}}}}\n    topic: {topic}\n    key: '${{device_id}}'\n")),
    );
    let addr = format!("127.0.0.1:{mport}");
    wait_until(
        Duration::from_secs(30),
        || {
            http_get(&addr, "/metrics")
                .map(|(_, t)| {
                    metric(
                        &t,
                        "kafka_producer_websocket_messages_timeout_total",
                        &[&url],
                    ) >= 2.0
                })
                .unwrap_or(false)
        },
        "two read timeouts",
    );
    let text = http_get(&addr, "/metrics").unwrap().1;
    assert!(
        metric(&text, "kafka_producer_websocket_connections_total", &[&url]) >= 2.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "kafka_producer_websocket_disconnections_total",
            &[&url]
        ) >= 2.0
    );
    let s = stop(&mut gw, 30);
    let recs = consume(
        &brokers(),
        &topic,
        s["accepted"] as usize,
        Duration::from_secs(30),
    );
    assert!(recs.len() >= 10);
    assert_eq!(recs.len() as u64, s["delivered"]);
    let (set, dups) = seqs(&recs);
    assert_eq!(dups, 0);
    assert_eq!(
        set.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        (1..=recs.len() as u64).collect::<Vec<_>>()
    );
}

/// (f) config errors name their path, all at once, in `check` and in `run`.
#[test]
fn config_errors_name_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "kafka:\n  brokers: ['127.0.0.1:9092']\n  producr: {}\npipelines:\n  - name: x\n    source: {websocket: {urls: ['http://nope'], timeout: fast}}\n    topic: 'has space'\n",
    );
    let out = Command::new(kgate_bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("kafka.producr: unknown key"), "{stdout}");
    assert!(
        stdout.contains("pipelines[0].source.websocket.timeout"),
        "{stdout}"
    );
    std::fs::write(&path, "pipelines:\n  - name: x\n    source: {websocket: {urls: ['http://nope']}}\n    topic: 'has space'\n    key: '${unclosed'\n").unwrap();
    let out = Command::new(kgate_bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("has 3 errors"), "{stderr}");
    assert!(
        stderr.contains(
            "pipelines[0].source.websocket.urls[0]: `http://nope` is not a WebSocket URL"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("pipelines[0].topic: `has space` is not a valid topic name"),
        "{stderr}"
    );
    assert!(stderr.contains("pipelines[0].key: unclosed"), "{stderr}");
}

/// A record Kafka refuses for good (larger than the topic's `max.message.bytes`) is neither
/// retried forever nor dropped: it goes to the DLQ as `too_large`, and the stream goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_kafka_refuses_goes_to_the_dlq() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let topic = unique("refused");
    let dlq = unique("refused.dlq");
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let t = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "600");
    let res = admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .unwrap();
    assert!(res[0].is_ok(), "{res:?}");

    // Random text, so that zstd cannot shrink it under the limit.
    let pad: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..4000)
            .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
            .collect()
    };
    let big = format!(r#"{{"id":"big","pad":"{pad}"}}"#);
    // A first record warms the producer up (broker connection, topic metadata): records queued
    // before that would share one batch, and the broker refuses a batch as a whole. Then the
    // big and the small one are sent apart, so that they do not share a batch either.
    let msgs = vec![
        r#"{"id":"warm"}"#.to_string(),
        big.clone(),
        r#"{"id":"small"}"#.to_string(),
    ];
    let url = serve_messages(msgs, Duration::from_millis(2000)).await;
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        dir.path(),
        &config(&brokers(), mport, &dlq, &format!("  - name: sized\n    source: {{websocket: {{urls: ['{url}']}}}}\n    topic: {topic}\n    key: '${{id}}'\n")),
    );
    let b = brokers();
    let (t2, d2) = (topic.clone(), dlq.clone());
    let good = tokio::task::spawn_blocking(move || consume(&b, &t2, 2, Duration::from_secs(60)));
    let b = brokers();
    let bad = tokio::task::spawn_blocking(move || consume(&b, &d2, 1, Duration::from_secs(60)));
    let (good, bad) = (good.await.unwrap(), bad.await.unwrap());
    assert_eq!(good.len(), 2, "{}", gw.log_text());
    assert_eq!(good[0].key_str(), "warm");
    assert_eq!(good[1].key_str(), "small");
    assert_eq!(bad.len(), 1, "{}", gw.log_text());
    assert_eq!(
        bad[0].value,
        big.as_bytes(),
        "the DLQ keeps the original bytes"
    );
    assert_eq!(bad[0].headers["error_type"], "too_large");
    assert_eq!(bad[0].headers["original_size"], big.len().to_string());
    assert_eq!(bad[0].headers["source_topic"], topic);
    assert_eq!(bad[0].key_str(), "big");
    let text = http_get(&format!("127.0.0.1:{mport}"), "/metrics")
        .unwrap()
        .1;
    assert_eq!(
        metric(&text, "kafka_producer_request_failures_total", &[&topic]),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "kafka_dlq_published_total",
            &["error_type=\"too_large\""]
        ),
        1.0
    );
    let s = stop(&mut gw, 30);
    assert_eq!((s["delivered"], s["dead-lettered"], s["failed"]), (2, 1, 0));
}

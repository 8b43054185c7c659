//! The MQTT source against a real Mosquitto and the real local Kafka: every QoS 1 message lands,
//! a SIGKILLed gateway loses nothing (the broker resends what was not acked), malformed input
//! goes to the DLQ and is acked, and a restarted broker gets the subscriptions again.
//! The broker is `KGATE_MQTT_URL` (default `mqtt://127.0.0.1:1883`, started by `scripts/test`).

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

fn mqtt_url() -> String {
    std::env::var("KGATE_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

fn host_port(url: &str) -> (String, u16) {
    let a = kgate::source::mqtt::parse_url(url).expect("KGATE_MQTT_URL is an mqtt:// URL");
    (a.host, a.port)
}

fn config(metrics_port: u16, dlq: &str, pipelines: &str) -> String {
    format!(
        "kafka:\n  brokers: ['{}']\nmetrics:\n  listen: '127.0.0.1:{metrics_port}'\ndlq: {{topic: '{dlq}'}}\nshutdown_timeout: 20s\npipelines:\n{pipelines}",
        brokers()
    )
}

/// The IoT pipeline of examples/iot.yaml on a test's own topic root.
fn iot_pipeline(url: &str, client_id: &str, root: &str, topic: &str) -> String {
    format!(
        "  - name: iot\n    source:\n      mqtt:\n        url: '{url}'\n        client_id: '{client_id}'\n        subscriptions: [{{topic: '{root}/devices/+/telemetry', qos: 1}}]\n        backoff_initial: 100ms\n        backoff_max: 1s\n    transforms:\n      - set: {{path: /device_id, value: '${{@topic.2}}'}}\n    topic: {topic}\n    key: '${{@topic.2}}'\n"
    )
}

/// One message to publish: topic, payload, user properties.
type Msg = (String, Vec<u8>, Vec<(String, String)>);

/// Publishes at QoS 1 from a client with its own persistent session, `per_ms` messages per
/// millisecond at most (0 = as fast as the broker acks); returns once the broker acked all.
fn publish(url: &str, client_id: &str, msgs: Vec<Msg>, per_ms: usize) -> usize {
    let (host, port) = host_port(url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut o = MqttOptions::new(client_id, host, port);
        o.set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 1000);
        let n = msgs.len();
        let sender = tokio::spawn(async move {
            for (i, (topic, payload, props)) in msgs.into_iter().enumerate() {
                let p = PublishProperties {
                    user_properties: props,
                    ..Default::default()
                };
                client
                    .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, p)
                    .await
                    .unwrap();
                if per_ms > 0 && i % per_ms == per_ms - 1 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            client
        });
        let mut acked = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked < n && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("publisher: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => {}
            }
        }
        let client = sender.await.unwrap();
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(500), el.poll()).await;
        acked
    })
}

fn telemetry(root: &str, range: std::ops::RangeInclusive<u64>) -> Vec<Msg> {
    range
        .map(|seq| {
            let device = format!("d{}", seq % 7);
            (
                format!("{root}/devices/{device}/telemetry"),
                format!(r#"{{"source":"pub","seq":{seq},"temp":21.5,"device":"{device}"}}"#)
                    .into_bytes(),
                Vec::new(),
            )
        })
        .collect()
}

fn wait_subscribed(gw: &Proc, times: usize) {
    wait_until(
        Duration::from_secs(20),
        || gw.log_text().matches("subscribed").count() >= times,
        "kgate to subscribe",
    );
}

/// Every record of `recs` has seq in 1..=n exactly once (after duplicates are set aside),
/// its key and `device_id` taken from the MQTT topic.
fn check_all_landed(recs: &[Rec], n: u64) -> usize {
    let (set, dups) = seqs(recs);
    let got: Vec<u64> = set.iter().map(|(_, s)| *s).collect();
    let missing: Vec<u64> = (1..=n)
        .filter(|s| !set.contains(&("pub".into(), *s)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {n} missing (first: {:?}); got {} records",
        missing.len(),
        &missing[..missing.len().min(10)],
        recs.len()
    );
    assert_eq!(got.len() as u64, n, "unexpected sequence numbers");
    for r in recs {
        let v = r.json();
        let device = format!("d{}", v["seq"].as_u64().unwrap() % 7);
        assert_eq!(r.key_str(), device, "key of {v}");
        assert_eq!(v["device_id"], device, "device_id of {v}");
    }
    dups
}

/// How many records a topic holds (the sum of its partitions' high watermarks).
fn records_in(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return 0;
    };
    let Some(t) = md.topics().first() else {
        return 0;
    };
    t.partitions()
        .iter()
        .filter_map(|p| {
            c.fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .ok()
        })
        .map(|(lo, hi)| hi - lo)
        .sum()
}

/// 5,000 QoS 1 messages → exactly 5,000 records, keyed by the device id from the topic.
#[test]
fn qos1_messages_land_exactly_once_keyed_by_device() {
    let url = mqtt_url();
    let root = unique("t").replace('.', "-");
    let topic = unique("mqtt.telemetry");
    let client_id = unique("kgate-test");
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        dir.path(),
        &config(
            mport,
            &unique("mqtt.dlq"),
            &iot_pipeline(&url, &client_id, &root, &topic),
        ),
    );
    wait_subscribed(&gw, 1);
    let n = 5000;
    assert_eq!(
        publish(&url, &unique("pub"), telemetry(&root, 1..=n), 0),
        n as usize
    );
    let recs = consume(&brokers(), &topic, n as usize, Duration::from_secs(60));
    let dups = check_all_landed(&recs, n);
    assert_eq!(dups, 0, "duplicates without any failure");
    assert_eq!(recs.len(), n as usize);
    let addr = format!("127.0.0.1:{mport}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (_, text) = http_get(&addr, "/metrics").unwrap();
        if metric(&text, "kgate_mqtt_acks_total", &[]) == n as f64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "not every message acked:\n{}\nlog:\n{}",
            text.lines()
                .filter(|l| l.starts_with("kgate_mqtt"))
                .collect::<Vec<_>>()
                .join("\n"),
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        metric(
            &text,
            "kgate_mqtt_messages_received_total",
            &["/devices/+/telemetry"]
        ),
        n as f64
    );
    assert_eq!(metric(&text, "kgate_mqtt_connections_total", &[]), 1.0);
    assert_eq!(metric(&text, "kgate_mqtt_inflight", &[]), 0.0);
    let s = stop(&mut gw, 30);
    assert_eq!((s["accepted"], s["delivered"]), (n, n));
}

/// SIGKILL mid-stream, restart with the same client id: the broker resends what was not
/// acked, so every published message is in Kafka; duplicates are counted (at-least-once).
#[test]
fn sigkill_mid_stream_then_restart_loses_nothing() {
    let url = mqtt_url();
    let root = unique("t").replace('.', "-");
    let topic = unique("mqtt.kill");
    let client_id = unique("kgate-test");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        free_port(),
        &unique("mqtt.dlq"),
        &iot_pipeline(&url, &client_id, &root, &topic),
    );
    let mut gw = spawn_run(dir.path(), &cfg);
    wait_subscribed(&gw, 1);
    let n: u64 = 20_000;
    let publisher = {
        let (url, root) = (url.clone(), root.clone());
        std::thread::spawn(move || publish(&url, &unique("pub"), telemetry(&root, 1..=n), 5))
    };
    // Kill once some records landed while the publisher is still going.
    wait_until(
        Duration::from_secs(30),
        || records_in(&topic) >= 1000,
        "1,000 records before the kill",
    );
    let landed = records_in(&topic);
    gw.signal("-KILL");
    gw.wait(Duration::from_secs(10));
    assert!(
        !publisher.is_finished(),
        "the publisher finished before the kill; publish more or slower"
    );
    let published = publisher.join().unwrap();
    assert_eq!(published, n as usize, "the broker acked every publish");
    let dir2 = tempfile::tempdir().unwrap();
    let mut gw2 = spawn_run(dir2.path(), &cfg);
    let recs = consume(&brokers(), &topic, n as usize, Duration::from_secs(90));
    let dups = check_all_landed(&recs, n);
    eprintln!(
        "sigkill: {n} published, {} records in Kafka, {dups} duplicates (at-least-once), {landed}+ landed before the kill",
        recs.len()
    );
    assert!(
        gw2.log_text().contains("session_present=true"),
        "the restarted gateway did not resume its session; log:\n{}",
        gw2.log_text()
    );
    stop(&mut gw2, 30);
}

/// Malformed JSON goes to the DLQ with its bytes and headers and is acked (a restart gets
/// nothing again); the messages after it land.
#[test]
fn malformed_json_goes_to_the_dlq_and_is_acked() {
    let url = mqtt_url();
    let root = unique("t").replace('.', "-");
    let topic = unique("mqtt.bad");
    let dlq = unique("mqtt.bad.dlq");
    let client_id = unique("kgate-test");
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(mport, &dlq, &iot_pipeline(&url, &client_id, &root, &topic));
    let mut gw = spawn_run(dir.path(), &cfg);
    wait_subscribed(&gw, 1);
    let t = |d: &str| format!("{root}/devices/{d}/telemetry");
    let props = vec![("trace-id".to_string(), "abc-123".to_string())];
    let msgs: Vec<Msg> = vec![
        (t("d1"), br#"{"source":"pub","seq":1}"#.to_vec(), vec![]),
        (t("d9"), b"{not json\xff".to_vec(), props.clone()),
        (t("d2"), br#"{"source":"pub","seq":2}"#.to_vec(), props),
    ];
    assert_eq!(publish(&url, &unique("pub"), msgs, 0), 3);
    let dead = consume(&brokers(), &dlq, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "DLQ records; log:\n{}", gw.log_text());
    let d = &dead[0];
    assert_eq!(d.value, b"{not json\xff");
    assert_eq!(d.headers["error_type"], "invalid_json");
    assert_eq!(d.headers["source"], format!("iot:{}", t("d9")));
    assert_eq!(d.headers["source_topic"], topic);
    assert_eq!(d.headers["trace-id"], "abc-123", "user property kept");
    let recs = consume(&brokers(), &topic, 2, Duration::from_secs(30));
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].key_str(), "d2");
    assert_eq!(recs[1].headers["trace-id"], "abc-123");
    let addr = format!("127.0.0.1:{mport}");
    wait_until(
        Duration::from_secs(10),
        || {
            metric(
                &http_get(&addr, "/metrics").unwrap().1,
                "kgate_mqtt_acks_total",
                &[],
            ) == 3.0
        },
        "all three acked",
    );
    let s = stop(&mut gw, 30);
    assert_eq!((s["delivered"], s["dead-lettered"]), (2, 1));
    // Acked means the broker has nothing left for this session.
    let dir2 = tempfile::tempdir().unwrap();
    let mut gw2 = spawn_run(dir2.path(), &cfg);
    wait_until(
        Duration::from_secs(20),
        || gw2.log_text().contains("session_present=true"),
        "the session to resume",
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = stop(&mut gw2, 30);
    assert_eq!(s["accepted"], 0, "the broker resent acked messages");
    assert_eq!(
        consume(&brokers(), &dlq, 1, Duration::from_secs(5)).len(),
        1
    );
}

/// A Mosquitto of the test's own on a free port, without persistence, so that a restart
/// forgets every session.
struct Mosquitto {
    child: Child,
    port: u16,
    conf: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        // `user root` keeps a root test run from dropping privileges away from its temp dir.
        let user = if std::env::var("USER").as_deref() == Ok("root") || is_root() {
            "user root\n"
        } else {
            ""
        };
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 1000\nmax_queued_messages 100000\n{user}"),
        )
        .unwrap();
        let mut m = Mosquitto {
            child: Self::spawn(&conf),
            port,
            conf,
            _dir: dir,
        };
        m.wait_up();
        m
    }
    fn spawn(conf: &std::path::Path) -> Child {
        Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is not installed; `scripts/services up mqtt` installs it")
    }
    fn wait_up(&mut self) {
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until(
            Duration::from_secs(10),
            || TcpStream::connect(&addr).is_ok(),
            "mosquitto to listen",
        );
    }
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.conf);
        self.wait_up();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A broker restart that forgets the session: kgate reconnects with backoff and subscribes
/// again (rumqttc does not), so what is published afterwards lands too.
#[test]
fn resubscribes_after_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let root = unique("t").replace('.', "-");
    let topic = unique("mqtt.restart");
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        dir.path(),
        &config(
            mport,
            &unique("mqtt.dlq"),
            &iot_pipeline(&url, &unique("kgate-test"), &root, &topic),
        ),
    );
    wait_subscribed(&gw, 1);
    assert_eq!(
        publish(&url, &unique("pub"), telemetry(&root, 1..=100), 0),
        100
    );
    assert_eq!(
        consume(&brokers(), &topic, 100, Duration::from_secs(30)).len(),
        100
    );
    broker.restart();
    wait_subscribed(&gw, 2);
    assert_eq!(
        publish(&url, &unique("pub"), telemetry(&root, 101..=200), 0),
        100
    );
    let recs = consume(&brokers(), &topic, 200, Duration::from_secs(30));
    assert_eq!(check_all_landed(&recs, 200), 0);
    let (_, text) = http_get(&format!("127.0.0.1:{mport}"), "/metrics").unwrap();
    assert_eq!(metric(&text, "kgate_mqtt_connections_total", &[]), 2.0);
    assert!(metric(&text, "kgate_mqtt_disconnections_total", &[]) >= 1.0);
    let mut by_device: BTreeMap<String, usize> = BTreeMap::new();
    for r in &recs {
        *by_device.entry(r.key_str()).or_default() += 1;
    }
    assert_eq!(by_device.len(), 7, "keys {by_device:?}");
    stop(&mut gw, 30);
}

/// A 1.5 MB message (within `max_packet_size`, over the topic's 1 MiB `max.message.bytes`)
/// followed by a good one: the big one goes to the DLQ as `too_large` (its first 64 KiB, its
/// size and sha256), the good one lands exactly once, both are acked, and kgate stays on its
/// one connection (no reconnect loop for a redelivery that would fail the same way).
#[test]
fn a_message_too_large_for_kafka_goes_to_the_dlq_and_is_acked() {
    let url = mqtt_url();
    let root = unique("t").replace('.', "-");
    let topic = unique("mqtt.big");
    let dlq = unique("mqtt.big.dlq");
    let client_id = unique("kgate-test");
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = format!(
        "  - name: iot\n    source:\n      mqtt:\n        url: '{url}'\n        client_id: '{client_id}'\n        subscriptions: [{{topic: '{root}/devices/+/telemetry', qos: 1}}]\n        backoff_initial: 100ms\n        backoff_max: 1s\n        max_packet_size: 4MiB\n    topic: {topic}\n    key: '${{@topic.2}}'\n"
    );
    let cfg = config(mport, &dlq, &pipeline);
    let mut gw = spawn_run(dir.path(), &cfg);
    wait_subscribed(&gw, 1);
    let t = |d: &str| format!("{root}/devices/{d}/telemetry");
    let big = format!(
        r#"{{"source":"pub","seq":1,"pad":"{}"}}"#,
        random_text(1_500_000)
    );
    let props = vec![("trace-id".to_string(), "big-1".to_string())];
    let msgs: Vec<Msg> = vec![
        (t("d1"), big.clone().into_bytes(), props),
        (t("d2"), br#"{"source":"pub","seq":2}"#.to_vec(), vec![]),
    ];
    assert_eq!(publish(&url, &unique("pub"), msgs, 0), 2);

    let dead = consume(&brokers(), &dlq, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "DLQ records; log:\n{}", gw.log_text());
    let d = &dead[0];
    assert_eq!(d.headers["error_type"], "too_large");
    assert_eq!(d.headers["original_size"], big.len().to_string());
    assert_eq!(d.headers["original_sha256"], sha256_hex(big.as_bytes()));
    assert_eq!(d.value, big.as_bytes()[..64 * 1024]);
    assert_eq!(d.headers["source"], format!("iot:{}", t("d1")));
    assert_eq!(d.headers["source_topic"], topic);
    assert_eq!(d.headers["trace-id"], "big-1", "user property kept");
    assert_eq!(d.key_str(), "d1");
    assert!(
        d.headers["error_message"].contains("too large"),
        "{}",
        d.headers["error_message"]
    );

    let addr = format!("127.0.0.1:{mport}");
    wait_until(
        Duration::from_secs(15),
        || {
            metric(
                &http_get(&addr, "/metrics").unwrap().1,
                "kgate_mqtt_acks_total",
                &[],
            ) == 2.0
        },
        "both messages acked",
    );
    // Time for a reconnect loop or a redelivery to show, were there one.
    std::thread::sleep(Duration::from_secs(3));
    let recs = consume(&brokers(), &topic, 1, Duration::from_secs(20));
    assert_eq!(recs.len(), 1, "the good message exactly once: {recs:?}");
    assert_eq!(recs[0].json()["seq"], 2);
    let text = http_get(&addr, "/metrics").unwrap().1;
    assert_eq!(metric(&text, "kgate_mqtt_connections_total", &[]), 1.0);
    assert_eq!(metric(&text, "kgate_mqtt_disconnections_total", &[]), 0.0);
    assert_eq!(metric(&text, "kgate_mqtt_unacked_total", &[]), 0.0);
    assert_eq!(metric(&text, "kgate_mqtt_acks_total", &[]), 2.0);
    assert_eq!(
        metric(
            &text,
            "kafka_dlq_published_total",
            &["error_type=\"too_large\""]
        ),
        1.0
    );
    let s = stop(&mut gw, 30);
    assert_eq!(
        (
            s["accepted"],
            s["delivered"],
            s["dead-lettered"],
            s["failed"]
        ),
        (2, 1, 1, 0)
    );
    // Both acked: the broker has nothing left for this session.
    let dir2 = tempfile::tempdir().unwrap();
    let mut gw2 = spawn_run(dir2.path(), &cfg);
    wait_until(
        Duration::from_secs(20),
        || gw2.log_text().contains("session_present=true"),
        "the session to resume",
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = stop(&mut gw2, 30);
    assert_eq!(s["accepted"], 0, "the broker resent acked messages");
}

//! WRP QoS classes and topic maps, end to end: real devices over WebSocket, the real local
//! Kafka. A Kafka outage is made at the topic level, never by stopping the shared broker: the
//! pipeline's topic does not exist yet and the gateway's producer may not create it
//! (`allow.auto.create.topics: false`), so the producer holds and retries every record for it,
//! as it would through a broker outage, until the test creates the topic. Run through
//! `scripts/test device_qos`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Creates `name` (one partition): for the routes, and to end an outage (what the producer
/// held for it is then delivered).
async fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let t = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    for r in admin
        .create_topics(&[t], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// The producer settings of an outage of a topic that does not exist yet: not created by the
/// producer, its records held (not failed) while it is missing, its metadata asked again each
/// second.
const OUTAGE: &str = "options: {allow.auto.create.topics: 'false', topic.metadata.propagation.max.ms: '600000', topic.metadata.refresh.interval.ms: '1000'}";

/// A `kgate run` with one device-server pipeline (WRP on, device id from `?id=`).
struct Gw {
    proc: Proc,
    port: u16,
    mport: u16,
    _dir: tempfile::TempDir,
}

/// Starts it: `producer` is the `kafka.producer` mapping, `rest` the pipeline's other keys
/// (YAML at pipeline indentation); waits until the device server listens.
fn gateway(producer: &str, rest: &str) -> Gw {
    let (port, mport) = (free_port(), free_port());
    let dlq = unique("qos.dlq");
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "kafka:\n  brokers: ['{}']\n  producer: {{{producer}}}\nmetrics:\n  listen: '127.0.0.1:{mport}'\ndlq: {{topic: '{dlq}'}}\nshutdown_timeout: 30s\npipelines:\n  - name: qos\n    source: {{device_websocket: {{listen: '127.0.0.1:{port}', path: /ws, device_id: {{query: id}}, wrp: true, lifecycle_events: false}}}}\n    key: '${{@device_id}}'\n    format: raw\n{rest}",
        brokers()
    );
    let mut proc = spawn_run(dir.path(), &cfg);
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        if let Some(s) = proc.child.try_wait().unwrap() {
            panic!("kgate exited {s}; log:\n{}", proc.log_text());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "device server did not listen; log:\n{}",
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Gw {
        proc,
        port,
        mport,
        _dir: dir,
    }
}

impl Gw {
    fn metrics(&self) -> String {
        http_get(&format!("127.0.0.1:{}", self.mport), "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// The sum of the series `name` whose labels contain each of `labels` (a series without
    /// labels too, unlike `common::metric`).
    fn metric(&self, name: &str, labels: &[&str]) -> u64 {
        self.metrics()
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter(|l| labels.iter().all(|lab| l.contains(lab)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Waits (60 s at most) until `name{labels}` is `want`.
    async fn wait_metric(&self, name: &str, labels: &[&str], want: u64) {
        for _ in 0..600 {
            if self.metric(name, labels) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let series: Vec<String> = self
            .metrics()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.ends_with(" 0") && !l.contains("_bucket"))
            .map(str::to_string)
            .collect();
        panic!(
            "{name}{labels:?} never reached {want} (now {}); metrics:\n{}\nlog:\n{}",
            self.metric(name, labels),
            series.join("\n"),
            self.proc.log_text()
        );
    }

    async fn device(&self, id: &str) -> Ws {
        let url = format!("ws://127.0.0.1:{}/ws?id={id}", self.port);
        tokio_tungstenite::connect_async(url).await.unwrap().0
    }
}

/// A WRP event as a device sends it (the spec's field names), built apart from kgate's decoder.
#[derive(Serialize)]
struct TestWrp {
    msg_type: i64,
    source: String,
    dest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    qos: Option<i64>,
    content_type: String,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    metadata: HashMap<String, String>,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

/// A WRP `SimpleEvent` from `device` of `event_type`, with the QoS level and a payload naming
/// the device and its sequence number.
fn event(device: &str, event_type: &str, qos: Option<i64>, seq: u64) -> Message {
    let m = TestWrp {
        msg_type: 4,
        source: device.into(),
        dest: format!("event:{event_type}/{device}/x"),
        qos,
        content_type: "application/json".into(),
        metadata: HashMap::new(),
        payload: serde_json::json!({"source": device, "seq": seq})
            .to_string()
            .into_bytes(),
    };
    Message::binary(rmp_serde::to_vec_named(&m).unwrap())
}

async fn send_all(ws: &mut Ws, device: &str, qos: i64, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        ws.send(event(device, "telemetry", Some(qos), seq))
            .await
            .unwrap();
    }
}

async fn consume_async(topic: &str, want: usize, secs: u64) -> Vec<Rec> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        consume(&brokers(), &topic, want, Duration::from_secs(secs))
    })
    .await
    .unwrap()
}

/// Each device's sequence numbers in the order Kafka holds them.
fn by_device(recs: &[Rec]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in recs {
        let v = r.json();
        out.entry(v["source"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(v["seq"].as_u64().unwrap_or(0));
    }
    out
}

const FRAMES: &str = "kgate_device_frames_total";
const INFLIGHT: &str = "kgate_producer_inflight_records";
const EVENTS: &str = "kgate_qos_events_total";
const DROPPED: &str = "kgate_qos_dropped_total";

/// During an outage of its topic, a `high` device's next frame is not taken until Kafka
/// acknowledged its last one, while a `medium` device's frames are all taken and wait in the
/// buffer; once the topic takes writes again every frame of both is in Kafka, once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn high_waits_for_kafka_per_frame_and_medium_loses_nothing_through_an_outage() {
    let topic = unique("qos.outage");
    let gw = gateway(
        &format!("max_buffered_records: 1000, {OUTAGE}"),
        &format!("    topic: {topic}\n    qos: '${{@wrp.qos:-50}}'\n"),
    );
    let mut high = gw.device("hi-1").await;
    send_all(&mut high, "hi-1", 90, 1..=3).await;
    // The high device's first frame is taken, and held: Kafka has not acknowledged it.
    gw.wait_metric(EVENTS, &["class=\"high\""], 1).await;
    let mut medium = gw.device("med-1").await;
    send_all(&mut medium, "med-1", 50, 1..=3).await;
    // The medium device's three frames, sent after the high device's three, are all taken...
    gw.wait_metric(EVENTS, &["class=\"medium\""], 3).await;
    gw.wait_metric(INFLIGHT, &[], 4).await;
    // ...and still only one of the high device's: 4 frames read of the 6 sent.
    assert_eq!(gw.metric(FRAMES, &[]), 4);
    assert_eq!(gw.metric(EVENTS, &["class=\"high\""]), 1);

    create_topic(&topic).await;
    gw.wait_metric(EVENTS, &["class=\"high\""], 3).await;
    gw.wait_metric(INFLIGHT, &[], 0).await;
    let recs = consume_async(&topic, 6, 60).await;
    let got = by_device(&recs);
    assert_eq!(recs.len(), 6, "{got:?}");
    assert_eq!(got["hi-1"], [1, 2, 3]);
    assert_eq!(got["med-1"], [1, 2, 3]);
    assert_eq!(gw.metric(DROPPED, &[]), 0);
    for r in &recs {
        assert!(r.headers.contains_key("wrp-qos"), "{:?}", r.headers);
    }
    let _ = high.close(None).await;
    let _ = medium.close(None).await;
    let mut gw = gw;
    stop(&mut gw.proc, 60);
}

/// With the buffer full (2 records held by an outage), a `low` device's frames are dropped at
/// once and counted, and it keeps being read; a `medium` device's frames wait and are all
/// delivered once the topic takes writes. Sent = delivered + dropped, for each class.
#[tokio::test(flavor = "multi_thread")]
async fn low_drops_and_counts_on_a_full_buffer_and_medium_waits() {
    let topic = unique("qos.full");
    let gw = gateway(
        &format!("max_buffered_records: 2, {OUTAGE}"),
        &format!("    topic: {topic}\n    qos: '${{@wrp.qos}}'\n"),
    );
    let mut medium = gw.device("med-2").await;
    send_all(&mut medium, "med-2", 30, 1..=2).await;
    gw.wait_metric(INFLIGHT, &[], 2).await;
    // The buffer is full: every low frame is read and dropped, none waits.
    let mut low = gw.device("low-2").await;
    send_all(&mut low, "low-2", 10, 1..=10).await;
    gw.wait_metric(DROPPED, &["class=\"low\""], 10).await;
    gw.wait_metric(FRAMES, &[], 12).await;
    // Medium frames wait for room instead: the third is taken and waits, nothing is dropped.
    send_all(&mut medium, "med-2", 30, 3..=5).await;
    gw.wait_metric(EVENTS, &["class=\"medium\""], 3).await;
    // Two in the buffer and the third waiting for room; its device's next frames not read.
    gw.wait_metric(INFLIGHT, &[], 3).await;
    // 2 + 10 + 1 read; the medium device's 4th and 5th wait in its socket.
    assert_eq!(gw.metric(FRAMES, &[]), 13);
    assert_eq!(gw.metric(DROPPED, &["class=\"medium\""]), 0);

    create_topic(&topic).await;
    gw.wait_metric(EVENTS, &["class=\"medium\""], 5).await;
    gw.wait_metric(INFLIGHT, &[], 0).await;
    // With room (one at a time: the buffer holds 2), low frames go through.
    for seq in 11..=15 {
        send_all(&mut low, "low-2", 10, seq..=seq).await;
        gw.wait_metric(EVENTS, &["class=\"low\""], seq).await;
        gw.wait_metric(INFLIGHT, &[], 0).await;
    }
    let recs = consume_async(&topic, 10, 60).await;
    let got = by_device(&recs);
    assert_eq!(recs.len(), 10, "{got:?}");
    assert_eq!(got["med-2"], [1, 2, 3, 4, 5], "medium: 5 sent, 5 delivered");
    assert_eq!(got["low-2"], [11, 12, 13, 14, 15]);
    // low: 15 sent = 5 delivered + 10 dropped.
    assert_eq!(gw.metric(DROPPED, &["class=\"low\""]), 10);
    assert_eq!(
        gw.metric(
            "kafka_producer_queue_drops_total",
            &[&format!("topic=\"{topic}\"")]
        ),
        10
    );
    let _ = low.close(None).await;
    let _ = medium.close(None).await;
    let mut gw = gw;
    stop(&mut gw.proc, 60);
}

/// FNV-1a 64 (its published definition), to predict the `device_id` shard independently.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, c| {
        (h ^ u64::from(*c)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Events of several types go to their routes' topics, the first match winning; the catch-all
/// shards by device id: each device's events all in one topic (the one its id hashes to), in
/// order. Every record counted.
#[tokio::test(flavor = "multi_thread")]
async fn routes_send_each_event_type_to_its_topic_and_shard_by_device() {
    const DEVICES: usize = 6;
    const TELEMETRY: u64 = 20;
    let p = unique("qos.route");
    let (status, online, shards) = (
        format!("{p}.status"),
        format!("{p}.online"),
        [0, 1, 2].map(|i| format!("{p}.s{i}")),
    );
    for t in [&status, &online].into_iter().chain(shards.iter()) {
        create_topic(t).await;
    }
    let gw = gateway(
        "max_buffered_records: 1000",
        &format!(
            "    topics:\n      - {{match: online, topic: {online}}}\n      - {{match: 'device-status*', topic: {status}}}\n      - {{match: '*', topics: [{}, {}, {}], shard: device_id}}\n",
            shards[0], shards[1], shards[2]
        ),
    );
    let mut tasks = Vec::new();
    for d in 0..DEVICES {
        let id = format!("mac:0000000000{d:02}");
        let mut ws = gw.device(&id).await;
        tasks.push(tokio::spawn(async move {
            ws.send(event(&id, "online", None, 0)).await.unwrap();
            for seq in 1..=TELEMETRY {
                let ty = if seq % 5 == 0 {
                    "device-status"
                } else {
                    "telemetry"
                };
                ws.send(event(&id, ty, None, seq)).await.unwrap();
                if seq == 10 {
                    // Also a type no earlier route matches but whose prefix looks alike.
                    ws.send(event(&id, "onlineX", None, 100)).await.unwrap();
                }
            }
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every frame read (online, 20, onlineX per device) and acknowledged.
    gw.wait_metric(FRAMES, &[], (DEVICES * 22) as u64).await;
    gw.wait_metric(INFLIGHT, &[], 0).await;
    let per_device_status = TELEMETRY / 5;
    let per_device_sharded = TELEMETRY - per_device_status + 1;
    let on = consume_async(&online, DEVICES, 60).await;
    assert_eq!(on.len(), DEVICES);
    let st = consume_async(&status, DEVICES * per_device_status as usize, 60).await;
    assert_eq!(st.len(), DEVICES * per_device_status as usize);
    for (dev, seqs) in by_device(&st) {
        assert_eq!(seqs, [5, 10, 15, 20], "{dev}");
    }
    let mut sharded: BTreeMap<String, (usize, Vec<u64>)> = BTreeMap::new();
    let mut total = 0;
    for (i, t) in shards.iter().enumerate() {
        let recs = consume_async(t, 0, 20).await;
        total += recs.len();
        for (dev, seqs) in by_device(&recs) {
            assert!(
                sharded.insert(dev.clone(), (i, seqs)).is_none(),
                "device {dev} is in more than one shard topic"
            );
        }
    }
    assert_eq!(total, DEVICES * per_device_sharded as usize);
    assert_eq!(sharded.len(), DEVICES);
    // Every fifth is a device-status event; the `onlineX` event (100) follows the tenth.
    let mut want = Vec::new();
    for s in 1..=TELEMETRY {
        if s % 5 != 0 {
            want.push(s);
        }
        if s == 10 {
            want.push(100);
        }
    }
    for (dev, (i, seqs)) in &sharded {
        assert_eq!(seqs, &want, "{dev}: its events in order");
        assert_eq!(
            *i as u64,
            fnv1a(dev.as_bytes()) % 3,
            "{dev}: the topic its id hashes to"
        );
    }
    let mut gw = gw;
    stop(&mut gw.proc, 60);
}

/// `kgate check` looks at each route's topics (a pipeline with `topics:` has no `topic:`):
/// one that exists is reported with its partitions, and the field names the route.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_every_route_topic() {
    let p = unique("qos.check");
    let (there, missing) = (format!("{p}.there"), format!("{p}.missing"));
    create_topic(&there).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = format!(
        "kafka:\n  brokers: ['{}']\npipelines:\n  - name: dev\n    source: {{device_websocket: {{listen: '127.0.0.1:{port}', path: /ws, device_id: {{query: id}}, wrp: true}}}}\n    format: raw\n    topics:\n      - {{match: online, topic: {there}}}\n      - {{match: '*', topics: [{there}, {missing}], shard: device_id}}\n",
        brokers()
    );
    let path = write_config(dir.path(), &cfg);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(kgate_bin())
            .args([
                "check",
                "--config",
                path.to_str().unwrap(),
                "--timeout",
                "10s",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (topic, field) in [
        (&there, "pipelines.dev.topics[0].topic"),
        (&there, "pipelines.dev.topics[1].topics[0]"),
        (&missing, "pipelines.dev.topics[1].topics[1]"),
    ] {
        assert!(
            stdout.contains(&format!("topic {topic} ({field})")),
            "{field}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains(&format!(
            "topic {there} (pipelines.dev.topics[0].topic) exists with 1 partition(s)"
        )),
        "{stdout}"
    );
    assert!(
        !stdout.contains("topic  ("),
        "an empty topic was checked:\n{stdout}"
    );
}

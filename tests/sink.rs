//! The end-to-end acknowledgement seam against the real broker: the fate of every event comes
//! back to whoever accepted it (what the HTTP and MQTT sources answer through).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use kgate::event::{Ack, Event, Fate, Origin};
use kgate::gateway::Config;
use kgate::kafka::{KafkaConfig, OnFull};
use kgate::metrics::Metrics;
use kgate::pipeline::Pipeline;
use kgate::sink::Sink;

fn kafka(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: vec![brokers.to_string()],
        ..Default::default()
    }
}

fn pipeline(topic: &str) -> kgate::gateway::PipelineConfig {
    let c = Config::from_yaml_str(
        &format!("pipelines:\n  - name: acks\n    source: {{websocket: {{urls: ['ws://127.0.0.1:1/ws']}}}}\n    topic: {topic}\n    key: '${{id}}'\n"),
        "test.yaml",
        &|_| None,
    )
    .unwrap();
    c.pipelines[0].clone()
}

fn event(raw: &'static str) -> (Event, tokio::sync::oneshot::Receiver<Fate>) {
    let (ack, rx) = Ack::channel();
    let mut ev = Event::new(
        Bytes::from_static(raw.as_bytes()),
        Origin::now(Arc::from("acks"), Arc::from("test")),
    );
    ev.ack = ack;
    (ev, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_learns_its_fate_with_partition_and_offset() {
    let topic = unique("acks");
    let dlq = unique("acks.dlq");
    let metrics = Metrics::new(&Default::default());
    let sink = kgate::sink::KafkaSink::new(&kafka(&brokers()), &dlq, metrics).unwrap();
    let p = Pipeline::new(&pipeline(&topic), sink.clone()).unwrap();

    let (good, good_rx) = event(r#"{"id":"a","n":1}"#);
    let (bad, bad_rx) = event(r#"{"n":2}"#);
    let (broken, broken_rx) = event("{oops");
    p.handle(good).await;
    p.handle(bad).await;
    p.handle(broken).await;
    let within = Duration::from_secs(30);
    match tokio::time::timeout(within, good_rx)
        .await
        .unwrap()
        .unwrap()
    {
        Fate::Delivered {
            topic: t,
            partition,
            offset,
        } => {
            assert_eq!(t, topic);
            let recs = consume(&brokers(), &topic, 1, within);
            assert_eq!(recs.len(), 1);
            assert_eq!((recs[0].partition, recs[0].offset), (partition, offset));
            assert_eq!(recs[0].key_str(), "a");
        }
        other => panic!("expected Delivered, got {other:?}"),
    }
    match tokio::time::timeout(within, bad_rx).await.unwrap().unwrap() {
        Fate::DeadLettered {
            error_type,
            message,
            ..
        } => {
            assert_eq!(error_type, "missing_field");
            assert!(message.contains("`id` is missing"), "{message}");
        }
        other => panic!("expected DeadLettered, got {other:?}"),
    }
    match tokio::time::timeout(within, broken_rx)
        .await
        .unwrap()
        .unwrap()
    {
        Fate::DeadLettered { error_type, .. } => assert_eq!(error_type, "invalid_json"),
        other => panic!("expected DeadLettered, got {other:?}"),
    }
    assert_eq!(sink.drain(within).await, 0);
    let t = sink.totals();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        (
            t.accepted.load(Relaxed),
            t.delivered.load(Relaxed),
            t.dead_lettered.load(Relaxed)
        ),
        (3, 1, 2)
    );
}

/// With the broker unreachable and a buffer of one record, `drop_newest` drops and counts
/// the rest and acks them `Dropped`; the one accepted stays in flight (it is never expired).
#[tokio::test(flavor = "multi_thread")]
async fn a_full_buffer_drops_newest_and_says_so() {
    let mut k = kafka(&format!("127.0.0.1:{}", free_port()));
    k.producer.max_buffered_records = 1;
    k.producer.on_full = OnFull::DropNewest;
    let metrics = Metrics::new(&Default::default());
    let sink = kgate::sink::KafkaSink::new(&k, "dlq", metrics.clone()).unwrap();
    let p = Pipeline::new(&pipeline("full"), sink.clone()).unwrap();
    let mut rxs = Vec::new();
    for _ in 0..5 {
        let (ev, rx) = event(r#"{"id":"x"}"#);
        p.handle(ev).await;
        rxs.push(rx);
    }
    let mut first = rxs.remove(0);
    for rx in rxs {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .unwrap()
                .unwrap(),
            Fate::Dropped
        );
    }
    assert!(
        first.try_recv().is_err(),
        "the accepted record must wait, not fail"
    );
    assert_eq!(sink.inflight(), 1);
    let text = metrics.render();
    assert_eq!(
        metric(
            &text,
            "kafka_producer_queue_drops_total",
            &["topic=\"full\""]
        ),
        4.0
    );
    assert_eq!(
        sink.drain(Duration::from_millis(300)).await,
        1,
        "undelivered is reported"
    );
}

/// A source that sets `max_wait` (HTTP) is told `Busy` when the buffer stays full that long,
/// even with `on_full: block`; nothing of it is counted as accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_buffer_answers_busy_to_sources_that_cannot_wait() {
    let mut k = kafka(&format!("127.0.0.1:{}", free_port()));
    k.producer.max_buffered_records = 1;
    let metrics = Metrics::new(&Default::default());
    let sink = kgate::sink::KafkaSink::new(&k, "dlq", metrics.clone()).unwrap();
    let p = Pipeline::new(&pipeline("busy"), sink.clone()).unwrap();
    let mut rxs = Vec::new();
    for _ in 0..3 {
        let (mut ev, rx) = event(r#"{"id":"x"}"#);
        ev.max_wait = Some(Duration::from_millis(20));
        p.handle(ev).await;
        rxs.push(rx);
    }
    let mut first = rxs.remove(0);
    for rx in rxs {
        assert_eq!(rx.await.unwrap(), Fate::Busy);
    }
    assert!(first.try_recv().is_err(), "the accepted record waits");
    assert_eq!(
        sink.totals()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(sink.inflight(), 1);
}

fn event_of(raw: String) -> (Event, tokio::sync::oneshot::Receiver<Fate>) {
    Event::with_ack(
        Bytes::from(raw),
        Origin::now(Arc::from("acks"), Arc::from("test")),
    )
}

/// Records over the topic's 1 MiB `max.message.bytes` (refused by the broker) or over the
/// producer's `message.max.bytes` (refused by librdkafka) reach the DLQ as `too_large`: their
/// first 64 KiB with their size and sha256; so does one whose source waits for no answer (a
/// device frame), and the DLQ copy of rejected input that is itself too large keeps its
/// error type. Nothing vanishes, and the record after them lands.
#[tokio::test(flavor = "multi_thread")]
async fn records_too_large_for_kafka_reach_the_dlq_with_their_first_bytes() {
    use std::sync::atomic::Ordering::Relaxed;
    let topic = unique("big");
    let dlq = unique("big.dlq");
    let metrics = Metrics::new(&Default::default());
    let sink = kgate::sink::KafkaSink::new(&kafka(&brokers()), &dlq, metrics.clone()).unwrap();
    let p = Pipeline::new(&pipeline(&topic), sink.clone()).unwrap();
    // A producer that takes less than the sources: librdkafka refuses at once.
    let mut small = kafka(&brokers());
    small
        .producer
        .options
        .insert("message.max.bytes".into(), "500000".into());
    let small_sink = kgate::sink::KafkaSink::new(&small, &dlq, metrics).unwrap();
    let p_small = Pipeline::new(&pipeline(&topic), small_sink.clone()).unwrap();

    let big = format!(r#"{{"id":"big","pad":"{}"}}"#, random_text(1_500_000));
    // Random text compresses to about 3/4: still over the broker's 1 MiB.
    let frame = format!(r#"{{"id":"frame","pad":"{}"}}"#, random_text(2_000_000));
    let broken = format!("{{oops{}", random_text(2_000_000));
    let local = format!(r#"{{"id":"local","pad":"{}"}}"#, random_text(600_000));
    let (ev, big_rx) = event_of(big.clone());
    p.handle(ev).await;
    p.handle(Event::new(
        Bytes::from(frame.clone()),
        Origin::now(Arc::from("acks"), Arc::from("device")),
    ))
    .await;
    let (ev, broken_rx) = event_of(broken.clone());
    p.handle(ev).await;
    let (ev, good_rx) = event(r#"{"id":"good"}"#);
    p.handle(ev).await;
    let (ev, local_rx) = event_of(local.clone());
    p_small.handle(ev).await;

    let within = Duration::from_secs(30);
    let fate = |rx: tokio::sync::oneshot::Receiver<Fate>| async move {
        tokio::time::timeout(within, rx).await.unwrap().unwrap()
    };
    for (rx, want) in [
        (big_rx, "too_large"),
        (broken_rx, "invalid_json"),
        (local_rx, "too_large"),
    ] {
        match fate(rx).await {
            Fate::DeadLettered {
                error_type,
                message,
                ..
            } => {
                assert_eq!(error_type, want, "{message}");
                if want == "too_large" {
                    assert!(message.contains("too large"), "{message}");
                }
            }
            other => panic!("expected DeadLettered ({want}), got {other:?}"),
        }
    }
    assert!(matches!(fate(good_rx).await, Fate::Delivered { .. }));
    assert_eq!(sink.drain(within).await, 0);
    assert_eq!(small_sink.drain(within).await, 0);

    let dead = consume(&brokers(), &dlq, 4, within);
    assert_eq!(dead.len(), 4, "DLQ records");
    let find = |prefix: &str| {
        dead.iter()
            .find(|d| d.value.starts_with(prefix.as_bytes()))
            .unwrap_or_else(|| panic!("no DLQ record starting {prefix}"))
    };
    for (original, prefix, error_type) in [
        (&big, r#"{"id":"big""#, "too_large"),
        (&frame, r#"{"id":"frame""#, "too_large"),
        (&broken, "{oops", "invalid_json"),
        (&local, r#"{"id":"local""#, "too_large"),
    ] {
        let d = find(prefix);
        assert_eq!(d.headers["error_type"], error_type);
        assert_eq!(d.value, original.as_bytes()[..64 * 1024], "{prefix}");
        assert_eq!(d.headers["original_size"], original.len().to_string());
        assert_eq!(
            d.headers["original_sha256"],
            sha256_hex(original.as_bytes())
        );
    }
    assert_eq!(find(r#"{"id":"big""#).key_str(), "big");
    assert_eq!(find(r#"{"id":"big""#).headers["source_topic"], topic);
    let recs = consume(&brokers(), &topic, 1, Duration::from_secs(10));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].key_str(), "good");
    let t = sink.totals();
    assert_eq!(
        (
            t.accepted.load(Relaxed),
            t.delivered.load(Relaxed),
            t.dead_lettered.load(Relaxed),
            t.failed.load(Relaxed)
        ),
        (4, 1, 3, 0)
    );
}

/// Sends cancelled at random points while they wait for buffer room (a tiny buffer that the
/// producer empties slowly), and then tasks aborted in the middle of a shutdown's drain: every
/// event is delivered, dead-lettered or taken back (answered Busy, counted `cancelled`, not
/// accepted); nothing stays in flight and `drain` returns 0 without waiting out its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_cancelled_at_random_points_leave_nothing_in_flight() {
    use rand::Rng;
    use std::sync::atomic::Ordering::Relaxed;
    let topic = unique("cancel");
    let dlq = unique("cancel.dlq");
    let mut k = kafka(&brokers());
    k.producer.max_buffered_records = 2;
    k.producer.linger_ms = 20;
    let metrics = Metrics::new(&Default::default());
    let sink = kgate::sink::KafkaSink::new(&k, &dlq, metrics.clone()).unwrap();
    let p = Arc::new(Pipeline::new(&pipeline(&topic), sink.clone()).unwrap());
    // Warm up (connection, metadata) so that the rounds below wait on the buffer only.
    let (ev, rx) = event(r#"{"id":"warm"}"#);
    p.handle(ev).await;
    assert!(matches!(rx.await.unwrap(), Fate::Delivered { .. }));

    let make = |i: usize| {
        // Every fifth is not JSON: its DLQ write waits for room the same way.
        let raw = if i % 5 == 4 {
            format!("{{oops {i}")
        } else {
            format!(r#"{{"id":"k{}","n":{i}}}"#, i % 7)
        };
        event_of(raw)
    };
    let mut fates = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (ev, rx) = make(i);
        fates.push(rx);
        let wait = Duration::from_millis(rand::rng().random_range(0..400));
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(wait, p.handle(ev)).await;
        }));
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Shutdown: sends still waiting when the drain starts, aborted under it.
    let mut tasks = Vec::new();
    for i in 300..400 {
        let (ev, rx) = make(i);
        fates.push(rx);
        let p = p.clone();
        tasks.push(tokio::spawn(async move { p.handle(ev).await }));
    }
    let drainer = {
        let sink = sink.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            (sink.drain(Duration::from_secs(30)).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    for t in &tasks {
        t.abort();
    }
    let (left, took) = drainer.await.unwrap();
    assert_eq!(left, 0, "drain left records in flight");
    assert!(took < Duration::from_secs(15), "drain waited {took:?}");

    let (mut delivered, mut dead, mut busy) = (1u64, 0u64, 0u64);
    for rx in fates {
        match tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap()
            .unwrap()
        {
            Fate::Delivered { .. } => delivered += 1,
            Fate::DeadLettered { error_type, .. } => {
                assert_eq!(error_type, "invalid_json");
                dead += 1
            }
            Fate::Busy => busy += 1,
            other => panic!("unexpected fate {other:?}"),
        }
    }
    let t = sink.totals();
    let accepted = t.accepted.load(Relaxed);
    eprintln!(
        "cancellation: 401 events: {delivered} delivered, {dead} dead-lettered, {busy} taken back"
    );
    assert!(busy > 0, "no send was cancelled while it waited");
    assert!(delivered > 1, "nothing got through");
    assert_eq!(t.cancelled.load(Relaxed), busy);
    assert_eq!(t.delivered.load(Relaxed), delivered);
    assert_eq!(t.dead_lettered.load(Relaxed), dead);
    assert_eq!(
        (t.dropped.load(Relaxed), t.failed.load(Relaxed)),
        (0, 0),
        "nothing dropped or failed"
    );
    assert_eq!(accepted, delivered + dead);
    assert_eq!(accepted + busy, 401);
    assert_eq!(sink.inflight(), 0);
    assert_eq!(
        metric(&metrics.render(), "kgate_producer_inflight_records", &[]),
        0.0
    );
    assert_eq!(sink.drain(Duration::from_secs(1)).await, 0);
    let recs = consume(
        &brokers(),
        &topic,
        delivered as usize,
        Duration::from_secs(30),
    );
    assert_eq!(recs.len() as u64, delivered, "records in Kafka = delivered");
}

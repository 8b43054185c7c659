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

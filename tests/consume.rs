//! The `kafka` source against the real local Kafka: a raw topic validated into a clean one with
//! the malformed records in the DLQ and the group's offsets committed at the end; a SIGKILL
//! mid-stream loses nothing. Run through `scripts/test`, which starts the broker.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use common::*;

const PARTITIONS: i32 = 3;

fn config(metrics_port: u16, dlq: &str, raw: &str, group: &str, clean: &str) -> String {
    format!(
        "kafka:\n  brokers: ['{b}']\nmetrics:\n  listen: '127.0.0.1:{metrics_port}'\ndlq: {{topic: '{dlq}'}}\nshutdown_timeout: 20s\npipelines:\n  - name: validator\n    source: {{kafka: {{topics: [{raw}], group: {group}, start: earliest, commit_interval: 1s}}}}\n    topic: {clean}\n    key: '${{@kafka.key}}'\n",
        b = brokers()
    )
}

fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap();
    for x in r {
        x.unwrap();
    }
}

fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

fn send(p: &BaseProducer, topic: &str, key: &str, value: &str) {
    loop {
        match p.send(BaseRecord::to(topic).key(key).payload(value)) {
            Ok(()) => break,
            Err((e, _)) => {
                assert!(
                    matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ),
                    "{e}"
                );
                p.poll(Duration::from_millis(50));
            }
        }
    }
    p.poll(Duration::ZERO);
}

fn record(seq: u64) -> String {
    format!(r#"{{"source":"gen","seq":{seq},"reading":{}}}"#, seq % 97)
}

/// The group's committed offset and the high watermark of every partition of `topic`.
fn committed_and_end(group: &str, topic: &str) -> Vec<(i64, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let off = match committed.find_partition(topic, p).unwrap().offset() {
                Offset::Offset(o) => o,
                other => panic!("partition {p}: no committed offset ({other:?})"),
            };
            let (_, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (off, high)
        })
        .collect()
}

/// (1) 2,000 valid records and 7 malformed ones in a 3-partition raw topic: the clean topic has
/// exactly the valid seqs, the DLQ the malformed ones, and after SIGTERM the group's committed
/// offsets are the end offsets.
#[test]
fn raw_topic_is_validated_into_clean_and_dlq_with_offsets_committed() {
    let raw = unique("consume.raw");
    let clean = unique("consume.clean");
    let dlq = unique("consume.dlq");
    let group = unique("consume.group");
    create_topic(&raw);
    let p = producer();
    let malformed = 7;
    for seq in 0..2000u64 {
        send(&p, &raw, &format!("k{seq}"), &record(seq));
        if seq % 300 == 150 && seq / 300 < malformed {
            send(&p, &raw, "bad", r#"{"source":"gen","seq":"#);
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut gw = spawn_run(dir.path(), &config(port, &dlq, &raw, &group, &clean));
    let recs = consume(&brokers(), &clean, 2000, Duration::from_secs(90));
    let bad = consume(
        &brokers(),
        &dlq,
        malformed as usize,
        Duration::from_secs(30),
    );
    // The consumer's series: every record read counted, commits made, the lag reported (from
    // librdkafka's statistics every 5 s) down to 0 on every partition.
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = http_get(&addr, "/metrics").map(|r| r.1).unwrap_or_default();
        let lag_series = text
            .lines()
            .filter(|l| l.starts_with("kafka_consumer_lag{") && l.contains(&*raw))
            .count();
        let commits = metric(&text, "kafka_consumer_commits_total", &[&raw]);
        let lag = metric(&text, "kafka_consumer_lag", &[&raw]);
        if (lag_series == PARTITIONS as usize && lag == 0.0 && commits > 0.0)
            || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let group_label = format!("group=\"{group}\"");
    assert_eq!(
        metric(&text, "kafka_consumer_records_total", &[&raw, &group_label]),
        (2000 + malformed) as f64,
        "{text}"
    );
    assert!(
        metric(&text, "kafka_consumer_commits_total", &[&raw]) > 0.0,
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("kafka_consumer_lag{")
                && l.contains(&*raw)
                && l.ends_with(" 0"))
            .count(),
        PARTITIONS as usize,
        "{text}"
    );
    let summary = stop(&mut gw, 30);
    let (set, dups) = seqs(&recs);
    let want: BTreeSet<(String, u64)> = (0..2000).map(|s| ("gen".to_string(), s)).collect();
    assert_eq!(set, want, "log:\n{}", gw.log_text());
    assert_eq!(dups, 0);
    assert_eq!(recs.len(), 2000);
    assert_eq!(bad.len(), malformed as usize, "{:?}", bad.first());
    assert!(bad
        .iter()
        .all(|r| r.headers.get("error_type").map(String::as_str) == Some("invalid_json")));
    // The key came from `${@kafka.key}`.
    assert!(recs
        .iter()
        .all(|r| r.key_str() == format!("k{}", r.json()["seq"])));
    assert_eq!(summary["delivered"], 2000, "{summary:?}");
    assert_eq!(summary["dead-lettered"], malformed, "{summary:?}");

    let offsets = committed_and_end(&group, &raw);
    for (p, (committed, end)) in offsets.iter().enumerate() {
        assert_eq!(committed, end, "partition {p}: committed vs end offset");
    }
    assert_eq!(
        offsets.iter().map(|o| o.1).sum::<i64>(),
        2000 + malformed as i64
    );
}

/// (2) kgate is SIGKILLed while records stream in, then restarted: every seq reaches the clean
/// topic at least once.
#[test]
fn sigkill_mid_stream_then_restart_loses_nothing() {
    let raw = unique("consume.kill.raw");
    let clean = unique("consume.kill.clean");
    let dlq = unique("consume.kill.dlq");
    let group = unique("consume.kill.group");
    create_topic(&raw);
    let total = 6000u64;
    let feeder = {
        let raw = raw.clone();
        std::thread::spawn(move || {
            let p = producer();
            for seq in 0..total {
                send(&p, &raw, &format!("k{seq}"), &record(seq));
                if seq % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            p.flush(Duration::from_secs(30)).unwrap();
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(free_port(), &dlq, &raw, &group, &clean);
    let mut gw = spawn_run(dir.path(), &cfg);
    // Some records through (the feed takes about 12 s), then a crash mid-stream.
    let started = Instant::now();
    while consume(&brokers(), &clean, 1, Duration::from_secs(1)).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing reached the clean topic; log:\n{}",
            gw.log_text()
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    gw.signal("-KILL");
    gw.wait(Duration::from_secs(10));
    let before = seqs(&consume(&brokers(), &clean, 0, Duration::from_secs(3)))
        .0
        .len();
    eprintln!("in clean at the kill: {before} of {total}");
    assert!((before as u64) < total, "the kill was not mid-stream");

    let dir2 = tempfile::tempdir().unwrap();
    let mut gw2 = spawn_run(dir2.path(), &cfg);
    feeder.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (set, dups) = loop {
        let recs = consume(&brokers(), &clean, total as usize, Duration::from_secs(30));
        let (set, dups) = seqs(&recs);
        if set.len() as u64 == total || Instant::now() > deadline {
            break (set, dups);
        }
    };
    stop(&mut gw2, 30);
    let missing: Vec<u64> = (0..total)
        .filter(|s| !set.contains(&("gen".to_string(), *s)))
        .collect();
    eprintln!("after restart: {} distinct, {dups} duplicates", set.len());
    assert!(
        missing.is_empty(),
        "{} missing, e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        gw2.log_text()
    );
}

/// The seq in a record's bytes (`"seq":N`), also in a malformed one.
fn seq_in(bytes: &[u8]) -> Option<u64> {
    let s = String::from_utf8_lossy(bytes);
    let at = s.find("\"seq\":")? + 6;
    let digits: String = s[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// (3) An `exactly_once` validator is SIGKILLed mid-stream and restarted: read_committed readers
/// of the clean topic and the DLQ see every input exactly once (1 % malformed ones in the DLQ),
/// with no duplicate and none missing.
#[test]
fn exactly_once_sigkill_mid_stream_then_restart_has_no_duplicates() {
    let raw = unique("eos.raw");
    let clean = unique("eos.clean");
    let dlq = unique("eos.dlq");
    let group = unique("eos.group");
    create_topic(&raw);
    create_topic(&clean);
    create_topic(&dlq);
    let total = 8000u64;
    let is_bad = |seq: u64| seq % 100 == 37;
    let feeder = {
        let raw = raw.clone();
        std::thread::spawn(move || {
            let p = producer();
            for seq in 0..total {
                let value = if is_bad(seq) {
                    format!(r#"{{"source":"gen","seq":{seq},"#)
                } else {
                    record(seq)
                };
                send(&p, &raw, &format!("k{seq}"), &value);
                if seq % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(60));
                }
            }
            p.flush(Duration::from_secs(30)).unwrap();
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(free_port(), &dlq, &raw, &group, &clean).replace(
        "    key: '${@kafka.key}'\n",
        "    key: '${@kafka.key}'\n    exactly_once: true\n",
    );
    assert!(cfg.contains("exactly_once: true"));
    let mut gw = spawn_run(dir.path(), &cfg);
    let started = Instant::now();
    while consume(&brokers(), &clean, 1, Duration::from_secs(1)).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing reached the clean topic; log:\n{}",
            gw.log_text()
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    gw.signal("-KILL");
    gw.wait(Duration::from_secs(10));
    let before = consume(&brokers(), &clean, 0, Duration::from_secs(3)).len();
    eprintln!("in clean at the kill: {before} of {total}");
    assert!((before as u64) < total, "the kill was not mid-stream");

    let dir2 = tempfile::tempdir().unwrap();
    let mut gw2 = spawn_run(dir2.path(), &cfg);
    feeder.join().unwrap();
    let bad_total = (0..total).filter(|s| is_bad(*s)).count();
    let good_total = total as usize - bad_total;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (good, bad) = loop {
        let good = consume(&brokers(), &clean, good_total, Duration::from_secs(20));
        let bad = consume(&brokers(), &dlq, bad_total, Duration::from_secs(5));
        if good.len() + bad.len() >= total as usize || Instant::now() > deadline {
            break (good, bad);
        }
    };
    // Whatever a late batch might still add would show up here as a duplicate.
    std::thread::sleep(Duration::from_secs(2));
    let summary = stop(&mut gw2, 30);
    let good_again = consume(&brokers(), &clean, good_total + 1, Duration::from_secs(5));
    let bad_again = consume(&brokers(), &dlq, bad_total + 1, Duration::from_secs(5));
    eprintln!(
        "clean {} (then {}), dlq {} (then {}); second run: {summary:?}",
        good.len(),
        good_again.len(),
        bad.len(),
        bad_again.len()
    );
    let mut seen = std::collections::BTreeMap::<u64, u32>::new();
    for r in good_again.iter().chain(bad_again.iter()) {
        let s = seq_in(&r.value).expect("a seq in every record");
        *seen.entry(s).or_default() += 1;
    }
    let missing: Vec<u64> = (0..total).filter(|s| !seen.contains_key(s)).collect();
    let twice: Vec<(u64, u32)> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, n)| (*s, *n))
        .collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "{} missing (e.g. {:?}), {} more than once (e.g. {:?}); log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        twice.len(),
        &twice[..twice.len().min(10)],
        gw2.log_text()
    );
    assert_eq!(good_again.len(), good_total);
    assert_eq!(bad_again.len(), bad_total);
    assert!(bad_again
        .iter()
        .all(|r| r.headers.get("error_type").map(String::as_str) == Some("invalid_json")));
}

//! `coordination:` — several `kgate run` processes share one `websocket` pipeline's feeds
//! through a Kafka consumer group on the control topic `kgate.coord.<pipeline>`.
//!
//! The feeds are `kgate synth` servers, whose sequence numbers are server-wide: every message
//! handed to any connection takes the next number, and nothing is sent while nobody is
//! connected. So, per feed, what Kafka holds must be `1..=last` with no duplicate, except for
//! what a killed reader had read (or buffered) and never published: that loss is the feed's
//! window (a WebSocket feed has no acknowledgements and replays nothing).
//!
//! Each instance stamps its records with a header `instance: <name>` (the only line of the
//! config that differs). Two readers of one synth feed at the same time would not duplicate its
//! messages (the server shares them out) but interleave them: the readers of a feed, in seq
//! order, would switch back and forth. So a feed's reader may change at most once per
//! rebalance, which the test checks against the instances' rebalance counters.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

const FEEDS: usize = 6;

/// One `kgate run`.
struct Instance {
    name: &'static str,
    proc: Proc,
    metrics: String,
    _dir: tempfile::TempDir,
}

impl Instance {
    fn start(
        name: &'static str,
        pipeline: &str,
        group: &str,
        urls: &[String],
        topic: &str,
    ) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let urls: Vec<String> = urls.iter().map(|u| format!("'{u}'")).collect();
        let config = format!(
            "kafka:\n  brokers: ['{}']\nmetrics: {{listen: '127.0.0.1:{port}'}}\ndlq: {{topic: '{topic}.dlq'}}\nshutdown_timeout: 30s\npipelines:\n  - name: {pipeline}\n    source: {{websocket: {{urls: [{}], backoff_max: 1s}}}}\n    topic: {topic}\n    key: '${{source}}'\n    headers: {{instance: {name}}}\n    coordination: {{group: {group}}}\n",
            brokers(),
            urls.join(", ")
        );
        let proc = spawn_run(dir.path(), &config);
        Instance {
            name,
            proc,
            metrics: format!("127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// A series' value (`None`: the metrics endpoint did not answer).
    fn scrape(&self, name: &str) -> Option<f64> {
        http_get(&self.metrics, "/metrics").map(|(_, t)| metric(&t, name, &[]))
    }

    fn owned(&self) -> Option<u64> {
        self.scrape("kgate_coordination_owned_urls")
            .map(|v| v as u64)
    }

    fn received(&self) -> u64 {
        self.scrape("kafka_producer_websocket_messages_received_total")
            .unwrap_or(0.0) as u64
    }

    fn rebalances(&self) -> u64 {
        self.scrape("kgate_coordination_rebalances_total")
            .unwrap_or(0.0) as u64
    }
}

/// Waits until `f` holds, showing the instances' logs when it does not in time.
fn wait_for(what: &str, timeout: Duration, all: &[&Instance], mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            for i in all {
                eprintln!("--- {}'s log:\n{}", i.name, i.proc.log_text());
            }
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the instances together read `more` messages beyond what they had read.
fn wait_flow(more: u64, alive: &[&Instance]) {
    let sum = |alive: &[&Instance]| alive.iter().map(|i| i.received()).sum::<u64>();
    let from = sum(alive);
    wait_for(
        &format!("{more} more messages read"),
        Duration::from_secs(60),
        alive,
        || sum(alive) >= from + more,
    );
}

/// One feed's records in Kafka, by seq: the instances that published each (more than one: a
/// duplicate), and the feed's timestamp of the message.
type Feed = BTreeMap<u64, (Vec<String>, String)>;

#[test]
fn three_instances_share_six_feeds_and_hand_over() {
    let pipeline = unique("coordtest").replace('.', "_");
    let group = unique("coord-group");
    let topic = unique("coord.ticks");
    let mut synths = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..FEEDS {
        let (p, url) = spawn_synth("ticker", &["--rate", "100", "--count", "0"]);
        synths.push(p);
        urls.push(url);
    }
    let a = Instance::start("a", &pipeline, &group, &urls, &topic);
    let b = Instance::start("b", &pipeline, &group, &urls, &topic);
    let mut c = Instance::start("c", &pipeline, &group, &urls, &topic);

    // All three in the group: two feeds each.
    let started = Instant::now();
    wait_for(
        "the three instances to own two feeds each",
        Duration::from_secs(90),
        &[&a, &b, &c],
        || [&a, &b, &c].iter().all(|i| i.owned() == Some(2)),
    );
    println!(
        "three instances joined and own 2 feeds each after {} ms",
        started.elapsed().as_millis()
    );
    wait_flow(6 * 300, &[&a, &b, &c]);

    // SIGKILL: the group notices after the session timeout (10 s).
    // Rebalances so far: the instance that joined first took part in all of them.
    let before_kill = [&a, &b, &c].iter().map(|i| i.rebalances()).max().unwrap();
    let a_before_kill = a.rebalances();
    let killed_at = Instant::now();
    let kill_clock = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    c.proc.signal("-KILL");
    let _ = c.proc.wait(Duration::from_secs(10));
    wait_for(
        "the survivors to own all six feeds after the SIGKILL",
        Duration::from_secs(90),
        &[&a, &b],
        || a.owned().unwrap_or(0) + b.owned().unwrap_or(0) == FEEDS as u64,
    );
    let kill_handover = killed_at.elapsed();
    wait_flow(6 * 300, &[&a, &b]);
    let kill_flowing = killed_at.elapsed();

    // SIGTERM: b leaves the group as it stops, a takes its feeds at once.
    let mut b = b;
    let termed_at = Instant::now();
    b.proc.signal("-TERM");
    wait_for(
        "a to own all six feeds after b's SIGTERM",
        Duration::from_secs(60),
        &[&a, &b],
        || a.owned() == Some(FEEDS as u64),
    );
    let term_handover = termed_at.elapsed();
    let status = b.proc.wait(Duration::from_secs(60));
    assert!(
        status.success(),
        "b exited {status}:\n{}",
        b.proc.log_text()
    );
    assert!(
        b.proc.log_text().contains("coordination: left the group"),
        "{}",
        b.proc.log_text()
    );
    wait_flow(6 * 300, &[&a]);
    // a took part in every rebalance since the kill.
    let rebalances = before_kill + a.rebalances() - a_before_kill;
    let a_log = a.proc.log_text();
    let mut a = a;
    let sum = stop(&mut a.proc, 60);
    assert_eq!(sum["undelivered"], 0, "{sum:?}");

    // Everything in Kafka, per feed.
    let recs = consume(&brokers(), &topic, 1, Duration::from_secs(60));
    let mut feeds: BTreeMap<String, Feed> = BTreeMap::new();
    for r in &recs {
        let v = r.json();
        let source = v["source"].as_str().unwrap().to_string();
        let seq = v["seq"].as_u64().unwrap();
        let who = r.headers.get("instance").cloned().unwrap_or_default();
        let at = v["timestamp"].as_str().unwrap_or_default().to_string();
        feeds
            .entry(source)
            .or_default()
            .entry(seq)
            .or_insert_with(|| (Vec::new(), at))
            .0
            .push(who);
    }
    assert_eq!(feeds.len(), FEEDS, "every feed was read");

    println!(
        "handover after SIGKILL: all 6 feeds owned again {} ms after the kill (session timeout 10 s), messages flowing again (1800 more) after {} ms",
        kill_handover.as_millis(),
        kill_flowing.as_millis()
    );
    println!(
        "handover after SIGTERM: a owned all 6 feeds {} ms after b's SIGTERM",
        term_handover.as_millis()
    );
    println!("c was killed at {kill_clock}; {rebalances} rebalances in all");
    let kill_at = kill_clock.to_string();
    let (mut total_dups, mut total_gaps) = (0usize, 0u64);
    let mut killed_feeds = 0;
    for (source, feed) in &feeds {
        let dups: usize = feed.values().map(|(w, _)| w.len() - 1).sum();
        let last = *feed.keys().next_back().unwrap();
        // Seqs never published, each with the instance that published the seq before it.
        let mut gaps: BTreeMap<String, u64> = BTreeMap::new();
        let mut before = String::new();
        for seq in 1..=last {
            match feed.get(&seq) {
                Some((who, _)) => before = who[0].clone(),
                None => *gaps.entry(before.clone()).or_default() += 1,
            }
        }
        // Each run of missing seqs, with the feed's timestamps of the messages around it.
        let mut prev: Option<(u64, &str)> = None;
        for (seq, (who, at)) in feed {
            if let Some((p, p_at)) = prev {
                if *seq > p + 1 {
                    println!(
                        "feed {source}: seqs {}..={} missing, between {p_at} (read by {}) and {at} (read by {})",
                        p + 1,
                        seq - 1,
                        feed[&p].0[0],
                        who[0]
                    );
                }
            }
            prev = Some((*seq, at));
        }
        // The readers of the feed in seq order: each change is one handover.
        let mut readers: Vec<&str> = Vec::new();
        for (who, _) in feed.values() {
            if readers.last() != Some(&who[0].as_str()) {
                readers.push(&who[0]);
            }
        }
        // Who read it when c was killed (c may have been first to join, and read every feed
        // for a while before the others did).
        let reader_at_kill = feed
            .values()
            .rfind(|(_, at)| at.as_str() <= kill_at.as_str())
            .map(|(who, _)| who[0].as_str());
        killed_feeds += usize::from(reader_at_kill == Some("c"));
        println!(
            "feed {source}: {} messages, last seq {last}, duplicates {dups}, gaps {:?}, readers in order {}",
            feed.len(),
            gaps,
            readers.join(" → ")
        );
        total_dups += dups;
        total_gaps += gaps.values().sum::<u64>();
        assert_eq!(dups, 0, "feed {source}: a message published twice");
        assert!(
            gaps.keys().all(|after| after == "c"),
            "feed {source}: messages lost other than at the SIGKILL of c: {gaps:?}"
        );
        assert!(
            readers.len() as u64 - 1 <= rebalances,
            "feed {source}: its reader changed {} times in {rebalances} rebalances: two instances read it at once ({})",
            readers.len() - 1,
            readers.join(" → ")
        );
        assert_eq!(readers.last(), Some(&"a"), "feed {source}: a reads it last");
    }
    assert_eq!(
        killed_feeds, 2,
        "c read two feeds when it was killed; per feed readers above"
    );
    println!("all feeds: {} records, {total_dups} duplicates, {total_gaps} messages lost at the SIGKILL (the feed's window: what c had read or buffered and never published)", recs.len());
    assert!(
        a_log.contains("coordination: feeds assigned") && a_log.contains("ws://127.0.0.1:"),
        "a logs each assignment with its URLs:\n{a_log}"
    );
    drop(synths);
}

#[test]
fn the_control_topic_is_grown_but_never_shrunk() {
    let mut synths = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..2 {
        let (p, url) = spawn_synth("ticker", &["--rate", "20", "--count", "0"]);
        synths.push(p);
        urls.push(url);
    }
    for (partitions, grows) in [(1, true), (3, false)] {
        let pipeline = unique("coordtopic").replace('.', "_");
        let control = format!("kgate.coord.{pipeline}");
        let out = std::process::Command::new(kgate_bin())
            .args(["topics", "create", &control, "--partitions"])
            .arg(partitions.to_string())
            .args(["--brokers", &brokers()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let topic = unique("coord.grow");
        let i = Instance::start("a", &pipeline, &unique("g"), &urls, &topic);
        if grows {
            wait_for(
                "the instance to own both feeds of a grown control topic",
                Duration::from_secs(60),
                &[&i],
                || i.owned() == Some(2),
            );
            assert!(
                i.proc
                    .log_text()
                    .contains("coordination: growing the control topic"),
                "{}",
                i.proc.log_text()
            );
        } else {
            wait_for(
                "the instance to refuse a control topic with more partitions than URLs",
                Duration::from_secs(60),
                &[&i],
                || {
                    i.proc.log_text().contains(&format!(
                        "control topic {control} has 3 partitions but pipeline {pipeline} has 2 URLs"
                    ))
                },
            );
            assert_eq!(i.owned(), Some(0), "it never joined the group");
            assert_eq!(i.received(), 0, "it reads none of the feeds");
        }
    }
    drop(synths);
}

//! The disk spool against the real broker: a WebSocket feed through `spool: {when: always}`,
//! kgate SIGKILLed mid-stream and started again; every record it accepted is counted in Kafka.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn config(brokers: &str, metrics_port: u16, dlq: &str, pipelines: &str) -> String {
    format!(
        "kafka:\n  brokers: ['{brokers}']\nmetrics:\n  listen: '127.0.0.1:{metrics_port}'\ndlq: {{topic: '{dlq}'}}\nshutdown_timeout: 20s\npipelines:\n{pipelines}"
    )
}

fn pipeline(url: &str, topic: &str, spool: &Path) -> String {
    format!(
        "  - name: ticks\n    source: {{websocket: {{urls: ['{url}']}}}}\n    topic: {topic}\n    key: '${{exchange}}|${{symbol}}'\n    spool: {{dir: '{}', when: always, fsync: 100ms}}\n",
        spool.display()
    )
}

/// The feed's sequence numbers of the records in a pipeline's spool directory, in spool order
/// (acked records not yet deleted included).
fn spooled_seqs(dir: &Path) -> Vec<u64> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        kgate::spool::scan_segment(&f, |_, _, payload| {
            let r = kgate::sink::spooled(payload).expect("a spooled record");
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            out.push(v["seq"].as_u64().unwrap());
        })
        .unwrap();
    }
    out
}

fn scrape(port: u16, name: &str) -> f64 {
    http_get(&format!("127.0.0.1:{port}"), "/metrics")
        .map(|(_, t)| metric(&t, name, &["pipeline=\"ticks\""]))
        .unwrap_or(-1.0)
}

fn inspect_text(dir: &Path) -> String {
    let out = Command::new(kgate_bin())
        .args(["spool", "inspect", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The seqs of the records in `topic`, and how many came twice.
fn kafka_seqs(topic: &str, want: usize) -> (BTreeSet<u64>, usize) {
    let recs = consume(&brokers(), topic, want, Duration::from_secs(120));
    let (set, dups) = seqs(&recs);
    (set.into_iter().map(|(_, n)| n).collect(), dups)
}

/// Kafka unreachable in the first run, so that nothing it accepted can have been delivered:
/// what it accepted is exactly what its spool holds at the SIGKILL. The second run (the real
/// broker) must produce all of it again, first, then the rest of the feed.
#[test]
fn sigkill_with_nothing_delivered_replays_every_spooled_record() {
    const COUNT: u64 = 8000;
    let topic = unique("spool.kill");
    let dlq = unique("spool.kill.dlq");
    let (synth, url) = spawn_synth("ticker", &["--rate", "1000", "--count", "8000"]);
    let work = tempfile::tempdir().unwrap();
    let spool_root = work.path().join("spool");
    let dir = spool_root.join("ticks");

    // Run 1: a broker port nobody listens on.
    let m1 = free_port();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let run1 = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        run1.path(),
        &config(&nowhere, m1, &dlq, &pipeline(&url, &topic, &spool_root)),
    );
    wait_until(
        Duration::from_secs(60),
        || scrape(m1, "kgate_spool_records") >= 2000.0,
        "2,000 records in the spool",
    );
    // A second kgate on the same spool stops at start, naming the first.
    let other = tempfile::tempdir().unwrap();
    let path = write_config(
        other.path(),
        &config(
            &nowhere,
            free_port(),
            &dlq,
            &pipeline(&url, &topic, &spool_root),
        ),
    );
    let out = Command::new(kgate_bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "is in use by another kgate (pid {})",
            gw.child.id()
        )),
        "{err}"
    );
    gw.signal("-KILL");
    gw.wait(Duration::from_secs(10));
    let log1 = gw.log_text();
    assert!(!log1.contains("shutdown complete"), "{log1}");

    let spooled = spooled_seqs(&dir);
    let k = spooled.len() as u64;
    // What run 1 accepted: the feed's first k records, in order, none missing.
    assert!(k >= 2000, "{k} records spooled");
    assert_eq!(spooled, (1..=k).collect::<Vec<_>>(), "the spool's records");
    let text = inspect_text(&spool_root);
    assert!(text.contains(&format!("unacked: {k}\n")), "{text}");
    assert!(text.contains("in use: no"), "{text}");
    let insp = kgate::spool::inspect(&dir).unwrap();
    assert_eq!(insp.unacked, k);
    // A torn write after the last record (half a record header): cut at the next start,
    // counted, and nothing before it lost. The killed kgate's segment was allocated whole
    // (mapped): its records, then zeros, which `inspect` does not count as damage. The torn
    // write goes where the file ends once cut to its records (as a segment written with
    // `pwrite`, without room for a whole one, ends).
    let last = &insp.segments.last().unwrap().path;
    assert!(insp.segments.iter().all(|s| s.bad.is_none()), "{insp:?}");
    let good = kgate::spool::scan_segment(last, |_, _, _| {})
        .unwrap()
        .unwrap();
    assert!(good.file_len > good.good_len, "{good:?}");
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    f.set_len(good.good_len).unwrap();
    std::io::Write::write_all(&mut f, &[0x5a; 11]).unwrap();
    drop(f);
    assert!(inspect_text(&spool_root).contains("TORN: a torn record header (11 bytes)"));

    // Run 2: the real broker, the same spool; `kgate check` first says what it holds.
    let m2 = free_port();
    let run2 = tempfile::tempdir().unwrap();
    let cfg2 = config(&brokers(), m2, &dlq, &pipeline(&url, &topic, &spool_root));
    let path = write_config(run2.path(), &cfg2);
    let out = Command::new(kgate_bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let checked = String::from_utf8_lossy(&out.stdout);
    assert!(
        checked
            .lines()
            .any(|l| l.starts_with("ok   spool")
                && l.contains(&format!("{k} unacknowledged record(s)"))),
        "{checked}"
    );
    let mut gw = spawn_run(run2.path(), &cfg2);
    wait_until(
        Duration::from_secs(60),
        || synth.log_text().contains("sent 8000 messages"),
        "the feed to send all 8,000",
    );
    let (got, dups) = kafka_seqs(&topic, (COUNT - 1000) as usize);
    let replayed = scrape(m2, "kgate_spool_replayed_total");
    let corruptions = scrape(m2, "kgate_spool_corruptions_total");
    let s = stop(&mut gw, 40);
    let log2 = gw.log_text();
    assert!(log2.contains(&format!("unacked={k}")), "{log2}");
    assert!(
        log2.contains("a torn or corrupt tail was cut") && log2.contains("11 bytes dropped"),
        "{log2}"
    );
    assert_eq!(corruptions, 1.0);
    assert_eq!(replayed, k as f64, "records produced again from the spool");

    // 0 lost: every record run 1 accepted is in Kafka, once.
    let lost: Vec<u64> = (1..=k).filter(|n| !got.contains(n)).collect();
    assert!(lost.is_empty(), "accepted and lost: {lost:?}");
    assert_eq!(dups, 0, "duplicates");
    // The rest of the feed after the seqs that were in the killed process's socket buffers
    // (sent by the feed, never read, so never accepted): all of it, delivered in run 2.
    let missing: Vec<u64> = (1..=COUNT).filter(|n| !got.contains(n)).collect();
    assert!(missing.iter().all(|&n| n > k), "{missing:?}");
    if let Some(run2_first) = (k + 1..=COUNT).find(|n| got.contains(n)) {
        assert!(missing.iter().all(|&n| n < run2_first), "{missing:?}");
    }
    assert_eq!(s["delivered"], got.len() as u64, "{s:?}");
    eprintln!(
        "spool kill (Kafka unreachable in run 1): accepted {k}, replayed {replayed}, lost 0, duplicates {dups}, in Kafka {} of the feed's {COUNT}; {} sent into the killed socket, never read",
        got.len(),
        missing.len()
    );
    assert_eq!(kgate::spool::inspect(&dir).unwrap().unacked, 0);
}

/// SIGKILL while records flow to the real broker: some are in Kafka, some only in the spool
/// (not yet fsynced, or not yet acknowledged). Everything accepted (in Kafka or in the spool
/// at the kill) is in Kafka after the restart; duplicates are counted and stay within what the
/// spool held unacknowledged.
#[test]
fn sigkill_mid_stream_loses_nothing_accepted_and_bounds_duplicates() {
    const COUNT: u64 = 40_000;
    let topic = unique("spool.flow");
    let dlq = unique("spool.flow.dlq");
    let (synth, url) = spawn_synth("ticker", &["--rate", "8000", "--count", "40000"]);
    let work = tempfile::tempdir().unwrap();
    let spool_root = work.path().join("spool");
    let dir = spool_root.join("ticks");
    let m1 = free_port();
    let run1 = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        run1.path(),
        &config(&brokers(), m1, &dlq, &pipeline(&url, &topic, &spool_root)),
    );
    wait_until(
        Duration::from_secs(60),
        || {
            http_get(&format!("127.0.0.1:{m1}"), "/metrics")
                .map(|(_, t)| metric(&t, "kafka_messages_published_total", &[]) >= 5000.0)
                .unwrap_or(false)
        },
        "5,000 records in Kafka",
    );
    gw.signal("-KILL");
    gw.wait(Duration::from_secs(10));

    let in_spool: BTreeSet<u64> = spooled_seqs(&dir).into_iter().collect();
    let unacked = kgate::spool::inspect(&dir).unwrap().unacked;
    let (before, dups_before) = kafka_seqs(&topic, 5000);
    assert_eq!(dups_before, 0);
    let accepted: BTreeSet<u64> = in_spool.union(&before).copied().collect();
    let k = *accepted.last().unwrap();
    // Accepted is the feed's first k records, none missing; some of them were only in the
    // spool at the kill.
    assert_eq!(accepted.len() as u64, k, "a gap in what run 1 accepted");
    assert!(unacked > 0, "nothing was unacknowledged at the kill");
    let only_spooled = in_spool.difference(&before).count();

    let m2 = free_port();
    let run2 = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        run2.path(),
        &config(&brokers(), m2, &dlq, &pipeline(&url, &topic, &spool_root)),
    );
    wait_until(
        Duration::from_secs(90),
        || synth.log_text().contains("sent 40000 messages"),
        "the feed to send all 40,000",
    );
    let recs = consume(
        &brokers(),
        &topic,
        (COUNT - 5000) as usize,
        Duration::from_secs(120),
    );
    let replayed = scrape(m2, "kgate_spool_replayed_total");
    stop(&mut gw, 40);
    let (set, dups) = seqs(&recs);
    let got: BTreeSet<u64> = set.into_iter().map(|(_, n)| n).collect();
    let lost: Vec<u64> = accepted
        .iter()
        .filter(|n| !got.contains(n))
        .copied()
        .collect();
    assert!(lost.is_empty(), "accepted and lost: {lost:?}");
    assert_eq!(
        replayed, unacked as f64,
        "records produced again from the spool"
    );
    assert!(
        dups as u64 <= unacked,
        "{dups} duplicates, more than the {unacked} unacknowledged at the kill"
    );
    let missing = (1..=COUNT).filter(|n| !got.contains(n)).count();
    eprintln!(
        "spool kill mid-stream: accepted {k} ({} in Kafka, {only_spooled} only in the spool at the kill), unacked {unacked}, replayed {replayed}, lost 0, duplicates {dups}; {missing} of the feed's {COUNT} sent into the killed socket, never read",
        before.len()
    );
}

fn kgate_ok(args: &[&str]) {
    let out = Command::new(kgate_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "kgate {args:?}: {out:?}");
}

fn overflow_config(
    brokers: &str,
    m: u16,
    dlq: &str,
    url: &str,
    topic: &str,
    spool: &Path,
) -> String {
    format!(
        "kafka:\n  brokers: ['{brokers}']\n  producer: {{max_buffered_records: 2000}}\nmetrics:\n  listen: '127.0.0.1:{m}'\ndlq: {{topic: '{dlq}'}}\nshutdown_timeout: 20s\npipelines:\n  - name: ticks\n    source: {{websocket: {{urls: ['{url}']}}}}\n    topic: {topic}\n    key: '${{exchange}}|${{symbol}}'\n    spool: {{dir: '{}', when: overflow, fsync: 100ms}}\n",
        spool.display()
    )
}

/// `when: overflow` with Kafka unreachable (an outage from the start): the feed is still read
/// to its end, memory first (the producer's 2,000 and the spool's queue of 2,000), the rest to
/// disk. The process is then killed (overflow does not promise to keep what is in memory) and
/// started against the real broker: everything on disk is produced, once, in the feed's order,
/// before the feed's new records.
#[test]
fn overflow_keeps_reading_the_feed_through_an_outage_then_drains_the_disk_in_order() {
    const COUNT: u64 = 20_000;
    let topic = unique("spool.overflow");
    let dlq = unique("spool.overflow.dlq");
    let b = brokers();
    kgate_ok(&["topics", "create", &topic, "-p", "1", "--brokers", &b]);
    let (synth, url) = spawn_synth("ticker", &["--rate", "5000", "--count", "20000"]);
    let work = tempfile::tempdir().unwrap();
    let spool_root = work.path().join("spool");
    let dir = spool_root.join("ticks");
    let m1 = free_port();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let run1 = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        run1.path(),
        &overflow_config(&nowhere, m1, &dlq, &url, &topic, &spool_root),
    );
    wait_until(
        Duration::from_secs(60),
        || synth.log_text().contains("sent 20000 messages"),
        "the feed to send all 20,000 while Kafka is unreachable",
    );
    // Everything the feed sent was read: what memory does not hold is on disk.
    wait_until(
        Duration::from_secs(30),
        || {
            http_get(&format!("127.0.0.1:{m1}"), "/metrics")
                .map(|(_, t)| {
                    metric(&t, "kafka_producer_websocket_messages_received_total", &[])
                        == COUNT as f64
                })
                .unwrap_or(false)
        },
        "kgate to read all 20,000",
    );
    wait_until(
        Duration::from_secs(30),
        || scrape(m1, "kgate_spool_records") >= (COUNT - 4001) as f64,
        "the overflow on disk",
    );
    gw.signal("-KILL");
    gw.wait(Duration::from_secs(10));
    let on_disk = spooled_seqs(&dir);
    let first = on_disk[0];
    // Memory took the first records (at most the producer's 2,000, the queue's 2,000 and the
    // one in hand); the disk holds every one after them, in order.
    assert!(first <= 4002, "the disk starts at {first}");
    assert_eq!(on_disk, (first..=COUNT).collect::<Vec<_>>());

    let m2 = free_port();
    let run2 = tempfile::tempdir().unwrap();
    let mut gw = spawn_run(
        run2.path(),
        &overflow_config(&b, m2, &dlq, &url, &topic, &spool_root),
    );
    let recs = consume(&b, &topic, on_disk.len(), Duration::from_secs(120));
    wait_until(
        Duration::from_secs(30),
        || scrape(m2, "kgate_spool_records") == 0.0,
        "the spool to drain",
    );
    let replayed = scrape(m2, "kgate_spool_replayed_total");
    stop(&mut gw, 40);
    let got: Vec<u64> = recs
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect();
    // One partition: offset order is the order kgate wrote.
    assert_eq!(
        got, on_disk,
        "the disk's records, once each, in the feed's order"
    );
    assert_eq!(replayed, on_disk.len() as f64);
    eprintln!(
        "spool overflow: Kafka unreachable, all {COUNT} of the feed read; {} in memory (lost with the kill, as overflow says), {} on disk, all {} in Kafka afterwards in order, 0 duplicates",
        first - 1,
        on_disk.len(),
        got.len()
    );
}

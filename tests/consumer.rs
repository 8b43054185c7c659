//! `kgate consume` and the consumer sinks against the real local Kafka: a group shares the
//! partitions and another group gets everything; a SIGKILL re-delivers and never skips; a
//! poison record goes to the DLQ and the loop goes on; a webhook that fails 30 % of calls loses
//! nothing; SIGTERM finishes the batch and commits. Run through `scripts/test`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use common::*;

fn create_topic(name: &str, partitions: i32) {
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
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap();
    for x in r {
        x.unwrap();
    }
}

/// Writes records `seqs` to `topic` (`{"seq":N,...}`, key `k<N>`, header `n: <N>`); `poison`
/// marks the ones whose value carries `"poison":true`.
fn produce(topic: &str, seqs: std::ops::Range<u64>, poison: &dyn Fn(u64) -> bool) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for seq in seqs {
        let value = if poison(seq) {
            format!(r#"{{"seq":{seq},"poison":true}}"#)
        } else {
            format!(r#"{{"seq":{seq},"reading":{}}}"#, seq % 97)
        };
        let key = format!("k{seq}");
        let n = seq.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: "n",
            value: Some(&n),
        });
        let mut rec = BaseRecord::to(topic)
            .key(&key)
            .payload(&value)
            .headers(headers);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(50));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// A `kgate consume` with its stdout in a file and its stderr in another.
struct Consume {
    child: Child,
    out: PathBuf,
    log: PathBuf,
}

impl Consume {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Consume {
        let out = dir.join(format!("{name}.out"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(kgate_bin())
            .arg("consume")
            .args(["--brokers", &brokers()])
            .args(args)
            .env("KGATE_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Consume { child, out, log }
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn assigned(&self) -> usize {
        self.log_text().matches("partitions assigned").count()
    }
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }
    /// SIGTERM, and the exit status within `secs`.
    fn term(&mut self, secs: u64) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.wait(secs)
    }
    fn wait(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("kgate consume did not exit; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Consume {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The records in JSON lines (a record object or an array of them a line).
fn records_in(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    // Only whole lines: the writer may be mid-line.
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        match serde_json::from_str::<serde_json::Value>(line).unwrap() {
            serde_json::Value::Array(a) => out.extend(a),
            v => out.push(v),
        }
    }
    out
}

fn seq_of(r: &serde_json::Value) -> u64 {
    r["value"]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no value.seq in {r}"))
}

/// Seq → how many times it was handled.
fn counts(recs: &[serde_json::Value]) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for r in recs {
        *m.entry(seq_of(r)).or_default() += 1;
    }
    m
}

/// The group's committed offsets and the high watermarks of `topic`, by partition.
fn committed_and_end(group: &str, topic: &str, partitions: i32) -> Vec<(i64, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| {
            let off = match committed.find_partition(topic, p).unwrap().offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            let (_, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (off, high)
        })
        .collect()
}

fn all_committed(group: &str, topic: &str, partitions: i32) -> bool {
    committed_and_end(group, topic, partitions)
        .iter()
        .all(|(c, h)| c == h)
}

/// (1) Two members of one group on a 6-partition topic: every record handled by exactly one of
/// them; a second group (run with `--max N`) gets every record once and stops by itself.
#[test]
fn one_group_shares_the_partitions_and_another_group_gets_everything() {
    const N: u64 = 6_000;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("consumer.share");
    let group = unique("share-g");
    create_topic(&topic, 6);
    let args = ["--topic", &topic, "--group", &group, "--from-beginning"];
    let mut a = Consume::start(dir.path(), "a", &args);
    wait_until(
        Duration::from_secs(30),
        || a.assigned() >= 1,
        "member a to join",
    );
    let mut b = Consume::start(dir.path(), "b", &args);
    // Eager rebalancing: `a` gives its partitions back and gets its share again.
    wait_until(
        Duration::from_secs(60),
        || b.assigned() >= 1 && a.assigned() >= 2,
        "member b to join and a to be re-assigned",
    );
    produce(&topic, 0..N, &|_| false);
    wait_until(
        Duration::from_secs(60),
        || records_in(&a.out).len() + records_in(&b.out).len() >= N as usize,
        "both members to print every record",
    );
    assert!(a.term(30).success(), "a:\n{}", a.log_text());
    assert!(b.term(30).success(), "b:\n{}", b.log_text());
    let (ra, rb) = (records_in(&a.out), records_in(&b.out));
    let (ca, cb) = (counts(&ra), counts(&rb));
    assert!(!ca.is_empty() && !cb.is_empty(), "both got a share");
    assert_eq!(ra.len(), ca.len(), "a handled no record twice");
    assert_eq!(rb.len(), cb.len(), "b handled no record twice");
    let sa: BTreeSet<u64> = ca.keys().copied().collect();
    let sb: BTreeSet<u64> = cb.keys().copied().collect();
    assert_eq!(sa.intersection(&sb).count(), 0, "no record handled by both");
    let union: BTreeSet<u64> = sa.union(&sb).copied().collect();
    assert_eq!(union, (0..N).collect(), "every record handled");
    // Partitions are not split across members.
    let pa: BTreeSet<i64> = ra
        .iter()
        .map(|r| r["partition"].as_i64().unwrap())
        .collect();
    let pb: BTreeSet<i64> = rb
        .iter()
        .map(|r| r["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(pa.intersection(&pb).count(), 0, "{pa:?} {pb:?}");
    // The record's shape: key, headers, JSON value, where it was read.
    let r = &ra[0];
    assert_eq!(r["topic"], topic.as_str());
    assert_eq!(r["key"], format!("k{}", seq_of(r)));
    assert_eq!(r["headers"]["n"], seq_of(r).to_string());
    assert!(r["offset"].as_i64().is_some());
    assert!(
        all_committed(&group, &topic, 6),
        "{:?}",
        committed_and_end(&group, &topic, 6)
    );

    let other = unique("share-other");
    let n = N.to_string();
    let mut c = Consume::start(
        dir.path(),
        "c",
        &[
            "--topic",
            &topic,
            "--group",
            &other,
            "--from-beginning",
            "--max",
            &n,
            "--batch",
            "100",
        ],
    );
    assert!(c.wait(60).success(), "c:\n{}", c.log_text());
    let rc = records_in(&c.out);
    let cc = counts(&rc);
    assert_eq!(rc.len(), N as usize, "--max N printed exactly N");
    assert_eq!(
        cc.keys().copied().collect::<BTreeSet<_>>(),
        (0..N).collect()
    );
    assert!(all_committed(&other, &topic, 6));
}

/// (2) A command sink whose handler appends each batch to a file; SIGKILL mid-stream, restart:
/// every seq handled at least once, none skipped.
#[test]
fn sigkill_mid_batch_then_restart_skips_nothing() {
    const N: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("consumer.kill");
    let group = unique("kill-g");
    create_topic(&topic, 3);
    produce(&topic, 0..N, &|_| false);
    let handled = dir.path().join("handled.ndjson");
    let script = dir.path().join("handler.sh");
    std::fs::write(
        &script,
        format!(
            "while IFS= read -r line; do printf '%s\\n' \"$line\" >> '{}'; sleep 0.05; echo ok; done\n",
            handled.display()
        ),
    )
    .unwrap();
    let sink = format!("command:sh {}", script.display());
    let args = [
        "--topic",
        &topic,
        "--group",
        &group,
        "--from-beginning",
        "--batch",
        "50",
        "--commit-interval",
        "200ms",
        "--sink",
        &sink,
    ];
    let mut first = Consume::start(dir.path(), "first", &args);
    wait_until(
        Duration::from_secs(60),
        || records_in(&handled).len() >= 1_000,
        "a third of the records to be handled",
    );
    first.signal("-KILL");
    first.wait(10);
    let before = records_in(&handled).len();
    assert!(before < N as usize, "killed mid-stream ({before} handled)");
    let mut second = Consume::start(dir.path(), "second", &args);
    wait_until(
        Duration::from_secs(90),
        || counts(&records_in(&handled)).len() == N as usize,
        "every seq to be handled after the restart",
    );
    assert!(second.term(30).success(), "{}", second.log_text());
    let recs = records_in(&handled);
    let c = counts(&recs);
    assert_eq!(
        c.keys().copied().collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>()
    );
    assert!(recs.len() >= N as usize);
    eprintln!(
        "handled {} records for {N} seqs ({} re-delivered after the SIGKILL)",
        recs.len(),
        recs.len() - N as usize
    );
    assert!(all_committed(&group, &topic, 3));
}

/// What the test webhook server saw: seqs of the batches it answered 2xx, and calls.
#[derive(Default)]
struct Hook {
    delivered: Vec<u64>,
    calls: u64,
    failed: u64,
}

/// A tiny HTTP/1.1 server: `fail(call_no, body)` decides a 500; else 200 and the body's seqs
/// are recorded. Keep-alive connections, one thread each.
fn serve_hook(
    fail: impl Fn(u64, &serde_json::Value) -> bool + Send + Sync + 'static,
) -> (String, Arc<Mutex<Hook>>) {
    serve_hook_status(move |call, body| {
        if fail(call, body) {
            "500 Internal Server Error"
        } else {
            "200 OK"
        }
    })
}

/// The test webhook with the status line chosen by `status(call_no, body)`; a 2xx records
/// the body's seqs, anything else counts as failed.
fn serve_hook_status(
    fail: impl Fn(u64, &serde_json::Value) -> &'static str + Send + Sync + 'static,
) -> (String, Arc<Mutex<Hook>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/in", listener.local_addr().unwrap());
    let hook = Arc::new(Mutex::new(Hook::default()));
    let fail = Arc::new(fail);
    let h = hook.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (h, fail) = (h.clone(), fail.clone());
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if first {
                            first = false;
                            continue;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let status = {
                        let mut g = h.lock().unwrap();
                        g.calls += 1;
                        let status = fail(g.calls, &v);
                        if status.starts_with('2') {
                            for rec in v.as_array().unwrap() {
                                g.delivered.push(seq_of(rec));
                            }
                        } else {
                            g.failed += 1;
                        }
                        status
                    };
                    let _ = write!(w, "HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nno");
                }
            });
        }
    });
    (url, hook)
}

/// The DLQ records of `source_topic` in `dlq`, by seq.
fn dlq_by_seq(dlq: &str, want: usize) -> BTreeMap<u64, Rec> {
    consume(&brokers(), dlq, want, Duration::from_secs(30))
        .into_iter()
        .map(|r| (r.json()["seq"].as_u64().unwrap(), r))
        .collect()
}

/// (3) A webhook that always answers 500 for poison records: each goes to the DLQ as
/// sink_failed after its attempts, its offset is committed, and the records after it are
/// delivered.
#[test]
fn a_poison_record_goes_to_the_dlq_and_the_loop_goes_on() {
    const N: u64 = 200;
    let poison = |s: u64| s % 50 == 7;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("consumer.poison");
    let dlq = unique("consumer.poison.dlq");
    let group = unique("poison-g");
    create_topic(&topic, 2);
    create_topic(&dlq, 1);
    let (url, hook) = serve_hook(|_, body| body.to_string().contains("\"poison\":true"));
    produce(&topic, 0..N, &poison);
    let sink = format!("webhook:{url}");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut c = Consume::start(
        dir.path(),
        "c",
        &[
            "--metrics",
            &metrics,
            "--topic",
            &topic,
            "--group",
            &group,
            "--from-beginning",
            "--sink",
            &sink,
            "--max-attempts",
            "3",
            "--backoff",
            "20ms",
            "--dlq-topic",
            &dlq,
            "--commit-interval",
            "200ms",
        ],
    );
    let good = (0..N).filter(|s| !poison(*s)).count();
    wait_until(
        Duration::from_secs(60),
        || hook.lock().unwrap().delivered.len() >= good,
        "every good record to be delivered",
    );
    wait_until(
        Duration::from_secs(30),
        || all_committed(&group, &topic, 2),
        "every offset, the poison ones included, to be committed",
    );
    let bad_n = (0..N).filter(|s| poison(*s)).count() as f64;
    let (_, text) = http_get(&metrics, "/metrics").unwrap();
    let t = format!("topic=\"{topic}\"");
    assert_eq!(
        metric(&text, "kafka_consumer_errors_total", &[&t]),
        3.0 * bad_n,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "kafka_dlq_published_total",
            &["error_type=\"sink_failed\""]
        ),
        bad_n
    );
    assert_eq!(
        metric(
            &text,
            "kafka_consumer_batch_size_count",
            &["sink=\"webhook\""]
        ),
        N as f64
    );
    assert!(c.term(30).success(), "{}", c.log_text());
    let h = hook.lock().unwrap();
    let delivered: BTreeSet<u64> = h.delivered.iter().copied().collect();
    assert_eq!(delivered, (0..N).filter(|s| !poison(*s)).collect());
    let bad: Vec<u64> = (0..N).filter(|s| poison(*s)).collect();
    assert_eq!(
        h.failed,
        3 * bad.len() as u64,
        "3 attempts per poison record"
    );
    let dead = dlq_by_seq(&dlq, bad.len());
    assert_eq!(dead.keys().copied().collect::<Vec<_>>(), bad);
    for (seq, r) in &dead {
        assert_eq!(r.headers["error_type"], "sink_failed");
        assert_eq!(r.headers["source_topic"], topic);
        assert_eq!(r.headers["n"], seq.to_string(), "input headers kept");
        let msg = &r.headers["error_message"];
        assert!(
            msg.contains("after 3 attempts") && msg.contains("HTTP 500") && msg.contains(&url),
            "{msg}"
        );
        assert_eq!(
            r.value,
            format!(r#"{{"seq":{seq},"poison":true}}"#).into_bytes(),
            "the original bytes"
        );
    }
}

/// (4) A webhook failing 30 % of calls, batches of 20, 2 attempts: every record is delivered
/// or dead-lettered (none lost), and the offsets are committed.
#[test]
fn a_flaky_webhook_loses_nothing() {
    const N: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("consumer.flaky");
    let dlq = unique("consumer.flaky.dlq");
    let group = unique("flaky-g");
    create_topic(&topic, 3);
    create_topic(&dlq, 1);
    // Calls 3, 6, 9 of every 10: 30 %, sometimes twice in a row.
    let (url, hook) = serve_hook(|call, _| matches!(call % 10, 3 | 6 | 7));
    produce(&topic, 0..N, &|_| false);
    let sink = format!("webhook:{url}");
    let mut c = Consume::start(
        dir.path(),
        "c",
        &[
            "--topic",
            &topic,
            "--group",
            &group,
            "--from-beginning",
            "--sink",
            &sink,
            "--batch",
            "20",
            "--batch-timeout",
            "200ms",
            "--max-attempts",
            "2",
            "--backoff",
            "10ms",
            "--dlq-topic",
            &dlq,
            "--commit-interval",
            "200ms",
        ],
    );
    wait_until(
        Duration::from_secs(90),
        || all_committed(&group, &topic, 3),
        "every offset to be committed",
    );
    assert!(c.term(30).success(), "{}", c.log_text());
    let h = hook.lock().unwrap();
    let delivered: BTreeSet<u64> = h.delivered.iter().copied().collect();
    assert_eq!(
        delivered.len(),
        h.delivered.len(),
        "a 2xx batch is not sent again"
    );
    let dead_count = N as usize - delivered.len();
    assert!(
        dead_count > 0,
        "calls 6 and 7 fail in a row: some batch is dead-lettered"
    );
    let dead = dlq_by_seq(&dlq, dead_count);
    let dead_set: BTreeSet<u64> = dead.keys().copied().collect();
    assert_eq!(delivered.intersection(&dead_set).count(), 0);
    let all: BTreeSet<u64> = delivered.union(&dead_set).copied().collect();
    assert_eq!(
        all,
        (0..N).collect(),
        "every record delivered or dead-lettered"
    );
    assert!(
        h.failed * 10 >= h.calls * 2,
        "about 30 % failed: {} of {}",
        h.failed,
        h.calls
    );
    for r in dead.values() {
        assert_eq!(r.headers["error_type"], "sink_failed");
    }
}

/// (5) SIGTERM with a batch open (100 records, a 10 minute timeout): the batch is finished
/// and committed, exit 0; a restart with the same group reads nothing old.
#[test]
fn sigterm_finishes_the_batch_commits_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("consumer.term");
    let group = unique("term-g");
    create_topic(&topic, 1);
    produce(&topic, 0..250, &|_| false);
    let file = dir.path().join("records.ndjson");
    let sink = format!("file:{}", file.display());
    let args = [
        "--topic",
        &topic,
        "--group",
        &group,
        "--from-beginning",
        "--sink",
        &sink,
        "--batch",
        "100",
        "--batch-timeout",
        "10m",
    ];
    let mut c = Consume::start(dir.path(), "c", &args);
    wait_until(
        Duration::from_secs(60),
        || records_in(&file).len() >= 200,
        "the two full batches to be written",
    );
    assert_eq!(records_in(&file).len(), 200, "the third batch is open");
    let status = c.term(30);
    assert!(status.success(), "exit {status}; log:\n{}", c.log_text());
    let recs = records_in(&file);
    assert_eq!(
        counts(&recs).keys().copied().collect::<Vec<_>>(),
        (0..250).collect::<Vec<_>>()
    );
    assert_eq!(recs.len(), 250);
    assert_eq!(committed_and_end(&group, &topic, 1), vec![(250, 250)]);
    // Restarted: only the new record arrives.
    let mut again = Consume::start(dir.path(), "again", &args[..args.len() - 2]);
    wait_until(
        Duration::from_secs(30),
        || again.assigned() >= 1,
        "the restart to join",
    );
    produce(&topic, 250..251, &|_| false);
    wait_until(
        Duration::from_secs(30),
        || records_in(&file).len() > 250,
        "the new record",
    );
    assert!(again.term(30).success());
    let recs = records_in(&file);
    assert_eq!(recs.len(), 251, "nothing old read again");
    assert_eq!(seq_of(&recs[250]), 250);
}

/// (6) `--from-timestamp`: a new group starts at the first record written at or after the time
/// in every partition.
#[test]
fn from_timestamp_starts_at_the_first_record_at_or_after_the_time() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("consumer.time");
    create_topic(&topic, 3);
    produce(&topic, 0..60, &|_| false);
    // Every record so far has a timestamp before `at` (CreateTime, in milliseconds).
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 1;
    std::thread::sleep(Duration::from_millis(20));
    produce(&topic, 60..100, &|_| false);
    let group = unique("time-g");
    let at = at.to_string();
    let mut c = Consume::start(
        dir.path(),
        "c",
        &[
            "--topic",
            &topic,
            "--group",
            &group,
            "--from-timestamp",
            &at,
            "--max",
            "40",
        ],
    );
    assert!(c.wait(60).success(), "{}", c.log_text());
    let recs = records_in(&c.out);
    assert_eq!(
        counts(&recs).into_iter().collect::<Vec<_>>(),
        (60..100).map(|s| (s, 1)).collect::<Vec<_>>()
    );
    assert!(all_committed(&group, &topic, 3));
}

/// (7) A Confluent-framed Avro value is printed decoded through the registry (`--registry`),
/// next to a JSON one and a binary one.
#[test]
fn avro_values_are_decoded_through_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("consumer.avro");
    create_topic(&topic, 1);
    let schema = r#"{"type":"record","name":"Reading","fields":[{"name":"id","type":"long"},{"name":"s","type":"string"}]}"#;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent
        .post(&format!("{}/subjects/{topic}-value/versions", registry()))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .send(serde_json::json!({ "schema": schema }).to_string())
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    let id = v["id"].as_u64().unwrap() as u32;
    // {"id": 7, "s": "hi"}: zigzag varint 14, then length 2 (zigzag 4) and the bytes.
    let mut framed = vec![0u8];
    framed.extend_from_slice(&id.to_be_bytes());
    framed.extend_from_slice(&[0x0e, 0x04, b'h', b'i']);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for value in [framed.as_slice(), br#"{"seq":1}"#, b"\xff\xfe"] {
        p.send(BaseRecord::<(), [u8]>::to(&topic).payload(value))
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let group = unique("avro-g");
    let reg = registry();
    let mut c = Consume::start(
        dir.path(),
        "c",
        &[
            "--topic",
            &topic,
            "--group",
            &group,
            "--from-beginning",
            "--max",
            "3",
            "--registry",
            &reg,
        ],
    );
    assert!(c.wait(60).success(), "{}", c.log_text());
    let recs = records_in(&c.out);
    let values: Vec<&serde_json::Value> = recs.iter().map(|r| &r["value"]).collect();
    assert_eq!(
        values,
        [
            &serde_json::json!({"id": 7, "s": "hi"}),
            &serde_json::json!({"seq": 1}),
            &serde_json::json!({"base64": "//4="}),
        ]
    );
    assert!(recs.iter().all(|r| r["key"].is_null()));
}

/// (8) A 4xx other than 408/429 is not tried again: the record goes to the DLQ after one
/// attempt, the others are delivered.
#[test]
fn a_client_error_is_dead_lettered_without_retries() {
    const N: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("consumer.4xx");
    let dlq = unique("consumer.4xx.dlq");
    let group = unique("4xx-g");
    create_topic(&topic, 1);
    create_topic(&dlq, 1);
    let refused = |s: u64| s % 10 == 3;
    let (url, hook) = serve_hook_status(move |_, body| {
        let seq = body[0]["value"]["seq"].as_u64().unwrap();
        if refused(seq) {
            "422 Unprocessable Entity"
        } else {
            "200 OK"
        }
    });
    produce(&topic, 0..N, &|_| false);
    let sink = format!("webhook:{url}");
    let mut c = Consume::start(
        dir.path(),
        "c",
        &[
            "--topic",
            &topic,
            "--group",
            &group,
            "--from-beginning",
            "--sink",
            &sink,
            "--max-attempts",
            "5",
            "--backoff",
            "10ms",
            "--dlq-topic",
            &dlq,
            "--commit-interval",
            "200ms",
        ],
    );
    wait_until(
        Duration::from_secs(60),
        || all_committed(&group, &topic, 1),
        "every offset to be committed",
    );
    assert!(c.term(30).success(), "{}", c.log_text());
    let bad: Vec<u64> = (0..N).filter(|s| refused(*s)).collect();
    let h = hook.lock().unwrap();
    assert_eq!(h.failed, bad.len() as u64, "one attempt each");
    assert_eq!(h.delivered.len() as u64, N - bad.len() as u64);
    let dead = dlq_by_seq(&dlq, bad.len());
    assert_eq!(dead.keys().copied().collect::<Vec<_>>(), bad);
    for r in dead.values() {
        let msg = &r.headers["error_message"];
        assert!(
            msg.contains("after 1 attempt:") && msg.contains("422"),
            "{msg}"
        );
    }
}

/// A pipeline of `kgate run` with `sink:` (no topic): a raw topic validated (JSON Schema) into a
/// rotating file in batches, the invalid records in the pipeline's DLQ; after SIGTERM every
/// record is in exactly one of them and the group's offsets are the end offsets.
#[test]
fn a_pipeline_with_a_sink_validates_into_a_file_and_commits() {
    let raw = unique("sinkpipe.raw");
    let dlq = unique("sinkpipe.dlq");
    let group = unique("sinkpipe.group");
    create_topic(&raw, 3);
    let total = 1500u64;
    // Every 50th record carries `"poison":true`, which the schema forbids.
    produce(&raw, 0..total, &|s| s % 50 == 7);
    let bad = (0..total).filter(|s| s % 50 == 7).count();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reading.schema.json"),
        r#"{"type":"object","required":["seq"],"properties":{"seq":{"type":"integer"},"poison":false}}"#,
    )
    .unwrap();
    let out = dir.path().join("out.ndjson");
    let cfg = format!(
        "kafka:\n  brokers: ['{b}']\ndlq: {{topic: unused.{dlq}}}\nshutdown_timeout: 20s\npipelines:\n  - name: to-file\n    source: {{kafka: {{topics: [{raw}], group: {group}, start: earliest, commit_interval: 1s}}}}\n    validate: {{json_schema: reading.schema.json}}\n    dlq: {{topic: {dlq}}}\n    sink:\n      file: {{path: '{out}'}}\n      batch: {{max_records: 100, timeout: 200ms}}\n",
        b = brokers(),
        out = out.display()
    );
    let mut gw = spawn_run(dir.path(), &cfg);
    let deadline = Instant::now() + Duration::from_secs(90);
    while records_in(&out).len() < total as usize - bad {
        assert!(
            Instant::now() < deadline,
            "{} of {} in the file; log:\n{}",
            records_in(&out).len(),
            total as usize - bad,
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let dead = consume(&brokers(), &dlq, bad, Duration::from_secs(30));
    let summary = stop(&mut gw, 30);
    let recs = records_in(&out);
    let handled = counts(&recs);
    assert!(handled.values().all(|n| *n == 1), "a record written twice");
    let dead_seqs: BTreeSet<u64> = dead
        .iter()
        .map(|r| r.json()["seq"].as_u64().expect("seq in the DLQ record"))
        .collect();
    assert_eq!(dead.len(), bad);
    assert!(dead
        .iter()
        .all(
            |r| r.headers.get("error_type").map(String::as_str) == Some("validation_failed")
                && r.headers.get("consumer_group") == Some(&group)
        ));
    for s in 0..total {
        assert_ne!(
            handled.contains_key(&s),
            dead_seqs.contains(&s),
            "seq {s}: in the file {} / in the DLQ {}",
            handled.contains_key(&s),
            dead_seqs.contains(&s)
        );
    }
    // The file keeps where each record was read.
    assert!(recs.iter().all(|r| r["topic"] == raw.as_str()));
    assert_eq!(summary["delivered"], total - bad as u64, "{summary:?}");
    assert_eq!(summary["dead-lettered"], bad as u64, "{summary:?}");
    for (p, (c, e)) in committed_and_end(&group, &raw, 3).iter().enumerate() {
        assert_eq!(c, e, "partition {p}: committed vs end");
    }
}

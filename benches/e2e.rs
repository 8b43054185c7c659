//! End-to-end benchmark: a minimal rdkafka producer loop ("raw") against the release `kgate`
//! binary (`kgate synth` → `kgate run` → Kafka), side by side, in one run, against the same
//! broker. Run it with `scripts/bench` (or `cargo bench --bench e2e`); BENCHMARKS.md explains
//! what is measured and how.
//!
//! Environment:
//!   BENCH_COUNT          ticker records per phase (default 500000)
//!   BENCH_TRADES_COUNT   trades records per trades phase (default BENCH_COUNT × 2/5)
//!   BENCH_PHASES         comma list of phases (default all):
//!                        raw, raw-1m, kgate, raw-trades, kgate-trades, kgate-rename, kgate-avro
//!   BENCH_ROUNDS         rounds of all phases, interleaved; the report shows the median round
//!                        of each column and every round's throughput (default 3)
//!   BENCH_RAW_RATE       pace the raw columns at this many msgs/s (default 0 = as fast as
//!                        possible); a control experiment, e.g. raw at kgate's rate
//!   BENCH_FEEDS          synth servers (WebSocket URLs) each kgate column reads, sharing the
//!                        records (default 1)
//!   BENCH_WARMUP         records produced to a throw-away topic first (default 50000; 0 = none)
//!   BENCH_PARTITIONS     partitions of every bench topic (default 1, the broker's default)
//!   BENCH_BROKERS        bootstrap servers (default $KGATE_BROKERS or 127.0.0.1:9092)
//!   BENCH_BROKER_PID     pid of the broker JVM (default: the process listening on its port)
//!   BENCH_POLL_MS        /metrics poll interval in the kgate phases (default 10)
//!   BENCH_REGISTRY       schema registry of the kgate-avro phase (default $KGATE_REGISTRY_URL
//!                        or http://127.0.0.1:8081/apis/ccompat/v7)
//!   BENCH_PERF=1         also `perf record` kgate run in the kgate phases (BENCH_PERF_ARGS,
//!                        default "-F 499 -g"); numbers of such a run are perturbed
//!   BENCH_KEEP_TOPICS=1  keep the bench topics (default: deleted after they are counted)

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use kgate::cmd::synth::Feed;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

/// kgate's latency buckets (src/metrics/mod.rs), in seconds, used to bucket the raw latencies too.
const KGATE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The `source` field of every generated message (and `--id` of the synth).
const SOURCE_ID: &str = "bench";

const RENAME_FROM: &str = "/tradeCredential/@context";
const RENAME_TO: &str = "/tradeCredential/context";

// ------------------------------------------------------------------------------------------
// Options and phases

struct Opts {
    count: u64,
    trades_count: u64,
    rounds: u64,
    raw_rate: u64,
    feeds: u64,
    warmup: u64,
    partitions: i32,
    brokers: String,
    broker_pid: Option<u32>,
    poll: Duration,
    perf: Option<String>,
    keep_topics: bool,
    phases: Vec<Phase>,
    /// The schema registry of the Avro column.
    registry: String,
    /// Prefix of every topic of this run.
    prefix: String,
    /// Where the raw producer sends its priming record.
    ready_topic: String,
    out_dir: PathBuf,
    stamp: String,
    clk_tck: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Raw,
    Raw1m,
    Kgate,
    RawTrades,
    KgateTrades,
    KgateRename,
    KgateAvro,
}

impl Phase {
    const ALL: [Phase; 7] = [
        Phase::Raw,
        Phase::Raw1m,
        Phase::Kgate,
        Phase::RawTrades,
        Phase::KgateTrades,
        Phase::KgateRename,
        Phase::KgateAvro,
    ];

    fn id(self) -> &'static str {
        match self {
            Phase::Raw => "raw",
            Phase::Raw1m => "raw-1m",
            Phase::Kgate => "kgate",
            Phase::RawTrades => "raw-trades",
            Phase::KgateTrades => "kgate-trades",
            Phase::KgateRename => "kgate-rename",
            Phase::KgateAvro => "kgate-avro",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Phase::Raw => "raw, queue 10k",
            Phase::Raw1m => "raw, queue 1M",
            Phase::Kgate => "kgate",
            Phase::RawTrades => "raw trades, queue 10k",
            Phase::KgateTrades => "kgate trades",
            Phase::KgateRename => "kgate trades + rename",
            Phase::KgateAvro => "kgate trades + rename, Avro",
        }
    }

    fn feed(self) -> Feed {
        match self {
            Phase::Raw | Phase::Raw1m | Phase::Kgate => Feed::Ticker,
            _ => Feed::Trades,
        }
    }

    fn is_raw(self) -> bool {
        matches!(self, Phase::Raw | Phase::Raw1m | Phase::RawTrades)
    }

    fn queue(self) -> u64 {
        if self == Phase::Raw1m {
            1_000_000
        } else {
            10_000
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

impl Opts {
    fn from_env() -> Opts {
        let count = env_u64("BENCH_COUNT", 500_000).max(1);
        let phases = match std::env::var("BENCH_PHASES") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| {
                    Phase::ALL
                        .into_iter()
                        .find(|p| p.id() == s)
                        .unwrap_or_else(|| {
                            let ids: Vec<_> = Phase::ALL.iter().map(|p| p.id()).collect();
                            panic!(
                                "BENCH_PHASES: unknown phase {s:?} (known: {})",
                                ids.join(", ")
                            )
                        })
                })
                .collect(),
            _ => Phase::ALL.to_vec(),
        };
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_kgate"));
        // <target>/release/kgate → <target>/bench
        let out_dir = bin
            .parent()
            .and_then(Path::parent)
            .map(|t| t.join("bench"))
            .unwrap_or_else(|| PathBuf::from("target/bench"));
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace(':', "-");
        let clk_tck = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        let prefix = format!("kgate-bench.{stamp}.{}", std::process::id());
        Opts {
            ready_topic: format!("{prefix}.ready"),
            prefix,
            registry: std::env::var("BENCH_REGISTRY")
                .or_else(|_| std::env::var("KGATE_REGISTRY_URL"))
                .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into()),
            count,
            trades_count: env_u64("BENCH_TRADES_COUNT", (count * 2 / 5).max(1)).max(1),
            rounds: env_u64("BENCH_ROUNDS", 3).max(1),
            raw_rate: env_u64("BENCH_RAW_RATE", 0),
            feeds: env_u64("BENCH_FEEDS", 1).max(1),
            warmup: env_u64("BENCH_WARMUP", 50_000),
            partitions: env_u64("BENCH_PARTITIONS", 1).max(1) as i32,
            brokers: std::env::var("BENCH_BROKERS")
                .or_else(|_| std::env::var("KGATE_BROKERS"))
                .unwrap_or_else(|_| "127.0.0.1:9092".into()),
            broker_pid: std::env::var("BENCH_BROKER_PID")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            poll: Duration::from_millis(env_u64("BENCH_POLL_MS", 10).max(1)),
            perf: env_flag("BENCH_PERF")
                .then(|| std::env::var("BENCH_PERF_ARGS").unwrap_or_else(|_| "-F 499 -g".into())),
            keep_topics: env_flag("BENCH_KEEP_TOPICS"),
            phases,
            out_dir,
            stamp,
            clk_tck,
        }
    }

    fn n(&self, p: Phase) -> u64 {
        if p.feed() == Feed::Trades {
            self.trades_count
        } else {
            self.count
        }
    }
}

// ------------------------------------------------------------------------------------------
// /proc: CPU time, memory, the broker's pid

/// utime + stime of a process, in clock ticks.
fn proc_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_ticks(&s)
}

fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ", fields start at `state` (field 3); utime is 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks per thread name (threads of the same name summed), e.g. "tokio-runtime-w".
fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(a), Some(b)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let name = s[a + 1..b].to_string();
        if let Some(t) = stat_ticks(&s) {
            *out.entry(name).or_insert(0) += t;
        }
    }
    out
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// (busy, total, steal) ticks of the whole machine; busy includes steal.
fn machine_ticks() -> (u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = s.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (
        total.saturating_sub(idle),
        total,
        v.get(7).copied().unwrap_or(0),
    )
}

/// The pid of the process listening on TCP `port` (found through its socket's inode).
fn listening_pid(port: u16) -> Option<u32> {
    let hex = format!("{port:04X}");
    let mut inodes = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(s) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in s.lines().skip(1) {
            let c: Vec<&str> = line.split_whitespace().collect();
            if c.len() > 9 && c[3] == "0A" && c[1].rsplit(':').next() == Some(hex.as_str()) {
                inodes.push(format!("socket:[{}]", c[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| Path::new(i) == link) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// "kafka-4.1.1" or "kafka_2.13-4.1.1" from the broker's class path, if it is there.
fn broker_version(pid: u32) -> Option<String> {
    let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
    for pat in ["kafka_2.", "kafka-"] {
        let mut from = 0;
        while let Some(i) = cmd[from..].find(pat) {
            let rest = &cmd[from + i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                .unwrap_or(rest.len());
            let name = rest[..end].trim_end_matches(".jar");
            if name
                .rsplit('-')
                .next()
                .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()) && v.contains('.'))
            {
                return Some(name.to_string());
            }
            from += i + pat.len();
        }
    }
    None
}

/// CPU and wall clock at one instant, for deltas over a phase.
#[derive(Clone)]
struct Snap {
    at: Instant,
    machine: (u64, u64, u64),
    procs: BTreeMap<&'static str, u64>,
    threads: BTreeMap<String, u64>,
}

fn snap(procs: &[(&'static str, Option<u32>)], threads_of: Option<u32>) -> Snap {
    Snap {
        at: Instant::now(),
        machine: machine_ticks(),
        // Entries with the same name (e.g. several synths) are summed.
        procs: procs
            .iter()
            .filter_map(|(name, pid)| Some((*name, proc_ticks((*pid)?)?)))
            .fold(BTreeMap::new(), |mut m, (name, t)| {
                *m.entry(name).or_insert(0) += t;
                m
            }),
        threads: threads_of.map(thread_ticks).unwrap_or_default(),
    }
}

// ------------------------------------------------------------------------------------------
// Results

#[derive(Default)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
}

struct Cpu {
    /// Seconds of CPU per component over the measured window.
    secs: BTreeMap<&'static str, f64>,
    /// Seconds of CPU per thread name of the producing process.
    threads: Vec<(String, f64)>,
    window_s: f64,
    machine_busy_s: f64,
    machine_total_s: f64,
    machine_steal_s: f64,
}

struct PhaseResult {
    phase: Phase,
    topic: String,
    n: u64,
    mean_payload: f64,
    /// Records per second from the first ack to the last.
    rate: f64,
    /// Seconds from the first record offered to the last ack.
    wall_s: f64,
    exact: Option<Latency>,
    bucketed: Latency,
    idle_rss_kb: Option<u64>,
    peak_rss_kb: Option<u64>,
    cpu: Cpu,
    queue_full: Option<u64>,
    in_kafka: u64,
    /// Failures: the run exits non-zero.
    notes: Vec<String>,
    /// Caveats about the numbers (e.g. the broker restarted).
    warnings: Vec<String>,
}

fn ticks_to_s(o: &Opts, t: u64) -> f64 {
    t as f64 / o.clk_tck
}

fn cpu_between(o: &Opts, a: &Snap, b: &Snap) -> Cpu {
    let mut secs = BTreeMap::new();
    for (name, t1) in &b.procs {
        let t0 = a.procs.get(name).copied().unwrap_or(0);
        secs.insert(*name, ticks_to_s(o, t1.saturating_sub(t0)));
    }
    let mut threads: Vec<(String, f64)> = b
        .threads
        .iter()
        .map(|(n, t1)| {
            let t0 = a.threads.get(n).copied().unwrap_or(0);
            (n.clone(), ticks_to_s(o, t1.saturating_sub(t0)))
        })
        .filter(|(_, s)| *s > 0.0)
        .collect();
    threads.sort_by(|x, y| y.1.total_cmp(&x.1));
    Cpu {
        secs,
        threads,
        window_s: (b.at - a.at).as_secs_f64(),
        machine_busy_s: ticks_to_s(o, b.machine.0.saturating_sub(a.machine.0)),
        machine_total_s: ticks_to_s(o, b.machine.1.saturating_sub(a.machine.1)),
        machine_steal_s: ticks_to_s(o, b.machine.2.saturating_sub(a.machine.2)),
    }
}

/// Prometheus-style quantile: linear interpolation inside the bucket that holds the rank.
fn bucket_quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0);
    if total == 0 {
        return f64::NAN;
    }
    let rank = q * total as f64;
    let (mut lo, mut below) = (0.0, 0u64);
    for &(le, cum) in buckets {
        if cum as f64 >= rank {
            if le.is_infinite() {
                return lo;
            }
            let inside = (cum - below) as f64;
            let frac = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return lo + (le - lo) * frac;
        }
        lo = le;
        below = cum;
    }
    lo
}

/// Cumulative buckets (le seconds, count) of latencies in microseconds.
fn bucketize_us(lat_us: &[u32]) -> Vec<(f64, u64)> {
    let mut counts = vec![0u64; KGATE_BUCKETS.len() + 1];
    for &us in lat_us {
        let s = us as f64 / 1e6;
        let i = KGATE_BUCKETS
            .iter()
            .position(|&le| s <= le)
            .unwrap_or(KGATE_BUCKETS.len());
        counts[i] += 1;
    }
    let mut cum = 0;
    KGATE_BUCKETS
        .iter()
        .copied()
        .chain(std::iter::once(f64::INFINITY))
        .zip(counts)
        .map(|(le, c)| {
            cum += c;
            (le, cum)
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Kafka helpers: topics, readiness, counting

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn create_topic(o: &Opts, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &o.brokers)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let res = runtime()
        .block_on(admin.create_topics(
            &[NewTopic::new(
                topic,
                o.partitions,
                TopicReplication::Fixed(1),
            )],
            &opts,
        ))
        .unwrap_or_else(|e| panic!("cannot create topic {topic}: {e}"));
    for r in res {
        if let Err((t, e)) = r {
            panic!("cannot create topic {t}: {e}");
        }
    }
    // Wait until every partition has a leader, so that no phase times metadata discovery.
    let c = consumer(o);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = md.topics().first() {
                if t.error().is_none()
                    && t.partitions().len() == o.partitions as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0)
                {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic} has no leader after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn delete_topics(o: &Opts, topics: &[String]) {
    if topics.is_empty() {
        return;
    }
    let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
        .set("bootstrap.servers", &o.brokers)
        .create()
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: cannot delete the bench topics: {e}");
            return;
        }
    };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    if let Err(e) = runtime().block_on(admin.delete_topics(&names, &opts)) {
        eprintln!("bench: cannot delete the bench topics: {e}");
    }
}

fn consumer(o: &Opts) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", &o.brokers)
        .set("group.id", "kgate-bench-counter")
        .create()
        .expect("consumer")
}

/// Records in the topic: the sum over partitions of high − low watermark.
fn records_in_kafka(o: &Opts, topic: &str) -> u64 {
    let c = consumer(o);
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let t = md.topics().first().expect("topic in metadata");
    t.partitions()
        .iter()
        .map(|p| {
            let (lo, hi) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{}: {e}", p.id()));
            (hi - lo).max(0) as u64
        })
        .sum()
}

// ------------------------------------------------------------------------------------------
// Payloads

/// N (key, value) pairs made by the synth's own generator; keys are `exchange|symbol`.
fn payloads(feed: Feed, n: u64) -> Vec<(String, String)> {
    (1..=n)
        .map(|seq| {
            let mut rng = StdRng::seed_from_u64(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 1);
            let v = kgate::cmd::synth::message(feed, seq, SOURCE_ID, &mut rng);
            let j: serde_json::Value = serde_json::from_str(&v).expect("synth makes JSON");
            let key = format!(
                "{}|{}",
                j["exchange"].as_str().unwrap_or_default(),
                j["symbol"].as_str().unwrap_or_default()
            );
            (key, v)
        })
        .collect()
}

/// Payloads made once per feed and reused by every round and column.
#[derive(Default)]
struct PayloadCache(std::cell::RefCell<BTreeMap<&'static str, Payloads>>);

/// (key, value) pairs.
type Payloads = std::rc::Rc<Vec<(String, String)>>;

impl PayloadCache {
    fn get(&self, feed: Feed, n: u64) -> Payloads {
        let mut m = self.0.borrow_mut();
        match m.get(feed.as_str()) {
            Some(p) if p.len() as u64 == n => p.clone(),
            _ => {
                eprintln!("bench: generating {n} {feed} payloads");
                let p = std::rc::Rc::new(payloads(feed, n));
                m.insert(feed.as_str(), p.clone());
                p
            }
        }
    }
}

fn mean_len(p: &[(String, String)]) -> f64 {
    p.iter().map(|(_, v)| v.len() as f64).sum::<f64>() / p.len().max(1) as f64
}

// ------------------------------------------------------------------------------------------
// Raw: a minimal rdkafka loop

struct RawCtx {
    start: Instant,
    lat_us: Mutex<Vec<u32>>,
    acked: AtomicU64,
    failed: AtomicU64,
    first_ack_ns: AtomicU64,
    last_ack_ns: AtomicU64,
}

impl RawCtx {
    /// `sent_ns`: nanoseconds since `start` when the record was first offered to the producer.
    fn on_delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        let now = self.start.elapsed().as_nanos() as u64;
        if sent_ns == PRIMING {
            return;
        }
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let us = (now.saturating_sub(sent_ns as u64) / 1000).min(u32::MAX as u64) as u32;
        self.lat_us.lock().expect("lock").push(us);
        self.acked.fetch_add(1, Ordering::Relaxed);
        let _ =
            self.first_ack_ns
                .compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ack_ns.store(now, Ordering::Relaxed);
    }
}

fn producer_config(o: &Opts, queue: u64) -> ClientConfig {
    let mut c = ClientConfig::new();
    // The same settings kgate's producer uses by default (src/kafka/mod.rs).
    c.set("bootstrap.servers", &o.brokers)
        .set("client.id", "kgate-bench-raw")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "zstd")
        .set("linger.ms", "10")
        .set("batch.size", "131072")
        .set("message.timeout.ms", "0")
        .set("request.timeout.ms", "30000")
        .set("queue.buffering.max.messages", queue.to_string())
        .set("queue.buffering.max.kbytes", "1048576");
    c
}

/// Produces `msgs` to `topic`; returns (first offer → last ack, QueueFull retries, ctx).
/// `hook(false)` runs once the producer is primed, `hook(true)` after the flush, while the
/// producer's threads still exist (CPU snapshots).
fn produce_raw(
    o: &Opts,
    queue: u64,
    topic: &str,
    msgs: &[(String, String)],
    mut hook: impl FnMut(bool),
) -> (Duration, u64, std::sync::Arc<RawCtx>) {
    let ctx = std::sync::Arc::new(RawCtx {
        start: Instant::now(),
        lat_us: Mutex::new(Vec::with_capacity(msgs.len())),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_ack_ns: AtomicU64::new(u64::MAX),
        last_ack_ns: AtomicU64::new(0),
    });
    let producer: ThreadedProducer<ArcCtx> = producer_config(o, queue)
        .create_with_context(ArcCtx(ctx.clone()))
        .expect("producer");
    // Prime the producer as kgate's is primed before its traffic starts (it runs idle first):
    // connected, with its idempotent producer id, so that no column times the client's start.
    producer
        .send(
            BaseRecord::<str, str, usize>::with_opaque_to(&o.ready_topic, PRIMING).payload("ready"),
        )
        .map_err(|(e, _)| e)
        .expect("priming record");
    producer
        .flush(Duration::from_secs(30))
        .expect("priming the raw producer");
    hook(false);
    let mut queue_full = 0u64;
    let first = ctx.start.elapsed();
    for (i, (k, v)) in msgs.iter().enumerate() {
        if o.raw_rate > 0 && i % 256 == 0 {
            // Paced (BENCH_RAW_RATE): a control experiment, e.g. at kgate's rate.
            let due = first + Duration::from_secs_f64(i as f64 / o.raw_rate as f64);
            let now = ctx.start.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let sent = ctx.start.elapsed().as_nanos() as usize;
        let mut rec = BaseRecord::with_opaque_to(topic, sent)
            .key(k.as_bytes())
            .payload(v.as_bytes());
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    queue_full += 1;
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("raw producer: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("raw producer flush");
    let wall = ctx.start.elapsed() - first;
    hook(true);
    drop(producer);
    (wall, queue_full, ctx)
}

/// The delivery opaque of the priming record.
const PRIMING: usize = usize::MAX;

/// The context behind an `Arc`, so the results outlive the producer.
struct ArcCtx(std::sync::Arc<RawCtx>);

impl ClientContext for ArcCtx {}

impl ProducerContext for ArcCtx {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        self.0.on_delivery(result, sent_ns)
    }
}

fn raw_phase(
    o: &Opts,
    phase: Phase,
    topic: &str,
    broker: Option<u32>,
    cache: &PayloadCache,
) -> PhaseResult {
    let n = o.n(phase);
    let msgs = cache.get(phase.feed(), n);
    let me = std::process::id();
    let procs = [("producer", Some(me)), ("broker", broker)];
    eprintln!("bench: [{}] producing to {topic}", phase.id());
    let (mut s0, mut s1) = (None, None);
    let (wall, queue_full, ctx) = produce_raw(o, phase.queue(), topic, &msgs, |done| {
        let s = Some(snap(&procs, Some(me)));
        if done {
            s1 = s;
        } else {
            s0 = s;
        }
    });
    let (s0, s1) = (s0.expect("snapshot taken"), s1.expect("snapshot taken"));
    let acked = ctx.acked.load(Ordering::Relaxed);
    let failed = ctx.failed.load(Ordering::Relaxed);
    let first = ctx.first_ack_ns.load(Ordering::Relaxed);
    let last = ctx.last_ack_ns.load(Ordering::Relaxed);
    let span = (last.saturating_sub(first)) as f64 / 1e9;
    let rate = if span > 0.0 {
        (acked.saturating_sub(1)) as f64 / span
    } else {
        f64::NAN
    };
    let mut lat = std::mem::take(&mut *ctx.lat_us.lock().expect("lock"));
    let buckets = bucketize_us(&lat);
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map(|&us| us as f64 / 1000.0)
            .unwrap_or(f64::NAN)
    };
    let mut notes = Vec::new();
    if failed > 0 {
        notes.push(format!("{failed} delivery errors"));
    }
    PhaseResult {
        phase,
        topic: topic.to_string(),
        n,
        mean_payload: mean_len(&msgs),
        rate,
        wall_s: wall.as_secs_f64(),
        exact: Some(Latency {
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
        }),
        bucketed: Latency {
            p50_ms: bucket_quantile(&buckets, 0.50) * 1000.0,
            p99_ms: bucket_quantile(&buckets, 0.99) * 1000.0,
        },
        idle_rss_kb: None,
        peak_rss_kb: None,
        cpu: cpu_between(o, &s0, &s1),
        queue_full: Some(queue_full),
        in_kafka: 0,
        notes,
        warnings: Vec::new(),
    }
}

// ------------------------------------------------------------------------------------------
// kgate: `kgate synth` → `kgate run` → Kafka

/// A child process, SIGKILLed if still running when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
    what: &'static str,
}

impl Proc {
    fn spawn(what: &'static str, args: &[&str], log: PathBuf) -> Proc {
        let f = File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kgate"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start kgate {what}: {e}"));
        Proc { child, log, what }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n----- kgate {} log ({}):\n{}",
            self.what,
            self.log.display(),
            tail(&self.log_text(), 40)
        )
    }
    fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                self.fail(&format!(
                    "kgate {} did not exit within {timeout:?}",
                    self.what
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// GET over HTTP/1.0; (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Some((status, body.to_string()))
}

/// Samples of `name` whose labels include every pair of `want`: (labels, value).
fn samples(text: &str, name: &str, want: &[(&str, &str)]) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some(end) = r.rfind('}') else { continue };
            (parse_labels(&r[..end]), r[end + 1..].trim())
        } else if rest.starts_with(' ') {
            (BTreeMap::new(), rest.trim())
        } else {
            continue;
        };
        if want
            .iter()
            .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        {
            if let Some(v) = value.split_whitespace().next().and_then(parse_f64) {
                out.push((labels, v));
            }
        }
    }
    out
}

fn parse_f64(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(e) = chars.next() {
                        val.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => break,
                c => val.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), val);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

fn published(text: &str, topic: &str) -> u64 {
    samples(text, "kafka_messages_published_total", &[("topic", topic)])
        .first()
        .map(|s| s.1 as u64)
        .unwrap_or(0)
}

fn latency_buckets(text: &str, topic: &str) -> Vec<(f64, u64)> {
    let mut b: Vec<(f64, u64)> = samples(
        text,
        "kafka_producer_request_duration_seconds_bucket",
        &[("topic", topic)],
    )
    .into_iter()
    .filter_map(|(l, v)| Some((parse_f64(l.get("le")?)?, v as u64)))
    .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b
}

fn kgate_config(o: &Opts, phase: Phase, topic: &str, metrics: &str, ws_ports: &[u16]) -> String {
    let urls: Vec<String> = ws_ports
        .iter()
        .map(|p| format!("\"ws://127.0.0.1:{p}/ws\""))
        .collect();
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# kgate bench: {} (generated by benches/e2e.rs)",
        phase.id()
    );
    let _ = writeln!(y, "kafka:");
    let _ = writeln!(y, "  brokers: [{:?}]", o.brokers);
    let _ = writeln!(y, "metrics: {{ listen: \"{metrics}\" }}");
    let _ = writeln!(y, "pipelines:");
    let _ = writeln!(y, "  - name: bench");
    // Short reconnect backoff: kgate starts before the synth (to measure idle RSS) and must
    // not sit in a long backoff once the synth is up. It does not change the data path.
    let _ = writeln!(
        y,
        "    source: {{ websocket: {{ urls: [{}], backoff_initial: 50ms, backoff_max: 200ms }} }}",
        urls.join(", ")
    );
    if matches!(phase, Phase::KgateRename | Phase::KgateAvro) {
        let _ = writeln!(y, "    transforms:");
        let _ = writeln!(
            y,
            "      - rename: {{ from: \"{RENAME_FROM}\", to: \"{RENAME_TO}\" }}"
        );
    }
    let _ = writeln!(y, "    topic: {topic}");
    let _ = writeln!(y, "    key: \"${{exchange}}|${{symbol}}\"");
    if phase == Phase::KgateAvro {
        let _ = writeln!(y, "    format: avro");
        let _ = writeln!(y, "schema_registry: {{ url: \"{}\" }}", o.registry);
    }
    y
}

/// Registers schemas/TradeEvent.avsc as `<topic>-value` for the Avro column.
fn register_trade_event(o: &Opts, topic: &str) {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/TradeEvent.avsc");
    let out = Command::new(env!("CARGO_BIN_EXE_kgate"))
        .args(["schemas", "register", &format!("{topic}-value"), "--file"])
        .arg(&schema)
        .args(["--registry", &o.registry])
        .output()
        .expect("kgate schemas register");
    assert!(
        out.status.success(),
        "bench: cannot register the TradeEvent schema at {} (is the registry up? scripts/services up registry): {}{}",
        o.registry,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kgate_phase(
    o: &Opts,
    phase: Phase,
    topic: &str,
    broker: Option<u32>,
    cache: &PayloadCache,
) -> PhaseResult {
    let n = o.n(phase);
    if phase == Phase::KgateAvro {
        register_trade_event(o, topic);
    }
    let tmp = o.out_dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("target/bench/tmp");
    let metrics = format!("127.0.0.1:{}", free_port());
    let ws_ports: Vec<u16> = (0..o.feeds).map(|_| free_port()).collect();
    let cfg_path = tmp.join(format!("{}.yaml", phase.id()));
    std::fs::write(
        &cfg_path,
        kgate_config(o, phase, topic, &metrics, &ws_ports),
    )
    .expect("config");
    let cfg = cfg_path.to_string_lossy().to_string();

    eprintln!("bench: [{}] starting kgate run ({cfg})", phase.id());
    let mut run = Proc::spawn(
        "run",
        &["run", "--config", &cfg],
        tmp.join(format!("{}-run.log", phase.id())),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, _)) = http_get(&metrics, "/readyz") {
            break;
        }
        if let Ok(Some(s)) = run.child.try_wait() {
            run.fail(&format!("kgate run exited at start: {s}"));
        }
        if Instant::now() > deadline {
            run.fail("kgate run not ready (/readyz) within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Idle: connected to Kafka, metrics served, the feed not up yet (kgate is in backoff).
    std::thread::sleep(Duration::from_millis(1000));
    let idle_rss_kb = status_kb(run.pid(), "VmRSS");

    let procs_before = [("kgate", Some(run.pid())), ("broker", broker)];
    let s0 = snap(&procs_before, Some(run.pid()));
    eprintln!(
        "bench: [{}] starting {} kgate synth(s) ({n} messages)",
        phase.id(),
        o.feeds
    );
    // The records split between the feeds: (port, count).
    let feeds: Vec<(u16, u64)> = ws_ports
        .iter()
        .enumerate()
        .map(|(i, &p)| (p, n / o.feeds + u64::from((i as u64) < n % o.feeds)))
        .collect();
    let mut synths: Vec<Proc> = feeds
        .iter()
        .enumerate()
        .map(|(i, (port, count))| {
            let listen = format!("127.0.0.1:{port}");
            let count = count.to_string();
            Proc::spawn(
                "synth",
                &[
                    "synth",
                    "--listen",
                    &listen,
                    "--feed",
                    phase.feed().as_str(),
                    "--rate",
                    "0",
                    "--count",
                    &count,
                    "--id",
                    SOURCE_ID,
                ],
                tmp.join(format!("{}-synth-{i}.log", phase.id())),
            )
        })
        .collect();
    let synth_started = Instant::now();
    let perf = o.perf.as_ref().map(|args| {
        let data = o
            .out_dir
            .join(format!("perf-{}-{}.data", phase.id(), o.stamp));
        eprintln!("bench: [{}] perf record → {}", phase.id(), data.display());
        let mut cmd = Command::new("perf");
        cmd.arg("record")
            .args(args.split_whitespace())
            .arg("-o")
            .arg(&data)
            .arg("-p")
            .arg(run.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().expect("perf record")
    });

    // Poll /metrics: the first sample with published > 0, and the first with published == n.
    let limit = Duration::from_secs(60) + Duration::from_secs_f64(n as f64 / 2_000.0);
    let mut first: Option<(Instant, u64)> = None;
    let mut last_change = Instant::now();
    let mut last_count = 0;
    let end = loop {
        let now = Instant::now();
        let count = http_get(&metrics, "/metrics")
            .map(|(_, body)| published(&body, topic))
            .unwrap_or(last_count);
        if count > 0 && first.is_none() {
            first = Some((now, count));
        }
        if count != last_count {
            last_count = count;
            last_change = now;
        }
        if count >= n {
            break now;
        }
        if let Ok(Some(s)) = run.child.try_wait() {
            run.fail(&format!("kgate run exited during the load: {s}"));
        }
        if now - synth_started > limit || now - last_change > Duration::from_secs(30) {
            synths[0].fail(&format!(
                "kgate published {count} of {n} records in {:?}; kgate run log:\n{}",
                now - synth_started,
                tail(&run.log_text(), 40)
            ));
        }
        std::thread::sleep(o.poll);
    };
    let mut procs_after = vec![("kgate", Some(run.pid())), ("broker", broker)];
    procs_after.extend(synths.iter().map(|s| ("synth", Some(s.pid()))));
    let s1 = snap(&procs_after, Some(run.pid()));
    let peak_rss_kb = status_kb(run.pid(), "VmHWM");
    let final_metrics = http_get(&metrics, "/metrics")
        .map(|x| x.1)
        .unwrap_or_default();
    if let Some(mut p) = perf {
        let _ = Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait();
    }

    let (t0, c0) = first.expect("at least one record published");
    let span = (end - t0).as_secs_f64();
    let rate = if span > 0.0 {
        (n - c0) as f64 / span
    } else {
        f64::NAN
    };
    let buckets = latency_buckets(&final_metrics, topic);

    let status = run.terminate(Duration::from_secs(60));
    let log = run.log_text();
    let want = format!("shutdown complete: accepted {n}, delivered {n},");
    let mut notes = Vec::new();
    if !status.success() || !log.contains(&want) {
        notes.push(format!(
            "kgate run: exit {status}, no `{want}` in its log ({})",
            run.log.display()
        ));
    }
    for (synth, (_, count)) in synths.iter_mut().zip(&feeds) {
        synth.terminate(Duration::from_secs(30));
        if !synth
            .log_text()
            .contains(&format!("synth: sent {count} messages"))
        {
            notes.push(format!(
                "synth: no `sent {count} messages` in its log ({})",
                synth.log.display()
            ));
        }
    }
    let mean_payload = mean_len(&cache.get(phase.feed(), n));
    PhaseResult {
        phase,
        topic: topic.to_string(),
        n,
        mean_payload,
        rate,
        wall_s: (end - synth_started).as_secs_f64(),
        exact: None,
        bucketed: Latency {
            p50_ms: bucket_quantile(&buckets, 0.50) * 1000.0,
            p99_ms: bucket_quantile(&buckets, 0.99) * 1000.0,
        },
        idle_rss_kb,
        peak_rss_kb,
        cpu: cpu_between(o, &s0, &s1),
        queue_full: None,
        in_kafka: 0,
        notes,
        warnings: Vec::new(),
    }
}

// ------------------------------------------------------------------------------------------
// Report

fn f0(x: f64) -> String {
    if x.is_finite() {
        let s = format!("{:.0}", x);
        // Thousands separators for readability.
        let (neg, digits) = s
            .strip_prefix('-')
            .map_or((false, s.as_str()), |d| (true, d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if neg {
            format!("-{out}")
        } else {
            out
        }
    } else {
        "n/a".into()
    }
}

fn fx(x: f64, d: usize) -> String {
    if x.is_finite() {
        format!("{x:.d$}")
    } else {
        "n/a".into()
    }
}

fn mb(kb: Option<u64>) -> String {
    kb.map(|k| format!("{:.1}", k as f64 / 1024.0))
        .unwrap_or_else(|| "—".into())
}

fn per_m(secs: f64, n: u64) -> f64 {
    secs * 1e6 / n as f64
}

fn machine_info(broker: Option<u32>) -> Vec<String> {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|x| x.1.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let git = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let (_, rdk) = rdkafka::util::get_rdkafka_version();
    vec![
        format!("machine: {nproc} CPUs ({model}), {mem_gb:.1} GiB RAM, Linux {kernel}; the broker, kgate, the synth and this harness share these CPUs"),
        format!(
            "broker: {} (pid {}); librdkafka {rdk}; kgate {git}",
            broker.and_then(broker_version).unwrap_or_else(|| "unknown version".into()),
            broker.map(|p| p.to_string()).unwrap_or_else(|| "not found: broker CPU not measured".into())
        ),
    ]
}

/// The round whose throughput is the median of the column's rounds.
fn median_round(rounds: &[PhaseResult]) -> &PhaseResult {
    let mut v: Vec<&PhaseResult> = rounds.iter().collect();
    v.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    v[v.len() / 2]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn report(o: &Opts, runs: &[Vec<PhaseResult>], broker: Option<u32>, background: &Cpu) -> String {
    let results: Vec<&PhaseResult> = runs.iter().map(|r| median_round(r)).collect();
    let results = &results[..];
    let mut md = String::new();
    let _ = writeln!(md, "## kgate end-to-end benchmark, {}\n", o.stamp);
    for l in machine_info(broker) {
        let _ = writeln!(md, "- {l}");
    }
    let _ = writeln!(
        md,
        "- background load just before the run ({:.0} s, nothing of the bench running): {:.0} % of all CPUs busy, of which the broker {:.0} %",
        background.window_s,
        100.0 * background.machine_busy_s / background.machine_total_s.max(1e-9),
        100.0 * background.secs.get("broker").copied().unwrap_or(0.0)
            / background.machine_total_s.max(1e-9)
    );
    if background.machine_busy_s > 0.25 * background.machine_total_s {
        let _ = writeln!(
            md,
            "- **warning: the machine was busy just before the run (other users); see the row \"everything else on the machine\" for how much of it overlapped the columns**"
        );
    }
    let _ = writeln!(
        md,
        "- producer settings on both sides: acks=all, idempotence, zstd, linger.ms 10, batch.size 131072; topics with {} partition(s), created fresh per column and round",
        o.partitions
    );
    let _ = writeln!(
        md,
        "- {} round(s) of all columns, interleaved; each column shows its median round (by throughput)",
        o.rounds
    );
    if o.feeds > 1 {
        let _ = writeln!(
            md,
            "- **the kgate columns read {} synth feeds (BENCH_FEEDS), sharing the records**",
            o.feeds
        );
    }
    if o.raw_rate > 0 {
        let _ = writeln!(
            md,
            "- **the raw columns are paced at {} msgs/s (BENCH_RAW_RATE): a control experiment, not the ceiling**",
            f0(o.raw_rate as f64)
        );
    }
    let _ = writeln!(md);

    let mut head = String::from("| |");
    let mut sep = String::from("|---|");
    for r in results {
        let _ = write!(head, " {} |", r.phase.title());
        sep.push_str("---:|");
    }
    let _ = writeln!(md, "{head}\n{sep}");
    let row = |md: &mut String, label: &str, f: &dyn Fn(&PhaseResult) -> String| {
        let _ = write!(md, "| {label} |");
        for r in results {
            let _ = write!(md, " {} |", f(r));
        }
        let _ = writeln!(md);
    };
    row(&mut md, "feed, mean payload bytes", &|r| {
        format!("{} {:.0} B", r.phase.feed(), r.mean_payload)
    });
    row(&mut md, "records sent = in Kafka", &|r| {
        if r.in_kafka == r.n {
            format!("{} = {}", f0(r.n as f64), f0(r.in_kafka as f64))
        } else {
            format!("**{} ≠ {}**", f0(r.n as f64), f0(r.in_kafka as f64))
        }
    });
    row(&mut md, "**throughput, msgs/s**", &|r| {
        format!("**{}**", f0(r.rate))
    });
    {
        let _ = write!(md, "| throughput, msgs/s, every round |");
        for rounds in runs {
            let v: Vec<String> = rounds.iter().map(|r| f0(r.rate)).collect();
            let _ = write!(md, " {} |", v.join(" / "));
        }
        let _ = writeln!(md);
    }
    row(&mut md, "throughput, MB/s (payload)", &|r| {
        fx(r.rate * r.mean_payload / 1e6, 1)
    });
    row(&mut md, "wall time, s", &|r| fx(r.wall_s, 2));
    row(
        &mut md,
        "latency p50 / p99, ms (exact)",
        &|r| match &r.exact {
            Some(l) => format!("{} / {}", fx(l.p50_ms, 1), fx(l.p99_ms, 1)),
            None => "—".into(),
        },
    );
    row(&mut md, "latency p50 / p99, ms (buckets)", &|r| {
        format!(
            "{} / {}",
            fx(r.bucketed.p50_ms, 1),
            fx(r.bucketed.p99_ms, 1)
        )
    });
    row(&mut md, "idle RSS, MB", &|r| mb(r.idle_rss_kb));
    row(&mut md, "peak RSS (VmHWM), MB", &|r| mb(r.peak_rss_kb));
    row(
        &mut md,
        "CPU µs / msg: producer (raw: whole bench process; kgate run)",
        &|r| {
            let s = r
                .cpu
                .secs
                .get("producer")
                .or(r.cpu.secs.get("kgate"))
                .copied()
                .unwrap_or(f64::NAN);
            fx(per_m(s, r.n), 2)
        },
    );
    row(&mut md, "CPU µs / msg: kgate synth", &|r| {
        r.cpu
            .secs
            .get("synth")
            .map(|s| fx(per_m(*s, r.n), 2))
            .unwrap_or_else(|| "—".into())
    });
    row(&mut md, "CPU µs / msg: broker (JVM)", &|r| {
        r.cpu
            .secs
            .get("broker")
            .map(|s| fx(per_m(*s, r.n), 2))
            .unwrap_or_else(|| "n/a".into())
    });
    row(
        &mut md,
        "CPU µs / msg: everything else on the machine",
        &|r| {
            let known: f64 = r.cpu.secs.values().sum();
            fx(per_m((r.cpu.machine_busy_s - known).max(0.0), r.n), 2)
        },
    );
    row(&mut md, "CPU µs / msg: whole machine", &|r| {
        fx(per_m(r.cpu.machine_busy_s, r.n), 2)
    });
    row(
        &mut md,
        "machine CPU busy in the window, % of all CPUs",
        &|r| fx(100.0 * r.cpu.machine_busy_s / r.cpu.machine_total_s, 0),
    );
    row(
        &mut md,
        "hypervisor steal in the window, % of all CPUs",
        &|r| fx(100.0 * r.cpu.machine_steal_s / r.cpu.machine_total_s, 1),
    );
    {
        let _ = write!(md, "| CPU µs / msg: producer, every round |");
        for rounds in runs {
            let v: Vec<String> = rounds
                .iter()
                .map(|r| {
                    let s = r
                        .cpu
                        .secs
                        .get("producer")
                        .or(r.cpu.secs.get("kgate"))
                        .copied()
                        .unwrap_or(f64::NAN);
                    fx(per_m(s, r.n), 2)
                })
                .collect();
            let _ = write!(md, " {} |", v.join(" / "));
        }
        let _ = writeln!(md);
    }
    row(&mut md, "QueueFull retries (1 ms sleep each)", &|r| {
        r.queue_full
            .map(|q| f0(q as f64))
            .unwrap_or_else(|| "—".into())
    });
    let _ = writeln!(md);

    // Ratios and targets.
    // Each ratio is taken within a round (the two columns ran a few seconds apart), then the
    // median over rounds.
    let get = |p: Phase| o.phases.iter().position(|&q| q == p).map(|i| &runs[i][..]);
    let _ = writeln!(md, "### Ratios and targets\n");
    let ratio = |md: &mut String,
                 label: &str,
                 a: Option<&[PhaseResult]>,
                 b: Option<&[PhaseResult]>,
                 target: Option<f64>| {
        if let (Some(a), Some(b)) = (a, b) {
            let each: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.rate / b.rate).collect();
            let x = median(each.clone());
            let each: Vec<String> = each.iter().map(|x| format!("{:.0} %", 100.0 * x)).collect();
            let verdict = match target {
                Some(t) if x >= t => format!(" — target ≥ {:.0} %: **met**", t * 100.0),
                Some(t) => format!(" — target ≥ {:.0} %: **NOT met**", t * 100.0),
                None => String::new(),
            };
            let _ = writeln!(
                md,
                "- {label}: **{:.1} %** (rounds: {}){verdict}",
                100.0 * x,
                each.join(", ")
            );
        }
    };
    ratio(
        &mut md,
        "kgate / raw (queue 10k, same settings) msgs/s",
        get(Phase::Kgate),
        get(Phase::Raw),
        Some(0.9),
    );
    ratio(
        &mut md,
        "kgate / raw (queue 1M) msgs/s",
        get(Phase::Kgate),
        get(Phase::Raw1m),
        None,
    );
    ratio(
        &mut md,
        "raw queue 10k / raw queue 1M msgs/s",
        get(Phase::Raw),
        get(Phase::Raw1m),
        None,
    );
    ratio(
        &mut md,
        "kgate trades / raw trades msgs/s",
        get(Phase::KgateTrades),
        get(Phase::RawTrades),
        Some(0.9),
    );
    ratio(
        &mut md,
        "kgate trades + rename / kgate trades msgs/s",
        get(Phase::KgateRename),
        get(Phase::KgateTrades),
        None,
    );
    ratio(
        &mut md,
        "kgate Avro / kgate JSON (trades + rename) msgs/s",
        get(Phase::KgateAvro),
        get(Phase::KgateRename),
        Some(0.7),
    );
    for rounds in runs.iter().filter(|r| r[0].idle_rss_kb.is_some()) {
        let r = &rounds[0];
        // The largest idle RSS of all rounds.
        let kb = rounds
            .iter()
            .filter_map(|r| r.idle_rss_kb)
            .max()
            .unwrap_or(0);
        let ok = kb < 40 * 1024;
        let _ = writeln!(
            md,
            "- idle RSS of kgate run ({}, largest of the rounds): **{} MB** — target < 40 MB: **{}**",
            r.phase.id(),
            mb(Some(kb)),
            if ok { "met" } else { "NOT met" }
        );
    }
    let _ = writeln!(md);

    // Where the CPU went, per thread of the producing process.
    let _ = writeln!(
        md,
        "### CPU seconds per thread of the producing process, in the measured window\n"
    );
    let _ = writeln!(
        md,
        "| column | window s | threads (CPU s) |\n|---|---:|---|"
    );
    for r in results {
        let threads: Vec<String> = r
            .cpu
            .threads
            .iter()
            .take(8)
            .map(|(n, s)| format!("{n} {s:.2}"))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {:.2} | {} |",
            r.phase.title(),
            r.cpu.window_s,
            threads.join(", ")
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "Notes: throughput = records ÷ time from the first Kafka ack to the last (raw: timed in the delivery callback; kgate: `kafka_messages_published_total` polled every {} ms, so ± {} ms at each end). Wall = first record offered → flush done (raw), or synth started → last ack (kgate; includes up to ~0.2 s of kgate's reconnect backoff). Both producers are primed before timing (raw: one record to another topic, flushed; kgate: it runs idle first), so no column times the client's start. Latency = accept → ack: raw exact from per-record timestamps; \"buckets\" = linear interpolation inside kgate's histogram buckets (1, 2.5, 5, 10, 25, 50, 100, 250, 500 ms …), the only resolution kgate exports. CPU = utime+stime from /proc over the window (raw: the whole bench process from the first send to the flush; kgate: from synth start to the last ack), divided by the records: CPU seconds per million records = µs per record. MB = 2^20 bytes for RSS, 10^6 for MB/s.", o.poll.as_millis(), o.poll.as_millis());
    for r in results {
        for n in &r.notes {
            let _ = writeln!(md, "\n**{}: FAILED: {n}**", r.phase.id());
        }
        for w in &r.warnings {
            let _ = writeln!(md, "\n**{}: warning: {w}**", r.phase.id());
        }
    }
    md
}

// ------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter); this harness takes its options from
    // the environment, see the module docs.
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "{}",
            include_str!("e2e.rs")
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n")
        );
        return;
    }
    // `cargo test --all-targets` (or `--benches`) runs this binary too, without `--bench`:
    // a benchmark there would load the shared machine for minutes, so it only says how to run.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("e2e: skipped (run it with `scripts/bench` or `cargo bench --bench e2e`)");
        return;
    }
    let o = Opts::from_env();
    std::fs::create_dir_all(&o.out_dir).expect("target/bench");
    let port: u16 = o
        .brokers
        .split(',')
        .next()
        .and_then(|b| b.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(9092);
    let broker = o.broker_pid.or_else(|| listening_pid(port));
    if broker.is_none() {
        eprintln!("bench: no process found listening on port {port}: broker CPU is not measured");
    }
    eprintln!(
        "bench: {} ticker / {} trades records per column; phases: {}",
        o.count,
        o.trades_count,
        o.phases
            .iter()
            .map(|p| p.id())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let started = Instant::now();
    let b0 = snap(&[("broker", broker)], None);
    std::thread::sleep(Duration::from_secs(2));
    let background = cpu_between(&o, &b0, &snap(&[("broker", broker)], None));
    let prefix = o.prefix.clone();
    let mut topics = vec![o.ready_topic.clone()];
    create_topic(&o, &o.ready_topic);

    if o.warmup > 0 {
        let t = format!("{prefix}.warmup");
        create_topic(&o, &t);
        topics.push(t.clone());
        eprintln!("bench: warming the broker up with {} records", o.warmup);
        let msgs = payloads(Feed::Ticker, o.warmup);
        produce_raw(&o, 10_000, &t, &msgs, |_| ());
    }

    let cache = PayloadCache::default();
    for &phase in &o.phases {
        cache.get(phase.feed(), o.n(phase));
    }
    let mut runs: Vec<Vec<PhaseResult>> = o.phases.iter().map(|_| Vec::new()).collect();
    for round in 1..=o.rounds {
        eprintln!("bench: round {round} of {}", o.rounds);
        for (i, &phase) in o.phases.iter().enumerate() {
            let topic = format!("{prefix}.r{round}.{i}.{}", phase.id());
            create_topic(&o, &topic);
            topics.push(topic.clone());
            std::thread::sleep(Duration::from_millis(500));
            // Found again for every column: other users of the shared broker may restart it.
            let broker = o.broker_pid.or_else(|| listening_pid(port));
            let mut r = if phase.is_raw() {
                raw_phase(&o, phase, &topic, broker, &cache)
            } else {
                kgate_phase(&o, phase, &topic, broker, &cache)
            };
            let broker_after = o.broker_pid.or_else(|| listening_pid(port));
            if broker != broker_after || broker.is_none() {
                r.warnings.push(format!(
                "the broker's pid changed during this column ({broker:?} → {broker_after:?}): it was restarted (by another user?); broker CPU is not valid"
            ));
            }
            r.in_kafka = records_in_kafka(&o, &topic);
            eprintln!(
                "bench: [{}] {} msgs/s, {} records in Kafka (of {})",
                phase.id(),
                f0(r.rate),
                r.in_kafka,
                r.n
            );
            runs[i].push(r);
        }
    }

    let md = report(&o, &runs, broker, &background);
    println!("{md}");
    let path = o.out_dir.join(format!("e2e-{}.md", o.stamp));
    std::fs::write(&path, &md).expect("write the report");
    eprintln!(
        "bench: report written to {} ({:.0} s in all)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    if !o.keep_topics {
        delete_topics(&o, &topics);
    }

    let bad: Vec<String> = runs
        .iter()
        .flatten()
        .filter(|r| r.in_kafka != r.n || !r.notes.is_empty())
        .map(|r| {
            format!(
                "{} (topic {}): {} records in Kafka for {} sent{}{}",
                r.phase.id(),
                r.topic,
                r.in_kafka,
                r.n,
                if r.notes.is_empty() { "" } else { "; " },
                r.notes.join("; ")
            )
        })
        .collect();
    if !bad.is_empty() {
        eprintln!("bench: FAILED:\n  {}", bad.join("\n  "));
        std::process::exit(1);
    }
}

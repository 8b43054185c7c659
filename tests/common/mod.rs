//! Helpers for integration tests against the real local Kafka (started by `scripts/services up`).
#![allow(dead_code)]

pub mod pki;

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::TopicPartitionList;

pub fn brokers() -> String {
    std::env::var("KGATE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn kgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kgate")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}.{}.{}", std::process::id(), nanos % 1_000_000_000)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port below the kernel's ephemeral range (`ip_local_port_range`), for a server that
/// is stopped and started again on the same port (a broker under restart). A port from the
/// ephemeral range can be taken, while its server is down, by a client's own outgoing
/// connection to it: connecting to 127.0.0.1:P with no listener can pick P as the source port
/// and connect to itself (TCP simultaneous open). A client retrying the stopped broker then
/// talks to itself until its request times out, and `scripts/services up` finds the port "in
/// use by an unknown process".
pub fn free_port_below_ephemeral() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(10_001));
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let port = from + (h.finish() % u64::from(to - from)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}

/// A child process killed when dropped, with its stderr in a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }
    /// Waits for exit; panics with the log after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_kgate(args: &[&str]) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let child = Command::new(kgate_bin())
        .args(args)
        .env("KGATE_LOG", "info,librdkafka=warn,rdkafka=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        log,
        _dir: dir,
    }
}

/// `kgate synth` on a free port; returns the process and its ws:// URL.
pub fn spawn_synth(feed: &str, extra: &[&str]) -> (Proc, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["synth", "--listen", &listen, "--feed", feed, "--id"];
    let id = format!("synth-{port}");
    args.push(&id);
    args.extend_from_slice(extra);
    let p = spawn_kgate(&args);
    wait_until(
        Duration::from_secs(10),
        || TcpStream::connect(&listen).is_ok(),
        "synth to listen",
    );
    (p, format!("ws://{listen}/ws"))
}

/// Writes a config and starts `kgate run` on it.
pub fn spawn_run(dir: &Path, config: &str) -> Proc {
    let path = write_config(dir, config);
    spawn_kgate(&["run", "--config", path.to_str().unwrap()])
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("kgate.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET `http://addr/path` with a 10 s deadline; the status and the body, or `None` when the
/// server did not answer.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(&format!("http://{addr}{path}")).call().ok()?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().ok()?;
    Some((status, body))
}

/// The value of one series in Prometheus text, matched by name and label substrings.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Rec {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).unwrap_or(serde_json::Value::Null)
    }
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }
}

/// Reads a topic from the beginning until `want` records arrived (or `idle` passed with none
/// new after at least `want` were seen, or `timeout`).
pub fn consume(brokers: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Rec> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    consume_with(client, topic, want, timeout)
}

/// [`consume`] with a client configured by the caller (brokers, security settings).
pub fn consume_with(
    mut client: ClientConfig,
    topic: &str,
    want: usize,
    timeout: Duration,
) -> Vec<Rec> {
    let consumer: BaseConsumer = client
        .set("group.id", unique("kgate-test"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let deadline = Instant::now() + timeout;
    // Wait for the topic to exist, then assign every partition from the start.
    let partitions = loop {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = md.topics().first() {
                if t.error().is_none() && !t.partitions().is_empty() {
                    break t.partitions().len() as i32;
                }
            }
        }
        if Instant::now() > deadline {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last_new = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for i in 0..h.count() {
                        let hd = h.get(i);
                        headers.insert(
                            hd.key.to_string(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Rec {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| k.to_vec()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                last_new = Instant::now();
            }
            Some(Err(e)) => eprintln!("consume {topic}: {e}"),
            None => {
                if out.len() >= want && last_new.elapsed() > Duration::from_millis(1500) {
                    break;
                }
            }
        }
    }
    out
}

/// The `(source, seq)` pairs of JSON records, with duplicates counted.
pub fn seqs(recs: &[Rec]) -> (std::collections::BTreeSet<(String, u64)>, usize) {
    let mut set = std::collections::BTreeSet::new();
    let mut dups = 0;
    for r in recs {
        let v = r.json();
        let key = (
            v["source"].as_str().unwrap_or_default().to_string(),
            v["seq"].as_u64().unwrap_or(0),
        );
        if !set.insert(key) {
            dups += 1;
        }
    }
    (set, dups)
}

/// SIGTERMs a `kgate run`, expects a clean exit within `secs`, and returns its shutdown summary.
pub fn stop(gw: &mut Proc, secs: u64) -> HashMap<String, u64> {
    gw.signal("-TERM");
    let status = gw.wait(Duration::from_secs(secs));
    assert!(
        status.success(),
        "kgate run exited {status}; log:\n{}",
        gw.log_text()
    );
    summary(&gw.log_text())
}

/// Parses the shutdown summary line of a `kgate run` log.
pub fn summary(log: &str) -> HashMap<String, u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("shutdown complete:"))
        .unwrap_or_else(|| panic!("no shutdown summary in log:\n{log}"));
    let text = line.split("shutdown complete:").nth(1).unwrap();
    let mut out = HashMap::new();
    for part in text.split(',') {
        let words: Vec<&str> = part.split_whitespace().collect();
        if words.len() >= 2 {
            if let Ok(n) = words[1].parse() {
                out.insert(words[0].to_string(), n);
            }
        }
    }
    out
}

/// The registry's Confluent API (`KGATE_REGISTRY_URL`, default the local Apicurio).
pub fn registry() -> String {
    std::env::var("KGATE_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into())
}

/// Decodes Kafka values with Python fastavro, fetching writer schemas by id from the registry.
pub fn fastavro(url: &str, recs: &[Rec]) -> Vec<(u64, serde_json::Value)> {
    let script = repo().join("tests/py/avro_decode.py");
    // scripts/test points KGATE_PYTHON at a python3 with fastavro.
    let python = std::env::var("KGATE_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .arg(script)
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    // Written from a thread: the decoder answers line by line, and a full stdout pipe must
    // not stall it while we are still writing.
    let mut stdin = child.stdin.take().unwrap();
    let lines: Vec<String> = recs
        .iter()
        .map(|r| r.value.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let writer = std::thread::spawn(move || {
        for l in lines {
            if writeln!(stdin, "{l}").is_err() {
                return;
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "fastavro decoder failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["trailing"], 0, "trailing bytes after the Avro body: {v}");
            (v["id"].as_u64().unwrap(), v["value"].clone())
        })
        .collect()
}

/// A WebSocket server that sends `msgs` to each client (`gap` apart), then keeps the
/// connection open.
pub async fn serve_messages(msgs: Vec<String>, gap: Duration) -> String {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let msgs = msgs.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                for m in msgs {
                    if ws
                        .send(tokio_tungstenite::tungstenite::Message::text(m))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    format!("ws://{addr}/ws")
}

/// `scripts/services ARGS` with `envs`. A test's own broker is PLAINTEXT only unless `envs`
/// name its secure ports: the environment's KAFKA_SASL_SSL_PORT / KAFKA_SSL_PORT are the main
/// broker's.
pub fn services(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(repo().join("scripts/services"));
    c.args(args);
    for k in ["KAFKA_SASL_SSL_PORT", "KAFKA_SSL_PORT"] {
        if !envs.iter().any(|(e, _)| *e == k) {
            c.env(k, "off");
        }
    }
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Random text, so that zstd cannot shrink it under the broker's limit.
pub fn random_text(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect()
}

/// The lowercase hex sha256 of `b` (what the DLQ's `original_sha256` header holds).
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

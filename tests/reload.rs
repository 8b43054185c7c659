//! Live reconfiguration of `kgate run` against the real local Kafka: SIGHUP, `POST /-/reload`
//! and `--watch`, under load (a synth WebSocket feed and HTTP clients posting numbered
//! records), counting what went in against what is in Kafka. Run through `scripts/test`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

/// The parts of the test config that reloads change.
#[derive(Clone)]
struct Cfg {
    brokers: String,
    metrics: u16,
    http: u16,
    dlq: String,
    feed_url: String,
    feed_topic: String,
    orders_topic: String,
    /// The `v` header of pipeline `orders`.
    version: &'static str,
    gone_topic: Option<String>,
    added_topic: Option<String>,
    compression: &'static str,
    /// Broken on purpose: a topic name Kafka refuses.
    bad: bool,
    extra_metrics: &'static str,
    /// A `spool:` directory for pipeline `orders`.
    spool: Option<String>,
    /// The metrics listener's host.
    metrics_host: &'static str,
}

impl Cfg {
    fn yaml(&self) -> String {
        let mut y = format!(
            "kafka:\n  brokers: ['{}']\n  producer: {{compression: {}, linger_ms: 5}}\nmetrics: {{listen: '{}:{}'{}}}\nhttp: {{listen: '127.0.0.1:{}'}}\ndlq: {{topic: '{}'}}\nshutdown_timeout: 20s\npipelines:\n",
            self.brokers,
            self.compression,
            self.metrics_host,
            self.metrics,
            self.extra_metrics,
            self.http,
            self.dlq
        );
        if !self.feed_url.is_empty() {
            y += &format!(
                "  - name: feed\n    source: {{websocket: {{urls: ['{}'], timeout: 10m}}}}\n    topic: {}\n",
                self.feed_url, self.feed_topic
            );
        }
        let orders_topic = if self.bad {
            "has space".to_string()
        } else {
            self.orders_topic.clone()
        };
        y += &format!(
            "  - name: orders\n    source: {{http: {{}}}}\n    topic: '{orders_topic}'\n    headers: {{v: '{}'}}\n",
            self.version
        );
        if let Some(dir) = &self.spool {
            y += &format!("    spool: {{dir: '{dir}', when: always, fsync: 20ms}}\n");
        }
        if let Some(t) = &self.gone_topic {
            y += &format!("  - name: gone\n    source: {{http: {{}}}}\n    topic: {t}\n");
        }
        if let Some(t) = &self.added_topic {
            y += &format!("  - name: added\n    source: {{http: {{}}}}\n    topic: {t}\n");
        }
        y
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// POSTs `body` to `url`; the status and the body (`None`: no answer).
fn post(url: &str, auth: Option<&str>, body: &str) -> Option<(u16, String)> {
    let mut req = agent().post(url).header("Content-Type", "application/json");
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let mut resp = req.send(body).ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.body_mut().read_to_string().unwrap_or_default()))
}

/// A client posting numbered records `{"n": …, "p": phase}` one at a time to a pipeline,
/// keeping each one answered 2xx with the phase when it was sent and when it was answered.
struct Poster {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    handle: JoinHandle<BTreeMap<u64, (u8, u8)>>,
}

impl Poster {
    fn start(http: u16, pipeline: &str, phase: Arc<AtomicU8>) -> Poster {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let url = format!("http://127.0.0.1:{http}/ingest/{pipeline}");
        let (s, o) = (stop.clone(), ok.clone());
        let handle = std::thread::spawn(move || {
            let agent = agent();
            let mut acked = BTreeMap::new();
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let p = phase.load(Ordering::SeqCst);
                let body = format!("{{\"n\": {n}, \"p\": {p}}}");
                let r = agent
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .send(body.as_str());
                if let Ok(r) = r {
                    if r.status().is_success() {
                        acked.insert(n, (p, phase.load(Ordering::SeqCst)));
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            acked
        });
        Poster { stop, ok, handle }
    }

    fn acked(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` further records were answered 2xx.
    fn wait_more(&self, more: u64, what: &str) {
        let want = self.acked() + more;
        wait_until(
            Duration::from_secs(60),
            || self.acked() >= want,
            &format!("{more} more records acknowledged ({what})"),
        );
    }

    fn finish(self) -> BTreeMap<u64, (u8, u8)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn metrics_text(port: u16) -> String {
    http_get(&format!("127.0.0.1:{port}"), "/metrics")
        .map(|(_, t)| t)
        .unwrap_or_default()
}

fn reloads(port: u16, result: &str) -> f64 {
    metric(
        &metrics_text(port),
        "kgate_config_reloads_total",
        &[&format!("result=\"{result}\"")],
    )
}

/// Counts a topic's records by `n`: (missing acknowledged ones, duplicates).
fn check_topic(topic: &str, acked: &BTreeMap<u64, (u8, u8)>) -> (Vec<Rec>, BTreeSet<u64>, usize) {
    let recs = consume(&brokers(), topic, acked.len(), Duration::from_secs(60));
    let mut seen = BTreeSet::new();
    let mut dups = 0;
    for r in &recs {
        if !seen.insert(r.json()["n"].as_u64().unwrap()) {
            dups += 1;
        }
    }
    let missing: BTreeSet<u64> = acked
        .keys()
        .filter(|n| !seen.contains(n))
        .copied()
        .collect();
    (recs, missing, dups)
}

/// Under load: a SIGHUP changes pipeline `orders` (its `v` header), removes `gone` and adds
/// `added`; a bad config is refused over `POST /-/reload` (422) while the old one keeps
/// delivering; a `compression` change swaps the producer. The WebSocket pipeline, unchanged
/// throughout, keeps its one connection. In vs out: every 2xx record and every feed message is
/// in Kafka.
#[test]
fn reloads_under_load_lose_nothing() {
    const FEED: u64 = 6000;
    let (_synth, url) = spawn_synth("ticker", &["--rate", "300", "--count", &FEED.to_string()]);
    let mut cfg = Cfg {
        brokers: brokers(),
        metrics: free_port(),
        http: free_port(),
        dlq: unique("reload.dlq"),
        feed_url: url.clone(),
        feed_topic: unique("reload.feed"),
        orders_topic: unique("reload.orders"),
        version: "1",
        gone_topic: Some(unique("reload.gone")),
        added_topic: None,
        compression: "none",
        bad: false,
        extra_metrics: "",
        spool: None,
        metrics_host: "127.0.0.1",
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &cfg.yaml());
    let mut gw = spawn_kgate(&["run", "--config", path.to_str().unwrap()]);
    let maddr = format!("127.0.0.1:{}", cfg.metrics);
    wait_until(
        Duration::from_secs(30),
        || {
            post(
                &format!("http://127.0.0.1:{}/ingest/orders", cfg.http),
                None,
                "{\"n\": 0, \"p\": 0}",
            )
            .is_some_and(|(s, _)| s == 200)
        },
        "the orders route to answer 200",
    );
    let phase = Arc::new(AtomicU8::new(0));
    let orders = Poster::start(cfg.http, "orders", phase.clone());
    let gone = Poster::start(cfg.http, "gone", phase.clone());
    orders.wait_more(50, "before the first reload");
    gone.wait_more(20, "gone, before the first reload");

    // 1. SIGHUP: orders changes, gone goes, added comes.
    cfg.version = "2";
    let gone_topic = cfg.gone_topic.take().unwrap();
    cfg.added_topic = Some(unique("reload.added"));
    std::fs::write(&path, cfg.yaml()).unwrap();
    phase.store(1, Ordering::SeqCst);
    gw.signal("-HUP");
    wait_until(
        Duration::from_secs(60),
        || reloads(cfg.metrics, "applied") >= 1.0,
        "the SIGHUP reload to apply",
    );
    phase.store(2, Ordering::SeqCst);
    let gone_acked = gone.finish();
    let added = Poster::start(cfg.http, "added", phase.clone());
    orders.wait_more(50, "after the SIGHUP reload");
    added.wait_more(20, "added, after the SIGHUP reload");
    let log = gw.log_text();
    assert!(
        log.contains("config reloaded: applied"),
        "no reload line in the log:\n{log}"
    );
    // orders and gone stopped with every event they accepted settled.
    let stopped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("pipeline stopped for the reload"))
        .collect();
    assert_eq!(stopped.len(), 2, "{log}");
    assert!(
        stopped.iter().all(|l| l.contains("unsettled=0")),
        "{stopped:?}"
    );

    // 2. A bad config: refused with its errors, counted, the running config stays.
    let good = cfg.clone();
    cfg.bad = true;
    std::fs::write(&path, cfg.yaml()).unwrap();
    let (status, body) = post(&format!("http://{maddr}/-/reload"), None, "").unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("pipelines[1].topic"), "{body}");
    assert_eq!(reloads(cfg.metrics, "rejected"), 1.0);
    orders.wait_more(50, "after the refused reload");
    cfg = good;

    // 3. compression: a new producer under load.
    cfg.compression = "zstd";
    std::fs::write(&path, cfg.yaml()).unwrap();
    let (status, body) = post(&format!("http://{maddr}/-/reload"), None, "").unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["result"], "applied", "{body}");
    assert_eq!(answer["producer_swapped"], true, "{body}");
    assert_eq!(
        answer["kept"],
        serde_json::json!(["feed", "orders", "added"]),
        "{body}"
    );
    assert_eq!(answer["restarted"], serde_json::json!([]), "{body}");
    orders.wait_more(50, "after the producer swap");
    added.wait_more(20, "added, after the producer swap");
    assert_eq!(reloads(cfg.metrics, "applied"), 2.0);

    // The unchanged feed pipeline never reconnected.
    let text = metrics_text(cfg.metrics);
    assert_eq!(
        metric(&text, "kafka_producer_websocket_connections_total", &[]),
        1.0,
        "{text}"
    );
    let orders_acked = orders.finish();
    let added_acked = added.finish();
    // Every feed message is in before stopping (the feed is finite).
    let feed = consume(
        &brokers(),
        &cfg.feed_topic,
        FEED as usize,
        Duration::from_secs(120),
    );
    let summary = stop(&mut gw, 60);
    assert_eq!(summary.get("undelivered"), Some(&0), "{summary:?}");

    let (set, feed_dups) = seqs(&feed);
    let feed_missing = (1..=FEED)
        .filter(|n| !set.iter().any(|(_, s)| s == n))
        .count();
    eprintln!(
        "feed: {FEED} sent, {} in Kafka, {feed_missing} missing, {feed_dups} duplicates",
        feed.len()
    );
    assert_eq!(feed_missing, 0, "feed messages lost");
    assert_eq!(
        feed_dups, 0,
        "the unchanged feed pipeline duplicated messages"
    );

    for (name, topic, acked) in [
        ("orders", cfg.orders_topic.as_str(), &orders_acked),
        ("gone", gone_topic.as_str(), &gone_acked),
        ("added", cfg.added_topic.as_deref().unwrap(), &added_acked),
    ] {
        let (recs, missing, dups) = check_topic(topic, acked);
        eprintln!(
            "{name}: {} acknowledged, {} in Kafka, {} lost, {dups} duplicates",
            acked.len(),
            recs.len(),
            missing.len()
        );
        assert!(
            missing.is_empty(),
            "{name}: acknowledged records lost: {missing:?}"
        );
        if name == "orders" {
            // Before the SIGHUP the old pipeline (v 1) took them, after the reload the new one.
            for r in &recs {
                let n = r.json()["n"].as_u64().unwrap();
                let v = r.headers.get("v").map(String::as_str);
                match acked.get(&n) {
                    Some((_, 0)) => {
                        assert_eq!(v, Some("1"), "record {n} answered before the SIGHUP")
                    }
                    Some((2, _)) => assert_eq!(v, Some("2"), "record {n} sent after the reload"),
                    _ => assert!(v == Some("1") || v == Some("2")),
                }
            }
            let old = recs
                .iter()
                .filter(|r| r.headers.get("v").map(String::as_str) == Some("1"))
                .count();
            assert!(
                old > 0 && old < recs.len(),
                "both versions: {old} of {}",
                recs.len()
            );
        }
    }
}

/// `--watch`: an editor-style rewrite (a new file renamed over the old) is reloaded once, and
/// restarts the spooled pipeline it changes (its directory opened again); a reload token guards `POST /-/reload` (401 without it, 403 wrong, 200 right).
#[test]
fn watch_reloads_a_changed_file_and_the_token_guards_post() {
    let mut cfg = Cfg {
        brokers: brokers(),
        metrics: free_port(),
        http: free_port(),
        dlq: unique("reload.dlq"),
        feed_url: String::new(),
        feed_topic: String::new(),
        orders_topic: unique("reload.watch"),
        version: "1",
        gone_topic: None,
        added_topic: None,
        compression: "lz4",
        bad: false,
        extra_metrics: ", reload_token: 'reload-secret-0123456789'",
        spool: None,
        metrics_host: "127.0.0.1",
    };
    let dir = tempfile::tempdir().unwrap();
    // Its pipeline spools: restarted by the reload, it drains and opens its directory again.
    cfg.spool = Some(dir.path().join("spool").display().to_string());
    let path = write_config(dir.path(), &cfg.yaml());
    let mut gw = spawn_kgate(&["run", "--watch", "--config", path.to_str().unwrap()]);
    let ingest = format!("http://127.0.0.1:{}/ingest/orders", cfg.http);
    wait_until(
        Duration::from_secs(30),
        || post(&ingest, None, "{\"n\": 1}").is_some_and(|(s, _)| s == 200),
        "the orders route to answer 200",
    );
    // Written elsewhere and renamed over the file, as editors do.
    cfg.version = "2";
    let tmp = dir.path().join(".kgate.yaml.swp");
    std::fs::write(&tmp, cfg.yaml()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_until(
        Duration::from_secs(30),
        || reloads(cfg.metrics, "applied") >= 1.0,
        "--watch to reload the changed file",
    );
    let (s, body) = post(&ingest, None, "{\"n\": 2}").unwrap();
    assert_eq!(s, 200, "{body}");

    let reload = format!("http://127.0.0.1:{}/-/reload", cfg.metrics);
    assert_eq!(post(&reload, None, "").unwrap().0, 401);
    assert_eq!(post(&reload, Some("Bearer wrong"), "").unwrap().0, 403);
    let (s, body) = post(&reload, Some("Bearer reload-secret-0123456789"), "").unwrap();
    assert_eq!(s, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["result"], "unchanged", "{body}");

    // Reloaded once for the one change, however many times it was looked at since.
    assert_eq!(reloads(cfg.metrics, "applied"), 1.0);
    assert_eq!(reloads(cfg.metrics, "unchanged"), 1.0);
    let summary = stop(&mut gw, 60);
    assert_eq!(summary.get("undelivered"), Some(&0), "{summary:?}");
    let recs = consume(&brokers(), &cfg.orders_topic, 2, Duration::from_secs(30));
    let by_n: BTreeMap<u64, Option<String>> = recs
        .iter()
        .map(|r| (r.json()["n"].as_u64().unwrap(), r.headers.get("v").cloned()))
        .collect();
    assert_eq!(by_n.len(), 2, "{by_n:?}");
    assert_eq!(by_n[&1].as_deref(), Some("1"));
    assert_eq!(by_n[&2].as_deref(), Some("2"));
}

/// This host's address on its default route (not loopback), for a peer that is not local.
fn outside_address() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:9")
        .or_else(|_| s.connect("10.255.255.1:9"))
        .expect("a route off this host (to find its non-loopback address)");
    let ip = s.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

/// Without `metrics.reload_token`, `POST /-/reload` is served to loopback peers only.
#[test]
fn post_reload_is_refused_to_other_peers_without_a_token() {
    let cfg = Cfg {
        brokers: brokers(),
        metrics: free_port(),
        http: free_port(),
        dlq: unique("reload.dlq"),
        feed_url: String::new(),
        feed_topic: String::new(),
        orders_topic: unique("reload.peer"),
        version: "1",
        gone_topic: None,
        added_topic: None,
        compression: "none",
        bad: false,
        extra_metrics: "",
        spool: None,
        metrics_host: "0.0.0.0",
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &cfg.yaml());
    let mut gw = spawn_kgate(&["run", "--config", path.to_str().unwrap()]);
    let local = format!("127.0.0.1:{}", cfg.metrics);
    wait_until(
        Duration::from_secs(30),
        || http_get(&local, "/healthz").is_some(),
        "the metrics listener",
    );
    let outside = std::net::SocketAddr::new(outside_address(), cfg.metrics);
    let (s, body) = post(&format!("http://{outside}/-/reload"), None, "").unwrap();
    assert_eq!(s, 403, "{body}");
    let (s, body) = post(&format!("http://{local}/-/reload"), None, "").unwrap();
    assert_eq!(s, 200, "{body}");
    assert_eq!(reloads(cfg.metrics, "unchanged"), 1.0);
    assert_eq!(reloads(cfg.metrics, "applied"), 0.0);
    let summary = stop(&mut gw, 60);
    assert_eq!(summary.get("undelivered"), Some(&0), "{summary:?}");
}

/// A changed WebSocket pipeline: SIGHUP restarts it (one reconnect); messages before go out
/// with the old header and after with the new one; everything kgate read is in Kafka. The feed
/// has no acks, and what it wrote to the old connection is not sent again: kgate closes that
/// connection and reads on until the feed's Close, so the feed's window is read too, and every
/// message the feed sent is in Kafka once.
#[test]
fn a_changed_feed_pipeline_reconnects_once_and_loses_nothing_it_read() {
    const FEED: u64 = 3000;
    let (_synth, url) = spawn_synth("ticker", &["--rate", "500", "--count", &FEED.to_string()]);
    let topic = unique("reload.ticks");
    let mport = free_port();
    let dlq = unique("reload.dlq");
    let yaml = |v: &str| {
        format!(
            "kafka:\n  brokers: ['{}']\nmetrics: {{listen: '127.0.0.1:{mport}'}}\ndlq: {{topic: '{dlq}'}}\nshutdown_timeout: 20s\npipelines:\n  - name: ticks\n    source: {{websocket: {{urls: ['{url}'], timeout: 10m}}}}\n    topic: {topic}\n    headers: {{v: '{v}'}}\n",
            brokers(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &yaml("1"));
    let mut gw = spawn_kgate(&["run", "--config", path.to_str().unwrap()]);
    let received = || {
        metric(
            &metrics_text(mport),
            "kafka_producer_websocket_messages_received_total",
            &[],
        )
    };
    wait_until(
        Duration::from_secs(60),
        || received() >= 500.0,
        "500 messages received",
    );
    std::fs::write(&path, yaml("2")).unwrap();
    gw.signal("-HUP");
    wait_until(
        Duration::from_secs(60),
        || reloads(mport, "applied") >= 1.0,
        "the SIGHUP reload to apply",
    );
    // The feed is done once its count went out.
    wait_until(
        Duration::from_secs(120),
        || received() >= FEED as f64,
        "the feed to finish",
    );
    let read = received() as u64;
    let connections = metric(
        &metrics_text(mport),
        "kafka_producer_websocket_connections_total",
        &[],
    );
    assert_eq!(connections, 2.0, "one reconnect; log:\n{}", gw.log_text());
    // (An idle feed is not reconnected for 10 minutes: the count is the reload's.)
    let summary = stop(&mut gw, 60);
    assert_eq!(summary.get("undelivered"), Some(&0), "{summary:?}");
    let recs = consume(&brokers(), &topic, read as usize, Duration::from_secs(60));
    let (set, dups) = seqs(&recs);
    let got: BTreeSet<u64> = set.iter().map(|(_, n)| *n).collect();
    let gap: Vec<u64> = (1..=FEED).filter(|n| !got.contains(n)).collect();
    let old = recs
        .iter()
        .filter(|r| r.headers.get("v").map(String::as_str) == Some("1"))
        .count();
    eprintln!(
        "feed across the restart: {FEED} sent, {read} read by kgate, {} in Kafka ({old} by the old pipeline), {dups} duplicates; the feed's window: {} never read {gap:?}",
        recs.len(),
        gap.len()
    );
    assert_eq!(
        recs.len() as u64,
        read,
        "everything kgate read is in Kafka, once"
    );
    assert_eq!(dups, 0);
    assert_eq!(read, FEED, "the feed's window was read too");
    assert!(gap.is_empty(), "never read: {gap:?}");
    assert!(
        old >= 500 && old < recs.len(),
        "both versions: {old} of {}",
        recs.len()
    );
}

//! HTTP load generator for `scripts/bench-http`: POSTs REST-Proxy-shaped batches
//! (`{"records":[{"value":{…}}]}`, ~190-byte ticker values) to one URL and prints one JSON line
//! of results. The same generator drives kgate and the Python reference service.
//!
//! ```text
//! cargo bench --bench http_load -- --url http://127.0.0.1:8082/topics/T \
//!     [--mode throughput|rate] [--batch 100] [--clients 8] [--seconds 10] [--rate 10000]
//! ```
//! `throughput`: `clients` connections post back to back (closed loop) for `seconds`.
//! `rate`: open loop at `rate` events/s (`rate / batch` requests/s on a fixed schedule, each on
//! its own task); latency is measured from the scheduled send time to the full answer, so a
//! server that falls behind shows it (no coordinated omission). The requests of the first
//! `--warmup` seconds (default 1; connections being opened) count as sent but not in the
//! latencies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

struct Args {
    url: String,
    mode: String,
    batch: usize,
    clients: usize,
    seconds: f64,
    rate: f64,
    warmup: f64,
}

fn args() -> Args {
    let mut a = Args {
        url: String::new(),
        mode: "throughput".into(),
        batch: 100,
        clients: 8,
        seconds: 10.0,
        rate: 10_000.0,
        warmup: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--url" => a.url = v(),
            "--mode" => a.mode = v(),
            "--batch" => a.batch = v().parse().unwrap(),
            "--clients" => a.clients = v().parse().unwrap(),
            "--seconds" => a.seconds = v().parse().unwrap(),
            "--rate" => a.rate = v().parse().unwrap(),
            "--warmup" => a.warmup = v().parse().unwrap(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!a.url.is_empty(), "--url is required");
    a
}

/// A batch body; `n` varies the values so that batches are not identical.
fn body(batch: usize, n: usize) -> bytes::Bytes {
    let mut s = String::from(r#"{"records":["#);
    for i in 0..batch {
        if i > 0 {
            s.push(',');
        }
        let seq = n * batch + i;
        s.push_str(&format!(
            r#"{{"value":{{"feed":"ticker","source":"bench","seq":{seq},"exchange":"kraken","symbol":"BTC-USD","bid":{}.5,"ask":{}.7,"bid_size":0.25,"ask_size":1.5,"ts":"2026-01-01T00:00:00.000Z"}}}}"#,
            60000 + seq % 1000,
            60000 + seq % 1000
        ));
    }
    s.push_str("]}");
    bytes::Bytes::from(s)
}

#[derive(Default)]
struct Tally {
    ok: u64,
    other: std::collections::BTreeMap<u16, u64>,
    errors: u64,
    latencies: Vec<f64>,
}

async fn post(c: &reqwest::Client, url: &str, b: bytes::Bytes) -> Result<u16, String> {
    let r = c
        .post(url)
        .header("Content-Type", "application/vnd.kafka.json.v2+json")
        .body(b)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let s = r.status().as_u16();
    r.bytes().await.map_err(|e| e.to_string())?;
    Ok(s)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let a = args();
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new((0..64).map(|n| body(a.batch, n)).collect());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let dur = Duration::from_secs_f64(a.seconds);
    let record = |t: &mut Tally, r: Result<u16, String>, lat: Option<f64>| {
        match r {
            Ok(200) => t.ok += 1,
            Ok(s) => *t.other.entry(s).or_default() += 1,
            Err(_) => t.errors += 1,
        }
        t.latencies.extend(lat);
    };
    let warm_until = started + Duration::from_secs_f64(a.warmup);
    if a.mode == "rate" {
        let every = Duration::from_secs_f64(a.batch as f64 / a.rate);
        let mut handles = Vec::new();
        let mut n = 0usize;
        loop {
            let at = started + every * n as u32;
            if at >= started + dur {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            let (c, url, b, t) = (
                client.clone(),
                a.url.clone(),
                bodies[n % bodies.len()].clone(),
                tally.clone(),
            );
            handles.push(tokio::spawn(async move {
                let r = post(&c, &url, b).await;
                let lat = (at >= warm_until).then(|| at.elapsed().as_secs_f64());
                record(&mut *t.lock().await, r, lat);
            }));
            n += 1;
        }
        for h in handles {
            let _ = h.await;
        }
    } else {
        let mut handles = Vec::new();
        for w in 0..a.clients {
            let (c, url, bodies, t) =
                (client.clone(), a.url.clone(), bodies.clone(), tally.clone());
            handles.push(tokio::spawn(async move {
                let mut n = w;
                while started.elapsed() < dur {
                    let sent = Instant::now();
                    let r = post(&c, &url, bodies[n % bodies.len()].clone()).await;
                    record(&mut *t.lock().await, r, Some(sent.elapsed().as_secs_f64()));
                    n += a.clients;
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut t = tally.lock().await;
    t.latencies.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let events = t.ok * a.batch as u64;
    let out = serde_json::json!({
        "mode": a.mode,
        "batch": a.batch,
        "clients": a.clients,
        "seconds": elapsed,
        "requests_ok": t.ok,
        "requests_other": t.other,
        "request_errors": t.errors,
        "events_ok": events,
        "events_per_s": events as f64 / elapsed,
        "p50_ms": pct(&t.latencies, 0.50) * 1e3,
        "p99_ms": pct(&t.latencies, 0.99) * 1e3,
        "max_ms": t.latencies.last().copied().unwrap_or(f64::NAN) * 1e3,
    });
    println!("{out}");
}

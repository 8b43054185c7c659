//! Avro encoding throughput on one core: TradeEvent records (the synth `trades` feed after the
//! `@context` → `context` rename) through `kgate::avro`, and the same records through
//! apache-avro's own writers for comparison. No services needed:
//! `cargo bench --bench avro_encode`.
//!
//! Rates are per second of this thread's own CPU time (`/proc/thread-self/schedstat`), so a
//! busy machine slows the run but barely moves the numbers; the wall-clock rate is shown too.
//!
//! Environment:
//!   BENCH_RECORDS  distinct records generated and cycled through (default 500). The default
//!                  set stays in the CPU caches, as a record does in the gateway, where it is
//!                  encoded right after it is parsed; a large set (e.g. 20000, ~100 MB of
//!                  `Value` trees) measures cache misses of walking cold trees instead.
//!   BENCH_SECONDS  minimum time per row (default 2)
//!
//! apache-avro cannot read the plain JSON as kgate does (RFC 3339 strings for timestamp-millis,
//! decimal strings), so its rows use `TradeEvent-plain`: the same schema with those fields as
//! strings; kgate is measured on that schema too, for a like-for-like row.

use std::hint::black_box;
use std::time::{Duration, Instant};

use apache_avro::types::Value as AvroValue;
use apache_avro::writer::datum::GenericDatumWriter;
use kgate::avro::Schema;
use kgate::cmd::synth::{message, Feed};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;

/// The allocator the kgate binary uses, so the JSON-parsing rows match the gateway's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRADE_EVENT: &str = include_str!("../schemas/TradeEvent.avsc");

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The TradeEvent schema without logical types (timestamps and decimals as strings).
fn plain_schema() -> String {
    TRADE_EVENT
        .replace(
            r#"{"type": "long", "logicalType": "timestamp-millis"}"#,
            r#""string""#,
        )
        .replace(
            r#"{"type": "bytes", "logicalType": "decimal", "precision": 24, "scale": 8}"#,
            r#""string""#,
        )
}

/// This thread's time on a CPU so far, when the kernel tells it.
fn cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// One row: records per CPU second, records per wall second, Avro bytes per record.
struct Rate {
    cpu: f64,
    wall: f64,
    size: f64,
}

/// Runs `f` over the records, cycling, until at least `min` has passed; `f` returns the bytes
/// it wrote.
fn measure<T>(items: &[T], min: Duration, mut f: impl FnMut(&T) -> usize) -> Rate {
    // Warm-up pass.
    for x in items {
        black_box(f(x));
    }
    let start = Instant::now();
    let cpu_start = cpu_time();
    let (mut n, mut bytes) = (0u64, 0u64);
    loop {
        for x in items {
            bytes += f(x) as u64;
        }
        n += items.len() as u64;
        if start.elapsed() >= min {
            break;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = match (cpu_start, cpu_time()) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => wall,
    };
    Rate {
        cpu: n as f64 / cpu,
        wall: n as f64 / wall,
        size: bytes as f64 / n as f64,
    }
}

fn main() {
    let count = env("BENCH_RECORDS", 500) as usize;
    let min = Duration::from_secs(env("BENCH_SECONDS", 2));

    let values: Vec<Value> = (0..count as u64)
        .map(|seq| {
            let text = message(Feed::Trades, seq, "bench", &mut StdRng::seed_from_u64(seq));
            let mut v: Value = serde_json::from_str(&text).expect("synth JSON");
            let vc = v["tradeCredential"].as_object_mut().expect("credential");
            let ctx = vc.remove("@context").expect("@context");
            vc.insert("context".into(), ctx);
            v
        })
        .collect();
    let texts: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    let json_bytes = texts.iter().map(String::len).sum::<usize>() as f64 / count as f64;

    let schema = Schema::parse(TRADE_EVENT).expect("TradeEvent.avsc");
    let plain_text = plain_schema();
    let plain = Schema::parse(&plain_text).expect("plain schema");
    let apache = apache_avro::Schema::parse_str(&plain_text).expect("plain schema");

    let mut rows: Vec<(&str, Rate)> = Vec::new();
    let mut out = Vec::with_capacity(1024);

    let r = measure(&values, min, |v| {
        out.clear();
        schema.encode(v, &mut out).expect("encodes");
        out.len()
    });
    rows.push(("kgate::avro encode, pre-parsed Value", r));

    let r = measure(&texts, min, |t| {
        let v: Value = serde_json::from_str(t).expect("JSON");
        out.clear();
        schema.encode(&v, &mut out).expect("encodes");
        out.len()
    });
    rows.push(("serde_json parse + kgate::avro encode", r));

    let r = measure(&texts, min, |t| {
        let v: Value = serde_json::from_str(t).expect("JSON");
        black_box(&v);
        0
    });
    rows.push(("serde_json parse alone (reference)", r));

    let encoded: Vec<Vec<u8>> = values
        .iter()
        .map(|v| {
            let mut o = Vec::new();
            schema.encode(v, &mut o).expect("encodes");
            o
        })
        .collect();
    let r = measure(&encoded, min, |b| {
        black_box(schema.decode(b).expect("decodes"));
        b.len()
    });
    rows.push(("kgate::avro decode to Value", r));

    let r = measure(&values, min, |v| {
        out.clear();
        plain.encode(v, &mut out).expect("encodes");
        out.len()
    });
    rows.push(("kgate::avro encode, TradeEvent-plain", r));

    // apache-avro, the naive way: JSON → types::Value, resolve against the schema, and
    // to_avro_datum (which builds its writer, resolving the schema's names, every call).
    #[allow(deprecated)]
    let r = measure(&values, min, |v| {
        let a = AvroValue::try_from(v.clone())
            .and_then(|a| a.resolve(&apache))
            .expect("resolves");
        apache_avro::to_avro_datum(&apache, a)
            .expect("writes")
            .len()
    });
    rows.push(("apache-avro naive (to_avro_datum), plain", r));

    // apache-avro with the writer built once: still a types::Value tree and a resolve per record.
    let writer = GenericDatumWriter::builder(&apache)
        .build()
        .expect("writer");
    let r = measure(&values, min, |v| {
        let a = AvroValue::try_from(v.clone())
            .and_then(|a| a.resolve(&apache))
            .expect("resolves");
        out.clear();
        writer.write_value_ref(&mut out, &a).expect("writes");
        out.len()
    });
    rows.push(("apache-avro writer reused, plain", r));

    // apache-avro's serde path straight from serde_json::Value, writer built once.
    out.clear();
    match writer.write_ser(&mut out, &values[0]) {
        Ok(_) => {
            let r = measure(&values, min, |v| {
                out.clear();
                writer.write_ser(&mut out, v).expect("writes");
                out.len()
            });
            rows.push(("apache-avro write_ser (serde), plain", r));
        }
        Err(e) => {
            // The message holds the whole schema; its tail says what went wrong.
            let e = e.to_string();
            let tail = e.rsplit(": ").take(2).collect::<Vec<_>>();
            println!(
                "apache-avro write_ser (serde) cannot write serde_json::Value: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(": ")
            );
        }
    }

    println!(
        "\nTradeEvent, {count} distinct records, {json_bytes:.0} JSON bytes each, one thread\n"
    );
    println!(
        "{:<44} {:>14} {:>10} {:>14} {:>7}",
        "", "records/cpu-s", "µs/record", "records/wall-s", "Avro B"
    );
    let base = rows
        .iter()
        .find(|r| r.0.starts_with("apache-avro naive"))
        .map(|r| r.1.cpu);
    for (name, r) in &rows {
        let speedup = match base {
            Some(b) if name.contains("encode") || name.starts_with("apache-avro w") => {
                format!("  {:.1}× naive apache-avro", r.cpu / b)
            }
            _ => String::new(),
        };
        let size = if r.size > 0.0 {
            format!("{:.0}", r.size)
        } else {
            "-".into()
        };
        println!(
            "{name:<44} {:>14.0} {:>10.2} {:>14.0} {size:>7}{speedup}",
            r.cpu,
            1e6 / r.cpu,
            r.wall
        );
    }
}

//! `kgate dlq ...`: look at the dead-letter queue. `inspect` reads a DLQ topic (without joining
//! a consumer group or committing anything) and prints its records and a summary; `replay` is to
//! come.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::event::ErrorType;
use crate::kafka::KafkaConfig;

const EXAMPLES: &str = "\
Where Kafka is (the first that is given):
  --config FILE        the `kafka:` section of a kgate config (brokers, security); also its
                       `schema_registry:` to decode Avro values
  --brokers LIST       host:port[,host:port] (default 127.0.0.1:9092), no security

Each DLQ record kgate writes carries the headers source, pipeline, source_topic, error_type,
error_message and received_at (too_large records also original_size and original_sha256),
the input's headers, and the rejected bytes as its value.

Examples:
  kgate dlq inspect --topic events.v1.dlq
  kgate dlq inspect --topic events.v1.dlq --error-type invalid_json --since 1h
  kgate dlq inspect --topic events.v1.dlq --source-topic trades.v1 --max 0   # all of them
  kgate dlq inspect --topic events.v1.dlq --output json | jq -c 'select(.headers) | .value'
  kgate dlq inspect --config kgate.yaml --topic events.v1.dlq --registry http://127.0.0.1:8081

Exit status: 0 read (even when nothing matched), 1 Kafka error, 2 bad arguments or config.";

/// `kgate dlq`: arguments.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct DlqArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// `kgate dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print a DLQ topic's records (newest last) and a count by error type and source topic.
    ///
    /// Reads from the beginning (or from --since) up to the end offsets seen at the start, then
    /// stops. Joins no consumer group and commits nothing, so it never disturbs a consumer.
    #[command(after_long_help = EXAMPLES)]
    Inspect(InspectArgs),
}

/// How `inspect` prints the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// An aligned table, long fields cut short, then the summary.
    Table,
    /// One JSON object per record (every header, key, value), then one `{"summary": ...}` line.
    Json,
}

/// `kgate dlq inspect`: arguments.
#[derive(Debug, Args, Clone)]
pub struct InspectArgs {
    /// The DLQ topic (the config's `dlq.topic`).
    #[arg(short, long)]
    pub topic: String,
    /// Only records with this `error_type` header (invalid_json, missing_field, too_large, ...).
    #[arg(short, long, value_name = "TYPE")]
    pub error_type: Option<String>,
    /// Only records with this `source_topic` header (the topic the record was meant for).
    #[arg(short, long, value_name = "TOPIC")]
    pub source_topic: Option<String>,
    /// Only records written in the last DURATION (e.g. 30m, 1h, 2d); else from the beginning.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Print at most this many of the matching records, the newest (0 = all). The summary
    /// counts them all.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub max: usize,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Config file whose `kafka:` section (brokers, security) and `schema_registry:` to use.
    #[arg(short, long, env = "KGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Brokers, when no config is given.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Schema registry (Confluent API URL) to decode Avro values with (else the config's
    /// `schema_registry:`).
    #[arg(long, value_name = "URL", env = "KGATE_REGISTRY_URL")]
    pub registry: Option<String>,
}

/// One record read from the DLQ.
#[derive(Debug, Clone, PartialEq)]
pub struct DlqRecord {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Kafka's timestamp, in milliseconds since the epoch.
    pub timestamp: Option<i64>,
    /// Every header, in order (a header without value has an empty one).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value: the rejected bytes (or their first bytes, for too_large).
    pub value: Vec<u8>,
}

impl DlqRecord {
    /// The last header named `name`, as text. kgate writes its own headers after the input's,
    /// so the last one is kgate's.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// When it was received: the `received_at` header, else Kafka's timestamp.
    pub fn time(&self) -> String {
        self.header("received_at").unwrap_or_else(|| {
            self.timestamp
                .and_then(|ms| u64::try_from(ms).ok())
                .map(|ms| {
                    humantime::format_rfc3339_millis(
                        SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
                    )
                    .to_string()
                })
                .unwrap_or_else(|| "-".into())
        })
    }
}

/// Which records to keep.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `error_type` must be this.
    pub error_type: Option<String>,
    /// `source_topic` must be this.
    pub source_topic: Option<String>,
}

impl Filter {
    /// Whether `r` matches.
    pub fn matches(&self, r: &DlqRecord) -> bool {
        let is = |want: &Option<String>, header| {
            want.as_ref()
                .is_none_or(|w| r.header(header).as_deref() == Some(w.as_str()))
        };
        is(&self.error_type, "error_type") && is(&self.source_topic, "source_topic")
    }
}

/// What `inspect` found.
#[derive(Debug, Default)]
pub struct Inspection {
    /// The newest matching records (at most `max`), oldest first.
    pub records: Vec<DlqRecord>,
    /// Records read.
    pub read: u64,
    /// Records that matched.
    pub matched: u64,
    /// Matching records by `error_type`.
    pub by_error_type: BTreeMap<String, u64>,
    /// Matching records by `source_topic`.
    pub by_source_topic: BTreeMap<String, u64>,
}

impl Inspection {
    /// Counts `r` and keeps it among the newest `max` (0 = all).
    pub fn add(&mut self, r: DlqRecord, max: usize) {
        self.matched += 1;
        *self
            .by_error_type
            .entry(r.header("error_type").unwrap_or_else(|| "-".into()))
            .or_default() += 1;
        *self
            .by_source_topic
            .entry(r.header("source_topic").unwrap_or_else(|| "-".into()))
            .or_default() += 1;
        self.records.push(r);
        if max > 0 && self.records.len() >= 2 * max.max(512) {
            self.keep_newest(max);
        }
    }

    /// Sorts the records oldest first (by Kafka timestamp, then partition and offset) and keeps
    /// the newest `max` (0 = all).
    pub fn keep_newest(&mut self, max: usize) {
        self.records
            .sort_by_key(|r| (r.timestamp.unwrap_or(0), r.partition, r.offset));
        if max > 0 && self.records.len() > max {
            self.records.drain(..self.records.len() - max);
        }
    }
}

/// How long `inspect` waits for the next record while partitions still have records to read.
const STALL: Duration = Duration::from_secs(15);

/// Reads `topic` from the beginning (or `since` ago) up to the end offsets at the start, with
/// `assign` (no group, nothing committed).
pub fn read(
    kafka: &KafkaConfig,
    topic: &str,
    since: Option<Duration>,
    filter: &Filter,
    max: usize,
) -> anyhow::Result<Inspection> {
    let brokers = kafka.brokers.join(",");
    let consumer: BaseConsumer<crate::kafka::QuietContext> =
        crate::kafka::base_client_config(kafka)
            .set("group.id", "kgate-dlq-inspect")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create_with_context(Default::default())?;
    let timeout = Duration::from_secs(10);
    // In steps, serving the client's events between them: a refused login or TLS handshake is
    // reported there (the request itself only times out), and is answered at once with what to
    // change in kafka.security (the text `kgate check` uses).
    let deadline = Instant::now() + timeout;
    let mut attempt = Duration::from_millis(250);
    let md = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match consumer.fetch_metadata(Some(topic), attempt.min(left)) {
            Ok(md) => break md,
            Err(source) => {
                for _ in 0..64 {
                    let _ = consumer.poll(Duration::ZERO);
                }
                if let Some(diagnosis) = consumer.context().diagnosis(kafka) {
                    let e = crate::kafka::MetadataError::Refused {
                        brokers: brokers.clone(),
                        diagnosis,
                    };
                    anyhow::bail!("{e}");
                }
                if Instant::now() >= deadline {
                    let e = crate::kafka::MetadataError::Unreachable {
                        brokers: brokers.clone(),
                        timeout,
                        source,
                    };
                    anyhow::bail!("{e}");
                }
                attempt = (attempt * 2).min(Duration::from_secs(1));
            }
        }
    };
    let t = md
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "topic {topic} does not exist at {brokers}; is it the config's dlq.topic? (`kgate check --config FILE` lists the DLQ topic; nothing was dead-lettered yet if it was never created)"
            )
        })?;
    let partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| anyhow::anyhow!("reading the end offsets of {topic} at {brokers}: {e}"))?;
        if high > low {
            ends.insert(p, (low, high));
        }
    }
    if let Some(since) = since {
        let from = SystemTime::now()
            .checked_sub(since)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut ask = TopicPartitionList::new();
        for &p in ends.keys() {
            ask.add_partition_offset(topic, p, Offset::Offset(from))?;
        }
        let found = consumer.offsets_for_times(ask, timeout).map_err(|e| {
            anyhow::anyhow!("finding the offsets of --since in {topic} at {brokers}: {e}")
        })?;
        for e in found.elements() {
            match e.offset() {
                Offset::Offset(o) => {
                    if let Some((low, high)) = ends.get_mut(&e.partition()) {
                        if o >= *high {
                            ends.remove(&e.partition());
                        } else {
                            *low = o.max(*low);
                        }
                    }
                }
                // No record at or after that time.
                _ => {
                    ends.remove(&e.partition());
                }
            }
        }
    }
    for (&p, &(low, _)) in &ends {
        tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
    }
    let mut found = Inspection::default();
    if ends.is_empty() {
        return Ok(found);
    }
    consumer.assign(&tpl)?;
    let mut last = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let Some(&(_, end)) = ends.get(&m.partition()) else {
                    continue;
                };
                if m.offset() >= end {
                    ends.remove(&m.partition());
                    continue;
                }
                if m.offset() + 1 >= end {
                    ends.remove(&m.partition());
                }
                found.read += 1;
                let r = DlqRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|hd| {
                                    (hd.key.to_string(), hd.value.unwrap_or_default().to_vec())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                };
                if filter.matches(&r) {
                    found.add(r, max);
                }
            }
            Some(Err(e)) => anyhow::bail!("reading {topic} at {brokers}: {e}"),
            None if last.elapsed() >= STALL => {
                let left: Vec<String> = ends.keys().map(i32::to_string).collect();
                anyhow::bail!(
                    "reading {topic} at {brokers}: no record for {STALL:?} while partitions {} still had some to read; is the broker healthy and is the topic readable with these credentials (kafka.security)?",
                    left.join(",")
                );
            }
            None => {
                // The last offsets may hold no record to deliver (a transaction marker, a
                // compacted record): a partition whose position reached its end is done.
                if let Ok(at) = consumer.position() {
                    for e in at.elements() {
                        if let (Offset::Offset(o), Some(&(_, end))) =
                            (e.offset(), ends.get(&e.partition()))
                        {
                            if o >= end {
                                ends.remove(&e.partition());
                            }
                        }
                    }
                }
            }
        }
    }
    found.keep_newest(max);
    Ok(found)
}

/// Decodes Avro values in the Confluent wire format (magic byte 0, schema id) through the
/// registry.
pub struct AvroDecoding {
    /// Schemas by id.
    pub cache: std::sync::Arc<crate::registry::SchemaCache>,
    /// The runtime the registry client runs on.
    pub runtime: tokio::runtime::Handle,
}

/// How a value was read: `(value, "json" | "avro" | "text" | "base64")`.
pub fn value_json(bytes: &[u8], avro: Option<&AvroDecoding>) -> (Value, &'static str) {
    if let Some(a) = avro {
        if bytes.len() > 5 && bytes[0] == 0 {
            if let Ok((_, v)) = a.runtime.block_on(a.cache.decode(bytes)) {
                return (v, "avro");
            }
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return (v, "json");
    }
    bytes_json(bytes)
}

/// Bytes as text when they are UTF-8 without control characters (tabs and line breaks aside),
/// else base64.
pub fn bytes_json(bytes: &[u8]) -> (Value, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(s)
            if !s
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) =>
        {
            (s.into(), "text")
        }
        _ => (
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into(),
            "base64",
        ),
    }
}

/// A record as one JSON object: partition, offset, timestamp, every header, key and value (with
/// how each was read).
pub fn record_json(r: &DlqRecord, avro: Option<&AvroDecoding>) -> Value {
    let mut headers = serde_json::Map::new();
    for (k, v) in &r.headers {
        headers.insert(k.clone(), bytes_json(v).0);
    }
    let (key, key_as) = match &r.key {
        Some(k) => {
            let (v, how) = bytes_json(k);
            (v, Some(how))
        }
        None => (Value::Null, None),
    };
    let (value, value_as) = value_json(&r.value, avro);
    json!({
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "headers": headers,
        "key": key,
        "key_as": key_as,
        "value": value,
        "value_as": value_as,
    })
}

/// The summary as one JSON object.
pub fn summary_json(found: &Inspection) -> Value {
    json!({ "summary": {
        "read": found.read,
        "matched": found.matched,
        "shown": found.records.len(),
        "by_error_type": found.by_error_type,
        "by_source_topic": found.by_source_topic,
    }})
}

/// Widest message, key and value cells in the table, in characters.
const MESSAGE_WIDTH: usize = 48;
const KEY_WIDTH: usize = 24;
const VALUE_WIDTH: usize = 48;

/// `s` on one line, control characters shown as `·`, cut to `width` characters with `…`.
pub fn cell(s: &str, width: usize) -> String {
    let printable = s.chars().map(|c| {
        if c == '\n' || c == '\r' || c == '\t' {
            ' '
        } else if c.is_control() {
            '·'
        } else {
            c
        }
    });
    let all: Vec<char> = printable.collect();
    if all.len() <= width {
        all.into_iter().collect()
    } else {
        let mut cut: String = all[..width.saturating_sub(1)].iter().collect();
        cut.push('…');
        cut
    }
}

/// Bytes as table text: UTF-8 (lossy), `-` when absent.
fn text(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(|| "-".into(), |b| String::from_utf8_lossy(b).into_owned())
}

/// The records as an aligned table with a header line; `value` gives each value's preview.
pub fn table(records: &[DlqRecord], value: impl Fn(&DlqRecord) -> String) -> String {
    let head = [
        "TIME",
        "SOURCE TOPIC",
        "ERROR TYPE",
        "MESSAGE",
        "KEY",
        "VALUE",
    ];
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|r| {
            [
                cell(&r.time(), 40),
                cell(&r.header("source_topic").unwrap_or_else(|| "-".into()), 40),
                cell(&r.header("error_type").unwrap_or_else(|| "-".into()), 24),
                cell(
                    &r.header("error_message").unwrap_or_else(|| "-".into()),
                    MESSAGE_WIDTH,
                ),
                cell(&text(r.key.as_deref()), KEY_WIDTH),
                cell(&value(r), VALUE_WIDTH),
            ]
        })
        .collect();
    let mut widths = head.map(|h| h.chars().count());
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&head.map(String::from));
    for row in &rows {
        line(row);
    }
    out
}

/// The summary as text: counts by error type and by source topic, largest first.
pub fn summary_text(topic: &str, found: &Inspection) -> String {
    let mut out = format!(
        "{} of {} records read from {topic} matched; showing the newest {}\n",
        found.matched,
        found.read,
        found.records.len()
    );
    for (title, counts) in [
        ("by error type", &found.by_error_type),
        ("by source topic", &found.by_source_topic),
    ] {
        out.push_str(&format!("{title}:\n"));
        let mut sorted: Vec<(&String, &u64)> = counts.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let width = sorted
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, n) in sorted {
            out.push_str(&format!("  {k:<width$}  {n}\n"));
        }
    }
    out
}

/// A value's preview for the table: Avro or JSON as compact JSON, else the text.
fn preview(r: &DlqRecord, avro: Option<&AvroDecoding>) -> String {
    match value_json(&r.value, avro) {
        (Value::String(s), "text") => s,
        (v, "base64") => format!("base64:{}", v.as_str().unwrap_or_default()),
        (v, _) => v.to_string(),
    }
}

/// `kgate dlq ...`.
pub async fn main(args: DlqArgs) -> ExitCode {
    match args.command {
        DlqCommand::Inspect(a) => inspect_main(a).await,
    }
}

async fn inspect_main(args: InspectArgs) -> ExitCode {
    if let Some(t) = &args.error_type {
        if !ErrorType::ALL.iter().any(|e| e.as_str() == t) {
            let known: Vec<&str> = ErrorType::ALL.iter().map(|e| e.as_str()).collect();
            eprintln!(
                "kgate dlq inspect: unknown --error-type {t}; kgate writes {}",
                known.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    let (kafka, registry) = match super::kafka_and_registry(
        args.config.as_deref(),
        &args.brokers,
        args.registry.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let avro = match registry.map(|r| crate::registry::RegistryClient::new(&r)) {
        Some(Ok(client)) => Some(AvroDecoding {
            cache: crate::registry::SchemaCache::new(client, None),
            runtime: tokio::runtime::Handle::current(),
        }),
        Some(Err(e)) => {
            eprintln!("kgate dlq inspect: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let filter = Filter {
        error_type: args.error_type.clone(),
        source_topic: args.source_topic.clone(),
    };
    let done = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let found = read(&kafka, &args.topic, args.since, &filter, args.max)?;
        let avro = avro.as_ref();
        match args.output {
            Output::Json => {
                for r in &found.records {
                    println!("{}", record_json(r, avro));
                }
                println!("{}", summary_json(&found));
            }
            Output::Table => {
                if !found.records.is_empty() {
                    print!("{}", table(&found.records, |r| preview(r, avro)));
                    println!();
                }
                print!("{}", summary_text(&args.topic, &found));
            }
        }
        Ok(())
    })
    .await;
    match done {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("kgate dlq inspect: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kgate dlq inspect: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64, ts: i64, error_type: &str, message: &str, value: &[u8]) -> DlqRecord {
        DlqRecord {
            partition: 0,
            offset,
            timestamp: Some(ts),
            headers: vec![
                ("source_topic".into(), b"trades.v1".to_vec()),
                ("error_type".into(), error_type.as_bytes().to_vec()),
                ("error_message".into(), message.as_bytes().to_vec()),
                ("received_at".into(), b"2026-12-02T12:00:00.000Z".to_vec()),
            ],
            key: Some(b"kraken|BTC-USD".to_vec()),
            value: value.to_vec(),
        }
    }

    #[test]
    fn cells_are_cut_with_an_ellipsis_and_made_printable() {
        assert_eq!(cell("short", 10), "short");
        assert_eq!(cell("0123456789", 10), "0123456789");
        assert_eq!(cell("0123456789abc", 10), "012345678…");
        assert_eq!(cell("a\nb\tc\u{1b}d", 10), "a b c·d");
        // Characters, not bytes: no multi-byte character is split.
        assert_eq!(cell("ééééé", 3), "éé…");
    }

    #[test]
    fn the_table_aligns_columns_and_cuts_long_fields() {
        let long = "x".repeat(200);
        let rs = vec![
            rec(
                0,
                1,
                "invalid_json",
                "expected value at line 1 column 1",
                b"{oops",
            ),
            rec(1, 2, "missing_field", &long, long.as_bytes()),
        ];
        let t = table(&rs, |r| String::from_utf8_lossy(&r.value).into_owned());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("TIME"), "{t}");
        let col = |h: &str| lines[0].find(h).unwrap();
        assert_eq!(
            &lines[1][col("ERROR TYPE")..col("ERROR TYPE") + 12],
            "invalid_json"
        );
        assert_eq!(
            &lines[2][col("ERROR TYPE")..col("ERROR TYPE") + 13],
            "missing_field"
        );
        assert!(
            lines[2].contains(&format!("{}…", "x".repeat(MESSAGE_WIDTH - 1))),
            "{t}"
        );
        assert!(!lines[2].contains(&"x".repeat(MESSAGE_WIDTH + 1)), "{t}");
        assert!(lines[1].contains("kraken|BTC-USD"));
        assert!(lines[1].ends_with("{oops"), "{t}");
    }

    #[test]
    fn the_summary_counts_every_match_and_keeps_the_newest() {
        let mut found = Inspection::default();
        for i in 0..5 {
            let ty = if i < 3 {
                "invalid_json"
            } else {
                "missing_field"
            };
            found.add(rec(i, 100 - i, ty, "m", b"v"), 2);
        }
        found.keep_newest(2);
        assert_eq!(found.matched, 5);
        assert_eq!(found.by_error_type["invalid_json"], 3);
        assert_eq!(found.by_error_type["missing_field"], 2);
        assert_eq!(found.by_source_topic["trades.v1"], 5);
        // Newest (by timestamp) last.
        let offsets: Vec<i64> = found.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![1, 0]);
        let s = summary_text("events.v1.dlq", &found);
        assert!(s.contains("invalid_json   3"), "{s}");
        assert!(s.contains("missing_field  2"), "{s}");
    }

    #[test]
    fn filters_match_kgates_headers() {
        let r = rec(0, 1, "invalid_json", "m", b"v");
        let f = |e: Option<&str>, s: Option<&str>| Filter {
            error_type: e.map(String::from),
            source_topic: s.map(String::from),
        };
        assert!(f(None, None).matches(&r));
        assert!(f(Some("invalid_json"), Some("trades.v1")).matches(&r));
        assert!(!f(Some("too_large"), None).matches(&r));
        assert!(!f(None, Some("other")).matches(&r));
    }

    #[test]
    fn json_records_carry_how_each_part_was_read() {
        let mut r = rec(0, 1, "invalid_json", "m", br#"{"a":1}"#);
        let j = record_json(&r, None);
        assert_eq!(j["value"], json!({"a": 1}));
        assert_eq!(j["value_as"], "json");
        assert_eq!(j["key"], "kraken|BTC-USD");
        assert_eq!(j["headers"]["error_type"], "invalid_json");
        r.value = vec![0xff, 0x00, 0x01];
        r.key = None;
        let j = record_json(&r, None);
        assert_eq!(j["value"], "/wAB");
        assert_eq!(j["value_as"], "base64");
        assert_eq!(j["key"], Value::Null);
        r.value = b"\0\0\0\0\x02hi".to_vec();
        assert_eq!(record_json(&r, None)["value_as"], "base64");
        r.value = b"line\n\ttab".to_vec();
        assert_eq!(record_json(&r, None)["value_as"], "text");
        r.value = b"{oops".to_vec();
        assert_eq!(record_json(&r, None)["value"], "{oops");
    }
}

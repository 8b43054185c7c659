//! `kgate dlq ...`: look at the dead-letter queue. `inspect` reads a DLQ topic (without joining
//! a consumer group or committing anything) and prints its records and a summary; `replay`
//! sends records again, exactly once, in its own consumer group and Kafka transactions.

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

use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::event::ErrorType;
use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;

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
    /// Send DLQ records again: back to their source topic (or --to), exactly once, resuming
    /// where an interrupted replay stopped.
    ///
    /// Reads the DLQ in its own consumer group up to the end offsets seen at the start and
    /// commits as it goes, in Kafka transactions: interrupted and run again, it sends nothing
    /// twice and misses nothing. A record the target refuses goes back to the DLQ with
    /// replay_count + 1, at most --max-attempts times.
    #[command(after_long_help = REPLAY_EXAMPLES)]
    Replay(ReplayArgs),
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
    /// A record as read.
    pub fn from_message<M: Message>(m: &M) -> DlqRecord {
        DlqRecord {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|hd| (hd.key.to_string(), hd.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
        }
    }

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
    /// Older records left unread because only the newest were asked for.
    pub older_unread: u64,
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

/// The partitions of `topic` that have records to read, each with (first offset, end offset):
/// from the beginning (or the first record written `since` ago) up to the end offsets now.
/// Errs naming the brokers and the fix when they cannot be reached, refuse the login, or the
/// topic does not exist.
pub fn bounds(
    consumer: &BaseConsumer<crate::kafka::QuietContext>,
    kafka: &KafkaConfig,
    topic: &str,
    since: Option<Duration>,
) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
    let brokers = kafka.brokers.join(",");
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
    Ok(ends)
}

/// Reads `topic` from the beginning (or `since` ago) up to the end offsets at the start, with
/// `assign` (no group, nothing committed); with `newest`, only about that many of the newest
/// records (split evenly over the partitions), the rest counted in `older_unread`.
pub fn read(
    kafka: &KafkaConfig,
    topic: &str,
    since: Option<Duration>,
    newest: Option<u64>,
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
    let mut ends = bounds(&consumer, kafka, topic, since)?;
    let mut found = Inspection::default();
    if let Some(n) = newest.filter(|_| !ends.is_empty()) {
        let each = i64::try_from(n.div_ceil(ends.len() as u64)).unwrap_or(i64::MAX);
        for (low, high) in ends.values_mut() {
            let from = (*high).saturating_sub(each).max(*low);
            found.older_unread += u64::try_from(from - *low).unwrap_or(0);
            *low = from;
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (&p, &(low, _)) in &ends {
        tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
    }
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
                let r = DlqRecord::from_message(&m);
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
        "older_unread": found.older_unread,
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

// ---------------------------------------------------------------------------------------------
// replay

/// The headers kgate's DLQ writers add to a record on top of the input's (the producing sink's
/// `dlq_record` in `sink::kafka`, and the consumer side): `replay` takes them off before it
/// sends a record again. One list, here.
pub const DLQ_HEADERS: &[&str] = &[
    "source",
    "pipeline",
    "source_topic",
    "error_type",
    "error_message",
    "received_at",
    "failed_at",
    "source_partition",
    "source_offset",
    "consumer_group",
    "attempts",
    "original_size",
    "original_sha256",
    "dropped_key_size",
    "dropped_headers",
];

/// The header `replay` adds: where the record was read, `<dlq_topic>[<partition>]@<offset>`.
pub const REPLAYED_FROM: &str = "replayed_from";
/// The header `replay` adds: how many times the record was replayed, this time included.
pub const REPLAY_COUNT: &str = "replay_count";

const REPLAY_EXAMPLES: &str = "\
Where Kafka is (the first that is given):
  --config FILE        the `kafka:` section of a kgate config (brokers, security)
  --brokers LIST       host:port[,host:port] (default 127.0.0.1:9092), no security

What is sent: each selected DLQ record's value, key and headers as they were before kgate
dead-lettered it (kgate's DLQ headers source, pipeline, source_topic, error_type,
error_message, received_at, failed_at, ... taken off), plus
  replayed_from   <dlq_topic>[<partition>]@<offset>
  replay_count    the record's previous replay_count + 1
to --to TOPIC, or else back to the record's `source_topic` header.

Exactly once, across interruptions: the DLQ is read in the consumer group --group (default
kgate-dlq-replay.<dlq_topic>), and each batch is sent in a Kafka transaction that also
commits the group's offsets (transactional.id kgate-dlq-replay.<group>.<dlq_topic>). Stopped
by SIGINT/SIGTERM it finishes the batch; killed, its open transaction is aborted when it is
started again, and it goes on from the last committed batch: nothing is sent twice, nothing
is missed. Consumers of the target topic see the replayed records once with
isolation.level=read_committed (records of an aborted batch are visible to
read_uncommitted readers, such as `kgate tail`).

Every record read is committed, the ones a filter leaves out too: a later run in the same
group does not see them again. To replay the rest by another filter, run again with another
--group (it starts from the beginning of the DLQ, or from --since).

Not sent: records whose replay_count reached --max-attempts (`exhausted`) and too_large
records (their DLQ copy holds only the first bytes; the header original_size says so).
A record the target refuses (the topic does not exist, is reserved, the record is too large,
not authorized) goes back to the DLQ with replay_count + 1 and the new error_type, so a later
run tries it again, at most --max-attempts times in all.

Examples:
  kgate dlq replay --topic events.v1.dlq --dry-run            # what would be sent, and where
  kgate dlq replay --topic events.v1.dlq                      # each record back to its source topic
  kgate dlq replay --topic events.v1.dlq --error-type produce_failed --since 2h
  kgate dlq replay --topic events.v1.dlq --source-topic trades.v1 --to trades.v1.retry --rate 500/s
  kgate dlq replay --config kgate.yaml --topic events.v1.dlq --group replay-2026-12-07

Exit status: 0 replayed up to the end offsets the DLQ had at the start; 1 Kafka error (run it
again: it goes on where the last committed batch ended); 2 bad arguments or config;
130 stopped by SIGINT/SIGTERM after committing its last batch.";

/// `kgate dlq replay`: arguments.
#[derive(Debug, Args, Clone)]
pub struct ReplayArgs {
    /// The DLQ topic to replay (the config's `dlq.topic`).
    #[arg(short, long)]
    pub topic: String,
    /// Send every selected record to this topic, instead of back to its `source_topic` header.
    #[arg(long, value_name = "TOPIC")]
    pub to: Option<String>,
    /// Only records with this `error_type` header. The others are read and committed too: this
    /// group will not replay them later (use another --group for that).
    #[arg(short, long, value_name = "TYPE")]
    pub error_type: Option<String>,
    /// Only records with this `source_topic` header (the others are committed, see
    /// --error-type).
    #[arg(short, long, value_name = "TOPIC")]
    pub source_topic: Option<String>,
    /// Start at the first record written DURATION ago (e.g. 30m, 1h, 2d), or where the group
    /// stopped, whichever is later; else from the beginning.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Send at most N records a second (e.g. 500 or 500/s); unlimited by default.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Print what would be sent (a table, and counts by target), send and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not replay a record that was replayed this many times already (its `replay_count`
    /// header): it is counted as exhausted and left in the DLQ.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_attempts: u32,
    /// The consumer group that reads the DLQ and whose committed offsets say where to go on
    /// (default kgate-dlq-replay.<topic>).
    #[arg(short, long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Config file whose `kafka:` section (brokers, security) to use.
    #[arg(short, long, env = "KGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Brokers, when no config is given.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Output format: a table (with --dry-run) and the counts as text, or one JSON object per
    /// record (with --dry-run, with its `target`) and one `{"replay": {counts}}` line.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Serve Prometheus metrics (kafka_dlq_replayed_total{dlq_topic,target_topic}) on this
    /// address while the replay runs, e.g. 127.0.0.1:9465.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `--rate`: `N` or `N/s`, more than 0.
fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "`{s}` is not a rate; write records per second, e.g. 500 or 500/s"
        )),
    }
}

impl ReplayArgs {
    /// The consumer group.
    pub fn group(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("kgate-dlq-replay.{}", self.topic))
    }
}

/// The `transactional.id` of a replay of `dlq_topic` in `group`: the same on every restart, so
/// that a restarted replay fences the one it replaces and aborts its open transaction.
pub fn transactional_id(group: &str, dlq_topic: &str) -> String {
    format!("kgate-dlq-replay.{group}.{dlq_topic}")
}

/// Why `topic` may not be a replay's target (`dlq_topic` is the DLQ being replayed), with the
/// error type a record sent back to the DLQ for it gets.
pub fn refused_target(topic: &str, dlq_topic: &str) -> Option<(ErrorType, String)> {
    if !crate::kafka::valid_topic_name(topic) {
        Some((
            ErrorType::InvalidTopic,
            format!("`{topic}` is not a legal topic name (letters, digits, `.`, `_`, `-`)"),
        ))
    } else if topic == dlq_topic {
        Some((
            ErrorType::TopicNotAllowed,
            format!("{topic} is the DLQ being replayed; replay into another topic"),
        ))
    } else if crate::kafka::reserved_topic(topic) {
        Some((
            ErrorType::TopicNotAllowed,
            format!(
                "{topic} is reserved (`__*`, `_schemas`, `connect-*`); replay does not write it"
            ),
        ))
    } else {
        None
    }
}

impl DlqRecord {
    /// The record's `replay_count` header (0 when it was never replayed).
    pub fn replay_count(&self) -> u32 {
        self.header(REPLAY_COUNT)
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether the DLQ holds only the first bytes of the record (too_large).
    pub fn truncated(&self) -> bool {
        self.header("original_size").is_some()
    }

    /// The headers the record had before kgate dead-lettered it: the last one of each name in
    /// [`DLQ_HEADERS`] (kgate writes its own after the input's) and every earlier
    /// `replayed_from`/`replay_count` taken off.
    pub fn original_headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut drop = vec![false; self.headers.len()];
        for name in DLQ_HEADERS {
            if let Some(i) = self.headers.iter().rposition(|(k, _)| k == name) {
                drop[i] = true;
            }
        }
        self.headers
            .iter()
            .zip(drop)
            .filter(|((k, _), d)| !d && k != REPLAYED_FROM && k != REPLAY_COUNT)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// `<dlq_topic>[<partition>]@<offset>`.
    pub fn replayed_from(&self, dlq_topic: &str) -> String {
        format!("{dlq_topic}[{}]@{}", self.partition, self.offset)
    }

    /// The headers of the replayed record: the original ones, `replayed_from` and
    /// `replay_count` + 1.
    pub fn replay_headers(&self, dlq_topic: &str) -> Vec<(String, Vec<u8>)> {
        let mut h = self.original_headers();
        h.push((
            REPLAYED_FROM.into(),
            self.replayed_from(dlq_topic).into_bytes(),
        ));
        h.push((
            REPLAY_COUNT.into(),
            (self.replay_count() + 1).to_string().into_bytes(),
        ));
        h
    }

    /// The headers of the record sent back to the DLQ when its replay to `target` failed: the
    /// replayed record's, then kgate's DLQ headers with the new failure.
    pub fn back_to_dlq_headers(
        &self,
        dlq_topic: &str,
        group: &str,
        target: Option<&str>,
        error_type: ErrorType,
        message: &str,
    ) -> Vec<(String, Vec<u8>)> {
        let mut h = self.replay_headers(dlq_topic);
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let source_topic = target
            .map(str::to_string)
            .or_else(|| self.header("source_topic"));
        let mut add = |k: &str, v: String| h.push((k.to_string(), v.into_bytes()));
        add("source", format!("dlq-replay:{dlq_topic}"));
        add("pipeline", "dlq-replay".into());
        if let Some(t) = source_topic {
            add("source_topic", t);
        }
        add("error_type", error_type.as_str().into());
        add("error_message", message.into());
        add(
            "received_at",
            self.header("received_at").unwrap_or(now.clone()),
        );
        add("failed_at", now);
        add("consumer_group", group.into());
        h
    }
}

/// Whether a target topic may be written, else the error type and why not.
pub type TargetCheck = Result<(), (ErrorType, String)>;

/// What `replay` does with one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Send it to this topic.
    Send(String),
    /// Left out by --error-type/--source-topic.
    Filtered,
    /// Its replay_count reached --max-attempts.
    Exhausted,
    /// Only its first bytes are in the DLQ (too_large).
    Truncated,
    /// It cannot go to its target: back to the DLQ, with the target when there is one.
    Fail(Option<String>, ErrorType, String),
}

/// How a record is replayed.
pub struct Planner<'a> {
    /// The DLQ topic.
    pub dlq_topic: &'a str,
    /// --to.
    pub to: Option<&'a str>,
    /// The filters.
    pub filter: Filter,
    /// --max-attempts.
    pub max_attempts: u32,
}

impl Planner<'_> {
    /// What to do with `r`; `exists` says whether a topic exists (or why it cannot be
    /// written).
    pub fn plan(&self, r: &DlqRecord, exists: &mut dyn FnMut(&str) -> TargetCheck) -> Plan {
        if !self.filter.matches(r) {
            return Plan::Filtered;
        }
        if r.replay_count() >= self.max_attempts {
            return Plan::Exhausted;
        }
        if r.truncated() {
            return Plan::Truncated;
        }
        let target = match self.to {
            Some(t) => t.to_string(),
            None => match r.header("source_topic").filter(|t| !t.is_empty()) {
                Some(t) => t,
                None => {
                    return Plan::Fail(
                        None,
                        ErrorType::InvalidTopic,
                        "no source_topic header to replay it to; replay it with --to TOPIC".into(),
                    )
                }
            },
        };
        if let Some((ty, why)) = refused_target(&target, self.dlq_topic) {
            return Plan::Fail(Some(target), ty, why);
        }
        match exists(&target) {
            Ok(()) => Plan::Send(target),
            Err((ty, why)) => Plan::Fail(Some(target), ty, why),
        }
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayCounts {
    /// Records read from the DLQ.
    pub read: u64,
    /// Records the filters selected.
    pub selected: u64,
    /// Records sent to their target (committed).
    pub sent: u64,
    /// Records left out by the filters.
    pub filtered: u64,
    /// Records not sent: replay_count reached --max-attempts.
    pub exhausted: u64,
    /// Records not sent: too_large, only their first bytes are in the DLQ.
    pub truncated: u64,
    /// Records sent back to the DLQ (their target refused them).
    pub to_dlq: u64,
    /// Records sent (or, with --dry-run, to be sent) by target topic.
    pub by_target: BTreeMap<String, u64>,
    /// Records sent back to the DLQ by the new error type.
    pub failed_by_type: BTreeMap<String, u64>,
    /// Stopped by a signal before the end.
    pub interrupted: bool,
}

impl ReplayCounts {
    /// The report, as text.
    pub fn text(&self, dlq_topic: &str, dry_run: bool) -> String {
        let would = if dry_run { "would be " } else { "" };
        let mut out = format!(
            "{dlq_topic}: {} records read, {} selected: {} {would}sent, {} {would}sent back to the DLQ, {} exhausted (replay_count at --max-attempts), {} too_large (not replayable); {} skipped by the filters{}\n",
            self.read,
            self.selected,
            self.sent,
            self.to_dlq,
            self.exhausted,
            self.truncated,
            self.filtered,
            if self.interrupted { "; interrupted, run it again to go on" } else { "" },
        );
        for (t, n) in &self.by_target {
            out.push_str(&format!("  → {t}  {n}\n"));
        }
        for (t, n) in &self.failed_by_type {
            out.push_str(&format!("  back to the DLQ as {t}  {n}\n"));
        }
        out
    }

    /// The report, as one JSON object.
    pub fn json(&self) -> Value {
        json!({ "replay": {
            "read": self.read,
            "selected": self.selected,
            "sent": self.sent,
            "sent_to_dlq": self.to_dlq,
            "exhausted": self.exhausted,
            "too_large": self.truncated,
            "skipped_by_filter": self.filtered,
            "by_target": self.by_target,
            "back_to_dlq_by_error_type": self.failed_by_type,
            "interrupted": self.interrupted,
        }})
    }
}

/// A token bucket: at most `rate` records a second, in bursts of at most a tenth of a second's
/// worth (at least one).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64) -> TokenBucket {
        let burst = (rate / 10.0).max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token at `now`; how long to wait first when there is none.
    pub fn take_at(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Takes one token, sleeping until there is one.
    pub fn take(&mut self) {
        let wait = self.take_at(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Progress on stderr: a line rewritten in place on a terminal, a log line every
/// [`PROGRESS_EVERY`] otherwise.
pub struct Progress {
    tty: bool,
    label: String,
    total: u64,
    started: Instant,
    printed: Option<Instant>,
}

/// How often a non-terminal gets a progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// Progress of `total` records (an upper bound: transaction markers count).
    pub fn new(label: String, total: u64) -> Progress {
        Progress {
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            label,
            total,
            started: Instant::now(),
            printed: None,
        }
    }

    /// The line for `done` records after `elapsed`.
    pub fn line(&self, done: u64, sent: u64, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let pct = if self.total > 0 {
            100.0 * done as f64 / self.total as f64
        } else {
            100.0
        };
        let eta = if rate > 0.0 && self.total > done {
            let left = Duration::from_secs(((self.total - done) as f64 / rate).ceil() as u64);
            humantime::format_duration(left).to_string()
        } else {
            "-".into()
        };
        format!(
            "{}: {done}/{} read ({pct:.0}%), {sent} sent, {rate:.0} records/s, ETA {eta}",
            self.label, self.total
        )
    }

    /// Shows progress, when it is time to.
    pub fn update(&mut self, done: u64, sent: u64) {
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            PROGRESS_EVERY
        };
        if self.printed.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.printed = Some(Instant::now());
        let line = self.line(done, sent, self.started.elapsed());
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    /// Ends the line on a terminal.
    pub fn finish(&mut self) {
        if self.tty && self.printed.is_some() {
            eprintln!();
        }
    }
}

/// The replay producer's context: collects delivery results (by the index the record was sent
/// with) for the batch being sent.
#[derive(Default)]
struct ReplayContext {
    quiet: crate::kafka::QuietContext,
    results: std::sync::Mutex<Vec<(usize, Option<KafkaError>)>>,
}

impl ClientContext for ReplayContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(error, reason)
    }
}

impl ProducerContext for ReplayContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let e = result.as_ref().err().map(|(e, _)| e.clone());
        self.results
            .lock()
            .expect("replay results lock")
            .push((index, e));
    }
}

/// Whether a delivery error is the record's own (the topic refuses it: back to the DLQ), not a
/// broker or network trouble (the batch is aborted and the replay stops, to be run again).
fn record_error(e: &KafkaError) -> Option<ErrorType> {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code()? {
        C::MessageSizeTooLarge | C::InvalidMessageSize => Some(ErrorType::TooLarge),
        C::TopicAuthorizationFailed
        | C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::InvalidMessage
        | C::InvalidRecord
        | C::PolicyViolation => Some(ErrorType::ProduceFailed),
        C::InvalidTopic => Some(ErrorType::InvalidTopic),
        _ => None,
    }
}

/// How long one transaction step (init, send offsets, commit, abort) may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// The most records in one batch (one transaction).
const BATCH_RECORDS: usize = 1000;
/// The longest a batch is collected for before it is sent.
const BATCH_TIME: Duration = Duration::from_secs(1);

/// One record of a batch and what to do with it.
struct Item {
    record: DlqRecord,
    plan: Plan,
    /// In a produce request Kafka refused: sent alone on the next try.
    suspect: bool,
}

/// Builds Kafka headers.
fn owned_headers(h: &[(String, Vec<u8>)]) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(h.len());
    for (k, v) in h {
        out = out.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    out
}

/// A running replay.
struct Replayer<'a> {
    args: &'a ReplayArgs,
    brokers: String,
    group: String,
    consumer: BaseConsumer<crate::kafka::QuietContext>,
    producer: Option<BaseProducer<ReplayContext>>,
    counts: ReplayCounts,
    metrics: Option<Arc<Metrics>>,
}

impl Replayer<'_> {
    /// Sends `batch` and commits `offsets` in one transaction. Kafka refuses a produce request
    /// as a whole, so a refusal in a batch makes its records suspects: the transaction is
    /// aborted and the batch sent again, each suspect alone first; a suspect refused alone goes
    /// back to the DLQ instead (each retry, or each other one, settles at least one record, so this ends).
    fn send_batch(
        &mut self,
        batch: &mut [Item],
        offsets: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<()> {
        let Some(producer) = &self.producer else {
            return Ok(());
        };
        let dlq = self.args.topic.as_str();
        let mut tpl = TopicPartitionList::new();
        for (&p, &next) in offsets {
            tpl.add_partition_offset(dlq, p, Offset::Offset(next))?;
        }
        let brokers = &self.brokers;
        let group = &self.group;
        let again = "nothing of this batch was committed; run the replay again to go on";
        let abort = |why: String| -> anyhow::Error {
            let _ = producer.abort_transaction(TXN_TIMEOUT);
            anyhow::anyhow!("{why}")
        };
        let send = |i: usize, item: &Item| -> anyhow::Result<()> {
            let (topic, headers) = match &item.plan {
                Plan::Send(t) => (t.as_str(), item.record.replay_headers(dlq)),
                Plan::Fail(t, ty, why) => (
                    dlq,
                    item.record
                        .back_to_dlq_headers(dlq, group, t.as_deref(), *ty, why),
                ),
                _ => return Ok(()),
            };
            let mut rec = BaseRecord::with_opaque_to(topic, i)
                .payload(&item.record.value[..])
                .headers(owned_headers(&headers));
            if let Some(k) = &item.record.key {
                rec = rec.key(&k[..]);
            }
            loop {
                match producer.send(rec) {
                    Ok(()) => return Ok(()),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => {
                        return Err(abort(format!(
                            "sending to {topic} at {brokers}: {e}; {again}"
                        )))
                    }
                }
            }
        };
        // Flushes and reads the delivery results: Ok(true) when a record was refused (it is
        // marked: a suspect, or when `alone`, back to the DLQ).
        let settle = |batch: &mut [Item], alone: bool| -> anyhow::Result<bool> {
            if let Err(e) = producer.flush(TXN_TIMEOUT) {
                return Err(abort(format!("sending a batch to {brokers}: {e}; {again}")));
            }
            let results = std::mem::take(&mut *producer.context().results.lock().expect("lock"));
            let mut refused = false;
            let mut purged = false;
            for (i, e) in results {
                let Some(e) = e else { continue };
                let item = &mut batch[i];
                // A refusal makes the transaction abortable: librdkafka purges what was queued
                // after it. Those records are sent again with the batch.
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                ) {
                    purged = true;
                    continue;
                }
                match (&item.plan, record_error(&e)) {
                    (Plan::Send(t), Some(ty)) => {
                        refused = true;
                        if alone {
                            let why = format!("replay to {t} at {brokers}: {e}");
                            item.plan = Plan::Fail(Some(t.clone()), ty, why);
                        } else {
                            item.suspect = true;
                        }
                    }
                    (Plan::Send(t), None) => {
                        return Err(abort(format!("sending to {t} at {brokers}: {e}; {again}")))
                    }
                    _ => {
                        return Err(abort(format!(
                            "sending a record back to the DLQ {dlq} at {brokers}: {e}; {again}"
                        )))
                    }
                }
            }
            // Purged without a refusal of its own (after an abort, librdkafka may purge what
            // is queued while it bumps the producer epoch): the batch is tried again.
            Ok(refused || purged)
        };
        // Each abort costs a round more (see above).
        'retry: for _ in 0..4 * batch.len() + 4 {
            producer.begin_transaction().map_err(|e| {
                anyhow::anyhow!(
                    "beginning a transaction at {brokers}: {e}{}",
                    fenced_hint(&e)
                )
            })?;
            producer.context().results.lock().expect("lock").clear();
            for i in 0..batch.len() {
                if batch[i].suspect && matches!(batch[i].plan, Plan::Send(_)) {
                    send(i, &batch[i])?;
                    if settle(batch, true)? {
                        producer.abort_transaction(TXN_TIMEOUT).map_err(|e| {
                            anyhow::anyhow!(
                                "aborting a transaction at {brokers}: {e}{}",
                                fenced_hint(&e)
                            )
                        })?;
                        continue 'retry;
                    }
                }
            }
            for (i, item) in batch.iter().enumerate() {
                if !(item.suspect && matches!(item.plan, Plan::Send(_))) {
                    send(i, item)?;
                }
            }
            if settle(batch, false)? {
                producer.abort_transaction(TXN_TIMEOUT).map_err(|e| {
                    anyhow::anyhow!(
                        "aborting a transaction at {brokers}: {e}{}",
                        fenced_hint(&e)
                    )
                })?;
                continue;
            }
            let meta = self
                .consumer
                .group_metadata()
                .ok_or_else(|| anyhow::anyhow!("the DLQ consumer has no group metadata"))?;
            let commit = producer
                .send_offsets_to_transaction(&tpl, &meta, TXN_TIMEOUT)
                .and_then(|()| producer.commit_transaction(TXN_TIMEOUT));
            if let Err(e) = commit {
                return Err(abort(format!(
                    "committing a batch at {brokers}: {e}{}; {again}",
                    fenced_hint(&e)
                )));
            }
            for item in batch.iter() {
                match &item.plan {
                    Plan::Send(t) => {
                        self.counts.sent += 1;
                        *self.counts.by_target.entry(t.clone()).or_default() += 1;
                        if let Some(m) = &self.metrics {
                            m.consumer
                                .dlq_replayed
                                .with_label_values(&[dlq, t.as_str()])
                                .inc();
                        }
                    }
                    Plan::Fail(_, ty, _) => {
                        self.counts.to_dlq += 1;
                        *self
                            .counts
                            .failed_by_type
                            .entry(ty.as_str().to_string())
                            .or_default() += 1;
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        anyhow::bail!("a batch kept being refused at {brokers}; {again}")
    }
}

/// What to do when a transaction call says this producer was fenced.
fn fenced_hint(e: &KafkaError) -> &'static str {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced) => {
            " (another `kgate dlq replay` of this DLQ in this --group started and took over; run one at a time per group)"
        }
        _ => "",
    }
}

/// Replays `args.topic`, stopping at the end offsets it had at the start, or when `stop` is
/// set (after committing the batch in progress). With --dry-run, `shown` gets the records that
/// would be sent.
pub fn replay(
    kafka: &KafkaConfig,
    args: &ReplayArgs,
    stop: &AtomicBool,
    metrics: Option<Arc<Metrics>>,
    shown: &mut Vec<(DlqRecord, String)>,
) -> anyhow::Result<ReplayCounts> {
    replay_with_progress(kafka, args, stop, metrics, shown, &|_, _| {})
}

/// [`replay`], calling `on_batch(records to read, counts so far)` after every batch (the web
/// UI's progress of a replay job).
pub fn replay_with_progress(
    kafka: &KafkaConfig,
    args: &ReplayArgs,
    stop: &AtomicBool,
    metrics: Option<Arc<Metrics>>,
    shown: &mut Vec<(DlqRecord, String)>,
    on_batch: &dyn Fn(u64, &ReplayCounts),
) -> anyhow::Result<ReplayCounts> {
    let brokers = kafka.brokers.join(",");
    let dlq = args.topic.as_str();
    let group = args.group();
    // The producer first: init_transactions fences a replay killed earlier and aborts its open
    // transaction, so the offsets read next are the last committed batch's.
    let producer = if args.dry_run {
        None
    } else {
        let p: BaseProducer<ReplayContext> = crate::kafka::producer_client_config(kafka)
            .set("transactional.id", transactional_id(&group, dlq))
            .set("transaction.timeout.ms", "120000")
            .set("message.timeout.ms", "60000")
            .set("allow.auto.create.topics", "false")
            .create_with_context(ReplayContext::default())?;
        p.init_transactions(TXN_TIMEOUT).map_err(|e| {
            let why = p.context().quiet.diagnosis(kafka).map(|d| d.to_string());
            anyhow::anyhow!(
                "starting the transactional producer at {brokers}: {}; is the broker reachable, and may these credentials use transactional ids `kgate-dlq-replay.*` (ACL on TransactionalId) and write the target topics?",
                why.unwrap_or_else(|| e.to_string())
            )
        })?;
        Some(p)
    };
    let consumer: BaseConsumer<crate::kafka::QuietContext> =
        crate::kafka::base_client_config(kafka)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create_with_context(Default::default())?;
    let mut ends = bounds(&consumer, kafka, dlq, args.since)?;
    // A --to that cannot be written would send every record back to the DLQ: refused first.
    if let Some(to) = &args.to {
        if let Err((_, why)) = topic_exists(&consumer, &brokers, to) {
            anyhow::bail!("--to {to}: {why}");
        }
    }
    // Go on where the group stopped.
    if !ends.is_empty() {
        let mut ask = TopicPartitionList::new();
        for &p in ends.keys() {
            ask.add_partition(dlq, p);
        }
        let committed = consumer
            .committed_offsets(ask, Duration::from_secs(30))
            .map_err(|e| {
                anyhow::anyhow!(
                    "reading the committed offsets of group {group} on {dlq} at {brokers}: {e}"
                )
            })?;
        for e in committed.elements() {
            if let (Offset::Offset(o), Some((low, _))) = (e.offset(), ends.get_mut(&e.partition()))
            {
                *low = o.max(*low);
            }
        }
        ends.retain(|_, (low, high)| low < high);
    }
    let total: u64 = ends
        .values()
        .map(|(l, h)| u64::try_from(h - l).unwrap_or(0))
        .sum();
    let mut r = Replayer {
        args,
        brokers: brokers.clone(),
        group: group.clone(),
        consumer,
        producer,
        counts: ReplayCounts::default(),
        metrics,
    };
    if ends.is_empty() {
        return Ok(r.counts);
    }
    let mut tpl = TopicPartitionList::new();
    for (&p, &(low, _)) in &ends {
        tpl.add_partition_offset(dlq, p, Offset::Offset(low))?;
    }
    r.consumer.assign(&tpl)?;
    let planner = Planner {
        dlq_topic: dlq,
        to: args.to.as_deref(),
        filter: Filter {
            error_type: args.error_type.clone(),
            source_topic: args.source_topic.clone(),
        },
        max_attempts: args.max_attempts,
    };
    let mut topics: HashMap<String, TargetCheck> = HashMap::new();
    let mut bucket = args.rate.map(TokenBucket::new);
    let label = if args.dry_run {
        format!("dlq replay {dlq} (dry run)")
    } else {
        format!("dlq replay {dlq}")
    };
    let mut progress = Progress::new(label, total);
    let mut last = Instant::now();
    while !ends.is_empty() && !stop.load(Ordering::Relaxed) {
        let mut batch: Vec<Item> = Vec::new();
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let started = Instant::now();
        while !ends.is_empty()
            && batch.len() < BATCH_RECORDS
            && started.elapsed() < BATCH_TIME
            && !stop.load(Ordering::Relaxed)
        {
            match r.consumer.poll(Duration::from_millis(100)) {
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
                    let record = DlqRecord::from_message(&m);
                    drop(m);
                    r.counts.read += 1;
                    offsets.insert(record.partition, record.offset + 1);
                    let consumer = &r.consumer;
                    let plan = planner.plan(&record, &mut |t| {
                        topics
                            .entry(t.to_string())
                            .or_insert_with(|| topic_exists(consumer, &brokers, t))
                            .clone()
                    });
                    match &plan {
                        Plan::Filtered => r.counts.filtered += 1,
                        Plan::Exhausted => {
                            r.counts.selected += 1;
                            r.counts.exhausted += 1;
                        }
                        Plan::Truncated => {
                            r.counts.selected += 1;
                            r.counts.truncated += 1;
                        }
                        Plan::Send(t) | Plan::Fail(Some(t), ..) if args.dry_run => {
                            r.counts.selected += 1;
                            if matches!(plan, Plan::Send(_)) {
                                r.counts.sent += 1;
                                *r.counts.by_target.entry(t.clone()).or_default() += 1;
                            } else {
                                r.counts.to_dlq += 1;
                            }
                            shown.push((record.clone(), t.clone()));
                        }
                        Plan::Fail(None, ..) if args.dry_run => {
                            r.counts.selected += 1;
                            r.counts.to_dlq += 1;
                            shown.push((record.clone(), "-".into()));
                        }
                        Plan::Send(_) | Plan::Fail(..) => {
                            r.counts.selected += 1;
                            if let Some(b) = &mut bucket {
                                b.take();
                                last = Instant::now();
                            }
                        }
                    }
                    if !args.dry_run {
                        batch.push(Item {
                            record,
                            plan,
                            suspect: false,
                        });
                    }
                }
                Some(Err(e)) => anyhow::bail!("reading {dlq} at {brokers}: {e}"),
                None if last.elapsed() >= STALL => {
                    let left: Vec<String> = ends.keys().map(i32::to_string).collect();
                    anyhow::bail!(
                        "reading {dlq} at {brokers}: no record for {STALL:?} while partitions {} still had some to read; is the broker healthy, is the topic readable with these credentials (kafka.security), and is a transaction on it left open?",
                        left.join(",")
                    );
                }
                None => {
                    // A transaction marker or compacted record at the end: nothing to deliver.
                    if let Ok(at) = r.consumer.position() {
                        for e in at.elements() {
                            if let (Offset::Offset(o), Some(&(_, end))) =
                                (e.offset(), ends.get(&e.partition()))
                            {
                                if o >= end {
                                    ends.remove(&e.partition());
                                    offsets.entry(e.partition()).or_insert(o);
                                }
                            }
                        }
                    }
                }
            }
            progress.update(r.counts.read, r.counts.sent);
        }
        if !offsets.is_empty() && !args.dry_run {
            r.send_batch(&mut batch, &offsets)?;
        }
        progress.update(r.counts.read, r.counts.sent);
        on_batch(total, &r.counts);
    }
    progress.finish();
    r.counts.interrupted = !ends.is_empty();
    Ok(r.counts)
}

/// Whether `topic` exists and may be written, from the metadata (never creating it).
fn topic_exists(
    consumer: &BaseConsumer<crate::kafka::QuietContext>,
    brokers: &str,
    topic: &str,
) -> TargetCheck {
    match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(md) => match md.topics().first().map(|t| (t.error(), t.partitions().len())) {
            Some((None, n)) if n > 0 => Ok(()),
            Some((Some(e), _)) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::TopicAuthorizationFailed => Err((
                ErrorType::ProduceFailed,
                format!("not authorized to write {topic} at {brokers}; grant these credentials Write on it, or replay with --to another topic"),
            )),
            _ => Err((
                ErrorType::ProduceFailed,
                format!("topic {topic} does not exist at {brokers}; create it (replay does not), or replay with --to another topic"),
            )),
        },
        Err(e) => Err((
            ErrorType::ProduceFailed,
            format!("reading the metadata of {topic} at {brokers}: {e}"),
        )),
    }
}

async fn replay_main(args: ReplayArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("kgate dlq replay: {msg}");
        ExitCode::from(2)
    };
    if let Some(t) = &args.error_type {
        if !ErrorType::ALL.iter().any(|e| e.as_str() == t) {
            let known: Vec<&str> = ErrorType::ALL.iter().map(|e| e.as_str()).collect();
            return fail(format!(
                "unknown --error-type {t}; kgate writes {}",
                known.join(", ")
            ));
        }
    }
    if let Some(to) = &args.to {
        if let Some((_, why)) = refused_target(to, &args.topic) {
            return fail(format!("--to {why}"));
        }
    }
    if args.max_attempts == 0 {
        return fail("--max-attempts 0 would replay nothing; give 1 or more".into());
    }
    let (kafka, _) = match super::kafka_and_registry(args.config.as_deref(), &args.brokers, None) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let m = Metrics::new(&BTreeMap::new());
            match crate::metrics::serve(addr, 16, None, m.clone(), shutdown.clone()).await {
                Ok(_) => Some(m),
                Err(e) => return fail(format!("--metrics-listen {addr}: {e}")),
            }
        }
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    let a = args.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut shown = Vec::new();
        replay(&kafka, &a, &stop, metrics, &mut shown).map(|c| (c, shown))
    })
    .await;
    shutdown.cancel();
    match done {
        Ok(Ok((counts, shown))) => {
            match args.output {
                Output::Json => {
                    for (r, target) in &shown {
                        let mut j = record_json(r, None);
                        j["target"] = target.as_str().into();
                        println!("{j}");
                    }
                    println!("{}", counts.json());
                }
                Output::Table => {
                    if !shown.is_empty() {
                        let rows: Vec<DlqRecord> = shown
                            .iter()
                            .take(DRY_RUN_ROWS)
                            .map(|(r, _)| r.clone())
                            .collect();
                        let targets: HashMap<(i32, i64), &str> = shown
                            .iter()
                            .map(|(r, t)| ((r.partition, r.offset), t.as_str()))
                            .collect();
                        print!(
                            "{}",
                            table(&rows, |r| format!(
                                "→ {}  {}",
                                targets
                                    .get(&(r.partition, r.offset))
                                    .copied()
                                    .unwrap_or("-"),
                                preview(r, None)
                            ))
                        );
                        if shown.len() > DRY_RUN_ROWS {
                            println!("… and {} more", shown.len() - DRY_RUN_ROWS);
                        }
                        println!();
                    }
                    print!("{}", counts.text(&args.topic, args.dry_run));
                }
            }
            if counts.interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            }
        }
        Ok(Err(e)) => {
            eprintln!("kgate dlq replay: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kgate dlq replay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The most records a dry run lists (it counts them all).
const DRY_RUN_ROWS: usize = 50;

/// `kgate dlq ...`.
pub async fn main(args: DlqArgs) -> ExitCode {
    match args.command {
        DlqCommand::Inspect(a) => inspect_main(a).await,
        DlqCommand::Replay(a) => replay_main(a).await,
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
        let found = read(&kafka, &args.topic, args.since, None, &filter, args.max)?;
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

    fn hdrs(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn dlq_rec(input: &[(&str, &str)], kgate: &[(&str, &str)]) -> DlqRecord {
        let mut headers = hdrs(input);
        headers.extend(hdrs(kgate));
        DlqRecord {
            partition: 1,
            offset: 42,
            timestamp: Some(1),
            headers,
            key: Some(b"k".to_vec()),
            value: b"v".to_vec(),
        }
    }

    const KGATE: &[(&str, &str)] = &[
        ("source", "market:ws://h/ws"),
        ("pipeline", "market"),
        ("source_topic", "trades.v1"),
        ("error_type", "produce_failed"),
        ("error_message", "m"),
        ("received_at", "2026-12-07T04:00:00.000Z"),
        ("failed_at", "2026-12-07T04:00:01.000Z"),
        ("source_partition", "0"),
        ("source_offset", "9"),
        ("consumer_group", "g"),
        ("attempts", "3"),
    ];

    #[test]
    fn replay_takes_kgates_headers_off_and_keeps_the_inputs() {
        // An input header named like kgate's is kept: kgate's own is the last one.
        let r = dlq_rec(&[("trace", "t1"), ("source", "device-7")], KGATE);
        assert_eq!(
            r.original_headers(),
            hdrs(&[("trace", "t1"), ("source", "device-7")])
        );
        assert_eq!(
            r.replay_headers("e.dlq"),
            hdrs(&[
                ("trace", "t1"),
                ("source", "device-7"),
                ("replayed_from", "e.dlq[1]@42"),
                ("replay_count", "1"),
            ])
        );
        // An earlier replay's headers are replaced, its count goes on.
        let r = dlq_rec(
            &[
                ("trace", "t1"),
                ("replayed_from", "x[0]@1"),
                ("replay_count", "2"),
            ],
            KGATE,
        );
        assert_eq!(r.replay_count(), 2);
        assert_eq!(
            r.replay_headers("e.dlq"),
            hdrs(&[
                ("trace", "t1"),
                ("replayed_from", "e.dlq[1]@42"),
                ("replay_count", "3"),
            ])
        );
        // Back to the DLQ: the replayed record's headers, then kgate's for the new failure.
        let back = DlqRecord {
            headers: r.back_to_dlq_headers(
                "e.dlq",
                "g2",
                Some("gone.v1"),
                ErrorType::ProduceFailed,
                "topic gone.v1 does not exist",
            ),
            ..r.clone()
        };
        assert_eq!(back.replay_count(), 3);
        assert_eq!(back.header("source_topic").as_deref(), Some("gone.v1"));
        assert_eq!(back.header("error_type").as_deref(), Some("produce_failed"));
        assert_eq!(
            back.header("received_at").as_deref(),
            Some("2026-12-07T04:00:00.000Z")
        );
        assert!(back.header("failed_at").is_some());
        // Replayed once more, it comes out as it went in, with the count 4.
        assert_eq!(
            back.replay_headers("e.dlq"),
            hdrs(&[
                ("trace", "t1"),
                ("replayed_from", "e.dlq[1]@42"),
                ("replay_count", "4"),
            ])
        );
    }

    #[test]
    fn the_planner_filters_stops_at_max_attempts_and_refuses_bad_targets() {
        let planner = |to: Option<&'static str>, error_type: Option<&str>| Planner {
            dlq_topic: "e.dlq",
            to,
            filter: Filter {
                error_type: error_type.map(String::from),
                source_topic: None,
            },
            max_attempts: 2,
        };
        let mut exists = |t: &str| -> TargetCheck {
            if t == "gone.v1" {
                Err((ErrorType::ProduceFailed, "does not exist".into()))
            } else {
                Ok(())
            }
        };
        let r = dlq_rec(&[], KGATE);
        let p = planner(None, None);
        assert_eq!(p.plan(&r, &mut exists), Plan::Send("trades.v1".into()));
        assert_eq!(
            planner(Some("other.v1"), None).plan(&r, &mut exists),
            Plan::Send("other.v1".into())
        );
        assert_eq!(
            planner(None, Some("too_large")).plan(&r, &mut exists),
            Plan::Filtered
        );
        let tired = dlq_rec(&[("replay_count", "2")], KGATE);
        assert_eq!(p.plan(&tired, &mut exists), Plan::Exhausted);
        let mut cut = r.clone();
        cut.headers.extend(hdrs(&[("original_size", "9000000")]));
        assert_eq!(p.plan(&cut, &mut exists), Plan::Truncated);
        let to = |t: &str| {
            let mut r = r.clone();
            r.headers
                .push(("source_topic".into(), t.as_bytes().to_vec()));
            r
        };
        for (t, ty) in [
            ("gone.v1", ErrorType::ProduceFailed),
            ("e.dlq", ErrorType::TopicNotAllowed),
            ("__consumer_offsets", ErrorType::TopicNotAllowed),
            ("_schemas", ErrorType::TopicNotAllowed),
            ("bad topic", ErrorType::InvalidTopic),
        ] {
            match p.plan(&to(t), &mut exists) {
                Plan::Fail(Some(target), got, _) => {
                    assert_eq!((target.as_str(), got), (t, ty));
                }
                other => panic!("{t}: {other:?}"),
            }
        }
        let nowhere = dlq_rec(&[], &[("error_type", "produce_failed")]);
        assert!(matches!(
            p.plan(&nowhere, &mut exists),
            Plan::Fail(None, ErrorType::InvalidTopic, _)
        ));
    }

    #[test]
    fn rates_parse_and_the_bucket_paces() {
        assert_eq!(parse_rate("500"), Ok(500.0));
        assert_eq!(parse_rate("2.5/s"), Ok(2.5));
        for bad in ["0", "-1", "fast", "1/m", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        // 100/s in bursts of 10: 10 at once, then one every 10 ms.
        let mut b = TokenBucket::new(100.0);
        let t0 = b.last;
        for _ in 0..10 {
            assert_eq!(b.take_at(t0), Duration::ZERO);
        }
        let wait = b.take_at(t0);
        assert!((wait.as_secs_f64() - 0.01).abs() < 1e-9, "{wait:?}");
        // A second later the bucket is full again, not fuller.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(b.take_at(t1), Duration::ZERO);
        }
        assert!(b.take_at(t1) > Duration::ZERO);
    }

    #[test]
    fn progress_shows_count_rate_and_eta() {
        let p = Progress {
            tty: false,
            label: "dlq replay e.dlq".into(),
            total: 1000,
            started: Instant::now(),
            printed: None,
        };
        assert_eq!(
            p.line(250, 240, Duration::from_secs(5)),
            "dlq replay e.dlq: 250/1000 read (25%), 240 sent, 50 records/s, ETA 15s"
        );
        assert!(p.line(0, 0, Duration::ZERO).ends_with("ETA -"));
    }

    #[test]
    fn the_transactional_id_is_stable_per_group_and_dlq() {
        assert_eq!(
            transactional_id("kgate-dlq-replay.e.dlq", "e.dlq"),
            "kgate-dlq-replay.kgate-dlq-replay.e.dlq.e.dlq"
        );
        assert_ne!(
            transactional_id("a", "e.dlq"),
            transactional_id("b", "e.dlq")
        );
    }
}

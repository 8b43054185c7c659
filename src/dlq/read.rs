//! Reading a DLQ topic: its records and a summary, with `assign` (no group, nothing committed).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use super::DlqError;
use crate::kafka::KafkaConfig;

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
pub(crate) const STALL: Duration = Duration::from_secs(15);

/// The partitions of `topic` that have records to read, each with (first offset, end offset):
/// from the beginning (or the first record written `since` ago) up to the end offsets now.
/// Errs naming the brokers and the fix when they cannot be reached, refuse the login, or the
/// topic does not exist.
pub fn bounds(
    consumer: &BaseConsumer<crate::kafka::QuietContext>,
    kafka: &KafkaConfig,
    topic: &str,
    since: Option<Duration>,
) -> Result<HashMap<i32, (i64, i64)>, DlqError> {
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
                    return Err(DlqError::Metadata(Box::new(
                        crate::kafka::MetadataError::Refused {
                            brokers: brokers.clone(),
                            diagnosis,
                        },
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(DlqError::Metadata(Box::new(
                        crate::kafka::MetadataError::Unreachable {
                            brokers: brokers.clone(),
                            timeout,
                            source,
                        },
                    )));
                }
                attempt = (attempt * 2).min(Duration::from_secs(1));
            }
        }
    };
    let t = md
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| DlqError::NoTopic {
            topic: topic.into(),
            brokers: brokers.clone(),
        })?;
    let partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    let mut ends = HashMap::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout).map_err(|e| {
            DlqError::kafka(format!("reading the end offsets of {topic}"), &brokers, e)
        })?;
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
            ask.add_partition_offset(topic, p, Offset::Offset(from))
                .map_err(|e| DlqError::kafka(format!("reading {topic}"), &brokers, e))?;
        }
        let found = consumer.offsets_for_times(ask, timeout).map_err(|e| {
            DlqError::kafka(
                format!("finding the offsets of --since in {topic}"),
                &brokers,
                e,
            )
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
) -> Result<Inspection, DlqError> {
    let brokers = kafka.brokers.join(",");
    let consumer: BaseConsumer<crate::kafka::QuietContext> =
        crate::kafka::base_client_config(kafka)
            .set("group.id", "kgate-dlq-inspect")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create_with_context(Default::default())
            .map_err(|e| DlqError::kafka("creating a consumer", &brokers, e))?;
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
        tpl.add_partition_offset(topic, p, Offset::Offset(low))
            .map_err(|e| DlqError::kafka(format!("reading {topic}"), &brokers, e))?;
    }
    if ends.is_empty() {
        return Ok(found);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| DlqError::kafka(format!("reading {topic}"), &brokers, e))?;
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
            Some(Err(e)) => return Err(DlqError::kafka(format!("reading {topic}"), &brokers, e)),
            None if last.elapsed() >= STALL => {
                let left: Vec<String> = ends.keys().map(i32::to_string).collect();
                return Err(DlqError::Stalled {
                    topic: topic.into(),
                    brokers,
                    stall: STALL,
                    partitions: left.join(","),
                    txn: "",
                });
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn rec(
        offset: i64,
        ts: i64,
        error_type: &str,
        message: &str,
        value: &[u8],
    ) -> DlqRecord {
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
    pub(crate) fn hdrs(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }
    pub(crate) fn dlq_rec(input: &[(&str, &str)], kgate: &[(&str, &str)]) -> DlqRecord {
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

    pub(crate) const KGATE: &[(&str, &str)] = &[
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
}

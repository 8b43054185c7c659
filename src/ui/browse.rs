//! The message browser: reads a page of a topic with an `assign`ed consumer (no group, nothing
//! committed) from the start, the end, an offset or a timestamp, one partition or all, within a
//! deadline, and decodes each record (Avro through the registry, JSON, text or base64).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dlq::{record_json, AvroDecoding, DlqRecord};
use crate::kafka::KafkaConfig;

/// The most records one page holds.
pub const MAX_LIMIT: usize = 500;
/// The most records read to fill a filtered page.
pub const MAX_SCAN: u64 = 50_000;
/// The most bytes of one value a page shows (a page of 500 stays a few MB at most); the
/// record says `value_truncated: <its size>` then.
pub const MAX_VALUE: usize = 64 * 1024;
/// How long one page may take to read.
pub const DEADLINE: Duration = Duration::from_secs(8);

/// Where a page starts and what it keeps (the query string of
/// `GET /api/topics/{topic}/messages`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Query {
    /// One partition; all when absent.
    pub partition: Option<i32>,
    /// `start` or `end` (the default: the newest records).
    pub from: Option<String>,
    /// Start at this offset (in each partition read).
    pub offset: Option<i64>,
    /// Start at the first record at or after this time (milliseconds since the epoch).
    pub timestamp: Option<i64>,
    /// Where the previous page stopped: `partition:offset,…` (its `next`).
    pub cursor: Option<String>,
    /// Records in the page (at most [`MAX_LIMIT`]; 50 by default).
    pub limit: Option<usize>,
    /// Only records whose key contains this.
    pub key: Option<String>,
    /// Only records whose value (as shown) contains this.
    pub value: Option<String>,
    /// Only records with this header (`name`, or `name=value`).
    pub header: Option<String>,
}

/// One page.
#[derive(Debug, Serialize)]
pub struct Page {
    /// The topic.
    pub topic: String,
    /// The records, as `kgate dlq inspect --output json` prints them.
    pub records: Vec<Value>,
    /// Records read (filters aside).
    pub scanned: u64,
    /// The position after this page, `partition:offset,…`; none at the end of every partition.
    pub next: Option<String>,
    /// Where every partition read stands after this page (also at its end), `partition:offset,…`:
    /// the cursor of a live tail's next poll.
    pub position: String,
    /// Each partition read: (low watermark, high watermark).
    pub watermarks: BTreeMap<i32, (i64, i64)>,
    /// The deadline or the scan cap ended the page before it was full.
    pub truncated: bool,
}

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    /// The topic or partition does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A bad query.
    #[error("{0}")]
    Invalid(String),
    /// Kafka failed.
    #[error("Kafka {brokers}: reading {topic}: {reason}")]
    Kafka {
        /// The bootstrap servers.
        brokers: String,
        /// The topic.
        topic: String,
        /// What went wrong.
        reason: String,
    },
}

fn parse_cursor(s: &str) -> Result<HashMap<i32, i64>, BrowseError> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (a, b) = p.split_once(':').unwrap_or(("", ""));
            match (a.parse(), b.parse()) {
                (Ok(a), Ok(b)) => Ok((a, b)),
                _ => Err(BrowseError::Invalid(format!(
                    "cursor `{s}` is not `partition:offset,…`"
                ))),
            }
        })
        .collect()
}

/// Whether a record as JSON matches the query's filters.
fn matches(q: &Query, rec: &Value) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    };
    if let Some(k) = q.key.as_deref().filter(|k| !k.is_empty()) {
        if !text(&rec["key"]).contains(k) {
            return false;
        }
    }
    if let Some(v) = q.value.as_deref().filter(|v| !v.is_empty()) {
        if !text(&rec["value"]).contains(v) {
            return false;
        }
    }
    if let Some(h) = q.header.as_deref().filter(|h| !h.is_empty()) {
        let (name, want) = match h.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (h, None),
        };
        match rec["headers"].get(name) {
            None => return false,
            Some(v) => {
                if want.is_some_and(|w| text(v) != w) {
                    return false;
                }
            }
        }
    }
    true
}

/// Reads one page of `topic` as `q` says (blocking: run it on a blocking thread). `avro`
/// decodes values in the Confluent wire format.
pub fn read_page(
    kafka: &KafkaConfig,
    topic: &str,
    q: &Query,
    avro: Option<&AvroDecoding>,
) -> Result<Page, BrowseError> {
    let brokers = kafka.brokers.join(",");
    let kerr = |reason: String| BrowseError::Kafka {
        brokers: brokers.clone(),
        topic: topic.to_string(),
        reason,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_LIMIT);
    let consumer: BaseConsumer<crate::kafka::QuietContext> =
        crate::kafka::base_client_config(kafka)
            .set("group.id", "kgate-ui-browse")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .create_with_context(Default::default())
            .map_err(|e| kerr(e.to_string()))?;
    let timeout = Duration::from_secs(10);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| kerr(e.to_string()))?;
    let t = md
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| {
            BrowseError::NotFound(format!("topic {topic} does not exist at {brokers}"))
        })?;
    let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    if let Some(p) = q.partition {
        if !partitions.contains(&p) {
            return Err(BrowseError::NotFound(format!(
                "topic {topic} has no partition {p} (it has {})",
                partitions.len()
            )));
        }
        partitions = vec![p];
    }
    let mut watermarks = BTreeMap::new();
    for &p in &partitions {
        let w = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| kerr(format!("watermarks of partition {p}: {e}")))?;
        watermarks.insert(p, w);
    }
    let from_end = q.cursor.is_none()
        && q.offset.is_none()
        && q.timestamp.is_none()
        && q.from.as_deref() != Some("start");
    // Each partition's (first offset to read, end offset).
    let mut ranges: HashMap<i32, (i64, i64)> = HashMap::new();
    if let Some(c) = &q.cursor {
        let at = parse_cursor(c)?;
        for (&p, &(low, high)) in &watermarks {
            if let Some(&o) = at.get(&p) {
                ranges.insert(p, (o.clamp(low, high), high));
            }
        }
    } else if let Some(ts) = q.timestamp {
        let mut ask = TopicPartitionList::new();
        for &p in watermarks.keys() {
            ask.add_partition_offset(topic, p, Offset::Offset(ts))
                .map_err(|e| kerr(e.to_string()))?;
        }
        let found = consumer
            .offsets_for_times(ask, timeout)
            .map_err(|e| kerr(format!("finding the offsets at {ts}: {e}")))?;
        for e in found.elements() {
            let (low, high) = watermarks[&e.partition()];
            if let Offset::Offset(o) = e.offset() {
                ranges.insert(e.partition(), (o.max(low), high));
            }
        }
    } else {
        for (&p, &(low, high)) in &watermarks {
            let start = match q.offset {
                Some(o) => o.clamp(low, high),
                None if from_end => (high - limit as i64).max(low),
                None => low,
            };
            ranges.insert(p, (start, high));
        }
    }
    let starts: BTreeMap<i32, i64> = ranges.iter().map(|(&p, &(s, _))| (p, s)).collect();
    ranges.retain(|_, (s, e)| s < e);
    let mut page = Page {
        position: String::new(),
        topic: topic.to_string(),
        records: Vec::new(),
        scanned: 0,
        next: None,
        watermarks,
        truncated: false,
    };
    // Where each partition stands: the next offset to read.
    let mut at: BTreeMap<i32, i64> = ranges.iter().map(|(&p, &(s, _))| (p, s)).collect();
    if !ranges.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (&p, &(s, _)) in &ranges {
            tpl.add_partition_offset(topic, p, Offset::Offset(s))
                .map_err(|e| kerr(e.to_string()))?;
        }
        consumer.assign(&tpl).map_err(|e| kerr(e.to_string()))?;
    }
    let mut open: HashMap<i32, i64> = ranges.iter().map(|(&p, &(_, e))| (p, e)).collect();
    let deadline = Instant::now() + DEADLINE;
    let mut kept: Vec<(i64, Value)> = Vec::new();
    // From the end every record in the ranges is read and the newest kept; else reading stops
    // once the page is full.
    while !open.is_empty() && (from_end || kept.len() < limit) {
        if Instant::now() >= deadline || page.scanned >= MAX_SCAN {
            page.truncated = true;
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let p = m.partition();
                let Some(&end) = open.get(&p) else { continue };
                if m.offset() >= end {
                    open.remove(&p);
                    continue;
                }
                at.insert(p, m.offset() + 1);
                if m.offset() + 1 >= end {
                    open.remove(&p);
                }
                page.scanned += 1;
                let mut r = DlqRecord::from_message(&m);
                let size = r.value.len();
                if size > MAX_VALUE {
                    r.value.truncate(MAX_VALUE);
                }
                let mut json = record_json(&r, avro);
                if size > MAX_VALUE {
                    json["value_truncated"] = size.into();
                }
                if matches(q, &json) {
                    kept.push((r.timestamp.unwrap_or(0), json));
                }
            }
            Some(Err(e)) => return Err(kerr(e.to_string())),
            None => {
                // Offsets without a record to deliver (transaction markers, compacted records):
                // a partition whose position reached its end is done.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        if let (Offset::Offset(o), Some(&end)) =
                            (e.offset(), open.get(&e.partition()))
                        {
                            if o >= end {
                                at.insert(e.partition(), end);
                                open.remove(&e.partition());
                            }
                        }
                    }
                }
            }
        }
    }
    if from_end {
        kept.sort_by_key(|(ts, r)| (*ts, r["partition"].as_i64(), r["offset"].as_i64()));
        let skip = kept.len().saturating_sub(limit);
        kept.drain(..skip);
    }
    page.records = kept.into_iter().map(|(_, r)| r).collect();
    let more = at
        .iter()
        .any(|(p, o)| page.watermarks.get(p).is_some_and(|&(_, h)| *o < h));
    let cursor = |m: &BTreeMap<i32, i64>| {
        m.iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    if more && !from_end {
        page.next = Some(cursor(&at));
    }
    let mut position = starts;
    position.extend(at);
    page.position = cursor(&position);
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_match_key_value_and_headers() {
        let rec = json!({"key": "dev-7", "value": {"temp": 21.5}, "headers": {"source": "mqtt", "n": "1"}});
        let q = |k: Option<&str>, v: Option<&str>, h: Option<&str>| Query {
            key: k.map(String::from),
            value: v.map(String::from),
            header: h.map(String::from),
            ..Default::default()
        };
        assert!(matches(
            &q(Some("dev-"), Some("21.5"), Some("source=mqtt")),
            &rec
        ));
        assert!(matches(&q(None, None, Some("n")), &rec));
        assert!(!matches(&q(Some("dev-8"), None, None), &rec));
        assert!(!matches(&q(None, Some("22"), None), &rec));
        assert!(!matches(&q(None, None, Some("source=http")), &rec));
        assert!(!matches(&q(None, None, Some("missing")), &rec));
    }

    #[test]
    fn cursors_parse() {
        assert_eq!(
            parse_cursor("0:5,2:7").unwrap(),
            HashMap::from([(0, 5), (2, 7)])
        );
        assert!(parse_cursor("0-5").is_err());
    }
}

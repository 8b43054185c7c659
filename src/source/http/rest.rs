//! `POST /topics/{topic}`: the Confluent REST Proxy v2 produce call, answered with each
//! record's partition and offset once Kafka acknowledged it.
//!
//! Embedded formats: `json` (`application/vnd.kafka.json.v2+json`: keys and values are written
//! as compact JSON text, as the REST Proxy's JSON serializer does — a string key `"k"` becomes
//! the bytes `"k"`, quotes included) and `binary` (`application/vnd.kafka.binary.v2+json`, and
//! the REST Proxy's fallbacks without an embedded format: base64 strings). `avro`, `protobuf`
//! and `jsonschema` answer 415 until the schema-registry encoders land ([`schema_records`] is
//! the seam).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{
    media_type, overall_status, token_allows, ApiError, Peer, Server, Slot, KAFKA_V2_JSON,
};
use crate::config::{valid_topic_name, KafkaConfig};
use crate::event::{Event, Fate, Origin};
use crate::kafka::{OutRecord, QuietContext};

const ROUTE: &str = "/topics/{topic}";

/// How the records of a request are embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddedFormat {
    /// JSON values, written as JSON text.
    Json,
    /// base64 strings, written as the decoded bytes.
    Binary,
    /// JSON values encoded with a registry schema (`avro`, `protobuf`, `jsonschema`).
    Schema(&'static str),
}

/// The embedded format a Content-Type names, or `None` when it is not a produce type.
pub fn embedded_format(media: Option<&str>) -> Option<EmbeddedFormat> {
    Some(match media? {
        "application/vnd.kafka.json.v2+json" => EmbeddedFormat::Json,
        "application/vnd.kafka.binary.v2+json" => EmbeddedFormat::Binary,
        // The REST Proxy's less specific types mean binary.
        "application/vnd.kafka.v2+json"
        | "application/vnd.kafka+json"
        | "application/json"
        | "application/octet-stream" => EmbeddedFormat::Binary,
        "application/vnd.kafka.avro.v2+json" => EmbeddedFormat::Schema("avro"),
        "application/vnd.kafka.protobuf.v2+json" => EmbeddedFormat::Schema("protobuf"),
        "application/vnd.kafka.jsonschema.v2+json" => EmbeddedFormat::Schema("jsonschema"),
        _ => return None,
    })
}

/// A produce request body; keys and values stay raw until the format says how to write them.
#[derive(Debug, Deserialize)]
pub struct ProduceRequest<'a> {
    /// The records.
    #[serde(borrow)]
    pub records: Vec<ProduceRecord<'a>>,
    /// Schema-format fields, used by the schema encoders.
    #[serde(default)]
    pub key_schema: Option<String>,
    /// Registry id of the key schema.
    #[serde(default)]
    pub key_schema_id: Option<i64>,
    /// Value schema text.
    #[serde(default)]
    pub value_schema: Option<String>,
    /// Registry id of the value schema.
    #[serde(default)]
    pub value_schema_id: Option<i64>,
}

/// One record of a produce request.
#[derive(Debug, Deserialize)]
pub struct ProduceRecord<'a> {
    /// The key, or `null`/absent for none.
    #[serde(borrow, default)]
    pub key: Option<&'a RawValue>,
    /// The value, or `null`/absent for none.
    #[serde(borrow, default)]
    pub value: Option<&'a RawValue>,
    /// A partition to write to; absent: the partitioner picks (by key).
    #[serde(default)]
    pub partition: Option<i32>,
}

/// Key and value bytes of one record.
type Encoded = (Option<Vec<u8>>, Bytes);

/// Encoded records with the key and value schema ids for the answer.
type SchemaEncoded = (Vec<Encoded>, Option<i64>, Option<i64>);

/// The seam for schema formats (Avro through the registry, …): turns the records into key and
/// value bytes, and names the schema ids for the answer. Until the encoders land it answers
/// 415 with what to use instead.
fn schema_records(
    format: &'static str,
    _topic: &str,
    _req: &ProduceRequest<'_>,
) -> Result<SchemaEncoded, ApiError> {
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        415,
        format!("the {format} embedded format (application/vnd.kafka.{format}.v2+json) is not supported yet; send application/vnd.kafka.json.v2+json or application/vnd.kafka.binary.v2+json, or use POST /ingest/{{pipeline}} with a pipeline that encodes"),
    ))
}

fn encode_plain(
    format: EmbeddedFormat,
    records: &[ProduceRecord<'_>],
) -> Result<Vec<Encoded>, ApiError> {
    let bad = |i: usize, what: &str, why: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42205,
            format!("records[{i}].{what}: {why}"),
        )
    };
    let b64 = |i: usize, what: &str, raw: &RawValue| -> Result<Vec<u8>, ApiError> {
        let s: String = serde_json::from_str(raw.get()).map_err(|_| {
            bad(
                i,
                what,
                "the binary embedded format expects a base64 string; send JSON values with Content-Type application/vnd.kafka.json.v2+json".into(),
            )
        })?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s.as_bytes()))
            .map_err(|e| bad(i, what, format!("not valid base64: {e}")))
    };
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(match format {
                EmbeddedFormat::Json => (
                    r.key.map(|k| minify_json(k.get())),
                    r.value
                        .map(|v| Bytes::from(minify_json(v.get())))
                        .unwrap_or_default(),
                ),
                _ => (
                    r.key.map(|k| b64(i, "key", k)).transpose()?,
                    r.value
                        .map(|v| b64(i, "value", v).map(Bytes::from))
                        .transpose()?
                        .unwrap_or_default(),
                ),
            })
        })
        .collect()
}

/// Valid JSON text without insignificant whitespace (key order and number text kept).
pub fn minify_json(raw: &str) -> Vec<u8> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut in_string = false;
    let mut escaped = false;
    for &c in b {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            if c == b'"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

pub(super) async fn produce(
    State(s): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let r = match produce_inner(&s, peer, &topic, &headers, body, started).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = e.into_response();
            set_kafka_content_type(&mut r);
            r
        }
    };
    s.observe(ROUTE, r.status(), started);
    r
}

fn set_kafka_content_type(r: &mut Response) {
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(KAFKA_V2_JSON),
    );
}

async fn produce_inner(
    s: &Server,
    peer: Peer,
    topic: &str,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Response, ApiError> {
    let token = s.authenticate(headers)?;
    if !valid_topic_name(topic) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Topic not found: `{topic}` is not a valid topic name"),
        ));
    }
    if !token_allows(token, |t| &t.topics, topic) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            403,
            format!(
                "token `{}` may not write to topic `{topic}`; add it to that token's `topics` in http.auth",
                token.map(|t| &*t.name).unwrap_or("")
            ),
        ));
    }
    if topic.starts_with("__") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            403,
            format!("`{topic}` is an internal Kafka topic; kgate does not write to it"),
        ));
    }
    let media = media_type(headers);
    let Some(format) = embedded_format(media.as_deref()) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            format!(
                "Content-Type {} is not a REST Proxy v2 produce type; use application/vnd.kafka.json.v2+json (JSON values) or application/vnd.kafka.binary.v2+json (base64 values)",
                media.as_deref().map(|m| format!("`{m}`")).unwrap_or_else(|| "(none)".into())
            ),
        ));
    };
    let raw = s.read_body(body, headers, s.config.max_body.0).await?;
    let req: ProduceRequest<'_> = serde_json::from_slice(&raw).map_err(|e| {
        let (status, code) = if e.is_data() {
            (StatusCode::UNPROCESSABLE_ENTITY, 422)
        } else {
            (StatusCode::BAD_REQUEST, 400)
        };
        ApiError::new(
            status,
            code,
            format!(
                "body is not a produce request ({{\"records\":[{{\"key\":…,\"value\":…}}]}}): {e}"
            ),
        )
    })?;
    if req.records.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            422,
            "records may not be empty",
        ));
    }
    s.observe_records(ROUTE, req.records.len());
    let (encoded, key_schema_id, value_schema_id) = match format {
        EmbeddedFormat::Schema(f) => schema_records(f, topic, &req)?,
        f => (encode_plain(f, &req.records)?, None, None),
    };
    s.check_ready()?;
    let partitions = match s.topics.lookup(topic).await {
        TopicState::Exists(n) => Some(n),
        TopicState::AutoCreated => None,
        TopicState::Missing => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                40401,
                format!("Topic not found: `{topic}` does not exist and the broker does not create topics on write; create it first"),
            ))
        }
        TopicState::Unreachable(e) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                50301,
                format!("cannot look up topic `{topic}`: {e}; nothing was written, retry later"),
            )
            .retry_after(s.config.retry_after))
        }
    };
    for (i, r) in req.records.iter().enumerate() {
        if let Some(p) = r.partition {
            if p < 0 || partitions.is_none_or(|n| p >= n) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    40402,
                    format!(
                        "Partition not found: records[{i}].partition {p}; topic `{topic}` has {}",
                        partitions
                            .map(|n| format!("partitions 0..{}", n - 1))
                            .unwrap_or_else(|| "no partitions yet".into())
                    ),
                ));
            }
        }
    }

    let topic_arc: Arc<str> = Arc::from(topic);
    let origin = Origin::now(
        Arc::from("rest-proxy"),
        Arc::from(format!("{}", peer.0).as_str()),
    );
    let slots = s
        .send_each(
            encoded.into_iter().zip(&req.records),
            started,
            |_, ((key, value), r)| {
                let (mut ev, rx) = Event::with_ack(value.clone(), origin.clone());
                ev.max_wait = Some(s.config.max_wait);
                let rec = OutRecord {
                    topic: topic_arc.clone(),
                    key,
                    value,
                    headers: Vec::new(),
                };
                (
                    async move { s.sink.send_to(rec, r.partition, ev).await },
                    rx,
                )
            },
        )
        .await;
    if partitions.is_none()
        && slots
            .iter()
            .any(|x| matches!(x, Slot::Done(Fate::Delivered { .. })))
    {
        s.topics.written(topic);
    }
    let dlq = s.sink.dlq_topic();
    let offsets: Vec<Value> = slots
        .iter()
        .map(|slot| match slot {
            Slot::Done(Fate::Delivered {
                partition, offset, ..
            }) => json!({"partition": partition, "offset": offset, "error_code": null, "error": null}),
            Slot::Done(Fate::DeadLettered {
                message,
                partition,
                offset,
                ..
            }) => json!({"partition": null, "offset": null, "error_code": 50002,
                "error": format!("Kafka refused the record: {message}; it was written to the DLQ topic {dlq} (partition {partition}, offset {offset})")}),
            Slot::Done(Fate::Busy) | Slot::NotSent => json!({"partition": null, "offset": null, "error_code": 50003,
                "error": "not written: the producer buffer is full; retry this record"}),
            Slot::TimedOut | Slot::Waiting(_) => json!({"partition": null, "offset": null, "error_code": 50003,
                "error": format!("not acknowledged by Kafka within {:?} (http.ack_timeout); it may still be written — retrying may duplicate it", s.config.ack_timeout)}),
            Slot::Done(Fate::Failed { message }) => json!({"partition": null, "offset": null, "error_code": 50002,
                "error": format!("not written: {message}")}),
            Slot::Done(Fate::Dropped) => json!({"partition": null, "offset": null, "error_code": 50003,
                "error": "dropped: the producer buffer is full"}),
        })
        .collect();
    let status = overall_status(&slots, StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({
        "offsets": offsets,
        "key_schema_id": key_schema_id,
        "value_schema_id": value_schema_id,
    });
    if status != StatusCode::OK {
        let failed = slots
            .iter()
            .filter(|s| !matches!(s, Slot::Done(Fate::Delivered { .. })))
            .count();
        let (code, what) = match status.as_u16() {
            429 => (42901, "the producer buffer is full; retry the records whose error_code is 50003"),
            503 => (50301, "Kafka did not acknowledge in time; retry the records whose error_code is 50003 (they may be duplicated)"),
            _ => (50002, "Kafka refused records; they are in the DLQ"),
        };
        body["error_code"] = json!(code);
        body["message"] = json!(format!(
            "{failed} of {} record(s) not written: {what}",
            slots.len()
        ));
    }
    Ok(s.answer(status, &body, KAFKA_V2_JSON))
}

/// What the broker says about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    /// It exists with this many partitions.
    Exists(i32),
    /// It does not exist, and the broker creates topics on first write.
    AutoCreated,
    /// It does not exist and will not be created.
    Missing,
    /// Kafka did not answer.
    Unreachable(String),
}

/// How long a topic found missing is remembered before asking again.
const MISSING_TTL: Duration = Duration::from_secs(2);
/// How often the whole topic list is refreshed (deleted topics drop out).
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Timeout of a lookup on a miss.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Known {
    topics: HashMap<String, i32>,
    missing: HashMap<String, Instant>,
    /// Topics kgate wrote to that the metadata did not list yet (created on first write).
    written: std::collections::HashSet<String>,
    auto_create: Option<bool>,
}

/// Topic metadata cached from the brokers: refreshed every 30 s, looked up on a miss.
pub struct TopicCache {
    kafka: KafkaConfig,
    known: Arc<Mutex<Known>>,
    client: Mutex<Option<Arc<BaseConsumer<QuietContext>>>>,
}

impl TopicCache {
    /// Starts the refresher; it stops with `stop`.
    pub fn new(kafka: KafkaConfig, stop: CancellationToken) -> TopicCache {
        let known = Arc::new(Mutex::new(Known::default()));
        let (k, kn) = (kafka.clone(), known.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(info) = crate::kafka::fetch_metadata(&k, Duration::from_secs(5)).await {
                    let mut g = kn.lock().expect("topic cache lock");
                    g.topics = info
                        .topics
                        .into_iter()
                        .map(|(t, n)| (t, n as i32))
                        .collect();
                    let Known {
                        topics, written, ..
                    } = &mut *g;
                    written.retain(|t| !topics.contains_key(t));
                    if info.auto_create.is_some() {
                        g.auto_create = info.auto_create;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(REFRESH_EVERY) => {}
                }
            }
        });
        TopicCache {
            kafka,
            known,
            client: Mutex::new(None),
        }
    }

    fn client(&self) -> Result<Arc<BaseConsumer<QuietContext>>, String> {
        let mut c = self.client.lock().expect("topic client lock");
        if let Some(c) = &*c {
            return Ok(c.clone());
        }
        let made: BaseConsumer<QuietContext> = crate::kafka::base_client_config(&self.kafka)
            .create_with_context(QuietContext::default())
            .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
        let made = Arc::new(made);
        *c = Some(made.clone());
        Ok(made)
    }

    /// Remembers that Kafka acknowledged a record of `topic`, so that it counts as existing
    /// (partitions unknown) until the next refresh lists it, even while Kafka is unreachable.
    pub fn written(&self, topic: &str) {
        let mut g = self.known.lock().expect("topic cache lock");
        if !g.topics.contains_key(topic) && !g.written.contains(topic) {
            g.written.insert(topic.to_string());
        }
    }

    /// Whether `topic` exists (cached, or asked on a miss).
    pub async fn lookup(&self, topic: &str) -> TopicState {
        let auto = {
            let g = self.known.lock().expect("topic cache lock");
            if let Some(n) = g.topics.get(topic) {
                return TopicState::Exists(*n);
            }
            if g.written.contains(topic) {
                return TopicState::AutoCreated;
            }
            if g.missing
                .get(topic)
                .is_some_and(|at| at.elapsed() < MISSING_TTL)
            {
                return missing(g.auto_create);
            }
            g.auto_create
        };
        if auto.is_none() {
            // The refresher has not learned yet whether the broker creates topics: ask now.
            match crate::kafka::fetch_metadata(&self.kafka, LOOKUP_TIMEOUT).await {
                Ok(info) => {
                    let mut g = self.known.lock().expect("topic cache lock");
                    g.topics = info
                        .topics
                        .into_iter()
                        .map(|(t, n)| (t, n as i32))
                        .collect();
                    g.auto_create = info.auto_create;
                    if let Some(n) = g.topics.get(topic) {
                        return TopicState::Exists(*n);
                    }
                    g.missing.insert(topic.to_string(), Instant::now());
                    return missing(g.auto_create);
                }
                Err(e) => return TopicState::Unreachable(e.to_string()),
            }
        }
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return TopicState::Unreachable(e),
        };
        let t = topic.to_string();
        let found = tokio::task::spawn_blocking(move || {
            let md = client
                .fetch_metadata(Some(&t), LOOKUP_TIMEOUT)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(
                md.topics()
                    .iter()
                    .find(|m| m.name() == t && m.error().is_none() && !m.partitions().is_empty())
                    .map(|m| m.partitions().len() as i32),
            )
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let mut g = self.known.lock().expect("topic cache lock");
        match found {
            Ok(Some(n)) => {
                g.topics.insert(topic.to_string(), n);
                TopicState::Exists(n)
            }
            Ok(None) => {
                g.missing.retain(|_, at| at.elapsed() < MISSING_TTL);
                g.missing.insert(topic.to_string(), Instant::now());
                missing(g.auto_create.or(auto))
            }
            Err(e) => TopicState::Unreachable(e),
        }
    }
}

fn missing(auto_create: Option<bool>) -> TopicState {
    if auto_create == Some(true) {
        TopicState::AutoCreated
    } else {
        TopicState::Missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_and_values_are_written_as_compact_json() {
        let req: ProduceRequest<'_> = serde_json::from_str(
            r#"{"records":[{"key":"k 1","value":{ "foo" : "b a\"r", "n": [1, 2] }},{"value":null,"partition":1}]}"#,
        )
        .unwrap();
        let enc = encode_plain(EmbeddedFormat::Json, &req.records).unwrap();
        assert_eq!(enc[0].0.as_deref(), Some(&br#""k 1""#[..]));
        assert_eq!(&enc[0].1[..], br#"{"foo":"b a\"r","n":[1,2]}"#);
        assert_eq!(enc[1].0, None);
        assert!(enc[1].1.is_empty());
        assert_eq!(req.records[1].partition, Some(1));
    }

    #[test]
    fn binary_values_are_base64() {
        let req: ProduceRequest<'_> =
            serde_json::from_str(r#"{"records":[{"key":"a2V5","value":"S2Fma2E="}]}"#).unwrap();
        let enc = encode_plain(EmbeddedFormat::Binary, &req.records).unwrap();
        assert_eq!(enc[0].0.as_deref(), Some(&b"key"[..]));
        assert_eq!(&enc[0].1[..], b"Kafka");
        let req: ProduceRequest<'_> =
            serde_json::from_str(r#"{"records":[{"value":"b2s="},{"value":{"x":1}}]}"#).unwrap();
        let e = encode_plain(EmbeddedFormat::Binary, &req.records).unwrap_err();
        assert!(e.message.contains("records[1].value"), "{}", e.message);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            embedded_format(Some("application/vnd.kafka.json.v2+json")),
            Some(EmbeddedFormat::Json)
        );
        assert_eq!(
            embedded_format(Some("application/vnd.kafka.v2+json")),
            Some(EmbeddedFormat::Binary)
        );
        assert_eq!(
            embedded_format(Some("application/vnd.kafka.avro.v2+json")),
            Some(EmbeddedFormat::Schema("avro"))
        );
        assert_eq!(embedded_format(Some("text/plain")), None);
        assert_eq!(embedded_format(None), None);
    }
}

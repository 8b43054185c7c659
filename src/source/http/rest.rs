//! `POST /topics/{topic}`: the Confluent REST Proxy v2 produce call, answered with each
//! record's partition and offset once Kafka acknowledged it.
//!
//! Embedded formats: `json` (`application/vnd.kafka.json.v2+json`: keys and values are written
//! as compact JSON text, as the REST Proxy's JSON serializer does — a string key `"k"` becomes
//! the bytes `"k"`, quotes included) and `binary` (`application/vnd.kafka.binary.v2+json`, and
//! the REST Proxy's fallbacks without an embedded format: base64 strings) and `avro`
//! (`application/vnd.kafka.avro.v2+json`: JSON values encoded with a registry schema in the
//! Confluent wire format, [`schema_records`]; it needs `schema_registry:` in the config).
//! `protobuf` and `jsonschema` answer 415.

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
    media_type, overall_status, token_allows, ApiError, Peer, Server, Slot, Token, KAFKA_V2_JSON,
};
use crate::avro;
use crate::encode::avro::confluent_avro;
use crate::event::{ErrorType, Event, Fate, Origin};
use crate::kafka::QuietContext;
use crate::kafka::{valid_topic_name, KafkaConfig, TopicAllow};
use crate::registry::{RegisterError, SchemaCache};
use crate::sink::OutRecord;

const ROUTE: &str = "/topics/{topic}";

/// The largest schema text a request may carry (compiled on the request's time).
const MAX_SCHEMA_TEXT: usize = 256 * 1024;

/// Encoded bytes any request may reach, however small its body.
const MIN_ENCODE_BUDGET: usize = 1024 * 1024;

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
pub type Encoded = (Option<Vec<u8>>, Bytes);

/// Encoded records with the key and value schema ids for the answer.
type SchemaEncoded = (Vec<Encoded>, Option<i64>, Option<i64>);

/// The schema cache a schema format encodes with, or why the format cannot be served: only
/// `avro` is built, and it needs `schema_registry:` in the config.
fn schema_support<'s>(
    s: &'s Server,
    format: &'static str,
) -> Result<&'s Arc<SchemaCache>, ApiError> {
    if format != "avro" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            format!("the {format} embedded format (application/vnd.kafka.{format}.v2+json) is not supported yet; send application/vnd.kafka.avro.v2+json, application/vnd.kafka.json.v2+json or application/vnd.kafka.binary.v2+json, or use POST /ingest/{{pipeline}} with a pipeline that encodes"),
        ));
    }
    s.schemas.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            "the avro embedded format (application/vnd.kafka.avro.v2+json) encodes through a schema registry, and this kgate has none configured: add `schema_registry: { url: http://127.0.0.1:8081/apis/ccompat/v7 }` (your registry's address) to the config, or send application/vnd.kafka.json.v2+json",
        )
    })
}

/// The schema of keys or values: by id, or registered (or found) under `subject`. `None`
/// when the request names neither.
async fn resolve_schema(
    cache: &SchemaCache,
    what: &str,
    subject: &str,
    text: Option<&str>,
    id: Option<i64>,
) -> Result<Option<(u32, Arc<avro::Schema>)>, ApiError> {
    let failed = |e: String| {
        // The REST Proxy answers registry failures 408 with error code 40801.
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            40801,
            format!("Schema registration or lookup failed: {e}; nothing was written"),
        )
    };
    if let Some(id) = id {
        let id = u32::try_from(id).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                42205,
                format!("Invalid schema: {what}_schema_id {id} is not a schema id"),
            )
        })?;
        let schema = cache
            .schema_by_id(id)
            .await
            .map_err(|e| failed(format!("{what}_schema_id {id}: {e}")))?;
        return Ok(Some((id, schema)));
    }
    let Some(text) = text else {
        return Ok(None);
    };
    if text.len() > MAX_SCHEMA_TEXT {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42205,
            format!(
                "Invalid schema: {what}_schema is {} bytes, above kgate's limit of {MAX_SCHEMA_TEXT}; register it with `kgate schemas register` and send {what}_schema_id",
                text.len()
            ),
        ));
    }
    match cache.register(subject, text).await {
        Ok(found) => Ok(Some(found)),
        Err(RegisterError::Invalid(e)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42205,
            format!("Invalid schema: {what}_schema: {e}"),
        )),
        Err(RegisterError::Registry(e)) => Err(failed(format!(
            "{what}_schema under subject {subject}: {e}"
        ))),
    }
}

/// Schema formats (Avro through the registry): turns the records into key and value bytes in
/// the Confluent wire format, and names the schema ids for the answer. As the REST Proxy does,
/// a `value_schema`/`key_schema` text is registered under `<topic>-value`/`<topic>-key` (or
/// found there), a `*_schema_id` is fetched by id, and every record is encoded before any is
/// written: one that does not fit fails the whole request (422, `42203`).
async fn schema_records(
    cache: &SchemaCache,
    topic: &str,
    req: &ProduceRequest<'_>,
    body_len: usize,
) -> Result<SchemaEncoded, ApiError> {
    let has_keys = req.records.iter().any(|r| r.key.is_some());
    let has_values = req.records.iter().any(|r| r.value.is_some());
    if has_keys && req.key_schema.is_none() && req.key_schema_id.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Request includes keys but does not include key schema: key_schema or key_schema_id is required (the Avro schema text, or the registry id of a schema)",
        ));
    }
    if has_values && req.value_schema.is_none() && req.value_schema_id.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            "Request includes values but does not include value schema: value_schema or value_schema_id is required (the Avro schema text, or the registry id of a schema)",
        ));
    }
    let key = resolve_schema(
        cache,
        "key",
        &format!("{topic}-key"),
        req.key_schema.as_deref(),
        req.key_schema_id,
    )
    .await?;
    let value = resolve_schema(
        cache,
        "value",
        &format!("{topic}-value"),
        req.value_schema.as_deref(),
        req.value_schema_id,
    )
    .await?;
    let encode = |i: usize,
                  what: &str,
                  raw: Option<&RawValue>,
                  (id, schema): &(u32, Arc<avro::Schema>)| {
        let v: Value = match raw {
            Some(raw) => serde_json::from_str(raw.get()).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    42203,
                    format!("Conversion of JSON to Avro failed: records[{i}].{what}: {e}"),
                )
            })?,
            None => Value::Null,
        };
        confluent_avro(*id, schema, &v).map_err(|m| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                42203,
                format!("Conversion of JSON to Avro failed: records[{i}].{what} does not fit the {what} schema (id {id}) {m}; nothing of this request was written"),
            )
        })
    };
    // A request's encoded records may not outgrow its body by much (defaults can make small
    // records large): bounded, so one request cannot take more memory than it brought.
    let budget = MIN_ENCODE_BUDGET.max(4 * body_len);
    let mut total = 0usize;
    let encoded = req
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // A null or absent key is no key; a null or absent value is Avro null when there
            // is a value schema (a union with null takes it), else an empty value.
            let k = match (&key, r.key) {
                (Some(ks), Some(raw)) => Some(encode(i, "key", Some(raw), ks)?),
                _ => None,
            };
            let v = match &value {
                Some(vs) => Bytes::from(encode(i, "value", r.value, vs)?),
                None => Bytes::new(),
            };
            total += v.len() + k.as_ref().map_or(0, Vec::len);
            if total > budget {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    42203,
                    format!("Conversion of JSON to Avro failed: by records[{i}] the encoded records are {total} bytes, more than 4 times the request body (the schemas' defaults fill them); send fewer records per request; nothing of this request was written"),
                ));
            }
            Ok((k, v))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok((
        encoded,
        key.map(|(id, _)| i64::from(id)),
        value.map(|(id, _)| i64::from(id)),
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

/// What `POST /topics/{topic}` does with a body in a plain embedded format (`json`, `binary`)
/// before anything is sent: parsed as a produce request, then each record's key and value
/// encoded; the error is the message the client is answered. Pure; public for the fuzz
/// targets (`fuzz/`).
#[doc(hidden)]
pub fn plain_records(raw: &Bytes, format: EmbeddedFormat) -> Result<Vec<Encoded>, String> {
    let req = parse_request(raw).map_err(|e| e.message)?;
    encode_plain(format, &req.records).map_err(|e| e.message)
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
    check_topic(topic, token, s.rest.dlq_topic())?;
    let format = request_format(headers)?;
    let schemas = match format {
        EmbeddedFormat::Schema(f) => Some(schema_support(s, f)?),
        _ => None,
    };
    let raw = s.read_body(body, headers, s.config.max_body.0).await?;
    let req = parse_request(&raw)?;
    s.observe_records(ROUTE, req.records.len());
    s.check_records(req.records.len())?;
    let plain = match schemas {
        Some(_) => None,
        None => Some(encode_plain(format, &req.records)?),
    };
    s.check_ready()?;
    let partitions = topic_partitions(s, topic).await?;
    check_partitions(topic, partitions, &req.records)?;

    // Schemas are registered only once the topic is known to exist, and every record is
    // encoded before any is written.
    let (encoded, key_schema_id, value_schema_id) = match schemas {
        Some(cache) => schema_records(cache, topic, &req, raw.len()).await?,
        None => (plain.unwrap_or_default(), None, None),
    };
    let slots = send_records(s, peer, topic, encoded, &req.records, started).await;
    if partitions.is_none()
        && slots
            .iter()
            .any(|x| matches!(x, Slot::Done(Fate::Delivered { .. })))
    {
        s.topics.written(topic);
    }
    let (status, body) = answer(s, topic, &slots, key_schema_id, value_schema_id);
    Ok(s.answer(status, &body, KAFKA_V2_JSON))
}

/// The topic is a legal name, not internal, and the token may write it; a reserved topic (the
/// DLQ `dlq`, `_schemas`, `connect-*`) only when the token lists it by name (or `connect-*`),
/// never through `*` nor on an open server.
fn check_topic(topic: &str, token: Option<&Token>, dlq: &str) -> Result<(), ApiError> {
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
    let mut reserved = TopicAllow::default();
    reserved.reserve(dlq);
    if reserved.is_reserved(topic) && !token.is_some_and(|t| reserved.allows_by(&t.topics, topic)) {
        let what = if topic == dlq {
            "the DLQ topic"
        } else {
            "a reserved topic (schema registry, Kafka Connect)"
        };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            403,
            format!(
                "`{topic}` is {what}; kgate writes it only for a token that lists it by name in its `topics` in http.auth (`*` does not count)"
            ),
        ));
    }
    Ok(())
}

/// The embedded format named by the Content-Type, or 415.
fn request_format(headers: &HeaderMap) -> Result<EmbeddedFormat, ApiError> {
    let media = media_type(headers);
    embedded_format(media.as_deref()).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            format!(
                "Content-Type {} is not a REST Proxy v2 produce type; use application/vnd.kafka.json.v2+json (JSON values) or application/vnd.kafka.binary.v2+json (base64 values)",
                media.as_deref().map(|m| format!("`{m}`")).unwrap_or_else(|| "(none)".into())
            ),
        )
    })
}

/// The body as a produce request with at least one record.
fn parse_request(raw: &Bytes) -> Result<ProduceRequest<'_>, ApiError> {
    let req: ProduceRequest<'_> = serde_json::from_slice(raw).map_err(|e| {
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
    // serde also reads a struct from a JSON array (its fields in order): `[[[]]]` was taken as
    // one empty record. The REST Proxy takes an object only.
    if raw.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            422,
            "body is not a produce request ({\"records\":[{\"key\":…,\"value\":…}]}): it is not a JSON object",
        ));
    }
    if req.records.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            422,
            "records may not be empty",
        ));
    }
    Ok(req)
}

/// The topic's partition count (`None`: the broker creates it on first write), or the answer
/// for a topic that is missing or cannot be looked up.
async fn topic_partitions(s: &Server, topic: &str) -> Result<Option<i32>, ApiError> {
    match s.topics.lookup(topic).await {
        TopicState::Exists(n) => Ok(Some(n)),
        TopicState::AutoCreated => Ok(None),
        TopicState::Missing => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Topic not found: `{topic}` does not exist and the broker does not create topics on write; create it first"),
        )),
        TopicState::Unreachable(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            50301,
            format!("cannot look up topic `{topic}`: {e}; nothing was written, retry later"),
        )
        .retry_after(s.config.retry_after)),
    }
}

/// Every named `records[i].partition` exists.
fn check_partitions(
    topic: &str,
    partitions: Option<i32>,
    records: &[ProduceRecord<'_>],
) -> Result<(), ApiError> {
    for (i, r) in records.iter().enumerate() {
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
    Ok(())
}

/// Hands the encoded records to the route's pipeline and waits for their fates.
async fn send_records(
    s: &Server,
    peer: Peer,
    topic: &str,
    encoded: Vec<Encoded>,
    records: &[ProduceRecord<'_>],
    started: Instant,
) -> Vec<Slot> {
    let topic: Arc<str> = Arc::from(topic);
    let origin = Origin::now(
        s.rest.name().clone(),
        Arc::from(format!("{}", peer.0).as_str()),
    );
    s.send_each(
        encoded.into_iter().zip(records),
        started,
        |_, ((key, value), r)| {
            let (mut ev, rx) = Event::with_ack(value.clone(), origin.clone());
            ev.max_wait = Some(s.config.max_wait);
            let rec = OutRecord {
                topic: topic.clone(),
                key,
                value,
                headers: Vec::new(),
            };
            (async move { s.rest.send(rec, r.partition, ev).await }, rx)
        },
    )
    .await
}

/// The REST Proxy's answer: an offset or an error per record, and the overall status.
fn answer(
    s: &Server,
    topic: &str,
    slots: &[Slot],
    key_schema_id: Option<i64>,
    value_schema_id: Option<i64>,
) -> (StatusCode, Value) {
    let dlq = s.rest.dlq_topic();
    let offsets: Vec<Value> = slots
        .iter()
        .map(|slot| record_answer(slot, dlq, s.config.ack_timeout))
        .collect();
    let status = overall_status(slots, rejected_status(slots));
    let mut body = json!({
        "offsets": offsets,
        "key_schema_id": key_schema_id,
        "value_schema_id": value_schema_id,
    });
    if status != StatusCode::OK {
        let (code, what) = request_error(status, slots, dlq);
        let failed = slots
            .iter()
            .filter(|s| !matches!(s, Slot::Done(Fate::Delivered { .. })))
            .count();
        body["error_code"] = json!(code);
        body["message"] = json!(format!(
            "{failed} of {} record(s) not written to `{topic}`: {what}",
            slots.len()
        ));
    }
    (status, body)
}

/// One record's entry of `offsets`: where it was written, or why not and where it is now —
/// the DLQ record's partition and offset when Kafka refused it, else "not written".
fn record_answer(slot: &Slot, dlq: &str, ack_timeout: Duration) -> Value {
    let (code, error) = match slot {
        Slot::Done(Fate::Delivered {
            partition, offset, ..
        }) => {
            return json!({"partition": partition, "offset": offset, "error_code": null, "error": null})
        }
        Slot::Done(Fate::DeadLettered {
            error_type: ErrorType::TooLarge,
            message,
            partition,
            offset,
        }) => (41301, format!("not written: too large for Kafka ({message}); its first bytes, size and sha256 were written to the DLQ topic {dlq} (partition {partition}, offset {offset}); send it smaller")),
        Slot::Done(Fate::DeadLettered {
            message,
            partition,
            offset,
            ..
        }) => (50002, format!("not written: Kafka refused the record: {message}; it was written to the DLQ topic {dlq} (partition {partition}, offset {offset})")),
        Slot::Done(Fate::Busy) | Slot::NotSent => (50003, "not written: the producer buffer is full; retry this record".into()),
        Slot::TimedOut | Slot::Waiting(_) => (50003, format!("not acknowledged by Kafka within {ack_timeout:?} (http.ack_timeout); it may still be written — retrying may duplicate it")),
        Slot::Done(Fate::Failed { message }) => (50002, format!("not written, not in the DLQ either: {message}")),
        Slot::Done(Fate::Dropped) => (50003, "not written: dropped, the producer buffer is full".into()),
    };
    json!({"partition": null, "offset": null, "error_code": code, "error": error})
}

/// The status of records Kafka refused into the DLQ: 413 when each was refused as too large
/// (the request can be fixed: send smaller records), else 500.
fn rejected_status(slots: &[Slot]) -> StatusCode {
    let refused = |s: &&Slot| matches!(s, Slot::Done(Fate::DeadLettered { .. }));
    let too_large = |s: &Slot| {
        matches!(
            s,
            Slot::Done(Fate::DeadLettered {
                error_type: ErrorType::TooLarge,
                ..
            })
        )
    };
    if slots.iter().filter(refused).all(too_large) {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// The request's `error_code` and what to tell about the records not written, as they are:
/// in the DLQ, or not written anywhere.
fn request_error(status: StatusCode, slots: &[Slot], dlq: &str) -> (u32, String) {
    let count = |f: fn(&Slot) -> bool| slots.iter().filter(|s| f(s)).count();
    let too_large = count(|s| {
        matches!(
            s,
            Slot::Done(Fate::DeadLettered {
                error_type: ErrorType::TooLarge,
                ..
            })
        )
    });
    let dead = count(|s| matches!(s, Slot::Done(Fate::DeadLettered { .. })));
    let lost = count(|s| matches!(s, Slot::Done(Fate::Failed { .. } | Fate::Dropped)));
    match status.as_u16() {
        429 => (42901, "the producer buffer is full; retry the records whose error_code is 50003".into()),
        503 => (50301, "Kafka did not acknowledge in time; retry the records whose error_code is 50003 (they may be duplicated)".into()),
        413 => (41301, format!("{too_large} too large for Kafka (error_code 41301): their first bytes, size and sha256 are in the DLQ topic {dlq}; send them smaller")),
        _ => {
            let mut parts = Vec::new();
            if dead > 0 {
                parts.push(format!("{dead} refused by Kafka and written to the DLQ topic {dlq} (each record's error says where)"));
            }
            if lost > 0 {
                parts.push(format!("{lost} not written anywhere, not even to the DLQ"));
            }
            (50002, parts.join("; "))
        }
    }
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

    /// Found by fuzzing (fuzz/, rest_body): serde reads a struct from a JSON array too, so the
    /// body `[[[]]]` was a produce request of one empty record, written to Kafka.
    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        for body in ["[[[]]]", " [[{\"value\":\"a2V5\"}]]", "[[[]] ] "] {
            let e = parse_request(&Bytes::from(body)).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (422, 422),
                "{body}: {}",
                e.message
            );
            assert!(e.message.contains("not a JSON object"), "{}", e.message);
            assert!(plain_records(&Bytes::from(body), EmbeddedFormat::Json).is_err());
        }
        let e = parse_request(&Bytes::from_static(b"[[[]")).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, 400), "{}", e.message);
        let ok = plain_records(
            &Bytes::from_static(b" {\"records\":[{}]}"),
            EmbeddedFormat::Json,
        )
        .unwrap();
        assert_eq!(ok.len(), 1);
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

    /// A cache whose registry is unreachable, holding one schema as id 7.
    fn offline_cache() -> Arc<SchemaCache> {
        let client = crate::registry::RegistryClient::from_url("http://127.0.0.1:1").unwrap();
        let cache = SchemaCache::new(client, None);
        cache.insert_by_id(
            7,
            avro::Schema::parse(
                r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},{"name":"note","type":["null","string"],"default":null}]}"#,
            )
            .unwrap(),
        );
        cache
    }

    /// A hostile request is bounded: schemas whose defaults make small records huge stop at
    /// the request's budget, and an oversized schema text is refused before it is compiled.
    #[tokio::test]
    async fn hostile_avro_requests_are_bounded() {
        let cache = offline_cache();
        // 200 fields with a 4 KiB default each: every `{}` becomes ~800 KiB.
        let big = "x".repeat(4096);
        let fields: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"name":"f{i}","type":"string","default":"{big}"}}"#))
            .collect();
        let schema = format!(
            r#"{{"type":"record","name":"R","fields":[{}]}}"#,
            fields.join(",")
        );
        cache.insert_by_id(9, avro::Schema::parse(&schema).unwrap());
        let records = ["{\"value\":{}}"; 10].join(",");
        let body = format!(r#"{{"value_schema_id":9,"records":[{records}]}}"#);
        let req: ProduceRequest<'_> = serde_json::from_str(&body).unwrap();
        let started = std::time::Instant::now();
        let e = schema_records(&cache, "t", &req, body.len())
            .await
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, 42203), "{}", e.message);
        assert!(
            e.message.contains("more than 4 times the request body"),
            "{}",
            e.message
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));

        let huge = format!(r#""{}""#, " ".repeat(MAX_SCHEMA_TEXT));
        let e = resolve_schema(&cache, "value", "t-value", Some(&huge), None)
            .await
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, 42205), "{}", e.message);
    }

    async fn avro(body: &str) -> Result<SchemaEncoded, ApiError> {
        let req: ProduceRequest<'_> = serde_json::from_str(body).unwrap();
        schema_records(&offline_cache(), "t", &req, body.len()).await
    }

    #[tokio::test]
    async fn avro_records_are_encoded_with_the_schema_of_the_id() {
        let (enc, k, v) = avro(
            r#"{"value_schema_id":7,"records":[{"value":{"name":"a"}},{"value":{"name":"b","note":{"string":"x"}},"partition":0}]}"#,
        )
        .await
        .unwrap();
        assert_eq!((k, v), (None, Some(7)));
        let cache = offline_cache();
        let (id, got) = cache.decode(&enc[1].1).await.unwrap();
        assert_eq!(id, 7);
        assert_eq!(got, json!({"name":"b","note":"x"}));
        assert_eq!(&enc[0].1[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(enc[0].0, None);
    }

    #[tokio::test]
    async fn avro_errors_are_the_rest_proxys() {
        let e = avro(r#"{"records":[{"value":{"name":"a"}}]}"#)
            .await
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, 42202), "{}", e.message);
        assert!(e.message.contains("value_schema or value_schema_id"));
        let e = avro(r#"{"value_schema_id":7,"records":[{"key":"k","value":{"name":"a"}}]}"#)
            .await
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, 42201), "{}", e.message);
        let e = avro(
            r#"{"value_schema_id":7,"records":[{"value":{"name":"a"}},{"value":{"name":5}}]}"#,
        )
        .await
        .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, 42203), "{}", e.message);
        assert!(
            e.message.contains("records[1].value")
                && e.message.contains("at /name: expected string"),
            "{}",
            e.message
        );
        let e = avro(r#"{"value_schema":"{\"type\":\"recrd\"}","records":[{"value":1}]}"#)
            .await
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (422, 42205), "{}", e.message);
        // The registry is unreachable: the REST Proxy's 408 / 40801.
        let e = avro(r#"{"value_schema":"\"string\"","records":[{"value":"x"}]}"#)
            .await
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (408, 40801), "{}", e.message);
        assert!(e.message.contains("t-value"), "{}", e.message);
        let e = avro(r#"{"value_schema_id":-1,"records":[{"value":"x"}]}"#)
            .await
            .unwrap_err();
        assert_eq!(e.code, 42205, "{}", e.message);
        // Values all null and no value schema: empty values, as the REST Proxy allows.
        let (enc, _, v) = avro(r#"{"records":[{"value":null},{}]}"#).await.unwrap();
        assert_eq!((enc.len(), v), (2, None));
        assert!(enc[0].1.is_empty());
    }

    #[test]
    fn answers_say_where_each_record_is() {
        let dlq = |error_type| {
            Slot::Done(Fate::DeadLettered {
                error_type,
                message: "Broker: Message size too large".into(),
                partition: 0,
                offset: 7,
            })
        };
        let ok = || {
            Slot::Done(Fate::Delivered {
                topic: "t".into(),
                partition: 1,
                offset: 2,
            })
        };
        let failed = || {
            Slot::Done(Fate::Failed {
                message: "produce_failed: x; DLQ write failed: y".into(),
            })
        };
        let big = record_answer(&dlq(ErrorType::TooLarge), "d", Duration::from_secs(1));
        assert_eq!(big["error_code"], 41301);
        let text = big["error"].as_str().unwrap();
        assert!(
            text.contains("too large") && text.contains("DLQ topic d (partition 0, offset 7)"),
            "{text}"
        );
        let lost = record_answer(&failed(), "d", Duration::from_secs(1));
        assert!(
            lost["error"]
                .as_str()
                .unwrap()
                .starts_with("not written, not in the DLQ"),
            "{lost}"
        );

        let slots = [ok(), dlq(ErrorType::TooLarge)];
        let status = overall_status(&slots, rejected_status(&slots));
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (code, text) = request_error(status, &slots, "d");
        assert_eq!(code, 41301);
        assert!(
            text.contains("1 too large") && text.contains("DLQ topic d"),
            "{text}"
        );

        let slots = [
            dlq(ErrorType::TooLarge),
            dlq(ErrorType::ProduceFailed),
            failed(),
        ];
        let status = overall_status(&slots, rejected_status(&slots));
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let (code, text) = request_error(status, &slots, "d");
        assert_eq!(code, 50002);
        assert!(
            text.contains("2 refused by Kafka and written to the DLQ topic d")
                && text.contains("1 not written anywhere"),
            "{text}"
        );
        let slots = [failed()];
        let (_, text) = request_error(overall_status(&slots, rejected_status(&slots)), &slots, "d");
        assert!(!text.contains("written to the DLQ"), "{text}");
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

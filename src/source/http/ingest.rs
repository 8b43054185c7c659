//! `POST /ingest/{pipeline}`: a JSON object, a JSON array of objects, or NDJSON into a pipeline
//! whose source is `http: {}`. Each element is one event through the pipeline (transforms,
//! topic/key/header templates, encoder; bad input to the DLQ with its bytes), answered per
//! record.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{
    media_type, overall_status, token_allows, ApiError, HttpPipeline, Peer, Server, Slot, Token,
    JSON,
};
use crate::encode::Format;
use crate::event::{Event, Fate, Meta, Origin};
use crate::pipeline::TopicLimit;

const ROUTE: &str = "/ingest/{pipeline}";

/// How a body is cut into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `application/json`: an object (one event) or an array (one event per element); NDJSON
    /// when the body holds several values, one per line.
    Json,
    /// `application/x-ndjson`: one event per non-empty line; a malformed line is rejected alone.
    Ndjson,
    /// Anything else, for `format: raw` pipelines: the body is one event.
    Whole,
}

fn framing(media: Option<&str>, format_raw: bool) -> Option<Framing> {
    match media {
        None => Some(if format_raw {
            Framing::Whole
        } else {
            Framing::Json
        }),
        Some("application/json" | "text/json") => Some(Framing::Json),
        Some(
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines",
        ) => Some(Framing::Ndjson),
        Some(_) if format_raw => Some(Framing::Whole),
        Some(_) => None,
    }
}

/// How `POST /ingest/{pipeline}` cuts a body into events: the framing its Content-Type
/// (`media`) names for a pipeline of `format: raw` or not, then the cut; the error is the
/// message the client is answered (415 without a framing, else 400). Pure; public for the fuzz
/// targets (`fuzz/`).
#[doc(hidden)]
pub fn split_body(
    body: &Bytes,
    media: Option<&str>,
    format_raw: bool,
) -> Result<Vec<Bytes>, String> {
    let framing = framing(media, format_raw).ok_or("no framing for this Content-Type")?;
    split(body, framing)
}

/// Cuts a body into event payloads (slices of it, no copies). Errors name the position.
fn split(body: &Bytes, framing: Framing) -> Result<Vec<Bytes>, String> {
    match framing {
        Framing::Whole => Ok(vec![body.clone()]),
        Framing::Ndjson => Ok(lines(body)),
        Framing::Json => {
            let first = body.iter().position(|c| !c.is_ascii_whitespace());
            let Some(first) = first else {
                return Err(
                    "the body is empty; send a JSON object, an array of objects, or NDJSON".into(),
                );
            };
            if body[first] == b'[' {
                let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
                    format!(
                        "the body is not a JSON array: {e} (byte {})",
                        byte_at(body, &e)
                    )
                })?;
                let base = body.as_ptr() as usize;
                return Ok(items
                    .into_iter()
                    .map(|r| {
                        let start = r.get().as_ptr() as usize - base;
                        body.slice(start..start + r.get().len())
                    })
                    .collect());
            }
            let mut it =
                serde_json::Deserializer::from_slice(body).into_iter::<serde::de::IgnoredAny>();
            match it.next() {
                Some(Ok(_)) => {
                    let end = it.byte_offset();
                    let rest = &body[end..];
                    let rest_start = rest.iter().position(|c| !c.is_ascii_whitespace());
                    match rest_start {
                        None => Ok(vec![body.clone()]),
                        // Several values, the next on a new line: NDJSON without saying so.
                        Some(p) if rest[..p].contains(&b'\n') => Ok(lines(body)),
                        Some(p) => Err(format!(
                            "trailing characters after the JSON value at byte {}; send one object, an array, or NDJSON (one value per line)",
                            end + p
                        )),
                    }
                }
                Some(Err(e)) => Err(format!(
                    "the body is not JSON: {e} (byte {})",
                    byte_at(body, &e)
                )),
                None => Err("the body is empty".into()),
            }
        }
    }
}

/// The byte offset of a serde_json error (it reports line and column).
fn byte_at(body: &[u8], e: &serde_json::Error) -> usize {
    let mut line = 1;
    let mut off = 0;
    for (i, &c) in body.iter().enumerate() {
        if line == e.line() {
            off = i;
            break;
        }
        if c == b'\n' {
            line += 1;
        }
    }
    (off + e.column().saturating_sub(1)).min(body.len())
}

fn lines(body: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &c) in body.iter().enumerate() {
        if c == b'\n' {
            push_line(body, start, i, &mut out);
            start = i + 1;
        }
    }
    push_line(body, start, body.len(), &mut out);
    out
}

fn push_line(body: &Bytes, mut start: usize, mut end: usize, out: &mut Vec<Bytes>) {
    while start < end && body[start].is_ascii_whitespace() {
        start += 1;
    }
    while end > start && body[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    if end > start {
        out.push(body.slice(start..end));
    }
}

pub(super) async fn ingest(
    State(s): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let r = match ingest_inner(&s, peer, &name, &headers, body, started).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    s.observe(ROUTE, r.status(), started);
    r
}

async fn ingest_inner(
    s: &Server,
    peer: Peer,
    name: &str,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Response, ApiError> {
    let token = s.authenticate(headers)?;
    let hp = find_pipeline(s, name, token)?;
    let media = media_type(headers);
    let Some(framing) = framing(media.as_deref(), hp.format == Format::Raw) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            format!(
                "Content-Type `{}` is not accepted; send application/json (an object or an array of objects) or application/x-ndjson (one object per line)",
                media.unwrap_or_default()
            ),
        ));
    };
    let limit = hp.config.max_body.unwrap_or(s.config.max_body).0;
    let raw = s.read_body(body, headers, limit).await?;
    let items = split(&raw, framing).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, 400, e))?;
    if items.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            400,
            "no records in the body (an empty array or only blank lines)",
        ));
    }
    s.observe_records(ROUTE, items.len());
    s.check_records(items.len())?;
    s.check_ready()?;

    let remote = peer.0.to_string();
    let mut meta = Meta::empty()
        .with("remote_addr", remote.as_str())
        .with("remote_ip", peer.0.ip().to_string())
        .with("path", format!("/ingest/{name}"))
        .with("content_type", media.unwrap_or_default());
    if let Some(t) = token {
        meta.insert("token_name", &*t.name);
    }
    let input_headers: Vec<(String, Vec<u8>)> = hp
        .config
        .headers
        .iter()
        .filter_map(|h| headers.get(h).map(|v| (h.clone(), v.as_bytes().to_vec())))
        .collect();
    let origin = Origin::now(hp.pipeline.name().clone(), Arc::from(remote.as_str()));
    // A token that lists `topics` writes through its pipelines only within them: a record
    // routed elsewhere goes to the DLQ as `topic_not_allowed` (per record, like every other
    // rejection of an event's content, so the rest of a batch is still written). A token with
    // no `topics` writes wherever its pipelines do.
    let who = token.map(|t| format!("token `{}`", t.name));
    let limit = match (token, &who) {
        (Some(t), Some(who)) if !t.topics.is_empty() => Some(TopicLimit {
            who,
            patterns: &t.topics,
        }),
        _ => None,
    };
    let limit = limit.as_ref();
    let slots = s
        .send_each(items, started, |i, item| {
            let (mut ev, rx) = Event::with_ack(item, origin.clone());
            ev.max_wait = Some(s.config.max_wait);
            ev.headers = input_headers.clone();
            ev.meta = meta.clone().with("index", i.to_string());
            let pipeline = &hp.pipeline;
            (async move { pipeline.handle_within(ev, limit).await }, rx)
        })
        .await;
    let (status, body) = answer(s, &hp, &slots);
    Ok(s.answer(status, &body, JSON))
}

/// The pipeline fed at `/ingest/{name}`, if the token may feed it; 404 and 403 otherwise.
fn find_pipeline(
    s: &Server,
    name: &str,
    token: Option<&Token>,
) -> Result<Arc<HttpPipeline>, ApiError> {
    let found = s
        .pipelines
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned();
    let Some(hp) = found else {
        // Unknown and forbidden look the same to a token that may not see the pipeline.
        let mut names: Vec<String> = if token.is_none() {
            let table = s.pipelines.read().unwrap_or_else(|e| e.into_inner());
            table.keys().cloned().collect()
        } else {
            Vec::new()
        };
        names.sort();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            40403,
            if names.is_empty() {
                format!("no pipeline `{name}` with `source: {{ http: {{}} }}`")
            } else {
                format!(
                    "no pipeline `{name}` with `source: {{ http: {{}} }}`; these are: {}",
                    names.join(", ")
                )
            },
        ));
    };
    if !token_allows(token, |t| &t.pipelines, name) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            403,
            format!(
                "token `{}` may not feed pipeline `{name}`; add it to that token's `pipelines` in http.auth",
                token.map(|t| &*t.name).unwrap_or("")
            ),
        ));
    }
    Ok(hp)
}

/// A result per record (where it landed, or why not), the counts, and the overall status.
fn answer(s: &Server, hp: &HttpPipeline, slots: &[Slot]) -> (StatusCode, Value) {
    let dlq = hp.pipeline.dlq_topic();
    let (mut accepted, mut rejected) = (0, 0);
    let results: Vec<Value> = slots
        .iter()
        .map(|slot| match slot {
            Slot::Done(Fate::Delivered {
                topic,
                partition,
                offset,
            }) => {
                accepted += 1;
                json!({"status": "ok", "topic": topic, "partition": partition, "offset": offset})
            }
            Slot::Done(Fate::DeadLettered {
                error_type,
                message,
                partition,
                offset,
            }) => {
                rejected += 1;
                json!({"status": "rejected", "error_type": error_type, "error": message,
                    "dlq_topic": dlq, "dlq_partition": partition, "dlq_offset": offset})
            }
            Slot::Done(Fate::Busy) | Slot::NotSent => json!({"status": "busy",
                "error": "not written: the producer buffer is full; retry this record"}),
            Slot::TimedOut | Slot::Waiting(_) => json!({"status": "timeout",
                "error": format!("not acknowledged by Kafka within {:?} (http.ack_timeout); it may still be written — retrying may duplicate it", s.config.ack_timeout)}),
            Slot::Done(Fate::Failed { message }) => json!({"status": "failed", "error": message}),
            Slot::Done(Fate::Dropped) => json!({"status": "failed", "error": "dropped: the producer buffer is full"}),
        })
        .collect();
    let status = overall_status(slots, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json!({"results": results, "accepted": accepted, "rejected": rejected});
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: Vec<Bytes>) -> Vec<String> {
        v.into_iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn objects_arrays_and_ndjson() {
        let b = Bytes::from_static(br#" {"a": 1} "#);
        assert_eq!(
            texts(split(&b, Framing::Json).unwrap()),
            vec![r#" {"a": 1} "#]
        );
        let b = Bytes::from_static(b"[{\"a\":1}, {\"b\": [2]} ,3]");
        assert_eq!(
            texts(split(&b, Framing::Json).unwrap()),
            vec!["{\"a\":1}", "{\"b\": [2]}", "3"]
        );
        let b = Bytes::from_static(b"{\"a\":1}\n{\"b\":2}\r\n\n");
        assert_eq!(
            texts(split(&b, Framing::Json).unwrap()),
            vec!["{\"a\":1}", "{\"b\":2}"]
        );
        let b = Bytes::from_static(b"{\"a\":1}\n{not json\n{\"c\":3}");
        assert_eq!(
            texts(split(&b, Framing::Ndjson).unwrap()),
            vec!["{\"a\":1}", "{not json", "{\"c\":3}"]
        );
        // Detected NDJSON keeps a bad line for the DLQ too.
        assert_eq!(split(&b, Framing::Json).unwrap().len(), 3);
    }

    #[test]
    fn malformed_bodies_name_the_position() {
        let e = split(&Bytes::from_static(b"{\"a\": tru}"), Framing::Json).unwrap_err();
        assert!(
            e.contains("not JSON") && e.contains("line 1 column 10"),
            "{e}"
        );
        let e = split(&Bytes::from_static(b"[{\"a\":1},]"), Framing::Json).unwrap_err();
        assert!(e.contains("not a JSON array"), "{e}");
        let e = split(&Bytes::from_static(b"{\"a\":1} {\"b\":2}"), Framing::Json).unwrap_err();
        assert!(e.contains("trailing characters"), "{e}");
        assert!(split(&Bytes::from_static(b"  "), Framing::Json).is_err());
        assert_eq!(framing(Some("text/csv"), false), None);
        assert_eq!(framing(Some("text/csv"), true), Some(Framing::Whole));
    }
}

//! One record as the JSON object consumer sinks hand over, written straight into a reused
//! buffer: `{"topic","partition","offset","timestamp"?,"key","headers":{..},"value":..}`.
//!
//! The value is the JSON itself when it parses (copied as is, its line breaks — whitespace in
//! valid JSON — turned into spaces so that a record stays one line), the decoded record when
//! it is Confluent-framed Avro and a registry is known (or the source decoded it already:
//! `Event::decoded`), else a UTF-8 string, else
//! `{"base64": ...}`. No tree is built for JSON or text: this is the hot path of
//! `kgate consume --sink stdout`.

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use crate::event::Event;
use crate::sink::OutRecord;

/// What the Avro decoding of a framed value gave.
pub(super) type Decoded = Result<Value, String>;

/// Whether `raw` looks like a Confluent-framed Avro value (magic byte 0 and a schema id).
pub(super) fn is_framed(raw: &[u8]) -> bool {
    raw.len() > 5 && raw[0] == 0
}

/// Appends `rec` (made from `ev`) to `out` (no line break): where it was read from `ev`'s meta;
/// its key (else the one read), headers and value from `rec`. `decoded` is the value the source
/// decoded already, `avro` the one decoded here when it was framed and a registry was asked.
pub(super) fn record(
    out: &mut Vec<u8>,
    ev: &Event,
    rec: &OutRecord,
    decoded: Option<&Bytes>,
    avro: Option<&Decoded>,
) {
    let meta = &ev.meta;
    out.extend_from_slice(b"{\"topic\":");
    string(out, meta.get("kafka.topic").unwrap_or_default());
    out.extend_from_slice(b",\"partition\":");
    number(out, meta.get("kafka.partition"));
    out.extend_from_slice(b",\"offset\":");
    number(out, meta.get("kafka.offset"));
    if let Some(ts) = meta.get("kafka.timestamp") {
        out.extend_from_slice(b",\"timestamp\":");
        number(out, Some(ts));
    }
    out.extend_from_slice(b",\"key\":");
    match (&rec.key, meta.get("kafka.key")) {
        (Some(k), _) => bytes_value(out, k),
        (None, Some(k)) => string(out, k),
        (None, None) => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"headers\":{");
    for (i, (k, v)) in rec.headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k);
        out.push(b':');
        bytes_value(out, v);
    }
    out.extend_from_slice(b"},\"value\":");
    match avro {
        Some(Ok(v)) => {
            let _ = serde_json::to_writer(&mut *out, v);
        }
        Some(Err(e)) => {
            out.extend_from_slice(b"{\"avro_error\":");
            string(out, e);
            out.extend_from_slice(b",\"base64\":");
            base64(out, &rec.value);
            out.push(b'}');
        }
        // The source decoded it already (Avro to JSON text).
        None => value(out, decoded.unwrap_or(&rec.value)),
    }
    out.push(b'}');
}

/// A value: JSON as is (one line), else text, else base64.
fn value(out: &mut Vec<u8>, raw: &[u8]) {
    if !raw.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(raw).is_ok() {
        // In valid JSON a CR or LF can only be whitespace between tokens.
        let start = out.len();
        out.extend_from_slice(raw);
        for b in &mut out[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        return;
    }
    bytes_value(out, raw);
}

/// Bytes as a JSON string when they are UTF-8, else `{"base64": ...}`.
fn bytes_value(out: &mut Vec<u8>, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => string(out, s),
        Err(_) => {
            out.extend_from_slice(b"{\"base64\":");
            base64(out, b);
            out.push(b'}');
        }
    }
}

fn base64(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'"');
    let s = base64::engine::general_purpose::STANDARD.encode(b);
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A JSON string (escaped by serde_json, without allocating).
fn string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A number from meta text, or `null` when missing or not a number.
fn number(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
            out.extend_from_slice(n.as_bytes())
        }
        _ => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Origin;
    use std::sync::Arc;

    fn ev(raw: &'static [u8]) -> Event {
        let mut ev = Event::new(
            Bytes::from_static(raw),
            Origin::now(Arc::from("p"), Arc::from("s")),
        );
        ev.meta.insert("kafka.topic", "t\"1");
        ev.meta.insert("kafka.partition", "3");
        ev.meta.insert("kafka.offset", "42");
        ev.headers = vec![("h".into(), b"v".to_vec()), ("bin".into(), vec![0xff])];
        ev
    }

    /// The record of a raw pass-through (as `kgate consume` makes it).
    fn passthrough(ev: &Event) -> OutRecord {
        OutRecord {
            topic: Arc::from("t"),
            key: None,
            value: ev.raw.clone(),
            headers: ev.headers.clone(),
        }
    }

    fn line_of(ev: &Event, rec: &OutRecord, avro: Option<&Decoded>) -> Value {
        let mut out = Vec::new();
        record(&mut out, ev, rec, ev.decoded.as_ref(), avro);
        assert!(!out.contains(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    fn line(ev: &Event, avro: Option<&Decoded>) -> Value {
        line_of(ev, &passthrough(ev), avro)
    }

    /// A pipeline's record (transformed value, its own key and headers) is what is shown.
    #[test]
    fn the_pipeline_record_is_shown() {
        let mut e = ev(b"{\"a\":1}");
        e.meta.insert("kafka.key", "read-key");
        let rec = OutRecord {
            topic: Arc::from("t"),
            key: Some(vec![0xff]),
            value: Bytes::from_static(b"{\"b\":2}"),
            headers: vec![("x".into(), b"y".to_vec())],
        };
        let v = line_of(&e, &rec, None);
        assert_eq!(v["value"], serde_json::json!({"b": 2}));
        assert_eq!(v["key"], serde_json::json!({"base64": "/w=="}));
        assert_eq!(v["headers"], serde_json::json!({"x": "y"}));
        assert_eq!(v["offset"], 42);
    }

    #[test]
    fn json_text_binary_and_avro_values() {
        let v = line(&ev(b"{\"a\":\n [1, \"x\\ny\"]}"), None);
        assert_eq!(
            v,
            serde_json::json!({"topic":"t\"1","partition":3,"offset":42,"key":null,
                "headers":{"h":"v","bin":{"base64":"/w=="}},"value":{"a":[1,"x\ny"]}})
        );
        let mut e = ev(b"plain text");
        e.meta.insert("kafka.key", "k1");
        let v = line(&e, None);
        assert_eq!(v["value"], "plain text");
        assert_eq!(v["key"], "k1");
        assert_eq!(line(&ev(b"\xff\x00"), None)["value"]["base64"], "/wA=");
        assert_eq!(line(&ev(b""), None)["value"], "");
        let d: Decoded = Ok(serde_json::json!({"id": 7}));
        assert_eq!(line(&ev(b"\0\0\0\0\x01\x0e"), Some(&d))["value"]["id"], 7);
        let d: Decoded = Err("schema 1 not found".into());
        let v = line(&ev(b"\0\0\0\0\x01\x0e"), Some(&d));
        assert_eq!(v["value"]["avro_error"], "schema 1 not found");
        assert!(is_framed(b"\0\0\0\0\x01\x0e") && !is_framed(b"{}"));
        let mut e = ev(b"\0\0\0\0\x01\x0e");
        e.decoded = Some(Bytes::from_static(br#"{"id":7}"#));
        assert_eq!(line(&e, None)["value"]["id"], 7);
    }
}

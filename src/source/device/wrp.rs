//! WRP (the Xmidt Web Routing Protocol) messages in msgpack: decoded into Kafka headers
//! (`wrp-*`) and template values (`${@wrp.*}`), with the payload as the record value.
//!
//! A WRP message is a msgpack map with string keys (`msg_type`, `source`, `dest`,
//! `transaction_uuid`, `content_type`, `headers`, `metadata`, `partner_ids`, `payload`, …; the
//! names of xmidt-org/wrp-go's `Message`). Keys kgate does not know are ignored, so that newer
//! devices still pass.

use bytes::Bytes;
use rmpv::ValueRef;

use crate::transform::Meta;

/// Deepest nesting a WRP message has (`spans` is an array of arrays); deeper input is refused
/// before it costs anything.
const MAX_DEPTH: usize = 8;

/// WRP message types (wrp-go's `MessageType`; 2 is the older spec's Authorization).
pub fn msg_type_name(t: i64) -> Option<&'static str> {
    Some(match t {
        2 => "Authorization",
        3 => "SimpleRequestResponse",
        4 => "SimpleEvent",
        5 => "Create",
        6 => "Retrieve",
        7 => "Update",
        8 => "Delete",
        9 => "ServiceRegistration",
        10 => "ServiceAlive",
        11 => "Unknown",
        _ => return None,
    })
}

/// A decoded WRP message: what goes onto the Kafka record and into the templates.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// `msg_type`.
    pub msg_type: i64,
    /// The payload (empty when absent), sharing the frame's memory.
    pub payload: Bytes,
    /// Kafka headers, in a fixed order: `wrp-msg-type`, `wrp-source`, `wrp-dest`, ….
    pub headers: Vec<(String, Vec<u8>)>,
    /// Template values: `wrp.msg_type`, `wrp.dest`, `wrp.event_type`, ….
    pub meta: Meta,
}

/// Why a frame is not a WRP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

/// The `<type>` of an `event:<type>/…` destination (`device-status` for
/// `event:device-status/mac:112233445566/online`).
pub fn event_type(dest: &str) -> Option<&str> {
    let rest = dest.strip_prefix("event:")?;
    let t = rest.split('/').next().unwrap_or_default();
    (!t.is_empty()).then_some(t)
}

/// The scheme of a WRP locator (`mac`, `event`, `dns`, `serial`, `uuid`, …).
fn scheme(locator: &str) -> Option<&str> {
    locator
        .split_once(':')
        .map(|(s, _)| s)
        .filter(|s| !s.is_empty())
}

fn kind(v: &ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Nil => "nil",
        ValueRef::Boolean(_) => "a boolean",
        ValueRef::Integer(_) => "an integer",
        ValueRef::F32(_) | ValueRef::F64(_) => "a float",
        ValueRef::String(_) => "a string",
        ValueRef::Binary(_) => "binary",
        ValueRef::Array(_) => "an array",
        ValueRef::Map(_) => "a map",
        ValueRef::Ext(..) => "an extension",
    }
}

fn string<'a>(key: &str, v: &ValueRef<'a>) -> Result<&'a str, Invalid> {
    match v {
        ValueRef::String(s) => s
            .into_str()
            .ok_or_else(|| Invalid(format!("field `{key}` is not valid UTF-8"))),
        other => Err(Invalid(format!(
            "field `{key}` is {}, not a string",
            kind(other)
        ))),
    }
}

fn int(key: &str, v: &ValueRef<'_>) -> Result<i64, Invalid> {
    match v {
        ValueRef::Integer(i) => i
            .as_i64()
            .ok_or_else(|| Invalid(format!("field `{key}` is out of range"))),
        other => Err(Invalid(format!(
            "field `{key}` is {}, not an integer",
            kind(other)
        ))),
    }
}

fn strings<'a>(key: &str, v: &ValueRef<'a>) -> Result<Vec<&'a str>, Invalid> {
    match v {
        ValueRef::Array(items) => items.iter().map(|i| string(key, i)).collect(),
        ValueRef::Nil => Ok(Vec::new()),
        other => Err(Invalid(format!(
            "field `{key}` is {}, not an array of strings",
            kind(other)
        ))),
    }
}

/// Decodes one frame as a WRP msgpack message.
pub fn decode(frame: &Bytes) -> Result<Decoded, Invalid> {
    let mut rd: &[u8] = frame;
    let v = rmpv::decode::read_value_ref_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| Invalid(format!("not msgpack: {e}")))?;
    if !rd.is_empty() {
        return Err(Invalid(format!(
            "{} byte(s) after the msgpack value",
            rd.len()
        )));
    }
    let ValueRef::Map(fields) = v else {
        return Err(Invalid(format!(
            "a WRP message is a msgpack map, not {}",
            kind(&v)
        )));
    };

    let mut d = Decoded::default();
    let mut msg_type = None;
    // Headers in a fixed order whatever the key order of the message.
    let mut simple: [(&str, Option<String>); 12] = [
        ("source", None),
        ("dest", None),
        ("transaction_uuid", None),
        ("content_type", None),
        ("accept", None),
        ("status", None),
        ("rdr", None),
        ("path", None),
        ("session_id", None),
        ("qos", None),
        ("service_name", None),
        ("url", None),
    ];
    let mut wrp_headers = Vec::new();
    let mut metadata = Vec::new();
    let mut partner_ids = Vec::new();
    let mut spans = None;
    for (k, val) in &fields {
        let key = match k {
            ValueRef::String(s) => s.as_str().unwrap_or_default(),
            _ => continue,
        };
        match key {
            "msg_type" => msg_type = Some(int(key, val)?),
            "payload" => {
                d.payload = match val {
                    ValueRef::Binary(b) => frame.slice_ref(b),
                    ValueRef::String(s) => frame.slice_ref(s.as_bytes()),
                    ValueRef::Nil => Bytes::new(),
                    other => {
                        return Err(Invalid(format!(
                            "field `payload` is {}, not binary or a string",
                            kind(other)
                        )))
                    }
                }
            }
            "headers" => wrp_headers = strings(key, val)?,
            "partner_ids" => partner_ids = strings(key, val)?,
            "metadata" => match val {
                ValueRef::Map(m) => {
                    for (mk, mv) in m {
                        let mk = string("metadata key", mk)?;
                        metadata.push((mk, string(&format!("metadata.{mk}"), mv)?));
                    }
                }
                ValueRef::Nil => {}
                other => {
                    return Err(Invalid(format!(
                        "field `metadata` is {}, not a map of strings",
                        kind(other)
                    )))
                }
            },
            "spans" => {
                let rows = match val {
                    ValueRef::Array(rows) => rows
                        .iter()
                        .map(|r| strings(key, r))
                        .collect::<Result<Vec<_>, _>>()?,
                    ValueRef::Nil => Vec::new(),
                    other => {
                        return Err(Invalid(format!(
                            "field `spans` is {}, not an array of arrays",
                            kind(other)
                        )))
                    }
                };
                if !rows.is_empty() {
                    spans = Some(serde_json::to_string(&rows).unwrap_or_default());
                }
            }
            "status" | "rdr" | "qos" => {
                if !matches!(val, ValueRef::Nil) {
                    let n = int(key, val)?;
                    if let Some(slot) = simple.iter_mut().find(|(n2, _)| *n2 == key) {
                        slot.1 = Some(n.to_string());
                    }
                }
            }
            _ => {
                if let Some(slot) = simple.iter_mut().find(|(n, _)| *n == key) {
                    if !matches!(val, ValueRef::Nil) {
                        slot.1 = Some(string(key, val)?.to_string());
                    }
                }
                // Anything else (include_spans, fields of later versions) is not ours to judge.
            }
        }
    }
    let msg_type = msg_type.ok_or_else(|| Invalid("no `msg_type` field".into()))?;
    let type_name = msg_type_name(msg_type).ok_or_else(|| {
        Invalid(format!(
            "unknown msg_type {msg_type}; WRP types are 2 to 11"
        ))
    })?;
    d.msg_type = msg_type;

    let mut header = |name: &str, value: &str| {
        d.headers
            .push((format!("wrp-{name}"), value.as_bytes().to_vec()))
    };
    header("msg-type", &msg_type.to_string());
    for (name, value) in &simple {
        if let Some(v) = value {
            header(&name.replace('_', "-"), v);
        }
    }
    if !partner_ids.is_empty() {
        header("partner-ids", &partner_ids.join(","));
    }
    for h in &wrp_headers {
        header("header", h);
    }
    for (k, v) in &metadata {
        header(&format!("meta-{k}"), v);
    }
    if let Some(s) = &spans {
        header("spans", s);
    }

    d.meta.insert("wrp.msg_type", msg_type.to_string());
    d.meta.insert("wrp.msg_type_name", type_name);
    for (name, value) in &simple {
        if let Some(v) = value {
            d.meta.insert(format!("wrp.{name}"), v.clone());
        }
    }
    if let Some(dest) = &simple[1].1 {
        if let Some(s) = scheme(dest) {
            d.meta.insert("wrp.dest_scheme", s);
        }
        if let Some(t) = event_type(dest) {
            d.meta.insert("wrp.event_type", t);
        }
    }
    if !partner_ids.is_empty() {
        d.meta.insert("wrp.partner_ids", partner_ids.join(","));
    }
    for (k, v) in &metadata {
        d.meta.insert(format!("wrp.metadata.{k}"), *v);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn pack(fields: Vec<(&str, Value)>) -> Bytes {
        let map = Value::Map(
            fields
                .into_iter()
                .map(|(k, v)| (Value::from(k), v))
                .collect(),
        );
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &map).unwrap();
        Bytes::from(buf)
    }

    fn header<'a>(d: &'a Decoded, name: &str) -> Vec<&'a str> {
        d.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
            .collect()
    }

    #[test]
    fn decodes_an_event_into_headers_values_and_payload() {
        let frame = pack(vec![
            ("msg_type", Value::from(4)),
            ("source", Value::from("mac:112233445566")),
            (
                "dest",
                Value::from("event:device-status/mac:112233445566/online"),
            ),
            ("content_type", Value::from("application/json")),
            (
                "partner_ids",
                Value::Array(vec!["comcast".into(), "sky".into()]),
            ),
            ("headers", Value::Array(vec!["a: 1".into(), "b: 2".into()])),
            (
                "metadata",
                Value::Map(vec![("/boot-time".into(), "1542834188".into())]),
            ),
            ("qos", Value::from(25)),
            ("payload", Value::Binary(br#"{"x":1}"#.to_vec())),
            ("some_future_field", Value::from(true)),
        ]);
        let d = decode(&frame).unwrap();
        assert_eq!(&d.payload[..], br#"{"x":1}"#);
        assert_eq!(header(&d, "wrp-msg-type"), ["4"]);
        assert_eq!(header(&d, "wrp-source"), ["mac:112233445566"]);
        assert_eq!(
            header(&d, "wrp-dest"),
            ["event:device-status/mac:112233445566/online"]
        );
        assert_eq!(header(&d, "wrp-content-type"), ["application/json"]);
        assert_eq!(header(&d, "wrp-partner-ids"), ["comcast,sky"]);
        assert_eq!(header(&d, "wrp-header"), ["a: 1", "b: 2"]);
        assert_eq!(header(&d, "wrp-meta-/boot-time"), ["1542834188"]);
        assert_eq!(header(&d, "wrp-qos"), ["25"]);
        assert_eq!(d.headers[0].0, "wrp-msg-type");
        assert_eq!(d.meta.get("wrp.event_type"), Some("device-status"));
        assert_eq!(d.meta.get("wrp.dest_scheme"), Some("event"));
        assert_eq!(d.meta.get("wrp.msg_type_name"), Some("SimpleEvent"));
        assert_eq!(d.meta.get("wrp.metadata./boot-time"), Some("1542834188"));
        assert_eq!(d.meta.get("wrp.transaction_uuid"), None);
    }

    #[test]
    fn a_request_has_no_event_type_and_a_string_payload_is_kept() {
        let frame = pack(vec![
            ("msg_type", Value::from(3)),
            ("source", Value::from("dns:talaria")),
            ("dest", Value::from("mac:112233445566/config")),
            ("transaction_uuid", Value::from("546514d4")),
            ("status", Value::from(200)),
            ("payload", Value::from("hello")),
        ]);
        let d = decode(&frame).unwrap();
        assert_eq!(&d.payload[..], b"hello");
        assert_eq!(d.meta.get("wrp.event_type"), None);
        assert_eq!(d.meta.get("wrp.dest_scheme"), Some("mac"));
        assert_eq!(header(&d, "wrp-transaction-uuid"), ["546514d4"]);
        assert_eq!(header(&d, "wrp-status"), ["200"]);
    }

    #[test]
    fn garbage_and_wrong_shapes_are_invalid_with_a_reason() {
        let cases: Vec<(Bytes, &str)> = vec![
            (
                Bytes::from_static(b"\xdb\xff\xff\xff\xffgarbage"),
                "not msgpack",
            ),
            (
                Bytes::from_static(b"\xc1\xff\x00garbage"),
                "after the msgpack",
            ),
            (Bytes::from_static(b"{\"msg_type\":4}"), "after the msgpack"),
            (Bytes::from_static(b"\x05"), "not an integer"),
            (pack(vec![("source", Value::from("x"))]), "no `msg_type`"),
            (
                pack(vec![("msg_type", Value::from(42))]),
                "unknown msg_type 42",
            ),
            (
                pack(vec![("msg_type", Value::from(4)), ("dest", Value::from(7))]),
                "`dest` is an integer, not a string",
            ),
            (
                pack(vec![("msg_type", Value::from("4"))]),
                "`msg_type` is a string",
            ),
        ];
        for (frame, want) in cases {
            let e = decode(&frame).unwrap_err();
            assert!(e.0.contains(want), "{frame:?}: {} (wanted {want})", e.0);
        }
        // Too deep to be a WRP message: refused without recursing through it.
        let mut deep = vec![0x91u8; 10_000];
        deep.push(0x00);
        assert!(decode(&Bytes::from(deep)).is_err());
    }

    #[test]
    fn event_types() {
        assert_eq!(
            event_type("event:device-status/mac:1/online"),
            Some("device-status")
        );
        assert_eq!(event_type("event:iot"), Some("iot"));
        assert_eq!(event_type("event:/x"), None);
        assert_eq!(event_type("mac:112233445566"), None);
    }
}

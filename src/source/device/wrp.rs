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

/// Deepest nesting of containers a WRP message has: the message map, `spans` (an array), a span
/// (an array) — one level to spare for fields kgate does not read. Deeper input is refused before
/// it costs anything.
const MAX_NESTING: usize = 4;

/// [`MAX_NESTING`] in rmpv's units: its depth counts two levels per container (the value, then
/// its items) and up to three for a leaf (the value, a string's data, its bytes), so a string in
/// a span (map → array → array → string) is 9 levels deep to rmpv.
const RMPV_DEPTH: usize = 2 * MAX_NESTING + 3;

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
    let mut f = Fields::new();
    for (k, val) in &top_level_map(frame)? {
        let key = match k {
            ValueRef::String(s) => s.as_str().unwrap_or_default(),
            _ => continue,
        };
        f.read(frame, key, val)?;
    }
    let msg_type = f
        .msg_type
        .ok_or_else(|| Invalid("no `msg_type` field".into()))?;
    let type_name = msg_type_name(msg_type).ok_or_else(|| {
        Invalid(format!(
            "unknown msg_type {msg_type}; WRP types are 2 to 11"
        ))
    })?;
    Ok(Decoded {
        msg_type,
        headers: f.headers(msg_type),
        meta: f.meta(msg_type, type_name),
        payload: f.payload,
    })
}

/// The fields of the single msgpack map that is the whole frame.
fn top_level_map(frame: &Bytes) -> Result<Vec<(ValueRef<'_>, ValueRef<'_>)>, Invalid> {
    let mut rd: &[u8] = frame;
    let v = rmpv::decode::read_value_ref_with_max_depth(&mut rd, RMPV_DEPTH)
        .map_err(|e| Invalid(format!("not msgpack: {e}")))?;
    if !rd.is_empty() {
        return Err(Invalid(format!(
            "{} byte(s) after the msgpack value",
            rd.len()
        )));
    }
    match v {
        ValueRef::Map(fields) => Ok(fields),
        other => Err(Invalid(format!(
            "a WRP message is a msgpack map, not {}",
            kind(&other)
        ))),
    }
}

/// The fields of a WRP message that kgate uses, as read so far.
struct Fields<'a> {
    msg_type: Option<i64>,
    payload: Bytes,
    /// Headers in a fixed order whatever the key order of the message.
    simple: [(&'static str, Option<String>); 12],
    wrp_headers: Vec<&'a str>,
    metadata: Vec<(&'a str, &'a str)>,
    partner_ids: Vec<&'a str>,
    spans: Option<String>,
}

impl<'a> Fields<'a> {
    fn new() -> Fields<'a> {
        Fields {
            msg_type: None,
            payload: Bytes::new(),
            simple: [
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
            ],
            wrp_headers: Vec::new(),
            metadata: Vec::new(),
            partner_ids: Vec::new(),
            spans: None,
        }
    }

    /// Takes one field of the message; `frame` is what `val` borrows from.
    fn read(&mut self, frame: &Bytes, key: &str, val: &ValueRef<'a>) -> Result<(), Invalid> {
        match key {
            "msg_type" => self.msg_type = Some(int(key, val)?),
            "payload" => self.payload = payload(frame, val)?,
            "headers" => self.wrp_headers = strings(key, val)?,
            "partner_ids" => self.partner_ids = strings(key, val)?,
            "metadata" => self.metadata.extend(metadata(val)?),
            "spans" => {
                if let Some(s) = spans(key, val)? {
                    self.spans = Some(s);
                }
            }
            "status" | "rdr" | "qos" => {
                if !matches!(val, ValueRef::Nil) {
                    let n = int(key, val)?;
                    self.set_simple(key, n.to_string());
                }
            }
            _ => {
                if self.simple.iter().any(|(n, _)| *n == key) && !matches!(val, ValueRef::Nil) {
                    self.set_simple(key, string(key, val)?.to_string());
                }
                // Anything else (include_spans, fields of later versions) is not ours to judge.
            }
        }
        Ok(())
    }

    fn set_simple(&mut self, key: &str, value: String) {
        if let Some(slot) = self.simple.iter_mut().find(|(n, _)| *n == key) {
            slot.1 = Some(value);
        }
    }

    /// The Kafka headers: `wrp-msg-type`, the simple fields in their fixed order, then the
    /// partner ids, WRP headers, metadata and spans.
    fn headers(&self, msg_type: i64) -> Vec<(String, Vec<u8>)> {
        let mut headers = Vec::new();
        let mut header = |name: &str, value: &str| {
            headers.push((format!("wrp-{name}"), value.as_bytes().to_vec()))
        };
        header("msg-type", &msg_type.to_string());
        for (name, value) in &self.simple {
            if let Some(v) = value {
                header(&name.replace('_', "-"), v);
            }
        }
        if !self.partner_ids.is_empty() {
            header("partner-ids", &self.partner_ids.join(","));
        }
        for h in &self.wrp_headers {
            header("header", h);
        }
        for (k, v) in &self.metadata {
            header(&format!("meta-{k}"), v);
        }
        if let Some(s) = &self.spans {
            header("spans", s);
        }
        headers
    }

    /// The template values (`wrp.*`).
    fn meta(&self, msg_type: i64, type_name: &str) -> Meta {
        let mut meta = Meta::empty();
        meta.insert("wrp.msg_type", msg_type.to_string());
        meta.insert("wrp.msg_type_name", type_name);
        for (name, value) in &self.simple {
            if let Some(v) = value {
                meta.insert(format!("wrp.{name}"), v.clone());
            }
        }
        if let Some(dest) = &self.simple[1].1 {
            if let Some(s) = scheme(dest) {
                meta.insert("wrp.dest_scheme", s);
            }
            if let Some(t) = event_type(dest) {
                meta.insert("wrp.event_type", t);
            }
        }
        if !self.partner_ids.is_empty() {
            meta.insert("wrp.partner_ids", self.partner_ids.join(","));
        }
        for (k, v) in &self.metadata {
            meta.insert(format!("wrp.metadata.{k}"), *v);
        }
        meta
    }
}

/// `payload`: binary or a string, sharing the frame's memory.
fn payload(frame: &Bytes, val: &ValueRef<'_>) -> Result<Bytes, Invalid> {
    match val {
        ValueRef::Binary(b) => Ok(frame.slice_ref(b)),
        ValueRef::String(s) => Ok(frame.slice_ref(s.as_bytes())),
        ValueRef::Nil => Ok(Bytes::new()),
        other => Err(Invalid(format!(
            "field `payload` is {}, not binary or a string",
            kind(other)
        ))),
    }
}

/// `metadata`: a map of strings to strings.
fn metadata<'a>(val: &ValueRef<'a>) -> Result<Vec<(&'a str, &'a str)>, Invalid> {
    match val {
        ValueRef::Map(m) => {
            let mut metadata = Vec::new();
            for (mk, mv) in m {
                let mk = string("metadata key", mk)?;
                metadata.push((mk, string(&format!("metadata.{mk}"), mv)?));
            }
            Ok(metadata)
        }
        ValueRef::Nil => Ok(Vec::new()),
        other => Err(Invalid(format!(
            "field `metadata` is {}, not a map of strings",
            kind(other)
        ))),
    }
}

/// `spans`: an array of arrays of strings, as JSON (none when empty).
fn spans(key: &str, val: &ValueRef<'_>) -> Result<Option<String>, Invalid> {
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
    Ok((!rows.is_empty()).then(|| serde_json::to_string(&rows).unwrap_or_default()))
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

    /// A message as a device's WRP library writes it (a struct through rmp-serde, field names as
    /// map keys), with `spans`, decodes; nesting past a WRP message's is still refused.
    #[test]
    fn a_message_with_spans_decodes_and_depth_stays_bounded() {
        #[derive(serde::Serialize)]
        struct Msg {
            msg_type: i64,
            source: &'static str,
            dest: &'static str,
            transaction_uuid: &'static str,
            content_type: &'static str,
            headers: Vec<&'static str>,
            metadata: std::collections::BTreeMap<&'static str, &'static str>,
            spans: Vec<Vec<&'static str>>,
            partner_ids: Vec<&'static str>,
            #[serde(with = "serde_bytes")]
            payload: Vec<u8>,
        }
        let msg = Msg {
            msg_type: 4,
            source: "mac:112233445566/parodus",
            dest: "event:device-status/mac:112233445566/online",
            transaction_uuid: "c2bb1f16-09c8-11e7-93ae-92361f002671",
            content_type: "application/json",
            headers: vec!["X-Trace: 1"],
            metadata: [("/boot-time", "1542834188"), ("/hw-model", "TG1682")].into(),
            spans: vec![
                vec!["parodus", "1542834188", "12"],
                vec!["talaria", "1542834190", "3"],
            ],
            partner_ids: vec!["comcast"],
            payload: br#"{"up":true}"#.to_vec(),
        };
        let frame = Bytes::from(rmp_serde::to_vec_named(&msg).unwrap());
        let d = decode(&frame).unwrap();
        assert_eq!(
            header(&d, "wrp-spans"),
            [r#"[["parodus","1542834188","12"],["talaria","1542834190","3"]]"#]
        );
        assert_eq!(&d.payload[..], br#"{"up":true}"#);
        assert_eq!(header(&d, "wrp-meta-/hw-model"), ["TG1682"]);
        // An unknown field may nest one level deeper than spans, not two.
        let nest = |levels: usize| {
            let mut v = Value::from("leaf");
            for _ in 0..levels {
                v = Value::Array(vec![v]);
            }
            pack(vec![("msg_type", Value::from(4)), ("future", v)])
        };
        assert!(decode(&nest(3)).is_ok());
        let e = decode(&nest(4)).unwrap_err();
        assert!(e.0.contains("depth"), "{}", e.0);
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

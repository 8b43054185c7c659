//! Encoders turn an event into value bytes. `json` and `raw` now; Avro (through a schema
//! registry) plugs in here as another [`Encoder`].

use bytes::Bytes;
use serde_json::Value;

use crate::config::Format;

/// Why an event could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    /// DLQ `error_type`, e.g. `schema_mismatch`.
    pub error_type: &'static str,
    /// What did not fit, where.
    pub message: String,
}

/// Turns an event into value bytes for `topic`.
pub trait Encoder: Send + Sync {
    /// Whether the event must be parsed (validated) as JSON first.
    fn needs_json(&self) -> bool;
    /// Whether [`Encoder::encode`] reads the parsed tree (else only validation is needed).
    fn needs_value(&self) -> bool {
        self.needs_json()
    }
    /// Encodes. `value` is the parsed (and transformed) event when [`Encoder::needs_json`];
    /// `modified` says whether transforms changed it since it was parsed from `raw`.
    fn encode(
        &self,
        raw: &Bytes,
        value: Option<&Value>,
        modified: bool,
        topic: &str,
    ) -> Result<Bytes, EncodeError>;
    /// The registry subjects a record for `topic` needs (its value's, and its key's when `key`).
    fn subjects(&self, _topic: &str, _key: bool) -> Vec<String> {
        Vec::new()
    }
    /// The schema cache of a registry-backed encoder.
    fn schemas(&self) -> Option<&std::sync::Arc<crate::schema_cache::SchemaCache>> {
        None
    }
    /// Encodes a rendered key (`key_format: avro`); only schema encoders support it.
    fn encode_key(&self, _key: String, _topic: &str) -> Result<Vec<u8>, EncodeError> {
        Err(EncodeError {
            error_type: "encode_failed",
            message: "key_format avro needs format avro".into(),
        })
    }
}

/// JSON: validated on the way in; re-serialized only when a transform changed it.
pub struct JsonEncoder;

impl Encoder for JsonEncoder {
    fn needs_json(&self) -> bool {
        true
    }
    fn needs_value(&self) -> bool {
        false
    }
    fn encode(
        &self,
        raw: &Bytes,
        value: Option<&Value>,
        modified: bool,
        _topic: &str,
    ) -> Result<Bytes, EncodeError> {
        match value {
            Some(v) if modified => {
                serde_json::to_vec(v)
                    .map(Bytes::from)
                    .map_err(|e| EncodeError {
                        error_type: "encode_failed",
                        message: e.to_string(),
                    })
            }
            _ => Ok(raw.clone()),
        }
    }
}

/// The bytes as received.
pub struct RawEncoder;

impl Encoder for RawEncoder {
    fn needs_json(&self) -> bool {
        false
    }
    fn encode(
        &self,
        raw: &Bytes,
        _: Option<&Value>,
        _: bool,
        _: &str,
    ) -> Result<Bytes, EncodeError> {
        Ok(raw.clone())
    }
}

/// The encoder of a configured format (Avro is built by the pipeline, with the registry).
pub fn encoder_for(format: Format) -> Option<Box<dyn Encoder>> {
    match format {
        Format::Json => Some(Box::new(JsonEncoder)),
        Format::Raw => Some(Box::new(RawEncoder)),
        Format::Avro => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_passes_raw_through_unless_modified() {
        let raw = Bytes::from_static(br#"{ "a" : 1 }"#);
        let v = json!({"a": 1});
        assert_eq!(JsonEncoder.encode(&raw, Some(&v), false, "t").unwrap(), raw);
        assert_eq!(
            &JsonEncoder.encode(&raw, Some(&v), true, "t").unwrap()[..],
            br#"{"a":1}"#
        );
        assert_eq!(RawEncoder.encode(&raw, None, false, "t").unwrap(), raw);
    }
}

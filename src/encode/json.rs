//! `format: json` (validated on the way in, re-serialized only when transformed) and
//! `format: raw` (the bytes as received).

use bytes::Bytes;
use serde_json::Value;

use super::{EncodeError, Encoder};
use crate::event::ErrorType;

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
                        error_type: ErrorType::EncodeFailed,
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

//! Encoders turn an event into value bytes: `json` and `raw` ([`json`]), and Avro through the
//! schema registry ([`avro`]), each an [`Encoder`]; the output format and key format as
//! configured.

pub mod avro;
pub mod json;

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

pub use avro::{AvroConfig, AvroEncoder};
pub use json::{JsonEncoder, RawEncoder};

use crate::event::ErrorType;
use crate::registry::SchemaCache;

/// How keys are written.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    /// The rendered key's UTF-8 bytes.
    #[default]
    String,
    /// The rendered key as a JSON string (`"kraken|BTC-USD"` with the quotes).
    Json,
    /// Avro through the registry, subject `<topic>-key`.
    Avro,
}

/// Output encoding.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON.
    #[default]
    Json,
    /// The bytes as received, unparsed.
    Raw,
    /// Avro, encoded with the latest version of the pipeline's subject in the schema registry.
    Avro,
}

/// Why an event could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    /// Why (the DLQ's `error_type`).
    pub error_type: ErrorType,
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
    fn schemas(&self) -> Option<&Arc<SchemaCache>> {
        None
    }
    /// Encodes a rendered key (`key_format: avro`); only schema encoders support it.
    fn encode_key(&self, _key: String, _topic: &str) -> Result<Vec<u8>, EncodeError> {
        Err(EncodeError {
            error_type: ErrorType::EncodeFailed,
            message: "key_format avro needs format avro".into(),
        })
    }
}

/// The encoder of a configured format; `format: avro` takes the registry's schema cache.
pub fn encoder_for(
    format: Format,
    avro: &AvroConfig,
    schemas: Option<Arc<SchemaCache>>,
) -> Option<Box<dyn Encoder>> {
    match (format, schemas) {
        (Format::Json, _) => Some(Box::new(JsonEncoder)),
        (Format::Raw, _) => Some(Box::new(RawEncoder)),
        (Format::Avro, Some(cache)) => Some(Box::new(AvroEncoder::new(cache, avro))),
        (Format::Avro, None) => None,
    }
}

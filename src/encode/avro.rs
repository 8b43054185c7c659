//! `format: avro`: values (and keys) encoded with the latest version of their subject in the
//! schema registry, framed in the Confluent wire format (magic byte, schema id, Avro body).

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::{EncodeError, Encoder};
use crate::avro;
use crate::event::ErrorType;
use crate::registry::{Latest, SchemaCache, SubjectStrategy};

/// `pipelines[].avro:` — the subject whose latest version encodes the values.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AvroConfig {
    /// `topic_name` (`<topic>-value`, the default), `record_name` (`<record>`) or
    /// `topic_record_name` (`<topic>-<record>`).
    #[serde(default)]
    pub subject_strategy: SubjectStrategy,
    /// The record's full name, for the `record_name` strategies (e.g. `io.kgate.trades.TradeEvent`).
    #[serde(default)]
    pub record: Option<String>,
    /// An explicit subject; overrides the strategy.
    #[serde(default)]
    pub subject: Option<String>,
}

/// A value in the Confluent wire format: magic byte, the schema's registry id, the Avro body.
/// The one place records are framed (pipelines and the REST Proxy route both call it); the
/// error says what did not fit, where.
pub fn confluent_avro(
    id: u32,
    schema: &avro::Schema,
    v: &Value,
) -> Result<Vec<u8>, avro::Mismatch> {
    let mut out = Vec::with_capacity(64);
    avro::frame(id, &mut out);
    schema.encode(v, &mut out)?;
    Ok(out)
}

/// Encodes values (and keys) as Avro with the latest version of their subject.
pub struct AvroEncoder {
    cache: Arc<SchemaCache>,
    strategy: SubjectStrategy,
    record: Option<String>,
    subject: Option<String>,
}

impl AvroEncoder {
    /// An encoder naming subjects per `c`.
    pub fn new(cache: Arc<SchemaCache>, c: &AvroConfig) -> AvroEncoder {
        AvroEncoder {
            cache,
            strategy: c.subject_strategy,
            record: c.record.clone(),
            subject: c.subject.clone(),
        }
    }

    /// The value subject for `topic`.
    pub fn value_subject(&self, topic: &str) -> String {
        match &self.subject {
            Some(s) => s.clone(),
            None => crate::registry::subject(
                self.strategy,
                topic,
                self.record.as_deref().unwrap_or_default(),
                false,
            ),
        }
    }

    /// The key subject for `topic` (always `<topic>-key`).
    pub fn key_subject(topic: &str) -> String {
        crate::registry::subject(SubjectStrategy::TopicName, topic, "", true)
    }

    /// The cache it reads.
    pub fn cache(&self) -> &Arc<SchemaCache> {
        &self.cache
    }

    fn latest(&self, subject: &str) -> Result<Arc<Latest>, EncodeError> {
        self.cache.get(subject).ok_or_else(|| EncodeError {
            error_type: ErrorType::SchemaUnavailable,
            message: format!(
                "no schema for subject {subject}: the registry at {} has none, or cannot be reached",
                self.cache.client().url()
            ),
        })
    }

    fn write(l: &Latest, v: &Value, what: &str) -> Result<Vec<u8>, EncodeError> {
        confluent_avro(l.id, &l.schema, v).map_err(|m| EncodeError {
            error_type: ErrorType::SchemaMismatch,
            message: format!(
                "{what} does not fit subject {} version {} (id {}): {m}",
                l.subject, l.version, l.id
            ),
        })
    }
}

impl Encoder for AvroEncoder {
    fn needs_json(&self) -> bool {
        true
    }
    fn needs_value(&self) -> bool {
        true
    }
    fn encode(
        &self,
        _raw: &Bytes,
        value: Option<&Value>,
        _modified: bool,
        topic: &str,
    ) -> Result<Bytes, EncodeError> {
        let l = self.latest(&self.value_subject(topic))?;
        let v = value.unwrap_or(&Value::Null);
        Self::write(&l, v, "the event").map(Bytes::from)
    }

    fn encode_key(&self, key: String, topic: &str) -> Result<Vec<u8>, EncodeError> {
        let l = self.latest(&Self::key_subject(topic))?;
        // A string key schema takes the rendered key as is; any other tries it as JSON
        // (`42` for a long key, `{"id":"a"}` for a record key).
        match Self::write(&l, &Value::String(key.clone()), "the key") {
            Ok(b) => Ok(b),
            Err(e) => match serde_json::from_str::<Value>(&key) {
                Ok(v) => Self::write(&l, &v, "the key"),
                Err(_) => Err(e),
            },
        }
    }

    fn subjects(&self, topic: &str, key: bool) -> Vec<String> {
        let mut s = vec![self.value_subject(topic)];
        if key {
            s.push(Self::key_subject(topic));
        }
        s
    }

    fn schemas(&self) -> Option<&Arc<SchemaCache>> {
        Some(&self.cache)
    }
}

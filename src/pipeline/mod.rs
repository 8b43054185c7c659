//! A pipeline: parse, transform, route, key, encode, then hand to the sink; anything that does
//! not fit goes to the DLQ with a reason. [`Processor`] is the pure part (bytes in, a record or
//! a rejection out); [`Pipeline`] puts it in front of a [`Sink`].

mod config;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

pub use config::{PipelineConfig, PipelineSpec};

use crate::config::{At, ConfigErrors};
use crate::encode::{encoder_for, Encoder, Format, KeyFormat};
pub use crate::event::Rejection;
use crate::event::{ErrorType, Event};
use crate::kafka::valid_topic_name;
use crate::registry::SchemaCache;
use crate::sink::{OutRecord, Sink};
use crate::transform::{Doc, Meta, Template, TopLevel, Transform};

/// Why a pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Its config has problems (each with its path).
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// `format: avro` without a schema cache.
    #[error("pipeline {0}: format avro needs a `schema_registry:` section with its url")]
    NoRegistry(String),
}

/// The pure part of a pipeline: raw input in, a record (or a rejection) out.
pub struct Processor {
    name: Arc<str>,
    transforms: Vec<Transform>,
    topic: Template,
    topic_text: String,
    /// The topic when it is fixed, shared by every record instead of copied.
    fixed_topic: Option<Arc<str>>,
    key: Option<Template>,
    headers: Vec<(String, Template)>,
    encoder: Box<dyn Encoder>,
    key_format: KeyFormat,
    format: Format,
}

/// A compiled pipeline: its processor and the sink it feeds.
pub struct Pipeline {
    processor: Processor,
    sink: Arc<dyn Sink>,
}

impl Processor {
    /// Compiles a pipeline config (without a schema registry: no `format: avro`).
    pub fn new(c: &PipelineConfig) -> Result<Processor, BuildError> {
        Processor::with_schemas(c, None)
    }

    /// Compiles a pipeline config; `schemas` serves `format: avro`.
    pub fn with_schemas(
        c: &PipelineConfig,
        schemas: Option<Arc<SchemaCache>>,
    ) -> Result<Processor, BuildError> {
        let mut errors = Vec::new();
        match c.resolve(At(""), schemas.is_some(), &mut errors) {
            Some(spec) if errors.is_empty() => Processor::from_spec(spec, schemas),
            _ => Err(BuildError::Invalid(ConfigErrors {
                file: format!("pipeline {}", c.name),
                errors,
            })),
        }
    }

    /// Builds the processor of a resolved pipeline; `schemas` serves `format: avro`.
    pub fn from_spec(
        spec: PipelineSpec,
        schemas: Option<Arc<SchemaCache>>,
    ) -> Result<Processor, BuildError> {
        let encoder = encoder_for(spec.format, &spec.avro, schemas)
            .ok_or_else(|| BuildError::NoRegistry(spec.name.to_string()))?;
        Ok(Processor {
            fixed_topic: spec.topic.fixed().map(Arc::from),
            name: spec.name,
            transforms: spec.transforms,
            topic: spec.topic,
            topic_text: spec.topic_text,
            key: spec.key,
            headers: spec.headers,
            encoder,
            key_format: spec.key_format,
            format: spec.format,
        })
    }

    /// The output format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The pipeline's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The registry subjects a record for `topic` needs (none unless `format: avro`).
    pub fn subjects(&self, topic: &str) -> Vec<String> {
        self.encoder.subjects(
            topic,
            self.key.is_some() && self.key_format == KeyFormat::Avro,
        )
    }

    /// The topic when it is fixed (not a template).
    pub fn fixed_topic(&self) -> Option<&str> {
        self.fixed_topic.as_deref()
    }

    /// Loads the subjects of `topic` into the schema cache (a templated topic met for the first
    /// time); false when there is no cache or a subject could not be loaded (then the record
    /// goes to the DLQ as `schema_unavailable`).
    pub async fn load_schemas(&self, topic: &str) -> bool {
        let Some(cache) = self.encoder.schemas() else {
            return false;
        };
        let mut ok = true;
        for s in self.subjects(topic) {
            if cache.get(&s).is_none() {
                if let Err(e) = cache.load_throttled(&s).await {
                    tracing::warn!(pipeline = %self.name, subject = %s, "{e}");
                    ok = false;
                }
            }
        }
        ok
    }

    /// The topic as configured (a name or a template): the DLQ's `source_topic` for input
    /// rejected before it could be routed.
    pub fn topic_template(&self) -> &str {
        &self.topic_text
    }

    /// Turns raw input into a record, or says why not. Pure: no I/O.
    pub fn process(&self, raw: &Bytes, meta: &Meta) -> Result<OutRecord, Rejection> {
        let reject = |error_type, message, topic: Option<&str>| Rejection {
            error_type,
            message,
            source_topic: topic.unwrap_or(&self.topic_text).to_string(),
        };
        let mut value: Option<Value> = None;
        let mut top = None;
        let mut modified = false;
        if self.encoder.needs_json() {
            // Unchanged events headed for an encoder that needs no tree are only validated and
            // read at the top level; anything else (transforms, Avro, a non-object) gets the tree.
            if self.transforms.is_empty() && !self.encoder.needs_value() {
                top = TopLevel::parse(raw);
            }
            if top.is_none() {
                let mut v: Value = serde_json::from_slice(raw).map_err(|e| {
                    reject(
                        ErrorType::InvalidJson,
                        format!("not valid JSON: {e}"),
                        self.topic.fixed(),
                    )
                })?;
                for t in &self.transforms {
                    t.apply(&mut v, meta)
                        .map_err(|e| reject(ErrorType::TransformFailed, e, self.topic.fixed()))?;
                    modified = true;
                }
                value = Some(v);
            }
        }
        let doc = match (&value, &top) {
            (Some(v), _) => Doc::Value(v),
            (None, Some(t)) => Doc::Top(t),
            (None, None) => Doc::None,
        };
        let v = value.as_ref();
        let topic: Arc<str> = match &self.fixed_topic {
            Some(t) => t.clone(),
            None => {
                let t = self.topic.render(doc, meta).map_err(|m| {
                    reject(
                        ErrorType::MissingField,
                        format!(
                            "topic template `{}`: field `{}` is {}",
                            self.topic_text, m.field, m.found
                        ),
                        None,
                    )
                })?;
                if !valid_topic_name(&t) {
                    return Err(reject(
                        ErrorType::InvalidTopic,
                        format!(
                            "topic template `{}` gave `{t}`, which is not a valid topic name",
                            self.topic_text
                        ),
                        None,
                    ));
                }
                Arc::from(t)
            }
        };
        let key = match &self.key {
            None => None,
            Some(k) => {
                let k = k.render(doc, meta).map_err(|m| {
                    reject(
                        ErrorType::MissingField,
                        format!("key field `{}` is {}", m.field, m.found),
                        Some(&topic),
                    )
                })?;
                Some(match self.key_format {
                    KeyFormat::String => k.into_bytes(),
                    KeyFormat::Json => Value::String(k).to_string().into_bytes(),
                    KeyFormat::Avro => self
                        .encoder
                        .encode_key(k, &topic)
                        .map_err(|e| reject(e.error_type, e.message, Some(&topic)))?,
                })
            }
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, t) in &self.headers {
            let h = t.render(doc, meta).map_err(|m| {
                reject(
                    ErrorType::MissingField,
                    format!("header `{name}` field `{}` is {}", m.field, m.found),
                    Some(&topic),
                )
            })?;
            headers.push((name.clone(), h.into_bytes()));
        }
        let value = self
            .encoder
            .encode(raw, v, modified, &topic)
            .map_err(|e| reject(e.error_type, e.message, Some(&topic)))?;
        Ok(OutRecord {
            topic,
            key,
            value,
            headers,
        })
    }
}

impl Pipeline {
    /// Compiles a pipeline feeding `sink`.
    pub fn new(c: &PipelineConfig, sink: Arc<dyn Sink>) -> Result<Pipeline, BuildError> {
        Ok(Pipeline {
            processor: Processor::new(c)?,
            sink,
        })
    }

    /// A pipeline of `processor` feeding `sink`.
    pub fn from_processor(processor: Processor, sink: Arc<dyn Sink>) -> Pipeline {
        Pipeline { processor, sink }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &Arc<str> {
        &self.processor.name
    }

    /// Its processor (the pure part).
    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// Where its rejected events go (the DLQ topic), for answers that name it.
    pub fn dlq_topic(&self) -> &str {
        self.sink.dlq_topic()
    }

    /// Hands a record the source built itself (the REST Proxy's, already encoded) to the sink,
    /// to `partition` when one is named; its fate reaches `ev`'s ack like any other.
    pub async fn send(&self, rec: OutRecord, partition: Option<i32>, ev: Event) {
        self.sink.send(rec, partition, ev).await
    }

    /// Sends an event the source itself rejected (e.g. a frame that is not valid WRP) to the
    /// DLQ, counted like the pipeline's own rejections.
    pub async fn reject(&self, ev: Event, r: Rejection) {
        tracing::debug!(pipeline = %self.processor.name, error_type = %r.error_type, reason = %r.message, "rejected");
        self.sink.dead_letter(ev, r).await
    }

    /// Processes an event and hands it to Kafka or the DLQ; returns once the sink accepted it
    /// (which waits while the producer buffer is full).
    pub async fn handle(&self, ev: Event) {
        let mut result = self.processor.process(&ev.raw, &ev.meta);
        if let Err(r) = &result {
            if r.error_type == ErrorType::SchemaUnavailable
                && self.processor.load_schemas(&r.source_topic).await
            {
                result = self.processor.process(&ev.raw, &ev.meta);
            }
        }
        match result {
            Ok(mut rec) => {
                if !ev.headers.is_empty() {
                    // Input headers go out with the record, before the templated ones.
                    let templated = std::mem::replace(&mut rec.headers, ev.headers.clone());
                    rec.headers.extend(templated);
                }
                self.sink.send(rec, None, ev).await
            }
            Err(r) => self.reject(ev, r).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Processor {
        fn process_(&self, raw: &Bytes) -> Result<OutRecord, Rejection> {
            self.process(raw, &Meta::empty())
        }
    }

    fn processor(yaml: &str) -> Processor {
        let c: PipelineConfig = crate::config::from_yaml(yaml).unwrap();
        Processor::new(&c).unwrap()
    }

    const TRADES: &str = "name: trades\nsource: {websocket: {urls: ['ws://h:1/ws']}}\ntransforms:\n  - rename: {from: /tradeCredential/@context, to: /tradeCredential/context}\ntopic: TradeEvent\nkey: '${exchange}|${symbol}'\nheaders: {feed: '${feed}', app: kgate}\n";

    #[test]
    fn renames_keys_and_routes() {
        let p = processor(TRADES);
        let raw = Bytes::from_static(br#"{"feed":"trades","exchange":"kraken","symbol":"BTC-USD","tradeCredential":{"@context":["x"]}}"#);
        let r = p.process(&raw, &Meta::empty()).unwrap();
        assert_eq!(&*r.topic, "TradeEvent");
        assert_eq!(r.key.as_deref(), Some(&b"kraken|BTC-USD"[..]));
        assert_eq!(
            r.headers,
            vec![
                ("app".to_string(), b"kgate".to_vec()),
                ("feed".to_string(), b"trades".to_vec())
            ]
        );
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["tradeCredential"]["context"], serde_json::json!(["x"]));
        assert!(v["tradeCredential"].get("@context").is_none());
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let p = processor(TRADES);
        let e = p.process_(&Bytes::from_static(b"{not json")).unwrap_err();
        assert_eq!(e.error_type, ErrorType::InvalidJson);
        assert_eq!(e.source_topic, "TradeEvent");
        let e = p
            .process_(&Bytes::from_static(br#"{"feed":"t","exchange":"kraken"}"#))
            .unwrap_err();
        assert_eq!(e.error_type, ErrorType::MissingField);
        assert!(e.message.contains("`symbol` is missing"), "{}", e.message);
        let p = processor(
            "name: t\nsource: {websocket: {urls: ['ws://h:1/ws']}}\ntopic: 'ticks.${exchange}'\n",
        );
        let e = p
            .process_(&Bytes::from_static(br#"{"exchange":"a b"}"#))
            .unwrap_err();
        assert_eq!(e.error_type, ErrorType::InvalidTopic);
        assert_eq!(
            p.process_(&Bytes::from_static(br#"{"exchange":"kraken"}"#))
                .unwrap()
                .topic
                .as_ref(),
            "ticks.kraken"
        );
    }

    #[test]
    fn raw_format_passes_bytes_through_unparsed() {
        let p = processor("name: t\nsource: {websocket: {urls: ['ws://h:1/ws']}}\ntopic: raw.t\nkey: fixed\nformat: raw\n");
        let r = p.process_(&Bytes::from_static(b"\x00not json")).unwrap();
        assert_eq!(&r.value[..], b"\x00not json");
        assert_eq!(r.key.as_deref(), Some(&b"fixed"[..]));
    }
}

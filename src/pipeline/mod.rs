//! A pipeline: parse, transform, route, key, encode, then hand to the sink; anything that does
//! not fit goes to the DLQ with a reason. [`Processor`] is the pure part (bytes in, a record or
//! a rejection out); [`Pipeline`] puts it in front of a [`Sink`].

mod config;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

pub use config::{PipelineConfig, PipelineSpec};

use crate::config::{At, ConfigErrors};
use crate::encode::{encoder_for, Encoder, Format, KeyFormat, RawEncoder};
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

/// An input as far as the encoder needs it parsed.
struct Parsed<'r> {
    /// The tree, when transforms or the encoder need one.
    value: Option<Value>,
    /// The top level only, for unchanged JSON.
    top: Option<TopLevel<'r>>,
    /// Whether transforms changed the tree since it was parsed.
    modified: bool,
}

/// A compiled pipeline: its processor and the sink it feeds.
pub struct Pipeline {
    processor: Processor,
    sink: Arc<dyn Sink>,
}

impl Processor {
    /// Compiles a pipeline config (without a schema registry: no `format: avro`).
    pub fn new<S>(c: &PipelineConfig<S>) -> Result<Processor, BuildError> {
        Processor::with_schemas(c, None)
    }

    /// Compiles a pipeline config; `schemas` serves `format: avro`.
    pub fn with_schemas<S>(
        c: &PipelineConfig<S>,
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
        let parsed = self.parse(raw, meta)?;
        let doc = match (&parsed.value, &parsed.top) {
            (Some(v), _) => Doc::Value(v),
            (None, Some(t)) => Doc::Top(t),
            (None, None) => Doc::None,
        };
        let topic = self.route(doc, meta)?;
        let key = self.key(doc, meta, &topic)?;
        let headers = self.headers(doc, meta, &topic)?;
        let value = self
            .encoder
            .encode(raw, parsed.value.as_ref(), parsed.modified, &topic)
            .map_err(|e| self.reject(e.error_type, e.message, Some(&topic)))?;
        Ok(OutRecord {
            topic,
            key,
            value,
            headers,
        })
    }

    /// A rejection; `topic` is where it was going, when known (else the topic as configured).
    fn reject(&self, error_type: ErrorType, message: String, topic: Option<&str>) -> Rejection {
        Rejection {
            error_type,
            message,
            source_topic: topic.unwrap_or(&self.topic_text).to_string(),
        }
    }

    /// Parses and transforms the input as the encoder needs it: not at all (raw), only its top
    /// level (unchanged JSON), or into a tree.
    fn parse<'r>(&self, raw: &'r Bytes, meta: &Meta) -> Result<Parsed<'r>, Rejection> {
        let mut parsed = Parsed {
            value: None,
            top: None,
            modified: false,
        };
        if !self.encoder.needs_json() {
            return Ok(parsed);
        }
        // Unchanged events headed for an encoder that needs no tree are only validated and
        // read at the top level; anything else (transforms, Avro, a non-object) gets the tree.
        if self.transforms.is_empty() && !self.encoder.needs_value() {
            parsed.top = TopLevel::parse(raw);
        }
        if parsed.top.is_none() {
            let mut v: Value = serde_json::from_slice(raw).map_err(|e| {
                self.reject(
                    ErrorType::InvalidJson,
                    format!("not valid JSON: {e}"),
                    self.topic.fixed(),
                )
            })?;
            for t in &self.transforms {
                t.apply(&mut v, meta)
                    .map_err(|e| self.reject(ErrorType::TransformFailed, e, self.topic.fixed()))?;
                parsed.modified = true;
            }
            parsed.value = Some(v);
        }
        Ok(parsed)
    }

    /// The record's topic: the fixed one, or the template rendered and checked.
    fn route(&self, doc: Doc<'_>, meta: &Meta) -> Result<Arc<str>, Rejection> {
        if let Some(t) = &self.fixed_topic {
            return Ok(t.clone());
        }
        let t = self.topic.render(doc, meta).map_err(|m| {
            self.reject(
                ErrorType::MissingField,
                format!(
                    "topic template `{}`: field `{}` is {}",
                    self.topic_text, m.field, m.found
                ),
                None,
            )
        })?;
        if !valid_topic_name(&t) {
            return Err(self.reject(
                ErrorType::InvalidTopic,
                format!(
                    "topic template `{}` gave `{t}`, which is not a valid topic name",
                    self.topic_text
                ),
                None,
            ));
        }
        Ok(Arc::from(t))
    }

    /// The key rendered and written in its key format.
    fn key(&self, doc: Doc<'_>, meta: &Meta, topic: &str) -> Result<Option<Vec<u8>>, Rejection> {
        let Some(k) = &self.key else {
            return Ok(None);
        };
        let k = k.render(doc, meta).map_err(|m| {
            self.reject(
                ErrorType::MissingField,
                format!("key field `{}` is {}", m.field, m.found),
                Some(topic),
            )
        })?;
        Ok(Some(match self.key_format {
            KeyFormat::String => k.into_bytes(),
            KeyFormat::Json => Value::String(k).to_string().into_bytes(),
            KeyFormat::Avro => self
                .encoder
                .encode_key(k, topic)
                .map_err(|e| self.reject(e.error_type, e.message, Some(topic)))?,
        }))
    }

    /// The templated headers, rendered.
    fn headers(
        &self,
        doc: Doc<'_>,
        meta: &Meta,
        topic: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, Rejection> {
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, t) in &self.headers {
            let h = t.render(doc, meta).map_err(|m| {
                self.reject(
                    ErrorType::MissingField,
                    format!("header `{name}` field `{}` is {}", m.field, m.found),
                    Some(topic),
                )
            })?;
            headers.push((name.clone(), h.into_bytes()));
        }
        Ok(headers)
    }
}

impl Pipeline {
    /// Compiles a pipeline feeding `sink`.
    pub fn new<S>(c: &PipelineConfig<S>, sink: Arc<dyn Sink>) -> Result<Pipeline, BuildError> {
        Ok(Pipeline {
            processor: Processor::new(c)?,
            sink,
        })
    }

    /// A pipeline of `processor` feeding `sink`.
    pub fn from_processor(processor: Processor, sink: Arc<dyn Sink>) -> Pipeline {
        Pipeline { processor, sink }
    }

    /// A pipeline for sources that build their records themselves (the REST Proxy route, which
    /// encodes per its embedded format and names partitions): they hand records over with
    /// [`Pipeline::send`]. Raw input given to [`Pipeline::handle`] passes through unchanged to
    /// the topic the source names in `${@topic}`.
    pub fn passthrough(name: &str, sink: Arc<dyn Sink>) -> Pipeline {
        let processor = Processor {
            name: Arc::from(name),
            transforms: Vec::new(),
            topic: Template::meta("topic"),
            topic_text: "${@topic}".into(),
            fixed_topic: None,
            key: None,
            headers: Vec::new(),
            encoder: Box::new(RawEncoder),
            key_format: KeyFormat::String,
            format: Format::Raw,
        };
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
        let c: PipelineConfig<serde_json::Value> = crate::config::from_yaml(yaml).unwrap();
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

    /// The pipeline → sink → ack path, without a broker.
    mod fates {
        use super::*;
        use crate::event::{Fate, Origin};
        use crate::sink::MemorySink;
        use std::sync::atomic::Ordering;

        fn pipeline(yaml: &str, sink: Arc<MemorySink>) -> Pipeline {
            let c: PipelineConfig<serde_json::Value> = crate::config::from_yaml(yaml).unwrap();
            Pipeline::new(&c, sink).unwrap()
        }

        async fn fate_of(p: &Pipeline, raw: &'static str) -> Fate {
            let (ev, rx) = Event::with_ack(
                Bytes::from_static(raw.as_bytes()),
                Origin::now(p.name().clone(), Arc::from("test")),
            );
            p.handle(ev).await;
            rx.await.expect("the ack is answered")
        }

        #[tokio::test]
        async fn each_event_learns_its_fate() {
            let sink = Arc::new(MemorySink::new());
            let p = pipeline(TRADES, sink.clone());
            let good = r#"{"feed":"t","exchange":"kraken","symbol":"BTC-USD","tradeCredential":{"@context":[1]}}"#;
            assert_eq!(
                fate_of(&p, good).await,
                Fate::Delivered {
                    topic: "TradeEvent".into(),
                    partition: 0,
                    offset: 0
                }
            );
            match fate_of(&p, r#"{"feed":"t","exchange":"kraken"}"#).await {
                Fate::DeadLettered {
                    error_type,
                    message,
                    ..
                } => {
                    assert_eq!(error_type, ErrorType::MissingField);
                    assert!(message.contains("`symbol` is missing"), "{message}");
                }
                other => panic!("expected dead-lettered, got {other:?}"),
            }
            match fate_of(&p, "{oops").await {
                Fate::DeadLettered { error_type, .. } => {
                    assert_eq!(error_type, ErrorType::InvalidJson)
                }
                other => panic!("expected dead-lettered, got {other:?}"),
            }
            assert_eq!(
                fate_of(&p, good).await,
                Fate::Delivered {
                    topic: "TradeEvent".into(),
                    partition: 0,
                    offset: 1
                }
            );
            let records = sink.records();
            assert_eq!(records.len(), 2);
            assert_eq!(
                records[0].record.key.as_deref(),
                Some(&b"kraken|BTC-USD"[..])
            );
            let rejected = sink.rejections();
            assert_eq!(rejected.len(), 2);
            // The DLQ keeps the bytes as received and the topic the event was meant for.
            assert_eq!(&rejected[1].1[..], b"{oops");
            assert_eq!(rejected[1].0.source_topic, "TradeEvent");
            let t = sink.totals();
            assert_eq!(t.accepted.load(Ordering::Relaxed), 4);
            assert_eq!(t.delivered.load(Ordering::Relaxed), 2);
            assert_eq!(t.dead_lettered.load(Ordering::Relaxed), 2);
        }

        #[tokio::test]
        async fn input_headers_go_first_and_a_full_sink_drops() {
            let sink = Arc::new(MemorySink::with_capacity(1));
            let p = pipeline(
                "name: t\nsource: {websocket: {urls: ['ws://h:1/ws']}}\ntopic: t\nheaders: {app: kgate}\n",
                sink.clone(),
            );
            let (mut ev, rx) = Event::with_ack(
                Bytes::from_static(b"{}"),
                Origin::now(p.name().clone(), Arc::from("test")),
            );
            ev.headers.push(("x-request-id".into(), b"r1".to_vec()));
            p.handle(ev).await;
            assert!(matches!(rx.await.unwrap(), Fate::Delivered { .. }));
            let h = &sink.records()[0].record.headers;
            assert_eq!(h[0].0, "x-request-id");
            assert_eq!(h[1].0, "app");
            assert_eq!(fate_of(&p, "{}").await, Fate::Dropped);
            assert_eq!(sink.totals().dropped.load(Ordering::Relaxed), 1);
        }

        #[tokio::test]
        async fn built_records_and_source_rejections_go_through_the_pipeline() {
            let sink = Arc::new(MemorySink::new());
            let p = Pipeline::passthrough("rest-proxy", sink.clone());
            let (ev, rx) = Event::with_ack(
                Bytes::from_static(b"v"),
                Origin::now(p.name().clone(), Arc::from("test")),
            );
            let rec = OutRecord {
                topic: Arc::from("orders"),
                key: Some(b"k".to_vec()),
                value: Bytes::from_static(b"v"),
                headers: Vec::new(),
            };
            p.send(rec, Some(2), ev).await;
            assert_eq!(
                rx.await.unwrap(),
                Fate::Delivered {
                    topic: "orders".into(),
                    partition: 2,
                    offset: 0
                }
            );
            let (ev, rx) = Event::with_ack(
                Bytes::from_static(b"\x81"),
                Origin::now(p.name().clone(), Arc::from("test")),
            );
            let r = Rejection {
                error_type: ErrorType::InvalidWrp,
                message: "not msgpack".into(),
                source_topic: "devices".into(),
            };
            p.reject(ev, r).await;
            assert!(matches!(
                rx.await.unwrap(),
                Fate::DeadLettered {
                    error_type: ErrorType::InvalidWrp,
                    ..
                }
            ));
            // Raw input handed to it passes through to the topic the source names.
            let mut meta = Meta::empty();
            meta.insert("topic", "logs");
            let r = p
                .processor()
                .process(&Bytes::from_static(b"x"), &meta)
                .unwrap();
            assert_eq!(&*r.topic, "logs");
        }
    }
}

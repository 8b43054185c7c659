//! A pipeline: parse, transform, route, key, encode, then hand to the sink; anything that does
//! not fit goes to the DLQ with a reason. [`Processor`] is the pure part (bytes in, a record or
//! a rejection out); [`Pipeline`] puts it in front of a [`Sink`].

mod config;
mod route;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

pub use config::{PipelineConfig, PipelineDlqConfig, PipelineSpec};
pub use route::{glob_matches, Qos, QosSetting, RouteConfig, Routes, Shard};

use crate::config::{At, ConfigErrors};
use crate::encode::{encoder_for, Encoder, Format, KeyFormat, RawEncoder};
pub use crate::event::Rejection;
use crate::event::{Ack, ErrorType, Event, Fate, QosClass};
use crate::kafka::{valid_topic_name, TopicAllow};
use crate::registry::SchemaCache;
use crate::sink::{OutRecord, Sink};
use crate::transform::{Doc, Meta, Template, TopLevel, Transform};
use crate::validate::{check_avro, Validation};

/// Why a pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Its config has problems (each with its path).
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// `format: avro` without a schema cache.
    #[error("pipeline {0}: format avro needs a `schema_registry:` section with its url")]
    NoRegistry(String),
    /// `validate: {avro: …}` without a schema cache.
    #[error(
        "pipeline {0}: `validate: {{avro: …}}` needs a `schema_registry:` section with its url"
    )]
    NoRegistryToValidate(String),
}

/// Topics a writer other than the pipeline may write (an HTTP token's `topics`), checked on
/// top of the pipeline's own `topics_allowed`.
#[derive(Debug, Clone, Copy)]
pub struct TopicLimit<'a> {
    /// Who it is, for the DLQ message (e.g. "token `shop`").
    pub who: &'a str,
    /// Its patterns (exact, `prefix*`, `*`; reserved topics only by name).
    pub patterns: &'a [String],
}

/// The pure part of a pipeline: raw input in, a record (or a rejection) out.
pub struct Processor {
    name: Arc<str>,
    transforms: Vec<Transform>,
    topic: Template,
    topic_text: String,
    /// Where a rendered topic may go (the DLQ topic reserved once the sink is known).
    topics_allowed: TopicAllow,
    /// False with a consumer sink: the topic only says where a record was read, nothing is
    /// written there, so it is not checked against `topics_allowed`.
    checks_topic: bool,
    /// The topic when it is fixed, shared by every record instead of copied.
    fixed_topic: Option<Arc<str>>,
    key: Option<Template>,
    headers: Vec<(String, Template)>,
    encoder: Box<dyn Encoder>,
    key_format: KeyFormat,
    format: Format,
    /// What each record is checked against before transforms (`validate:`).
    validation: Option<Validation>,
    /// The registry's schemas, for `validate: {avro: …}` (and `format: avro`).
    schemas: Option<Arc<SchemaCache>>,
    /// The route list (`topics:`), instead of `topic`.
    routes: Option<Routes>,
    /// Each route's round-robin turn.
    turns: Vec<AtomicUsize>,
    /// Its QoS (`qos:`).
    qos: Option<Qos>,
    /// How its instances share the source's URLs (`coordination:`), for the source.
    coordination: Option<crate::coord::CoordinationSpec>,
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
        match c.resolve(
            At(""),
            schemas.is_some(),
            std::path::Path::new(""),
            &mut errors,
        ) {
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
        if matches!(spec.validate, Some(Validation::Avro { .. })) && schemas.is_none() {
            return Err(BuildError::NoRegistryToValidate(spec.name.to_string()));
        }
        let encoder = encoder_for(spec.format, &spec.avro, schemas.clone())
            .ok_or_else(|| BuildError::NoRegistry(spec.name.to_string()))?;
        Ok(Processor {
            fixed_topic: match spec.routes {
                Some(_) => None,
                None => spec.topic.fixed().map(Arc::from),
            },
            turns: spec
                .routes
                .iter()
                .flat_map(|r| &r.routes)
                .map(|_| AtomicUsize::new(0))
                .collect(),
            routes: spec.routes,
            qos: spec.qos,
            coordination: spec.coordination,
            checks_topic: spec.sink.is_none(),
            name: spec.name,
            transforms: spec.transforms,
            topic: spec.topic,
            topic_text: spec.topic_text,
            topics_allowed: spec.topics_allowed,
            key: spec.key,
            headers: spec.headers,
            encoder,
            key_format: spec.key_format,
            format: spec.format,
            validation: spec.validate,
            schemas,
        })
    }

    /// The registry subject records are validated against (`validate: {avro: …}`).
    pub fn validate_subject(&self) -> Option<&str> {
        match &self.validation {
            Some(Validation::Avro { subject }) => Some(subject),
            _ => None,
        }
    }

    /// Reserves a DLQ topic: a rendered topic reaches it only through a `topics_allowed`
    /// entry naming it.
    pub fn reserve_topic(&mut self, topic: &str) {
        self.topics_allowed.reserve(topic);
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
        let Some(cache) = &self.schemas else {
            return false;
        };
        let mut ok = true;
        let validate = self.validate_subject().map(str::to_string);
        for s in self.subjects(topic).into_iter().chain(validate) {
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
        self.process_within(raw, meta, None)
    }

    /// [`Processor::process`], the record's topic also within `limit` (an HTTP token's
    /// `topics`) when one is given.
    pub fn process_within(
        &self,
        raw: &Bytes,
        meta: &Meta,
        limit: Option<&TopicLimit<'_>>,
    ) -> Result<OutRecord, Rejection> {
        let parsed = self.parse(raw, meta)?;
        let doc = match (&parsed.value, &parsed.top) {
            (Some(v), _) => Doc::Value(v),
            (None, Some(t)) => Doc::Top(t),
            (None, None) => Doc::None,
        };
        let topic = self.route(doc, meta)?;
        if let Some(l) = limit {
            if !self.topics_allowed.allows_by(l.patterns, &topic) {
                return Err(self.reject(
                    ErrorType::TopicNotAllowed,
                    format!(
                        "the record goes to topic `{topic}`, which {} may not write (its `topics`: {})",
                        l.who,
                        l.patterns.join(", ")
                    ),
                    None,
                ));
            }
        }
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

    /// Parses, validates and transforms the input as the encoder needs it: not at all (raw),
    /// only its top level (unchanged JSON, nothing to validate), or into a tree. Validation sees
    /// the input as received, before transforms normalize it.
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
        if self.transforms.is_empty() && !self.encoder.needs_value() && self.validation.is_none() {
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
            self.validate(&v)?;
            for t in &self.transforms {
                t.apply(&mut v, meta)
                    .map_err(|e| self.reject(ErrorType::TransformFailed, e, self.topic.fixed()))?;
                parsed.modified = true;
            }
            parsed.value = Some(v);
        }
        Ok(parsed)
    }

    /// Checks the parsed input against `validate:`.
    fn validate(&self, v: &Value) -> Result<(), Rejection> {
        let failed = |m: String| self.reject(ErrorType::ValidationFailed, m, self.topic.fixed());
        match &self.validation {
            None => Ok(()),
            Some(Validation::JsonSchema(c)) => c.check(v).map_err(failed),
            Some(Validation::Avro { subject }) => {
                let loaded = match &self.schemas {
                    Some(cache) => check_avro(cache, subject, v).map_err(failed)?,
                    None => false,
                };
                if loaded {
                    return Ok(());
                }
                let at = self
                    .schemas
                    .as_ref()
                    .map(|c| c.client().url().to_string())
                    .unwrap_or_default();
                Err(self.reject(
                    ErrorType::SchemaUnavailable,
                    format!("no schema for subject {subject} (validate): the registry at {at} has none, or cannot be reached"),
                    self.topic.fixed(),
                ))
            }
        }
    }

    /// The QoS class of an event with these source values (`None` without `qos:`).
    pub fn qos_class(&self, meta: &Meta) -> Option<QosClass> {
        self.qos.as_ref().map(|q| q.class(meta))
    }

    /// The record's topic: the fixed one, the route list's choice, or the template rendered
    /// and checked.
    fn route(&self, doc: Doc<'_>, meta: &Meta) -> Result<Arc<str>, Rejection> {
        if let Some(t) = &self.fixed_topic {
            return Ok(t.clone());
        }
        if let Some(routes) = &self.routes {
            let t = routes.pick(doc, meta, &self.turns).map_err(|e| match e {
                route::NoRoute::Unrendered(m) | route::NoRoute::NoShardKey(m) => {
                    self.reject(ErrorType::MissingField, m, None)
                }
                route::NoRoute::NoMatch(m) => self.reject(ErrorType::TopicNotAllowed, m, None),
            })?;
            if !self.topics_allowed.allows(&t) {
                // Only the DLQ topic, reserved once the sink is known, gets here.
                return Err(self.reject(
                    ErrorType::TopicNotAllowed,
                    format!("a route of `topics` gave `{t}`, which is reserved (the DLQ topic) or not in `topics_allowed`"),
                    None,
                ));
            }
            return Ok(t);
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
        if !self.checks_topic {
            return Ok(Arc::from(t));
        }
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
        if !self.topics_allowed.allows(&t) {
            // `source_topic` stays the template: the rendered name is the event's choice.
            return Err(self.reject(
                ErrorType::TopicNotAllowed,
                format!(
                    "topic template `{}` gave `{t}`, which is not in `topics_allowed` ({})",
                    self.topic_text,
                    self.topics_allowed.patterns().join(", ")
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
        Ok(Pipeline::from_processor(Processor::new(c)?, sink))
    }

    /// A pipeline of `processor` feeding `sink`; the sink's DLQ topic becomes reserved (only
    /// a `topics_allowed` entry naming it lets a rendered topic write there).
    pub fn from_processor(mut processor: Processor, sink: Arc<dyn Sink>) -> Pipeline {
        processor.topics_allowed.reserve(sink.dlq_topic());
        Pipeline { processor, sink }
    }

    /// A pipeline for sources that build their records themselves (the REST Proxy route, which
    /// encodes per its embedded format and names partitions): they hand records over with
    /// [`Pipeline::send`]. Raw input given to [`Pipeline::handle`] passes through unchanged to
    /// the topic the source names in `${@topic}`.
    pub fn passthrough(name: &str, sink: Arc<dyn Sink>) -> Pipeline {
        let mut processor = Processor {
            name: Arc::from(name),
            transforms: Vec::new(),
            topic: Template::meta("topic"),
            topic_text: "${@topic}".into(),
            topics_allowed: TopicAllow::any(),
            checks_topic: true,
            fixed_topic: None,
            key: None,
            headers: Vec::new(),
            encoder: Box::new(RawEncoder),
            key_format: KeyFormat::String,
            format: Format::Raw,
            validation: None,
            schemas: None,
            routes: None,
            turns: Vec::new(),
            qos: None,
            coordination: None,
        };
        processor.topics_allowed.reserve(sink.dlq_topic());
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

    /// How the instances running this pipeline share its source's URLs (`coordination:`),
    /// for its source.
    pub fn coordination(&self) -> Option<&crate::coord::CoordinationSpec> {
        self.processor.coordination.as_ref()
    }

    /// Where its rejected events go (the DLQ topic), for answers that name it.
    pub fn dlq_topic(&self) -> &str {
        self.sink.dlq_topic()
    }

    /// The Kafka transactions its sink writes in (`exactly_once`), for its source.
    pub fn transactions(&self) -> Option<Arc<dyn crate::sink::Transactions>> {
        self.sink.transactions()
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
        self.handle_within(ev, None).await
    }

    /// [`Pipeline::handle`], the record's topic also within `limit` (an HTTP token's `topics`;
    /// a record outside it goes to the DLQ as `topic_not_allowed`).
    ///
    /// The processor reads [`Event::decoded`] when the source decoded the input (Avro read from
    /// Kafka), else `raw`; the DLQ keeps `raw` either way.
    ///
    /// With `qos:`, the event gets its class; a `high` one is answered only once Kafka
    /// acknowledged it (or it was dead-lettered), and this returns only then, so a source that
    /// awaits `handle` before reading on takes its next input only after that answer.
    pub async fn handle_within(&self, mut ev: Event, limit: Option<&TopicLimit<'_>>) {
        ev.qos = self.processor.qos_class(&ev.meta);
        if ev.qos != Some(QosClass::High) {
            return self.process_and_send(ev, limit).await;
        }
        let (ack, fate) = Ack::channel();
        let mut theirs = std::mem::replace(&mut ev.ack, ack);
        self.process_and_send(ev, limit).await;
        let fate = fate.await.unwrap_or_else(|_| Fate::Failed {
            message: "the sink dropped a high-QoS event without an answer".into(),
        });
        theirs.resolve(fate);
    }

    /// Processes an event and hands the record to the sink, or the rejection to the DLQ.
    async fn process_and_send(&self, ev: Event, limit: Option<&TopicLimit<'_>>) {
        let input = ev.decoded.as_ref().unwrap_or(&ev.raw);
        let mut result = self.processor.process_within(input, &ev.meta, limit);
        if let Err(r) = &result {
            if r.error_type == ErrorType::SchemaUnavailable
                && self.processor.load_schemas(&r.source_topic).await
            {
                result = self.processor.process_within(input, &ev.meta, limit);
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
    use crate::config::ConfigError;

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

    fn config_errors(yaml: &str) -> Vec<ConfigError> {
        let c: PipelineConfig<serde_json::Value> = crate::config::from_yaml(yaml).unwrap();
        let mut errors = Vec::new();
        let spec = c.resolve(At("p"), false, std::path::Path::new(""), &mut errors);
        assert_eq!(spec.is_none(), !errors.is_empty());
        errors
    }

    const WS: &str = "name: t\nsource: {websocket: {urls: ['ws://h:1/ws']}}\n";

    #[test]
    fn topics_allowed_defaults_to_the_fixed_topic_or_the_template_start() {
        let ok = |rest: &str| {
            let e = config_errors(&format!("{WS}{rest}"));
            assert!(e.is_empty(), "{rest}: {e:?}");
        };
        ok("topic: TradeEvent\n");
        ok("topic: 'ticks.${exchange}'\n");
        ok("topic: 'device.${@wrp.event_type:-other}'\nformat: raw\n");
        ok("topic: '${type}'\ntopics_allowed: ['orders.*', '*']\n");
        ok("topic: orders\ntopics_allowed: ['ord*']\n");
        let err = |rest: &str, path: &str, words: &str| {
            let e = config_errors(&format!("{WS}{rest}"));
            assert!(
                e.iter()
                    .any(|e| e.path == path && e.message.contains(words)),
                "{rest}: {e:?}"
            );
        };
        // A template that starts with a field could write anywhere: it must say where.
        err(
            "topic: '${type}'\n",
            "p.topics_allowed",
            "topics_allowed: [orders.*]",
        );
        err(
            "topic: '${a}.x'\n",
            "p.topics_allowed",
            "starts with a template",
        );
        // Nor does a start within the reserved names make a default.
        err("topic: '__${x}'\n", "p.topics_allowed", "reserved");
        err("topic: 'connect-${x}'\n", "p.topics_allowed", "reserved");
        err(
            "topic: orders\ntopics_allowed: [logs.*]\n",
            "p.topics_allowed",
            "`orders`",
        );
        err(
            "topic: '${t}'\ntopics_allowed: ['a*b']\n",
            "p.topics_allowed[0]",
            "may only end",
        );
        err(
            "topic: '${t}'\ntopics_allowed: []\n",
            "p.topics_allowed",
            "empty",
        );
    }

    #[test]
    fn a_rendered_topic_outside_the_allow_list_is_rejected() {
        let p = processor(&format!(
            "{WS}topic: '${{type}}'\ntopics_allowed: ['orders.*', _schemas]\n"
        ));
        let go = |ty: &str| p.process_(&Bytes::from(format!(r#"{{"type":"{ty}"}}"#)));
        assert_eq!(&*go("orders.eu").unwrap().topic, "orders.eu");
        // Named explicitly, so allowed.
        assert_eq!(&*go("_schemas").unwrap().topic, "_schemas");
        for t in ["b.x", "orders", "connect-configs", "__consumer_offsets"] {
            let e = go(t).unwrap_err();
            assert_eq!(e.error_type, ErrorType::TopicNotAllowed, "{t}");
            assert_eq!(e.error_type, "topic_not_allowed");
            assert!(e.message.contains(&format!("`{t}`")), "{}", e.message);
            // The DLQ's `source_topic` stays the template, not the event's choice.
            assert_eq!(e.source_topic, "${type}");
        }
        // `*` lets everything through but the reserved names.
        let p = processor(&format!("{WS}topic: '${{type}}'\ntopics_allowed: ['*']\n"));
        let go = |ty: &str| p.process_(&Bytes::from(format!(r#"{{"type":"{ty}"}}"#)));
        assert!(go("anything.at-all").is_ok());
        for t in ["_schemas", "__consumer_offsets", "connect-offsets"] {
            assert_eq!(
                go(t).unwrap_err().error_type,
                ErrorType::TopicNotAllowed,
                "{t}"
            );
        }
    }

    #[test]
    fn raw_format_passes_bytes_through_unparsed() {
        let p = processor("name: t\nsource: {websocket: {urls: ['ws://h:1/ws']}}\ntopic: raw.t\nkey: fixed\nformat: raw\n");
        let r = p.process_(&Bytes::from_static(b"\x00not json")).unwrap();
        assert_eq!(&r.value[..], b"\x00not json");
        assert_eq!(r.key.as_deref(), Some(&b"fixed"[..]));
    }

    /// A schema file in a temporary directory, and the YAML of a pipeline validating with it.
    fn validating(rest: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let schema = dir.path().join("t.schema.json");
        std::fs::write(
            &schema,
            r#"{"type": "object", "required": ["device_id", "temperature"],
                "properties": {"device_id": {"type": "string"},
                  "temperature": {"type": "number", "maximum": 150},
                  "readings": {"type": "array", "items": {"type": "number"}}}}"#,
        )
        .unwrap();
        let yaml = format!(
            "{WS}topic: t.clean\nvalidate: {{json_schema: '{}'}}\n{rest}",
            schema.display()
        );
        (dir, yaml)
    }

    #[test]
    fn validation_rejects_with_the_path_and_the_rule() {
        let (_dir, yaml) = validating("");
        let p = processor(&yaml);
        let ok = br#"{"device_id":"d1","temperature":21.5}"#;
        // Unchanged JSON is written as received.
        assert_eq!(&p.process_(&Bytes::from_static(ok)).unwrap().value[..], ok);
        for (input, words) in [
            (
                &br#"{"device_id":"d1","temperature":180}"#[..],
                "/temperature: maximum: 180 is greater than the maximum of 150",
            ),
            (
                br#"{"temperature":1}"#,
                r#"/: required: "device_id" is a required property"#,
            ),
            (br#"{"device_id":5,"temperature":1}"#, "/device_id: type:"),
            // Deep in the tree: an unchanged event headed for `json` is otherwise read only at
            // the top level, so validation must parse it whole.
            (
                br#"{"device_id":"d","temperature":1,"readings":[1,"x"]}"#,
                "/readings/1: type:",
            ),
        ] {
            let e = p.process_(&Bytes::from_static(input)).unwrap_err();
            assert_eq!(e.error_type, ErrorType::ValidationFailed, "{e:?}");
            assert_eq!(e.error_type, "validation_failed");
            assert!(e.message.contains(words), "{}", e.message);
            assert_eq!(e.source_topic, "t.clean");
        }
        let e = p.process_(&Bytes::from_static(b"{nope")).unwrap_err();
        assert_eq!(e.error_type, ErrorType::InvalidJson);
    }

    #[test]
    fn validation_sees_the_input_before_transforms() {
        // The schema wants `device_id` as received; the transform then renames it.
        let (_dir, yaml) = validating(
            "transforms: [{rename: {from: /device_id, to: /device}}, {set: {path: /temperature, value: 999}}]\n",
        );
        let p = processor(&yaml);
        let r = p
            .process_(&Bytes::from_static(
                br#"{"device_id":"d1","temperature":20}"#,
            ))
            .unwrap();
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v, serde_json::json!({"device": "d1", "temperature": 999}));
    }

    #[test]
    fn validate_config_errors() {
        let (_dir, yaml) = validating("format: raw\n");
        let e = config_errors(&yaml);
        assert!(
            e.iter()
                .any(|e| e.path == "p.validate" && e.message.contains("format: json")),
            "{e:?}"
        );
        let e = config_errors(&format!(
            "{WS}topic: t\nvalidate: {{json_schema: /no/such/schema.json}}\n"
        ));
        assert!(
            e.iter().any(|e| e.path == "p.validate.json_schema"
                && e.message.contains("/no/such/schema.json")),
            "{e:?}"
        );
        let e = config_errors(&format!(
            "{WS}topic: t\nvalidate: {{avro: telemetry-value}}\n"
        ));
        assert!(
            e.iter()
                .any(|e| e.path == "p.validate.avro" && e.message.contains("schema_registry:")),
            "{e:?}"
        );
        for (dlq, words) in [
            ("'bad topic'", "not a valid topic name"),
            ("__consumer_offsets", "reserved"),
            ("t", "own output topic"),
        ] {
            let e = config_errors(&format!("{WS}topic: t\ndlq: {{topic: {dlq}}}\n"));
            assert!(
                e.iter()
                    .any(|e| e.path == "p.dlq.topic" && e.message.contains(words)),
                "{dlq}: {e:?}"
            );
        }
        assert!(config_errors(&format!(
            "{WS}topic: t\ndlq: {{topic: t.dlq}}\nexactly_once: true\n"
        ))
        .is_empty());
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

        async fn fate_within(p: &Pipeline, raw: &str, limit: Option<&TopicLimit<'_>>) -> Fate {
            let (ev, rx) = Event::with_ack(
                Bytes::from(raw.to_string()),
                Origin::now(p.name().clone(), Arc::from("test")),
            );
            p.handle_within(ev, limit).await;
            rx.await.expect("the ack is answered")
        }

        fn error_type(f: Fate) -> ErrorType {
            match f {
                Fate::DeadLettered { error_type, .. } => error_type,
                other => panic!("expected dead-lettered, got {other:?}"),
            }
        }

        #[tokio::test]
        async fn topics_outside_the_lists_go_to_the_dlq() {
            let sink = Arc::new(MemorySink::new());
            let p = pipeline(
                "name: t\nsource: {http: {}}\ntopic: '${type}'\ntopics_allowed: ['*']\n",
                sink.clone(),
            );
            // The sink's DLQ topic is reserved: `*` does not reach it.
            let f = fate_within(&p, r#"{"type":"memory.dlq"}"#, None).await;
            assert_eq!(error_type(f), ErrorType::TopicNotAllowed);
            // A token's `topics` narrow it further.
            let patterns = vec!["a.*".to_string()];
            let limit = TopicLimit {
                who: "token `shop`",
                patterns: &patterns,
            };
            let f = fate_within(&p, r#"{"type":"a.x"}"#, Some(&limit)).await;
            assert!(
                matches!(f, Fate::Delivered { ref topic, .. } if topic == "a.x"),
                "{f:?}"
            );
            match fate_within(&p, r#"{"type":"b.x"}"#, Some(&limit)).await {
                Fate::DeadLettered {
                    error_type,
                    message,
                    ..
                } => {
                    assert_eq!(error_type, ErrorType::TopicNotAllowed);
                    assert!(
                        message.contains("token `shop`") && message.contains("`b.x`"),
                        "{message}"
                    );
                }
                other => panic!("expected dead-lettered, got {other:?}"),
            }
            // A fixed topic is checked against the token's list too.
            let fixed = pipeline(
                "name: f\nsource: {http: {}}\ntopic: b.fixed\n",
                sink.clone(),
            );
            let f = fate_within(&fixed, "{}", Some(&limit)).await;
            assert_eq!(error_type(f), ErrorType::TopicNotAllowed);
            assert!(matches!(
                fate_within(&fixed, "{}", None).await,
                Fate::Delivered { .. }
            ));
            let written: Vec<_> = sink
                .records()
                .iter()
                .map(|r| r.record.topic.to_string())
                .collect();
            assert_eq!(written, vec!["a.x", "b.fixed"]);
            assert!(sink
                .rejections()
                .iter()
                .all(|(r, _)| r.error_type == ErrorType::TopicNotAllowed));
        }

        #[tokio::test]
        async fn decoded_input_is_processed_and_the_dlq_keeps_the_raw_bytes() {
            let (_dir, yaml) = validating("");
            let sink = Arc::new(MemorySink::new());
            let p = pipeline(&yaml, sink.clone());
            let decoded = |json: &'static str| {
                let (mut ev, rx) = Event::with_ack(
                    Bytes::from_static(b"\x00\x00\x00\x00\x07avro-bytes"),
                    Origin::now(p.name().clone(), Arc::from("test")),
                );
                ev.decoded = Some(Bytes::from_static(json.as_bytes()));
                (ev, rx)
            };
            let (ev, rx) = decoded(r#"{"device_id":"d1","temperature":20}"#);
            p.handle(ev).await;
            assert!(matches!(rx.await.unwrap(), Fate::Delivered { .. }));
            assert_eq!(
                &sink.records()[0].record.value[..],
                br#"{"device_id":"d1","temperature":20}"#
            );
            let (ev, rx) = decoded(r#"{"device_id":"d1","temperature":200}"#);
            p.handle(ev).await;
            match rx.await.unwrap() {
                Fate::DeadLettered {
                    error_type,
                    message,
                    ..
                } => {
                    assert_eq!(error_type, ErrorType::ValidationFailed);
                    assert!(message.contains("/temperature: maximum"), "{message}");
                }
                other => panic!("expected dead-lettered, got {other:?}"),
            }
            let rejected = sink.rejections();
            assert_eq!(rejected.len(), 1);
            assert_eq!(&rejected[0].1[..], b"\x00\x00\x00\x00\x07avro-bytes");
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

    /// `topics:` route lists and `qos:` classes.
    mod routes_and_qos {
        use super::*;
        use crate::event::{Fate, Origin};
        use crate::sink::Totals;
        use futures_util::future::BoxFuture;
        use futures_util::FutureExt;
        use std::sync::Mutex;

        const DEV: &str =
            "name: d\nsource: {device_websocket: {listen: '127.0.0.1:1'}}\nformat: raw\n";

        fn wrp(event_type: &str, device: &str) -> Meta {
            Meta::empty()
                .with("wrp.event_type", event_type)
                .with("device_id", device)
        }

        fn topic_of(p: &Processor, meta: &Meta) -> String {
            p.process(&Bytes::from_static(b"x"), meta)
                .unwrap()
                .topic
                .to_string()
        }

        #[test]
        fn the_first_matching_route_wins() {
            let p = processor(&format!(
                "{DEV}topics:\n  - {{match: online, topic: dev.online}}\n  - {{match: 'device-status-*', topic: dev.status}}\n  - {{match: 'device-*', topic: dev.other-device}}\n  - {{match: '*', topic: dev.rest}}\n"
            ));
            for (ty, want) in [
                ("online", "dev.online"),
                ("device-status-offline", "dev.status"),
                ("device-status-", "dev.status"),
                ("device-reboot", "dev.other-device"),
                ("online2", "dev.rest"),
                ("", "dev.rest"),
            ] {
                assert_eq!(topic_of(&p, &wrp(ty, "d1")), want, "{ty}");
            }
            // No event type at all: the default match value is empty, so `*` takes it.
            assert_eq!(topic_of(&p, &Meta::empty()), "dev.rest");
            assert_eq!(
                p.topic_template(),
                "dev.online,dev.status,dev.other-device,dev.rest"
            );
        }

        #[test]
        fn no_route_is_a_rejection_with_the_value() {
            let p = processor(&format!("{DEV}topics: [{{match: 'a*', topic: a}}]\n"));
            let e = p
                .process(&Bytes::from_static(b"x"), &wrp("b", "d1"))
                .unwrap_err();
            assert_eq!(e.error_type, ErrorType::TopicNotAllowed);
            assert!(
                e.message.contains("`b`") && e.message.contains("catch-all"),
                "{}",
                e.message
            );
            assert_eq!(e.source_topic, "a");
        }

        #[test]
        fn topics_match_reads_any_template() {
            let p = processor(
                "name: j\nsource: {http: {}}\ntopics_match: '${kind}'\ntopics: [{match: 'order*', topic: orders}, {match: '*', topic: misc}]\n",
            );
            let go = |raw: &'static str| {
                p.process(&Bytes::from_static(raw.as_bytes()), &Meta::empty())
                    .map(|r| r.topic.to_string())
            };
            assert_eq!(go(r#"{"kind":"order.new"}"#).unwrap(), "orders");
            assert_eq!(go(r#"{"kind":"ping"}"#).unwrap(), "misc");
            let e = go(r#"{"other":1}"#).unwrap_err();
            assert_eq!(e.error_type, ErrorType::MissingField);
            assert!(e.message.contains("topics_match"), "{}", e.message);
        }

        #[test]
        fn shards_are_stable_per_device_and_rotate_round_robin() {
            let yaml = format!(
                "{DEV}topics:\n  - {{match: 'dev*', topics: [s.a, s.b, s.c], shard: device_id}}\n  - {{match: 'meta', topics: [m.a, m.b], shard: 'metadata:/hw-model'}}\n  - {{match: '*', topics: [r.a, r.b, r.c]}}\n"
            );
            let (p1, p2) = (processor(&yaml), processor(&yaml));
            let mut used = std::collections::BTreeSet::new();
            for i in 0..60 {
                let d = format!("mac:{i:012}");
                let first = topic_of(&p1, &wrp("device-status", &d));
                // The same device, any event type the route takes, any processor: one topic.
                for ty in ["dev", "device-status", "devX"] {
                    assert_eq!(topic_of(&p1, &wrp(ty, &d)), first, "{d}");
                    assert_eq!(topic_of(&p2, &wrp(ty, &d)), first, "{d}");
                }
                used.insert(first);
            }
            assert_eq!(
                used.len(),
                3,
                "60 devices spread over all three topics: {used:?}"
            );
            // Without `@device_id`, the WRP source is the device's id.
            let by_source = Meta::empty()
                .with("wrp.event_type", "dev")
                .with("wrp.source", "mac:000000000007");
            assert_eq!(
                topic_of(&p1, &by_source),
                topic_of(&p1, &wrp("dev", "mac:000000000007"))
            );
            let e = p1
                .process(
                    &Bytes::from_static(b"x"),
                    &Meta::empty().with("wrp.event_type", "dev"),
                )
                .unwrap_err();
            assert_eq!(e.error_type, ErrorType::MissingField);
            assert!(e.message.contains("device_id"), "{}", e.message);
            // Metadata sharding hashes the field's value.
            let meta = |m: &str| {
                Meta::empty()
                    .with("wrp.event_type", "meta")
                    .with("wrp.metadata./hw-model", m)
            };
            for m in ["tg3482", "xb7", "cgm4331"] {
                assert_eq!(topic_of(&p1, &meta(m)), topic_of(&p2, &meta(m)), "{m}");
            }
            let e = p1
                .process(
                    &Bytes::from_static(b"x"),
                    &Meta::empty().with("wrp.event_type", "meta"),
                )
                .unwrap_err();
            assert!(e.message.contains("/hw-model"), "{}", e.message);
            // Round robin (the default) takes each topic in turn.
            let turns: Vec<String> = (0..6).map(|_| topic_of(&p1, &wrp("other", "d"))).collect();
            assert_eq!(turns, ["r.a", "r.b", "r.c", "r.a", "r.b", "r.c"]);
        }

        #[test]
        fn route_and_qos_config_errors() {
            let err = |rest: &str, path: &str, words: &str| {
                let e = config_errors(&format!("{DEV}{rest}"));
                assert!(
                    e.iter()
                        .any(|e| e.path == path && e.message.contains(words)),
                    "{rest}: {e:?}"
                );
            };
            err(
                "topic: t\ntopics: [{match: '*', topic: a}]\n",
                "p.topic",
                "`topics:` both",
            );
            err("", "p.topic", "route list `topics:`");
            err("topics: []\n", "p.topics", "empty");
            err(
                "topics: [{match: '*', topic: a, topics: [b]}]\n",
                "p.topics[0].topic",
                "not both",
            );
            err("topics: [{match: '*'}]\n", "p.topics[0]", "names no topic");
            err(
                "topics: [{match: '*', topic: a, shard: device_id}]\n",
                "p.topics[0].shard",
                "one `topic`",
            );
            err(
                "topics: [{match: '*', topics: [a, b], shard: hash}]\n",
                "p.topics[0].shard",
                "metadata:<key>",
            );
            err(
                "topics: [{match: '*', topics: []}]\n",
                "p.topics[0].topics",
                "empty",
            );
            err(
                "topics: [{match: '*', topic: 'a.${x}'}]\n",
                "p.topics[0].topic",
                "not templates",
            );
            err(
                "topics: [{match: '*', topics: [a, 'b c']}]\n",
                "p.topics[0].topics[1]",
                "not a valid topic name",
            );
            err(
                "topics: [{match: '', topic: a}]\n",
                "p.topics[0].match",
                "empty",
            );
            err(
                "topics: [{match: '*', topic: a}, {match: on, topic: b}]\n",
                "p.topics[1]",
                "catch-all",
            );
            err(
                "topics: [{match: on, topic: a}, {match: '*', topic: b}]\ntopics_allowed: [a]\n",
                "p.topics_allowed",
                "`b`",
            );
            err(
                "topics: [{match: '*', topic: a}]\ntopics_match: '${kind}'\n",
                "p.topics_match",
                "format: json",
            );
            err(
                "topic: t\ntopics_match: '${@x}'\n",
                "p.topics_match",
                "no `topics:`",
            );
            err(
                "topics: [{match: '*', topic: a}]\ndlq: {topic: a}\n",
                "p.dlq.topic",
                "own output topic",
            );
            err("topic: t\nqos: 100\n", "p.qos", "0–99");
            err("topic: t\nqos: '-1'\n", "p.qos", "0–99");
            err("topic: t\nqos: urgent\n", "p.qos", "unknown QoS `urgent`");
            err("topic: t\nqos: '${level}'\n", "p.qos", "source values");
            err(
                "topic: t\nqos: low\nexactly_once: true\n",
                "p.qos",
                "exactly_once",
            );
            let sink = "name: s\nsource: {kafka: {topics: [in], group: g}}\nsink: {stdout: {}}\ntopics: [{match: '*', topic: a}]\nqos: high\n";
            let e = config_errors(sink);
            assert!(
                e.iter()
                    .any(|e| e.path == "p.qos" && e.message.contains("sink:")),
                "{e:?}"
            );
            assert!(
                e.iter()
                    .any(|e| e.path == "p.topics" && e.message.contains("sink:")),
                "{e:?}"
            );
            for ok in [
                "topics: [{match: on, topic: a}, {match: '*', topics: [b, c], shard: device_id}]\ntopics_allowed: ['a', 'b*', c]\n",
                "topic: t\nqos: high\n",
                "topic: t\nqos: 0\n",
                "topic: t\nqos: '80'\n",
                "topic: t\nqos: '${@wrp.qos:-50}'\n",
            ] {
                let e = config_errors(&format!("{DEV}{ok}"));
                assert!(e.is_empty(), "{ok}: {e:?}");
            }
        }

        /// `qos` and `topics_match` are templates in a config file, not environment references.
        #[test]
        fn a_config_file_keeps_their_templates() {
            let text = "pipelines:\n  - name: d\n    source: {device_websocket: {listen: '127.0.0.1:8090', device_id: {query: id}, wrp: true}}\n    format: raw\n    qos: '${@wrp.qos:-50}'\n    topics_match: '${@wrp.msg_type_name}'\n    topics: [{match: '*', topic: d}]\n";
            if let Err(e) = crate::gateway::Config::from_yaml_str(text, "k.yaml", &|_| None) {
                panic!("{e}");
            }
        }

        #[test]
        fn qos_names_levels_and_templates_give_classes() {
            let class = |q: &str, meta: &Meta| {
                processor(&format!("{DEV}topic: t\nqos: {q}\n")).qos_class(meta)
            };
            let none = Meta::empty();
            assert_eq!(
                processor(&format!("{DEV}topic: t\n")).qos_class(&none),
                None
            );
            assert_eq!(class("low", &none), Some(QosClass::Low));
            assert_eq!(class("medium", &none), Some(QosClass::Medium));
            assert_eq!(class("high", &none), Some(QosClass::High));
            for (level, want) in [
                (0, QosClass::Low),
                (24, QosClass::Low),
                (25, QosClass::Medium),
                (74, QosClass::Medium),
                (75, QosClass::High),
                (99, QosClass::High),
            ] {
                assert_eq!(class(&level.to_string(), &none), Some(want), "{level}");
            }
            let per_event = |v: &str| class("'${@wrp.qos:-50}'", &Meta::empty().with("wrp.qos", v));
            assert_eq!(per_event("10"), Some(QosClass::Low));
            assert_eq!(per_event("90"), Some(QosClass::High));
            assert_eq!(class("'${@wrp.qos:-10}'", &none), Some(QosClass::Low));
            assert_eq!(class("'${@wrp.qos}'", &none), Some(QosClass::Medium));
        }

        /// A sink that holds each event, unanswered, until the test answers it.
        #[derive(Default)]
        struct Holding {
            held: Mutex<Vec<Event>>,
            totals: Totals,
        }

        impl Sink for Holding {
            fn send(&self, _: OutRecord, _: Option<i32>, ev: Event) -> BoxFuture<'_, ()> {
                self.held.lock().unwrap().push(ev);
                Box::pin(std::future::ready(()))
            }
            fn dead_letter(&self, ev: Event, _: Rejection) -> BoxFuture<'_, ()> {
                self.held.lock().unwrap().push(ev);
                Box::pin(std::future::ready(()))
            }
            fn drain(&self, _: std::time::Duration) -> BoxFuture<'_, i64> {
                Box::pin(std::future::ready(0))
            }
            fn totals(&self) -> &Totals {
                &self.totals
            }
            fn inflight(&self) -> i64 {
                0
            }
            fn dlq_topic(&self) -> &str {
                "held.dlq"
            }
        }

        #[tokio::test]
        async fn a_high_event_is_handled_only_once_kafka_answered() {
            let sink = Arc::new(Holding::default());
            let c: PipelineConfig<serde_json::Value> =
                crate::config::from_yaml(&format!("{DEV}topic: t\nqos: '${{@wrp.qos:-50}}'\n"))
                    .unwrap();
            let p = Pipeline::new(&c, sink.clone()).unwrap();
            let event = |level: &str| {
                let (mut ev, rx) = Event::with_ack(
                    Bytes::from_static(b"x"),
                    Origin::now(p.name().clone(), Arc::from("test")),
                );
                ev.meta.insert("wrp.qos", level);
                (ev, rx)
            };
            // Medium: handed over, handle returns; the answer comes later.
            let (ev, mut medium) = event("50");
            assert!(p.handle(ev).now_or_never().is_some());
            assert!(medium.try_recv().is_err());
            // High: handle does not return while the sink has not answered.
            let (ev, mut high) = event("90");
            let mut handle = Box::pin(p.handle(ev));
            assert!(
                (&mut handle).now_or_never().is_none(),
                "waits for the answer"
            );
            assert!(high.try_recv().is_err());
            let delivered = Fate::Delivered {
                topic: "t".into(),
                partition: 0,
                offset: 7,
            };
            {
                let mut held = sink.held.lock().unwrap();
                assert_eq!(held.len(), 2);
                assert_eq!(held[0].qos, Some(QosClass::Medium));
                assert_eq!(held[1].qos, Some(QosClass::High));
                held[1].ack.resolve(delivered.clone());
            }
            assert!(handle.now_or_never().is_some(), "answered: handle returns");
            assert_eq!(
                high.await.unwrap(),
                delivered,
                "the source's ack has the fate"
            );
            // A sink that drops the event unanswered: the source learns it failed.
            let (ev, high) = event("high");
            let mut handle = Box::pin(p.handle(ev));
            assert!((&mut handle).now_or_never().is_none());
            sink.held.lock().unwrap().pop();
            assert!(handle.now_or_never().is_some());
            assert!(matches!(high.await.unwrap(), Fate::Failed { .. }));
        }
    }
}

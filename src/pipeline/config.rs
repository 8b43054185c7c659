//! `pipelines[]:` — a pipeline as written (its source, transforms, topic, key, headers and
//! format; generic over the source's section, which `gateway` plugs in, so that pipelines do not
//! depend on the sources that feed them), and its resolution into a [`PipelineSpec`] that the runtime takes: templates and
//! transforms compiled once, every problem collected with its path.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::config::{At, ConfigError};
use crate::encode::{AvroConfig, Format, KeyFormat};
use crate::kafka::{check_topic_pattern, reserved_topic, valid_topic_name, TopicAllow};
use crate::registry::SubjectStrategy;
use crate::transform::{Pointer, Template, Transform, TransformConfig};
use crate::validate::{ValidateConfig, Validation};

use super::route::{Qos, QosSetting, Route, RouteConfig, Routes, Shard, Target, DEFAULT_MATCH};
use crate::event::QosClass;

/// One pipeline: source → transforms → topic/key/headers → format → Kafka.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PipelineConfig<S> {
    /// Unique name, used in metrics, logs and DLQ headers.
    pub name: String,
    /// Where events come from: exactly one kind.
    pub source: S,
    /// Changes applied to each parsed event, in order (not with `format: raw`).
    #[schemars(extend("default" = []))]
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
    /// Target topic: a fixed name or a template like `ticks.${exchange}` (here `${...}` is an
    /// event field or a source value, not an environment variable). Required, except with a
    /// route list `topics:` or with `sink:` (records then go to the sink, not to a topic).
    #[serde(default)]
    pub topic: String,
    /// A route list instead of `topic:`, e.g. `[{match: "device-status-*", topic: status},
    /// {match: "*", topics: [a, b, c], shard: device_id}]`: each event goes to the first route
    /// whose `match` glob fits its `topics_match` value (by default its WRP event type). Not
    /// with `topic:` or `sink:`.
    #[serde(default)]
    pub topics: Option<Vec<RouteConfig>>,
    /// What the `match` globs of `topics:` are matched against: a template, e.g.
    /// `${@mqtt.topic}` or `${type}`. Default: `${@wrp.event_type:-}`, the WRP event type (empty
    /// when the event has none, so that only `*` takes it).
    #[serde(default)]
    pub topics_match: Option<String>,
    /// QoS class of each event: `low` (dropped when the producer buffer is full, never waits),
    /// `medium` (waits for room: the default behaviour), `high` (waits for room, and the source
    /// takes the next input only once Kafka acknowledged this one); or a WRP level 0–99 (0–24
    /// low, 25–74 medium, 75–99 high); or a template over source values, e.g. `${@wrp.qos}`,
    /// giving a level or a class per event (`medium` when missing). Default: none (the
    /// producer's `on_full` applies). Not with `sink:` or `exactly_once`.
    #[serde(default)]
    pub qos: Option<QosSetting>,
    /// Topics a templated `topic` may render to: names, `prefix*` or `*`; a record routed
    /// elsewhere goes to the DLQ as `topic_not_allowed`. Default: the template's fixed start
    /// (`ticks.${exchange}` → `[ticks.*]`); a template that starts with `${...}` must list them.
    /// The DLQ topic, `_schemas`, `__*` and `connect-*` are written only when listed by name
    /// (or `connect-*`, `__*`), never through a broader pattern such as `*`. With a fixed
    /// `topic`, the list must include it.
    #[serde(default)]
    pub topics_allowed: Option<Vec<String>>,
    /// Record key: a template like `${exchange}|${symbol}`, or a fixed string; none = no key.
    #[serde(default)]
    pub key: Option<String>,
    /// Record headers: name → template, e.g. `{feed: "${feed}"}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `json` (validated; re-serialized only when transformed), `avro` (through the schema
    /// registry, Confluent wire format) or `raw` (bytes as received, unparsed).
    #[serde(default)]
    pub format: Format,
    /// With `format: avro`: how the value's subject is named.
    #[serde(default)]
    pub avro: AvroConfig,
    /// How the rendered key is written: `string` (its UTF-8 bytes), `json` (a JSON string) or
    /// `avro` (subject `<topic>-key`, Confluent wire format).
    #[serde(default)]
    pub key_format: KeyFormat,
    /// Check each record against a schema as received (after Avro decoding, before
    /// transforms): `{json_schema: schemas/telemetry.schema.json}` or `{avro: <subject>}`. A
    /// record that does not fit goes to the DLQ as `validation_failed`, naming the JSON path
    /// and the rule. Needs `format: json` or `avro`.
    #[serde(default)]
    pub validate: Option<ValidateConfig>,
    /// This pipeline's own dead-letter queue, e.g. `{topic: telemetry.dlq}`: its rejected input
    /// and the records Kafka refuses go there. Default: the root `dlq:`.
    #[serde(default)]
    pub dlq: Option<PipelineDlqConfig>,
    /// Kafka transactions: consume → produce the outputs and DLQ records → commit the offsets,
    /// all in one transaction per batch, so that read_committed readers see each input's result
    /// exactly once, even after a crash. Needs a `kafka` source.
    #[serde(default)]
    pub exactly_once: bool,
    /// Hand records to a consumer sink instead of a Kafka topic: `stdout`, a rotating `file`,
    /// an HTTP `webhook` or a long-lived `command`, batched or single (see `kgate consume`).
    /// Needs a `kafka` source; its offsets are committed once the sink took each record (or its
    /// DLQ record is in Kafka). Leave out `topic:`.
    #[serde(default)]
    pub sink: Option<crate::sink::DeliverConfig>,
    /// Keep accepted records on disk, e.g. `{dir: /var/lib/kgate/spool, when: always}`:
    /// through a crash (`always`) or a Kafka outage (`overflow`). Not with `sink:` or
    /// `exactly_once` (their Kafka source keeps its place by offsets).
    #[serde(default)]
    pub spool: Option<crate::spool::SpoolConfig>,
    /// Share the feeds among every kgate instance that runs this pipeline, through a Kafka
    /// consumer group, e.g. `{group: trades-gateways}`: each URL is read by one instance at a
    /// time, and a stopped or dead instance's URLs move to the others. Needs a `websocket`
    /// source. None = every instance reads every URL.
    #[serde(default)]
    pub coordination: Option<crate::coord::CoordinationConfig>,
}

/// `pipelines[].dlq:` — a pipeline's own dead-letter queue.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PipelineDlqConfig {
    /// Topic of this pipeline's DLQ (records with their original bytes and the reason).
    pub topic: String,
}

/// A pipeline's processing, resolved: what [`Processor`](super::Processor) runs.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Its name.
    pub name: Arc<str>,
    /// Compiled transforms, in order.
    pub transforms: Vec<Transform>,
    /// The topic template (fixed when it has no `${}`).
    pub topic: Template,
    /// The topic as written (the DLQ's `source_topic` before routing).
    pub topic_text: String,
    /// Where a templated topic may go (`topics_allowed`, or derived from the template).
    pub topics_allowed: TopicAllow,
    /// The key template.
    pub key: Option<Template>,
    /// Header name → template.
    pub headers: Vec<(String, Template)>,
    /// Output format.
    pub format: Format,
    /// Avro subject settings (with `format: avro`).
    pub avro: AvroConfig,
    /// How keys are written.
    pub key_format: KeyFormat,
    /// The schema each record is checked against before transforms (`validate:`).
    pub validate: Option<Validation>,
    /// The pipeline's own DLQ topic (`dlq.topic`); `None`: the root `dlq:`.
    pub dlq_topic: Option<String>,
    /// Kafka transactions (`exactly_once`; the source is `kafka`).
    pub exactly_once: bool,
    /// The consumer sink records go to instead of a topic (`sink:`).
    pub sink: Option<crate::sink::DeliverConfig>,
    /// Its disk spool (`spool:`).
    pub spool: Option<crate::spool::SpoolSpec>,
    /// The route list (`topics:`), used instead of `topic`.
    pub routes: Option<Routes>,
    /// Its QoS (`qos:`).
    pub qos: Option<Qos>,
    /// How its instances share the source's URLs (`coordination:`).
    pub coordination: Option<crate::coord::CoordinationSpec>,
}

const NEEDS_PARSED: &str =
    "needs the event parsed; use `format: json` (source values `${@name}` work with raw)";

impl<S> PipelineConfig<S> {
    /// Checks everything but the source (at `at`, e.g. `pipelines[0]`); `has_registry` says
    /// whether `schema_registry:` is configured; `base` is the config file's directory (files
    /// such as `validate.json_schema` are relative to it). The compiled spec when there is no
    /// problem.
    pub fn resolve(
        &self,
        at: At<'_>,
        has_registry: bool,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<PipelineSpec> {
        let before = errors.len();
        let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
        let mut transforms = Vec::with_capacity(self.transforms.len());
        for (j, t) in self.transforms.iter().enumerate() {
            let mut ok = true;
            let mut check_ptr = |field: &str, p: &str| {
                if let Err(e) = Pointer::parse(p) {
                    err(at.field(&format!("transforms[{j}].{field}")), e);
                    ok = false;
                }
            };
            match t {
                TransformConfig::Rename { from, to, .. } => {
                    check_ptr("rename.from", from);
                    check_ptr("rename.to", to);
                }
                TransformConfig::Set { path, .. } => check_ptr("set.path", path),
                TransformConfig::Remove { path } => check_ptr("remove.path", path),
            }
            if ok {
                match Transform::from_config(t) {
                    Ok(t) => transforms.push(t),
                    Err(e) => err(at.field(&format!("transforms[{j}]")), e),
                }
            }
        }
        if self.key_format == KeyFormat::Avro && self.format != Format::Avro {
            err(
                at.field("key_format"),
                "`avro` keys go with Avro values; set `format: avro` or use `key_format: string`"
                    .into(),
            );
        }
        if self.format == Format::Avro && !has_registry {
            err(
                at.field("format"),
                "`avro` encodes through a schema registry; add `schema_registry: { url: http://127.0.0.1:8081/apis/ccompat/v7 }`".into(),
            );
        }
        if self.format == Format::Avro
            && self.avro.subject_strategy != SubjectStrategy::TopicName
            && self.avro.record.is_none()
            && self.avro.subject.is_none()
        {
            err(
                at.field("avro.record"),
                "the record_name strategies need the record's full name, e.g. `record: io.kgate.trades.TradeEvent`".into(),
            );
        }
        if self.format == Format::Raw && !self.transforms.is_empty() {
            err(
                at.field("transforms"),
                "format `raw` passes bytes through unparsed, so transforms cannot apply; use `format: json`".into(),
            );
        }
        let validate = self.validation(at, has_registry, base, &mut err);
        self.check_dlq(at, &mut err);
        let raw = self.format == Format::Raw;
        // With a consumer sink, a record's "topic" is the one it was read from.
        let routes = self.routes(at, raw, &mut err);
        let qos = self.qos(at, &mut err);
        if self.qos.is_some() && (self.sink.is_some() || self.exactly_once) {
            err(
                at.field("qos"),
                "QoS classes decide what happens at the producer's buffer, and a pipeline with `sink:` or `exactly_once` reads from Kafka and keeps its place by offsets (it waits, nothing is dropped); remove `qos:`".into(),
            );
        }
        let topic_text = match (&self.sink, self.topic.is_empty()) {
            _ if self.topics.is_some() => {
                if self.sink.is_some() {
                    err(
                        at.field("topics"),
                        "a pipeline with `sink:` hands records to its sink, not to topics; remove `topics:` (or `sink:`)".into(),
                    );
                }
                if !self.topic.is_empty() {
                    err(
                        at.field("topic"),
                        "`topic:` and `topics:` both choose the topic; keep `topic:` for one topic or a template, or `topics:` for a route list".into(),
                    );
                }
                // The DLQ's `source_topic` before routing: where the routes may write.
                routes
                    .as_ref()
                    .map(|r| r.all_topics().join(","))
                    .unwrap_or_else(|| "-".into())
            }
            (Some(_), true) => "${@kafka.topic}".to_string(),
            (Some(_), false) => {
                err(
                    at.field("topic"),
                    "a pipeline with `sink:` hands records to its sink, not to a topic; remove `topic:` (or `sink:`)".into(),
                );
                self.topic.clone()
            }
            (None, true) => {
                err(
                    at.field("topic"),
                    "missing: the topic records go to, e.g. `telemetry.clean` (or a route list `topics:`, or a consumer `sink:` instead)".into(),
                );
                "-".to_string()
            }
            (None, false) => self.topic.clone(),
        };
        if let Some(s) = &self.sink {
            let path = at.field("sink");
            let mut found = Vec::new();
            crate::sink::deliver::check(s, At(&path), &mut found);
            for e in found {
                err(e.path, e.message);
            }
            if self.topics_allowed.is_some() {
                err(
                    at.field("topics_allowed"),
                    "a pipeline with `sink:` writes no topic; remove `topics_allowed`".into(),
                );
            }
            if self.exactly_once {
                err(
                    at.field("exactly_once"),
                    "Kafka transactions cover Kafka outputs only, and `sink:` hands records to a sink outside Kafka; remove one of them".into(),
                );
            }
        }
        let topic = match Template::parse(&topic_text) {
            Ok(t) if self.topics.is_some() => Some(t),
            Ok(t) => {
                if let Some(fixed) = t.fixed() {
                    if !valid_topic_name(fixed) {
                        err(
                            at.field("topic"),
                            format!("`{fixed}` is not a valid topic name; use letters, digits, `.`, `_` and `-` (at most 249)"),
                        );
                    }
                } else if raw && t.reads_fields() {
                    err(
                        at.field("topic"),
                        format!("a topic template over event fields {NEEDS_PARSED}"),
                    );
                }
                Some(t)
            }
            Err(e) => {
                err(at.field("topic"), e);
                None
            }
        };
        let spool = self.spool.as_ref().and_then(|sp| {
            let path = at.field("spool");
            let mut found = Vec::new();
            let spec = sp.resolve(At(&path), &self.name, base, &mut found);
            for e in found {
                err(e.path, e.message);
            }
            if self.sink.is_some() || self.exactly_once {
                err(
                    path,
                    "a pipeline with `sink:` or `exactly_once` reads from Kafka and keeps its place by offsets, so it needs no spool; remove `spool:`".into(),
                );
            }
            spec
        });
        let topics_allowed = if self.sink.is_some() {
            Some(TopicAllow::any())
        } else if self.topics.is_some() {
            self.routes_allowed(at, routes.as_ref(), &mut err)
        } else {
            self.topics_allowed(at, topic.as_ref(), &mut err)
        };
        let mut template = |field: String, text: &str, what: &str| match Template::parse(text) {
            Ok(t) if t.reads_fields() && raw => {
                err(
                    field,
                    format!("a {what} template over event fields {NEEDS_PARSED}"),
                );
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                err(field, e);
                None
            }
        };
        let key = self
            .key
            .as_deref()
            .map(|k| template(at.field("key"), k, "key"));
        let headers: Vec<_> = self
            .headers
            .iter()
            .map(|(h, v)| {
                (
                    h.clone(),
                    template(at.field(&format!("headers.{h}")), v, "header"),
                )
            })
            .collect();
        let coordination = self.coordination.as_ref().and_then(|c| {
            let path = at.field("coordination");
            let mut found = Vec::new();
            let spec = c.resolve(At(&path), &self.name, &mut found);
            for e in found {
                err(e.path, e.message);
            }
            spec
        });
        if errors.len() != before {
            return None;
        }
        Some(PipelineSpec {
            name: Arc::from(self.name.as_str()),
            transforms,
            topic: topic?,
            topic_text,
            topics_allowed: topics_allowed?,
            // Every template parsed (no error was added), so nothing is lost here.
            key: key.flatten(),
            headers: headers
                .into_iter()
                .filter_map(|(h, t)| Some((h, t?)))
                .collect(),
            format: self.format,
            avro: self.avro.clone(),
            key_format: self.key_format,
            validate,
            dlq_topic: self.dlq.as_ref().map(|d| d.topic.clone()),
            exactly_once: self.exactly_once,
            sink: self.sink.clone(),
            spool,
            routes,
            qos,
            coordination,
        })
    }

    /// `validate:` checked and compiled (the JSON Schema file read now).
    fn validation(
        &self,
        at: At<'_>,
        has_registry: bool,
        base: &Path,
        err: &mut impl FnMut(String, String),
    ) -> Option<Validation> {
        let v = self.validate.as_ref()?;
        if self.format == Format::Raw {
            err(
                at.field("validate"),
                "validation parses each record as JSON, and format `raw` does not; use `format: json` (unchanged records are still written byte for byte)".into(),
            );
            return None;
        }
        if let ValidateConfig::Avro(subject) = v {
            if !has_registry {
                err(
                    at.field("validate.avro"),
                    format!("subject `{subject}` lives in a schema registry; add `schema_registry: {{ url: http://127.0.0.1:8081/apis/ccompat/v7 }}`"),
                );
                return None;
            }
            if subject.trim().is_empty() {
                err(
                    at.field("validate.avro"),
                    "empty; name the registry subject, e.g. `avro: telemetry-value`".into(),
                );
                return None;
            }
        }
        match v.compile(base) {
            Ok(v) => Some(v),
            Err(e) => {
                err(at.field("validate.json_schema"), e);
                None
            }
        }
    }

    /// `dlq.topic`: a topic name of its own (not the pipeline's output).
    fn check_dlq(&self, at: At<'_>, err: &mut impl FnMut(String, String)) {
        let Some(d) = &self.dlq else {
            return;
        };
        if !valid_topic_name(&d.topic) {
            err(
                at.field("dlq.topic"),
                format!(
                    "`{}` is not a valid topic name; use letters, digits, `.`, `_` and `-`",
                    d.topic
                ),
            );
        } else if reserved_topic(&d.topic) {
            err(
                at.field("dlq.topic"),
                format!(
                    "`{}` is a reserved topic (`_schemas`, `__*`, `connect-*`); name a DLQ topic such as `{}.dlq`",
                    d.topic, self.name
                ),
            );
        } else if d.topic == self.topic
            || self.topics.iter().flatten().any(|r| {
                r.topic.as_ref() == Some(&d.topic)
                    || r.topics.iter().flatten().any(|t| *t == d.topic)
            })
        {
            err(
                at.field("dlq.topic"),
                format!(
                    "`{}` is the pipeline's own output topic; give rejected records a topic of their own, e.g. `{}.dlq`",
                    d.topic, d.topic
                ),
            );
        }
    }
}

impl<S> PipelineConfig<S> {
    /// The topics a rendered topic may be: `topics_allowed` checked, or the template's fixed
    /// start followed by `*`.
    fn topics_allowed(
        &self,
        at: At<'_>,
        topic: Option<&Template>,
        err: &mut impl FnMut(String, String),
    ) -> Option<TopicAllow> {
        if let Some(list) = &self.topics_allowed {
            let mut ok = true;
            if list.is_empty() {
                err(
                    at.field("topics_allowed"),
                    "empty; list the topics this pipeline may write, e.g. `[ticks.*]`".into(),
                );
                ok = false;
            }
            for (i, p) in list.iter().enumerate() {
                if let Err(e) = check_topic_pattern(p) {
                    err(at.field(&format!("topics_allowed[{i}]")), e);
                    ok = false;
                }
            }
            let allow = TopicAllow::new(list.clone());
            if let Some(fixed) = topic.and_then(Template::fixed) {
                if ok && !allow.allows(fixed) {
                    err(
                        at.field("topics_allowed"),
                        format!("does not allow the pipeline's own topic `{fixed}`; add it"),
                    );
                    ok = false;
                }
            }
            return ok.then_some(allow);
        }
        let topic = topic?;
        if let Some(fixed) = topic.fixed() {
            return Some(TopicAllow::new(vec![fixed.to_string()]));
        }
        // The literal text before the first `${` (a `$` there would not be a legal name).
        let prefix = self.topic.split("${").next().unwrap_or("");
        if !valid_topic_name(prefix) {
            err(
                at.field("topics_allowed"),
                format!(
                    "topic `{}` starts with a template, so events could choose any topic; list the ones it may write, e.g. `topics_allowed: [orders.*]` (or `[\"*\"]`)",
                    self.topic
                ),
            );
            return None;
        }
        if reserved_topic(prefix) {
            err(
                at.field("topics_allowed"),
                format!(
                    "topic `{}` writes among reserved topics (`_schemas`, `__*`, `connect-*`); list the ones it may write in `topics_allowed`",
                    self.topic
                ),
            );
            return None;
        }
        Some(TopicAllow::new(vec![format!("{prefix}*")]))
    }
}

impl<S> PipelineConfig<S> {
    /// `topics:` and `topics_match` checked and resolved (`None` without `topics:` or with a
    /// problem).
    fn routes(
        &self,
        at: At<'_>,
        raw: bool,
        err: &mut impl FnMut(String, String),
    ) -> Option<Routes> {
        let Some(list) = &self.topics else {
            if self.topics_match.is_some() {
                err(
                    at.field("topics_match"),
                    "says what the globs of `topics:` match, and there is no `topics:`; add the route list or remove `topics_match`".into(),
                );
            }
            return None;
        };
        let mut ok = true;
        if list.is_empty() {
            err(
                at.field("topics"),
                "empty; list routes, e.g. `[{match: \"*\", topic: devices}]`".into(),
            );
            ok = false;
        }
        let matcher_text = self
            .topics_match
            .clone()
            .unwrap_or_else(|| DEFAULT_MATCH.to_string());
        let matcher = match Template::parse(&matcher_text) {
            Ok(t) if raw && t.reads_fields() => {
                err(
                    at.field("topics_match"),
                    format!("a template over event fields {NEEDS_PARSED}"),
                );
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                err(at.field("topics_match"), e);
                None
            }
        };
        let mut routes = Vec::with_capacity(list.len());
        for (i, r) in list.iter().enumerate() {
            let here = |f: &str| at.field(&format!("topics[{i}].{f}"));
            let name_ok = |field: String, t: &str, err: &mut dyn FnMut(String, String)| {
                if valid_topic_name(t) {
                    return true;
                }
                let why = if t.contains("${") {
                    "route topics are names, not templates (use `topic:` for a template)"
                } else {
                    "use letters, digits, `.`, `_` and `-` (at most 249)"
                };
                err(field, format!("`{t}` is not a valid topic name; {why}"));
                false
            };
            if r.pattern.is_empty() {
                err(
                    here("match"),
                    "empty; a glob such as `device-status-*`, or `*` for every event".into(),
                );
                ok = false;
            }
            let target = match (&r.topic, &r.topics) {
                (Some(t), None) => {
                    if r.shard.is_some() {
                        err(
                            here("shard"),
                            "chooses among `topics:`, and this route has one `topic`; list several `topics` or remove `shard`".into(),
                        );
                        ok = false;
                    }
                    name_ok(here("topic"), t, err).then(|| Target::One(Arc::from(t.as_str())))
                }
                (None, Some(ts)) => {
                    if ts.is_empty() {
                        err(
                            here("topics"),
                            "empty; list the topics to shard over, e.g. `[a, b, c]`".into(),
                        );
                        ok = false;
                    }
                    let mut names_ok = true;
                    for (j, t) in ts.iter().enumerate() {
                        names_ok &= name_ok(here(&format!("topics[{j}]")), t, err);
                    }
                    let shard = match Shard::parse(r.shard.as_deref().unwrap_or("round_robin")) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            err(here("shard"), e);
                            None
                        }
                    };
                    match shard {
                        Some(shard) if names_ok && !ts.is_empty() => Some(Target::Sharded {
                            topics: ts.iter().map(|t| Arc::from(t.as_str())).collect(),
                            shard,
                        }),
                        _ => None,
                    }
                }
                (Some(_), Some(_)) => {
                    err(
                        here("topic"),
                        "a route has `topic` (one topic) or `topics` (several, with `shard`), not both".into(),
                    );
                    None
                }
                (None, None) => {
                    err(
                        at.field(&format!("topics[{i}]")),
                        "names no topic; add `topic: <name>` or `topics: [a, b]` with a `shard`"
                            .into(),
                    );
                    None
                }
            };
            match target {
                Some(target) => routes.push(Route {
                    pattern: r.pattern.clone(),
                    target,
                }),
                None => ok = false,
            }
        }
        // A route after a catch-all is never taken: surely not what was meant.
        if let Some(i) = list.iter().position(|r| r.pattern == "*") {
            if i + 1 < list.len() {
                err(
                    at.field(&format!("topics[{}]", i + 1)),
                    format!("comes after the catch-all `*` of topics[{i}], so no event reaches it (the first match wins); move the catch-all last"),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        Some(Routes {
            matcher: matcher?,
            matcher_text,
            routes,
        })
    }

    /// What the routes may write: each of their topics within `topics_allowed` when given, or
    /// exactly their topics.
    fn routes_allowed(
        &self,
        at: At<'_>,
        routes: Option<&Routes>,
        err: &mut impl FnMut(String, String),
    ) -> Option<TopicAllow> {
        let routes = routes?;
        let Some(list) = &self.topics_allowed else {
            return Some(TopicAllow::new(routes.all_topics()));
        };
        let mut ok = true;
        for (i, p) in list.iter().enumerate() {
            if let Err(e) = check_topic_pattern(p) {
                err(at.field(&format!("topics_allowed[{i}]")), e);
                ok = false;
            }
        }
        if list.is_empty() {
            err(
                at.field("topics_allowed"),
                "empty; list the topics this pipeline may write, e.g. `[devices.*]`".into(),
            );
            ok = false;
        }
        let allow = TopicAllow::new(list.clone());
        if ok {
            for t in routes.all_topics() {
                if !allow.allows(&t) {
                    err(
                        at.field("topics_allowed"),
                        format!("does not allow `{t}`, a topic of `topics:`; add it (or remove the route)"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(allow)
    }

    /// `qos:` checked and resolved.
    fn qos(&self, at: At<'_>, err: &mut impl FnMut(String, String)) -> Option<Qos> {
        let level = |n: i64, err: &mut dyn FnMut(String, String)| {
            if (0..=99).contains(&n) {
                Some(Qos::Fixed(QosClass::of_level(n)))
            } else {
                err(
                    at.field("qos"),
                    format!("{n} is not a WRP QoS level; use 0–99 (0–24 low, 25–74 medium, 75–99 high) or `low`, `medium`, `high`"),
                );
                None
            }
        };
        match self.qos.as_ref()? {
            QosSetting::Level(n) => level(*n, err),
            QosSetting::Text(t) if t.contains("${") => match Template::parse(t) {
                Ok(tpl) if tpl.reads_fields() => {
                    err(
                        at.field("qos"),
                        format!("`{t}` reads event fields; the class is chosen as the event arrives, before it is parsed, so use source values such as `${{@wrp.qos}}`"),
                    );
                    None
                }
                Ok(tpl) => Some(Qos::PerEvent(tpl)),
                Err(e) => {
                    err(at.field("qos"), e);
                    None
                }
            },
            QosSetting::Text(t) => match t.trim().parse::<i64>() {
                Ok(n) => level(n, err),
                Err(_) => match QosClass::parse(t) {
                    Some(c) => Some(Qos::Fixed(c)),
                    None => {
                        err(
                            at.field("qos"),
                            format!("unknown QoS `{t}`; use `low`, `medium`, `high`, a level 0–99, or a template such as `${{@wrp.qos}}`"),
                        );
                        None
                    }
                },
            },
        }
    }
}

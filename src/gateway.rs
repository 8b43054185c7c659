//! The config file's root: the sections each component owns (`kafka:`, `metrics:`, `dlq:`,
//! `http:`, `schema_registry:`, `pipelines:`, `log:`), checked together into a [`Gateway`] whose parts
//! are resolved (addresses parsed, templates compiled, tokens read) for `run` and `check`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{self, At, ConfigError, ConfigErrors};
use crate::kafka::{Acks, DlqConfig, KafkaConfig};
use crate::metrics::MetricsConfig;
use crate::pipeline::PipelineSpec;
use crate::registry::RegistryConfig;
use crate::source::http::{HttpConfig, HttpServerSettings};
use crate::source::{Source, SourceConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Config {
    /// Kafka connection and producer settings.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Prometheus metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Dead-letter queue: where input that cannot be delivered as configured goes.
    #[serde(default)]
    pub dlq: DlqConfig,
    /// The HTTP ingest server (REST Proxy and pipeline ingest routes); none = not served.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// How long a SIGTERM/SIGINT may take to drain and flush before giving up.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The pipelines: each a source, transforms, a topic, a key and a format.
    #[schemars(extend("default" = []))]
    #[serde(default)]
    pub pipelines: Vec<PipelineConfig>,
    /// The Confluent-compatible schema registry (for Avro).
    #[serde(default)]
    pub schema_registry: Option<RegistryConfig>,
    /// The web UI (topics, messages, groups, schemas, the DLQ, these pipelines), served beside
    /// the pipelines; `kgate ui --config F` serves it alone. None = not served.
    #[serde(default)]
    pub ui: Option<crate::ui::UiConfig>,
    /// kgate's own log on stderr: `text` or `json` lines, and the level. `KGATE_LOG` (then
    /// `RUST_LOG`) wins over `level`, `--log-format` over `format`.
    #[serde(default)]
    pub log: crate::log::LogConfig,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A pipeline as written in the file, with its source.
pub type PipelineConfig = crate::pipeline::PipelineConfig<SourceConfig>;

/// A config file, checked and resolved: what `kgate run` and `kgate check` take.
#[derive(Debug)]
pub struct Gateway {
    /// The file as written.
    pub config: Config,
    /// Where `/metrics` is served (`None`: `metrics.enabled: false`).
    pub metrics_listen: Option<SocketAddr>,
    /// The HTTP server, when `http:` is configured.
    pub http: Option<HttpServerSettings>,
    /// Where the web UI is served, when `ui:` is configured.
    pub ui_listen: Option<SocketAddr>,
    /// The pipelines, in config order.
    pub pipelines: Vec<PipelinePlan>,
}

/// One pipeline, resolved: its processing and its source.
#[derive(Debug)]
pub struct PipelinePlan {
    /// Transforms, topic, key, headers and format, compiled.
    pub spec: PipelineSpec,
    /// Its source, ready to probe or run.
    pub source: Box<dyn Source>,
}

impl Gateway {
    /// Reads, interpolates, parses and resolves a config file, reporting every error found.
    pub fn load(path: &Path) -> Result<Gateway, ConfigErrors> {
        let text = config::read(path)?;
        Gateway::from_yaml_str(&text, &path.display().to_string(), &|k| {
            std::env::var(k).ok()
        })
    }

    /// Parses and resolves config text; `env` looks up environment variables. Files the config
    /// names (a pipeline's `validate.json_schema`) are relative to `file`'s directory.
    pub fn from_yaml_str(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Gateway, ConfigErrors> {
        let mut errors = Vec::new();
        let parsed: Option<Config> = config::parse(text, env, &mut errors);
        let base = Path::new(file).parent().unwrap_or(Path::new(""));
        let resolved = parsed.and_then(|c| c.resolve_in(base, &mut errors));
        match resolved {
            Some(g) if errors.is_empty() => Ok(g),
            _ => Err(ConfigErrors {
                file: file.to_string(),
                errors,
            }),
        }
    }
}

impl Config {
    /// Reads, interpolates, parses and checks a config file, reporting every error found.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Gateway::load(path).map(|g| g.config)
    }

    /// Parses and checks config text; `env` looks up environment variables.
    pub fn from_yaml_str(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        Gateway::from_yaml_str(text, file, env).map(|g| g.config)
    }

    /// Checks every section, each by the component that owns it, collecting every problem;
    /// the resolved gateway when there is none. Relative file names are read from the working
    /// directory.
    pub fn resolve(self, errors: &mut Vec<ConfigError>) -> Option<Gateway> {
        self.resolve_in(Path::new(""), errors)
    }

    /// [`Config::resolve`], relative file names read from `base` (the config file's directory).
    pub fn resolve_in(self, base: &Path, errors: &mut Vec<ConfigError>) -> Option<Gateway> {
        let before = errors.len();
        if let Some(r) = &self.schema_registry {
            crate::registry::validate_config(r, "schema_registry", errors);
        }
        self.kafka.validate(At("kafka"), errors);
        let metrics_listen = self.metrics.resolve(At("metrics"), errors);
        self.dlq.validate(At("dlq"), errors);
        self.log.validate(At("log"), errors);
        let ui_listen = self.ui.as_ref().and_then(|u| u.resolve(At("ui"), errors));
        if self.pipelines.is_empty() && self.http.is_none() && self.ui.is_none() {
            errors.push(ConfigError::new(
                "pipelines",
                "no pipelines; add one with a `name`, a `source`, a `topic` (see examples/trades.yaml)",
            ));
        }
        let mut names = HashSet::new();
        let mut pipelines = Vec::with_capacity(self.pipelines.len());
        for (i, pl) in self.pipelines.iter().enumerate() {
            let at = format!("pipelines[{i}]");
            let at = At(&at);
            if pl.name.trim().is_empty() {
                errors.push(ConfigError::new(
                    at.field("name"),
                    "empty; give the pipeline a name",
                ));
            } else if !names.insert(pl.name.as_str()) {
                errors.push(ConfigError::new(
                    at.field("name"),
                    format!(
                        "`{}` is used by an earlier pipeline; names must be unique",
                        pl.name
                    ),
                ));
            }
            let source = pl.source.resolve(At(&at.field("source")), errors);
            let spec = pl.resolve(at, self.schema_registry.is_some(), base, errors);
            let kind = pl.source.kind().name();
            if pl.exactly_once && kind != "kafka" {
                errors.push(ConfigError::new(
                    at.field("exactly_once"),
                    format!("Kafka transactions commit the offsets of the records a pipeline reads from Kafka, and this pipeline's source is `{kind}`; use a `kafka` source or remove `exactly_once`"),
                ));
            }
            if pl.sink.is_some() && kind != "kafka" {
                errors.push(ConfigError::new(
                    at.field("sink"),
                    format!("a consumer sink takes records read from Kafka (their offsets are committed once it took them), and this pipeline's source is `{kind}`; use a `kafka` source, or write to a `topic:`"),
                ));
            }
            if pl.coordination.is_some() && kind != "websocket" {
                errors.push(ConfigError::new(
                    at.field("coordination"),
                    format!("coordination shares a `websocket` source's URLs among the instances, and this pipeline's source is `{kind}`, which scales behind a load balancer (HTTP, devices) or by itself (MQTT `$share/<group>/…` subscriptions, a Kafka consumer group); remove `coordination:`"),
                ));
            }
            if let (Some(spec), Some(source)) = (spec, source) {
                pipelines.push(PipelinePlan { spec, source });
            }
        }
        let spools: Vec<(usize, std::path::PathBuf)> = self
            .pipelines
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.spool.as_ref()?.dir_of(base, &p.name))))
            .collect();
        for (i, j) in crate::spool::clashes(&spools) {
            errors.push(ConfigError::new(
                format!("pipelines[{j}].spool.dir"),
                format!("pipeline `{}` would share its spool directory with pipeline `{}` (or nest in it); give each its own `dir`", self.pipelines[j].name, self.pipelines[i].name),
            ));
        }
        let http_pipelines: Vec<(usize, &str)> = self
            .pipelines
            .iter()
            .enumerate()
            .filter(|(_, p)| p.source.kind().served_over_http())
            .map(|(i, p)| (i, p.name.as_str()))
            .collect();
        // acks 0: the delivery report comes before any broker has the record, so a PUBACK or a
        // 200 would promise what nobody knows.
        if self.kafka.producer.acks == Acks::Zero {
            let answering = self
                .pipelines
                .iter()
                .find(|p| p.source.kind().answers_clients())
                .map(|p| format!("pipeline `{}`", p.name))
                .or_else(|| {
                    self.http
                        .as_ref()
                        .map(|_| "the `http:` REST Proxy route".into())
                });
            if let Some(who) = answering {
                errors.push(ConfigError::new(
                    "kafka.producer.acks",
                    format!("`0` cannot tell whether Kafka holds a record, and {who} answers its clients only for what Kafka holds; use `acks: all` (or `1`, the leader alone)"),
                ));
            }
        }
        let http = match &self.http {
            Some(h) => {
                let names: Vec<&str> = http_pipelines.iter().map(|(_, n)| *n).collect();
                let metrics = self.metrics.enabled.then_some(self.metrics.listen.as_str());
                h.resolve(At("http"), &names, metrics, errors)
            }
            None => {
                for (i, name) in http_pipelines {
                    errors.push(ConfigError::new(
                        format!("pipelines[{i}].source.http"),
                        format!("pipeline `{name}` is fed over HTTP but there is no top-level `http:` section; add `http: {{ listen: \"0.0.0.0:8082\" }}`"),
                    ));
                }
                None
            }
        };
        (errors.len() == before).then_some(Gateway {
            metrics_listen,
            http,
            ui_listen,
            pipelines,
            config: self,
        })
    }
}

/// What the web UI's overview shows of a pipeline: from `pipelines[]`, with the root
/// `dlq.topic` (built here, where the config is, so that the UI needs no config types).
pub fn pipeline_info(p: &PipelineConfig, dlq_topic: &str) -> crate::ui::overview::PipelineInfo {
    let mut info = crate::ui::overview::PipelineInfo {
        name: p.name.clone(),
        source: "",
        urls: vec![],
        kafka_topics: vec![],
        group: None,
        mqtt_max_inflight: None,
        topic: p.topic.clone(),
        topics: match (&p.topics_allowed, p.topic.find("${")) {
            (_, None) => vec![p.topic.clone()],
            (Some(allowed), Some(_)) => allowed.clone(),
            (None, Some(at)) => vec![format!("{}*", &p.topic[..at])],
        },
        dlq_topic: p
            .dlq
            .as_ref()
            .map_or_else(|| dlq_topic.to_string(), |d| d.topic.clone()),
    };
    match &p.source {
        SourceConfig::Websocket(c) => {
            info.source = "websocket";
            info.urls = c.urls.iter().map(|u| config::redact_url(u)).collect();
        }
        SourceConfig::DeviceWebsocket(_) => info.source = "device_websocket",
        SourceConfig::Http(_) => info.source = "http",
        SourceConfig::Mqtt(c) => {
            info.source = "mqtt";
            info.urls = vec![config::redact_url(&c.url)];
            info.mqtt_max_inflight = Some(c.max_inflight);
        }
        SourceConfig::Kafka(c) => {
            info.source = "kafka";
            info.kafka_topics = c.topics.clone();
            info.group = Some(c.group.clone());
        }
        SourceConfig::HttpPoll(c) => {
            info.source = "http_poll";
            info.urls = c
                .requests
                .iter()
                .map(|r| crate::source::poll::redact_secrets(&r.url))
                .collect();
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;
    use crate::kafka::{Acks, SecurityProtocol};
    use crate::source::SourceConfig;

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_yaml_str(text, "kgate.yaml", &|k| {
            (k == "PW").then(|| "secret".to_string())
        })
    }

    const OK: &str = "
kafka:
  brokers: ['127.0.0.1:9092']
  producer: {max_buffered_bytes: 64MiB, linger_ms: 5}
metrics: {listen: '127.0.0.1:9100', labels: {did_provider: 'did:key'}}
shutdown_timeout: 10s
pipelines:
  - name: trades
    source: {websocket: {urls: ['ws://127.0.0.1:4200/ws'], timeout: 5s}}
    transforms:
      - rename: {from: /tradeCredential/@context, to: /tradeCredential/context}
    topic: TradeEvent
    key: '${exchange}|${symbol}'
";

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = load(OK).unwrap();
        assert_eq!(
            c.kafka.producer.max_buffered_bytes,
            ByteSize(64 * 1024 * 1024)
        );
        assert_eq!(c.kafka.producer.max_buffered_records, 10_000);
        assert_eq!(c.kafka.producer.acks, Acks::All);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.dlq.topic, "events.v1.dlq");
        let SourceConfig::Websocket(ws) = &c.pipelines[0].source else {
            panic!("a websocket source")
        };
        assert_eq!(ws.timeout, Duration::from_secs(5));
        assert_eq!(ws.ping_interval, Duration::from_secs(20));
        assert_eq!(c.pipelines[0].key.as_deref(), Some("${exchange}|${symbol}"));
    }

    #[test]
    fn every_error_is_listed_with_its_path() {
        let text = "
kafka:
  brokers: ['nohost']
  producer:
    lingr_ms: 5
    options: {acks: '1'}
metrics: {listen: 'nowhere'}
pipelines:
  - name: a
    source: {websocket: {urls: ['http://x/ws'], pingg: 1s}}
    topic: 'bad topic'
    key: '${unclosed'
  - name: a
    source: {websocket: {urls: []}}
    transforms: [{remove: {path: 'no-slash'}}]
    topic: ok
    password: '${NOT_SET}'
";
        let e = load(text).unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "pipelines[1].password",
            "kafka.producer.lingr_ms",
            "pipelines[0].source.websocket.pingg",
            "kafka.brokers[0]",
            "kafka.producer.options.acks",
            "metrics.listen",
            "pipelines[0].source.websocket.urls[0]",
            "pipelines[0].topic",
            "pipelines[0].key",
            "pipelines[1].name",
            "pipelines[1].source.websocket.urls",
            "pipelines[1].transforms[0].remove.path",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}\n{e}");
        }
        let text = e.to_string();
        assert!(text.contains("kgate.yaml has"), "{text}");
        assert!(text.contains("NOT_SET is not set"), "{text}");
    }

    #[test]
    fn coordination_needs_a_websocket_source() {
        let g = Gateway::from_yaml_str(
            "pipelines:\n  - name: ticks\n    source: {websocket: {urls: ['ws://h:1/a', 'ws://h:1/b']}}\n    topic: t\n    coordination: {group: ticks-gateways}\n",
            "kgate.yaml",
            &|_| None,
        )
        .unwrap();
        let c = g.pipelines[0].spec.coordination.as_ref().unwrap();
        assert_eq!(
            (c.group.as_str(), c.topic.as_str(), c.session_timeout),
            (
                "ticks-gateways",
                "kgate.coord.ticks",
                Duration::from_secs(10)
            )
        );
        let e = load("http: {listen: '127.0.0.1:0'}\npipelines:\n  - name: a\n    source: {http: {}}\n    topic: t\n    coordination: {group: g}\n").unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!(e.errors[0].path, "pipelines[0].coordination");
        assert!(
            e.errors[0]
                .message
                .contains("this pipeline's source is `http`")
                && e.errors[0].message.contains("remove `coordination:`"),
            "{e}"
        );
        let e = load("pipelines:\n  - name: a\n    source: {websocket: {urls: ['ws://h:1/a']}}\n    topic: t\n    coordination: {group: g, session_timeout: 0s, grup: x}\n").unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "pipelines[0].coordination.grup",
                "pipelines[0].coordination.session_timeout"
            ],
            "{e}"
        );
    }

    #[test]
    fn type_errors_name_their_path() {
        let e = load("pipelines:\n  - name: a\n    source: {websocket: {urls: ['ws://h:1/ws'], timeout: soon}}\n    topic: t\n").unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!(e.errors[0].path, "pipelines[0].source.websocket.timeout");
        let e = load("kafka: {producer: {acks: 2}}\npipelines: []\n").unwrap_err();
        assert_eq!(e.errors[0].path, "kafka.producer.acks");
        assert!(e.errors[0].message.contains("`all`, `1` or `0`"));
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let c = load(&format!("kafka:\n  security: {{protocol: SASL_SSL, sasl: {{mechanism: SCRAM-SHA-512, username: u, password: '${{PW}}'}}}}\n{}", OK.split_once("metrics").map(|(_, r)| format!("metrics{r}")).unwrap())).unwrap();
        let sec = c.kafka.security.unwrap();
        assert_eq!(sec.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(sec.sasl.unwrap().password, "secret");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("100MB"), Ok(ByteSize(100_000_000)));
        assert_eq!(ByteSize::parse("64 KiB"), Ok(ByteSize(65536)));
        assert_eq!(ByteSize::parse("1024"), Ok(ByteSize(1024)));
        assert!(ByteSize::parse("5 parsecs").is_err());
    }

    #[test]
    fn acks_zero_is_refused_where_clients_are_answered() {
        let e = load("kafka: {producer: {acks: 0, idempotence: false}}\nhttp: {listen: '127.0.0.1:8082'}\npipelines: []\n").unwrap_err();
        assert_eq!(e.errors[0].path, "kafka.producer.acks", "{e}");
        assert!(e.errors[0].message.contains("REST Proxy route"), "{e}");
        let e = load("kafka: {producer: {acks: 0, idempotence: false}}\npipelines:\n  - {name: iot, source: {mqtt: {url: 'mqtt://h', subscriptions: [{topic: a}]}}, topic: t}\n").unwrap_err();
        assert!(e.errors[0].message.contains("pipeline `iot`"), "{e}");
        // A feed nobody answers may trade durability for speed.
        load("kafka: {producer: {acks: 0, idempotence: false}}\npipelines:\n  - {name: f, source: {websocket: {urls: ['ws://h:1/ws']}}, topic: t}\n").unwrap();
    }

    #[test]
    fn validate_files_are_read_from_the_config_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schemas")).unwrap();
        std::fs::write(
            dir.path().join("schemas/t.schema.json"),
            r#"{"type": "object"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("schemas/bad.schema.json"), r#"{"type": 7}"#).unwrap();
        let config = dir.path().join("kgate.yaml");
        let pipeline = |name: &str, rest: &str| {
            format!("  - {{name: {name}, source: {{kafka: {{topics: [t.raw], group: g}}}}, topic: {name}.out, {rest}}}\n")
        };
        std::fs::write(
            &config,
            format!(
                "pipelines:\n{}",
                pipeline(
                    "v",
                    "validate: {json_schema: schemas/t.schema.json}, dlq: {topic: v.dlq}, exactly_once: true"
                )
            ),
        )
        .unwrap();
        let g = Gateway::load(&config).unwrap();
        let spec = &g.pipelines[0].spec;
        assert!(spec.validate.is_some());
        assert_eq!(spec.dlq_topic.as_deref(), Some("v.dlq"));
        assert!(spec.exactly_once);

        std::fs::write(
            &config,
            format!(
                "pipelines:\n{}{}{}{}",
                pipeline("a", "validate: {json_schema: schemas/missing.json}"),
                pipeline("b", "validate: {json_schema: schemas/bad.schema.json}"),
                pipeline("c", "validate: {avro: telemetry-value}"),
                "  - {name: d, source: {websocket: {urls: ['ws://h:1/ws']}}, topic: d, exactly_once: true}\n",
            ),
        )
        .unwrap();
        let e = Gateway::load(&config).unwrap_err();
        let find = |path: &str| {
            e.errors
                .iter()
                .find(|x| x.path == path)
                .unwrap_or_else(|| panic!("no error at {path}: {e}"))
                .message
                .clone()
        };
        let m = find("pipelines[0].validate.json_schema");
        assert!(
            m.contains("schemas/missing.json") && m.contains("config file's directory"),
            "{m}"
        );
        let m = find("pipelines[1].validate.json_schema");
        assert!(
            m.contains("bad.schema.json") && m.contains("not a valid JSON Schema"),
            "{m}"
        );
        assert!(find("pipelines[2].validate.avro").contains("schema_registry"));
        let m = find("pipelines[3].exactly_once");
        assert!(m.contains("`websocket`") && m.contains("kafka"), "{m}");
        assert_eq!(e.errors.len(), 4, "{e}");
    }

    #[test]
    fn the_config_says_what_a_pipeline_reads_and_writes() {
        let p = |yaml: &str| {
            // As `config::parse` reads it (through JSON, for the `websocket: {…}` form),
            // without its environment interpolation (a pipeline's `${…}` is a template).
            let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
            let c: PipelineConfig =
                serde_json::from_value(serde_json::to_value(v).unwrap()).unwrap();
            pipeline_info(&c, "root.dlq")
        };
        let ws = p("name: a\nsource: {websocket: {urls: ['wss://u:secret@feed.example/x']}}\ntopic: 'ticks.${ex}'");
        assert_eq!(ws.source, "websocket");
        assert_eq!(
            ws.urls,
            vec![crate::config::redact_url("wss://u:secret@feed.example/x")]
        );
        assert!(!ws.urls[0].contains("secret"), "{:?}", ws.urls);
        assert_eq!(ws.topics, vec!["ticks.*"]);
        assert!(ws.writes("ticks.nyse") && ws.writes("ticks.${ex}") && !ws.writes("other"));
        assert_eq!(ws.dlq_topic, "root.dlq");
        let k = p("name: b\nsource: {kafka: {topics: [in.raw], group: g1}}\ntopic: out\ndlq: {topic: b.dlq}");
        assert_eq!((k.source, k.group.as_deref()), ("kafka", Some("g1")));
        assert_eq!(k.kafka_topics, vec!["in.raw"]);
        assert_eq!(k.topics, vec!["out"]);
        assert_eq!(k.dlq_topic, "b.dlq");
        let allowed = p("name: c\nsource: {websocket: {urls: ['ws://h/']}}\ntopic: '${t}'\ntopics_allowed: [x, 'y.*']");
        assert!(allowed.writes("x") && allowed.writes("y.1") && !allowed.writes("z"));
    }
}

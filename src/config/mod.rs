//! Typed configuration: YAML with `${VAR}` / `${VAR:-default}` from the environment, unknown keys
//! refused with their path, and a validation pass that reports every problem at once.

mod http;
mod interpolate;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use http::{pattern_matches, HttpAuthConfig, HttpConfig, HttpSourceConfig, HttpTlsConfig};
pub use interpolate::interpolate_env;
pub use validate::valid_topic_name;

pub use crate::source::mqtt::{MqttSourceConfig, MqttTlsConfig, Subscription};

/// One problem in a config file: where it is (a path like `pipelines[0].source.websocket.urls[1]`),
/// what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending value.
    pub path: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file the errors are about.
    pub file: String,
    /// The errors, in the order found.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{} has {} error{}:",
            self.file,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Kafka connection and producer settings.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Prometheus metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Dead-letter queue.
    #[serde(default)]
    pub dlq: DlqConfig,
    /// The HTTP ingest server (REST Proxy and pipeline ingest routes); none = not served.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// How long a SIGTERM/SIGINT may take to drain and flush before giving up.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The pipelines: each a source, transforms, a topic, a key and a format.
    #[serde(default)]
    pub pipelines: Vec<PipelineConfig>,
    /// The Confluent-compatible schema registry (for Avro).
    #[serde(default)]
    pub schema_registry: Option<crate::registry::RegistryConfig>,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `kafka:` — brokers, security and producer settings.
#[derive(Debug, Clone, Deserialize)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: Vec<String>,
    /// Client id the brokers see.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// TLS and SASL.
    #[serde(default)]
    pub security: Option<SecurityConfig>,
    /// Producer settings.
    #[serde(default)]
    pub producer: ProducerConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            client_id: default_client_id(),
            security: None,
            producer: ProducerConfig::default(),
        }
    }
}

fn default_brokers() -> Vec<String> {
    vec!["127.0.0.1:9092".into()]
}
fn default_client_id() -> String {
    "kgate".into()
}

/// `kafka.security:` — how to talk to the brokers.
#[derive(Debug, Clone, Deserialize)]
pub struct SecurityConfig {
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    #[serde(default)]
    pub protocol: SecurityProtocol,
    /// SASL credentials (for the SASL_* protocols).
    #[serde(default)]
    pub sasl: Option<SaslConfig>,
    /// TLS files (for SSL and SASL_SSL).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Kafka security protocol.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    #[default]
    #[serde(rename = "PLAINTEXT", alias = "plaintext")]
    Plaintext,
    /// TLS.
    #[serde(rename = "SSL", alias = "ssl")]
    Ssl,
    /// SASL without TLS.
    #[serde(rename = "SASL_PLAINTEXT", alias = "sasl_plaintext")]
    SaslPlaintext,
    /// SASL over TLS.
    #[serde(rename = "SASL_SSL", alias = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
    /// Whether SASL credentials are used.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// `kafka.security.sasl:`.
#[derive(Debug, Clone, Deserialize)]
pub struct SaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password (use `${ENV_VAR}`).
    pub password: String,
}

/// SASL mechanism.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    /// SASL/PLAIN.
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM-SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM-SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// `kafka.security.tls:` — PEM files.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsConfig {
    /// CA bundle to verify the brokers.
    #[serde(default)]
    pub ca: Option<String>,
    /// Client certificate (mutual TLS).
    #[serde(default)]
    pub cert: Option<String>,
    /// Client key (mutual TLS).
    #[serde(default)]
    pub key: Option<String>,
    /// Password of the client key.
    #[serde(default)]
    pub key_password: Option<String>,
    /// Check that the broker certificate matches its host name.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

fn yes() -> bool {
    true
}

/// `kafka.producer:` — typed settings for the common producer knobs.
#[derive(Debug, Clone, Deserialize)]
pub struct ProducerConfig {
    /// `all`, `1` or `0`.
    #[serde(default)]
    pub acks: Acks,
    /// Idempotent producer (no duplicates from retries; forces acks=all).
    #[serde(default = "yes")]
    pub idempotence: bool,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// How long to wait to fill a batch.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Maximum batch size in bytes.
    #[serde(default = "default_batch_size")]
    pub batch_size: u64,
    /// How long a record may wait for the broker before it is given up (to the DLQ).
    /// `0` (the default) means never: during an outage records wait and sources are blocked.
    #[serde(default, with = "humantime_serde")]
    pub message_timeout: Duration,
    /// Timeout of one produce request.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Bound of records accepted and not yet acknowledged by Kafka.
    #[serde(default = "default_max_buffered_records")]
    pub max_buffered_records: u64,
    /// Bound of bytes accepted and not yet acknowledged by Kafka (e.g. `100MB`).
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: ByteSize,
    /// What to do when the buffer is full: `block` the source or `drop_newest`.
    #[serde(default)]
    pub on_full: OnFull,
    /// Any other librdkafka producer property, passed through as is.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::default(),
            idempotence: true,
            compression: Compression::default(),
            linger_ms: default_linger_ms(),
            batch_size: default_batch_size(),
            message_timeout: Duration::ZERO,
            request_timeout: default_request_timeout(),
            max_buffered_records: default_max_buffered_records(),
            max_buffered_bytes: default_max_buffered_bytes(),
            on_full: OnFull::default(),
            options: BTreeMap::new(),
        }
    }
}

fn default_linger_ms() -> u64 {
    10
}
fn default_batch_size() -> u64 {
    131_072
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_buffered_records() -> u64 {
    10_000
}
fn default_max_buffered_bytes() -> ByteSize {
    ByteSize(100 * 1024 * 1024)
}

/// Producer acknowledgement level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Acks {
    /// Every in-sync replica.
    #[default]
    All,
    /// The leader only.
    One,
    /// None.
    Zero,
}

impl Acks {
    /// The librdkafka spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::One => "1",
            Acks::Zero => "0",
        }
    }
}

impl<'de> Deserialize<'de> for Acks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        let s = match &v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        match s.as_str() {
            "all" | "-1" => Ok(Acks::All),
            "1" => Ok(Acks::One),
            "0" => Ok(Acks::Zero),
            _ => Err(serde::de::Error::custom(format!(
                "acks must be `all`, `1` or `0`, not {}",
                yaml_brief(&v)
            ))),
        }
    }
}

/// Producer compression codec.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4.
    Lz4,
    /// zstd.
    #[default]
    Zstd,
}

impl Compression {
    /// The librdkafka spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// What a pipeline does when the producer buffer is full.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Wait for room: the source stops reading (backpressure).
    #[default]
    Block,
    /// Drop the record that does not fit, count it and acknowledge it as dropped.
    DropNewest,
}

/// A byte count: a number, or a string like `100MB`, `64KiB`, `1GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `100MB`, `64 KiB`, `1024`.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. `100MB` or `1048576`"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "k" => 1000,
            "kib" => 1024,
            "mb" | "m" => 1000 * 1000,
            "mib" => 1024 * 1024,
            "gb" | "g" => 1000 * 1000 * 1000,
            "gib" => 1024 * 1024 * 1024,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`; use B, KB, KiB, MB, MiB, GB or GiB"
                ))
            }
        };
        Ok(ByteSize((num * mult as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        match &v {
            serde_yaml::Value::Number(n) => n.as_u64().map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!("size must be a whole number, not {n}"))
            }),
            serde_yaml::Value::String(s) => ByteSize::parse(s).map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(format!(
                "size must be a number or a string like `100MB`, not {}",
                yaml_brief(&v)
            ))),
        }
    }
}

fn yaml_brief(v: &serde_yaml::Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `metrics:` — Prometheus endpoint and health checks.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsConfig {
    /// Serve metrics at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
    /// Constant labels put on every series.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: default_metrics_listen(),
            labels: BTreeMap::new(),
        }
    }
}

fn default_metrics_listen() -> String {
    "0.0.0.0:9000".into()
}

/// `dlq:` — where rejected input goes.
#[derive(Debug, Clone, Deserialize)]
pub struct DlqConfig {
    /// Topic of the dead-letter queue.
    #[serde(default = "default_dlq_topic")]
    pub topic: String,
}

impl Default for DlqConfig {
    fn default() -> Self {
        DlqConfig {
            topic: default_dlq_topic(),
        }
    }
}

fn default_dlq_topic() -> String {
    "events.v1.dlq".into()
}

/// One pipeline: source → transforms → topic/key/headers → format → Kafka.
#[derive(Debug, Clone, Deserialize)]
pub struct PipelineConfig {
    /// Unique name, used in metrics, logs and DLQ headers.
    pub name: String,
    /// Where events come from.
    pub source: SourceConfig,
    /// Changes applied to each event, in order.
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
    /// Target topic: a fixed name or a template like `ticks.${exchange}`.
    pub topic: String,
    /// Record key: a template like `${exchange}|${symbol}`, or a fixed string. None: no key.
    #[serde(default)]
    pub key: Option<String>,
    /// Record headers: name → template.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `json` (validated and re-serialized when transformed), `avro` (through the schema
    /// registry, Confluent wire format) or `raw` (bytes as received).
    #[serde(default)]
    pub format: Format,
    /// With `format: avro`: how the value's subject is named.
    #[serde(default)]
    pub avro: AvroConfig,
    /// How the rendered key is written: `string` (its UTF-8 bytes), `json` (a JSON string) or
    /// `avro` (subject `<topic>-key`, Confluent wire format).
    #[serde(default)]
    pub key_format: KeyFormat,
}

/// `pipelines[].avro:` — the subject whose latest version encodes the values.
#[derive(Debug, Clone, Default, Deserialize)]
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

pub use crate::registry::SubjectStrategy;

/// PEM files for a TLS client: `{ca_file, cert_file, key_file}` (the schema registry's and an
/// MQTT broker's `tls:`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TlsFiles {
    /// CA bundle trusted in addition to (registry) or instead of (MQTT) the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Client certificate (mutual TLS).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// Client key (mutual TLS); PKCS#8 (`BEGIN PRIVATE KEY`) for the registry.
    #[serde(default)]
    pub key_file: Option<String>,
}

/// How keys are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
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

/// A source; exactly one kind per pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceConfig {
    /// WebSocket client fan-in: one connection per URL.
    Websocket(WebsocketSourceConfig),
    /// A WebSocket server that devices connect to (optionally speaking WRP).
    DeviceWebsocket(crate::source::device::DeviceSourceConfig),
    /// `POST /ingest/{name}` on the `http:` server.
    Http(HttpSourceConfig),
    /// MQTT subscriber with acks after Kafka (see `source/mqtt.rs`).
    Mqtt(MqttSourceConfig),
}

/// `source.websocket:`.
#[derive(Debug, Clone, Deserialize)]
pub struct WebsocketSourceConfig {
    /// `ws://` or `wss://` URLs, read concurrently.
    pub urls: Vec<String>,
    /// Messages sent after every (re)connect: strings as is, mappings as JSON.
    #[serde(default)]
    pub subscribe: Vec<serde_json::Value>,
    /// Interval of WebSocket pings (0 = none).
    #[serde(default = "default_ping", with = "humantime_serde")]
    pub ping_interval: Duration,
    /// No message for this long → reconnect (counted in `…_messages_timeout_total`).
    #[serde(default = "default_ws_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First reconnect delay; doubled up to `backoff_max`, with jitter.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Timeout of the TCP + WebSocket handshake.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

fn default_ping() -> Duration {
    Duration::from_secs(20)
}
fn default_ws_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A transform; one kind per list item.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransformConfig {
    /// Move a value from one JSON pointer to another.
    Rename {
        /// Source pointer, e.g. `/tradeCredential/@context`.
        from: String,
        /// Target pointer, e.g. `/tradeCredential/context`.
        to: String,
        /// Fail (DLQ, `transform_failed`) when `from` is missing instead of skipping.
        #[serde(default)]
        required: bool,
    },
    /// Set a value at a JSON pointer (intermediate objects are created).
    Set {
        /// Target pointer.
        path: String,
        /// Any JSON value.
        value: serde_json::Value,
    },
    /// Remove the value at a JSON pointer (missing is fine).
    Remove {
        /// Pointer to remove.
        path: String,
    },
}

impl Config {
    /// Reads, interpolates, parses and validates a config file, reporting every error found.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Config::from_yaml_str(&text, &file, &|k| std::env::var(k).ok())
    }

    /// Parses config text; `env` looks up environment variables.
    pub fn from_yaml_str(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let fail = |errors: Vec<ConfigError>| ConfigErrors {
            file: file.to_string(),
            errors,
        };
        let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
            fail(vec![ConfigError {
                path: String::new(),
                message: format!("not valid YAML: {e}"),
            }])
        })?;
        if value.is_null() {
            value = serde_yaml::Value::Mapping(Default::default());
        }
        let mut errors = Vec::new();
        interpolate_env(&mut value, env, &mut errors);

        // serde_yaml's Value only reads enums written as YAML tags; as JSON the usual
        // `websocket: {...}` mapping form works.
        let value: serde_json::Value = match serde_json::to_value(&value) {
            Ok(v) => v,
            Err(e) => {
                errors.push(ConfigError {
                    path: String::new(),
                    message: format!("unsupported YAML (keys must be strings): {e}"),
                });
                return Err(fail(errors));
            }
        };
        let original = value.clone();
        let mut unknown = Vec::new();
        let mut on_unknown = |p: serde_ignored::Path| {
            let mut segs = Vec::new();
            ignored_segments(&p, &mut segs);
            unknown.push(segs)
        };
        let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
        let parsed: Result<Config, _> = serde_path_to_error::deserialize(de);
        for segs in unknown {
            errors.push(ConfigError {
                path: resolve_path(&segs, &original),
                message: "unknown key; remove it or check its spelling against the configuration reference in README.md".into(),
            });
        }
        let config = match parsed {
            Ok(c) => c,
            Err(e) => {
                let path = e.path().to_string();
                errors.push(ConfigError {
                    path: if path == "." { String::new() } else { path },
                    message: e.into_inner().to_string(),
                });
                return Err(fail(errors));
            }
        };
        validate::validate(&config, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(errors))
        }
    }
}

enum IgnoredSeg {
    Key(String),
    Index(usize),
    Variant,
}

fn ignored_segments(p: &serde_ignored::Path, out: &mut Vec<IgnoredSeg>) {
    use serde_ignored::Path;
    match p {
        Path::Root => {}
        Path::Seq { parent, index } => {
            ignored_segments(parent, out);
            out.push(IgnoredSeg::Index(*index));
        }
        Path::Map { parent, key } => {
            ignored_segments(parent, out);
            out.push(IgnoredSeg::Key(key.clone()));
        }
        Path::NewtypeVariant { parent } => {
            ignored_segments(parent, out);
            out.push(IgnoredSeg::Variant);
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } => ignored_segments(parent, out),
    }
}

/// `pipelines[0].source.websocket.foo`, the shape serde_path_to_error prints. serde_ignored
/// does not name enum variants, so they are read back from the document itself.
fn resolve_path(segs: &[IgnoredSeg], doc: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut cur = Some(doc);
    let push_key = |out: &mut String, k: &str| {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(k);
    };
    for seg in segs {
        match seg {
            IgnoredSeg::Key(k) => {
                push_key(&mut out, k);
                cur = cur.and_then(|v| v.get(k.as_str()));
            }
            IgnoredSeg::Index(i) => {
                out.push_str(&format!("[{i}]"));
                cur = cur.and_then(|v| v.get(*i));
            }
            IgnoredSeg::Variant => {
                if let Some((name, inner)) = cur
                    .and_then(|v| v.as_object())
                    .and_then(|m| m.iter().next())
                {
                    push_key(&mut out, name);
                    cur = Some(inner);
                }
            }
        }
    }
    out
}

/// Parses YAML into any config type via JSON, so that enums read in the `kind: {...}` form.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    let v: serde_yaml::Value = serde_yaml::from_str(text)?;
    Ok(serde_json::from_value(serde_json::to_value(v)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

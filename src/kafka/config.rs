//! `kafka:` and `dlq:` — brokers, security, the producer's settings and the dead-letter topic,
//! with their checks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::{yaml_brief, yes, At, ByteSize, ConfigError, Secret};

/// `kafka:` — brokers, security and producer settings.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, each `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: Vec<String>,
    /// Client id the brokers see.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// TLS and SASL; none = plaintext.
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

/// `kafka.security:` — how to talk to the brokers: TLS, SASL or both.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SecurityConfig {
    /// `PLAINTEXT`, `SSL` (TLS), `SASL_PLAINTEXT` or `SASL_SSL` (SASL over TLS); lowercase
    /// spellings work too.
    #[serde(default)]
    pub protocol: SecurityProtocol,
    /// SASL credentials: needed by the `SASL_*` protocols, refused with the others.
    #[serde(default)]
    pub sasl: Option<SaslConfig>,
    /// TLS files (for SSL and SASL_SSL).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Kafka security protocol.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[schemars(transform = accept_aliases)]
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

/// The schema of [`SecurityProtocol`] takes serde's `alias` (lowercase) spellings too, after the
/// documented one.
fn accept_aliases(schema: &mut schemars::Schema) {
    let variants = schema.get_mut("oneOf").and_then(|v| v.as_array_mut());
    for v in variants
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_object_mut())
    {
        if let Some(serde_json::Value::String(name)) = v.remove("const") {
            v.insert(
                "enum".into(),
                serde_json::json!([name, name.to_lowercase()]),
            );
        }
    }
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

/// `kafka.security.sasl:` — the SASL mechanism and credentials.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password (write `${ENV_VAR}` rather than the secret).
    pub password: Secret,
}

/// Shown redacted: a config printed with `{:?}` (a log line, a test failure) keeps the secret.
impl std::fmt::Debug for SaslConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslConfig")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// SASL mechanism.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
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

/// `kafka.security.tls:` — PEM files and host name verification.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle (PEM) to verify the brokers.
    #[serde(default)]
    pub ca: Option<String>,
    /// Client certificate (PEM) for mutual TLS; goes with `key`.
    #[serde(default)]
    pub cert: Option<String>,
    /// Client key (PEM) for mutual TLS; goes with `cert`.
    #[serde(default)]
    pub key: Option<String>,
    /// Password of the client key.
    #[serde(default)]
    pub key_password: Option<Secret>,
    /// Check that the broker certificate matches its host name.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

/// Shown with the key password redacted.
impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("key_password", &self.key_password)
            .field("verify_hostname", &self.verify_hostname)
            .finish()
    }
}

/// `kafka.producer:` — typed settings for the common producer knobs.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProducerConfig {
    /// `all` (every in-sync replica; `-1` too), `1` (the leader) or `0` (none); idempotence
    /// needs `all`, and `0` is refused when HTTP or MQTT clients are answered (it cannot know
    /// that Kafka holds a record).
    #[serde(default)]
    pub acks: Acks,
    /// Idempotent producer: no duplicates from retries. Needs `acks: all`; set `false` to use
    /// acks `1` or `0`.
    #[serde(default = "yes")]
    pub idempotence: bool,
    /// Compression codec: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// How long to wait to fill a batch, in milliseconds (0 to 900000).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Maximum batch size in bytes (1 to 2147483647).
    #[serde(default = "default_batch_size")]
    pub batch_size: u64,
    /// How long a record may wait for the broker before it is given up (to the DLQ); longer than
    /// `linger_ms`. `0s` (the default) means never: during an outage records wait and sources
    /// are blocked.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default, with = "humantime_serde")]
    pub message_timeout: Duration,
    /// Timeout of one produce request.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Bound of records accepted and not yet acknowledged by Kafka (1 to 2147483647).
    #[serde(default = "default_max_buffered_records")]
    pub max_buffered_records: u64,
    /// Bound of bytes accepted and not yet acknowledged by Kafka, e.g. `100MB` (1KiB to 2TiB).
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: ByteSize,
    /// What a pipeline does when the buffer is full: `block` (backpressure: its source stops
    /// reading) or `drop_newest` (the record is dropped and counted).
    #[serde(default)]
    pub on_full: OnFull,
    /// Any other librdkafka producer property, passed through as is, e.g.
    /// `{"queue.buffering.backpressure.threshold": "2"}`; a key that a typed field owns (`acks`,
    /// `linger.ms`, ...) is refused with the field to use.
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

// Written back (as the schema's default) in the librdkafka spelling the loader reads.
impl serde::Serialize for Acks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl schemars::JsonSchema for Acks {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Acks".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // What the hand-written Deserialize takes: YAML strings and numbers alike.
        schemars::json_schema!({
            "description": "Producer acknowledgement level: `all` (or `-1`: every in-sync replica), `1` (the leader only) or `0` (none); a string or a number.",
            "enum": ["all", "-1", "1", "0", -1, 1, 0],
        })
    }
}

/// Producer compression codec.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
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
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Wait for room: the source stops reading (backpressure).
    #[default]
    Block,
    /// Drop the record that does not fit, count it and acknowledge it as dropped.
    DropNewest,
}

/// `dlq:` — where rejected input goes.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DlqConfig {
    /// Topic of the dead-letter queue (records with their original bytes and the reason).
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

/// librdkafka producer properties that a typed field owns; setting them in `options` is refused.
const TYPED_PRODUCER_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.brokers"),
    ("metadata.broker.list", "kafka.brokers"),
    ("client.id", "kafka.client_id"),
    ("acks", "kafka.producer.acks"),
    ("request.required.acks", "kafka.producer.acks"),
    ("enable.idempotence", "kafka.producer.idempotence"),
    ("compression.type", "kafka.producer.compression"),
    ("compression.codec", "kafka.producer.compression"),
    ("linger.ms", "kafka.producer.linger_ms"),
    ("queue.buffering.max.ms", "kafka.producer.linger_ms"),
    ("batch.size", "kafka.producer.batch_size"),
    ("message.timeout.ms", "kafka.producer.message_timeout"),
    ("delivery.timeout.ms", "kafka.producer.message_timeout"),
    ("request.timeout.ms", "kafka.producer.request_timeout"),
    (
        "queue.buffering.max.messages",
        "kafka.producer.max_buffered_records",
    ),
    (
        "queue.buffering.max.kbytes",
        "kafka.producer.max_buffered_bytes",
    ),
    ("security.protocol", "kafka.security.protocol"),
    ("sasl.mechanism", "kafka.security.sasl.mechanism"),
    ("sasl.mechanisms", "kafka.security.sasl.mechanism"),
    ("sasl.username", "kafka.security.sasl.username"),
    ("sasl.password", "kafka.security.sasl.password"),
    ("ssl.ca.location", "kafka.security.tls.ca"),
    ("ssl.certificate.location", "kafka.security.tls.cert"),
    ("ssl.key.location", "kafka.security.tls.key"),
    ("ssl.key.password", "kafka.security.tls.key_password"),
    ("dr_msg_cb", "kgate's delivery handling"),
    ("dr_cb", "kgate's delivery handling"),
];

impl KafkaConfig {
    /// Checks `kafka:` (at `at`), collecting every problem.
    pub fn validate(&self, at: At<'_>, errors: &mut Vec<ConfigError>) {
        let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
        if self.brokers.is_empty() {
            err(
                at.field("brokers"),
                "no brokers; list at least one `host:port`, e.g. [\"127.0.0.1:9092\"]".into(),
            );
        }
        for (i, b) in self.brokers.iter().enumerate() {
            let ok = b
                .rsplit_once(':')
                .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                .unwrap_or(false);
            if !ok {
                err(
                    at.field(&format!("brokers[{i}]")),
                    format!("`{b}` is not `host:port`; write e.g. `127.0.0.1:9092`"),
                );
            }
        }
        if let Some(sec) = &self.security {
            if sec.protocol.uses_sasl() && sec.sasl.is_none() {
                err(
                at.field("security.sasl"),
                format!(
                    "protocol {} needs SASL credentials; add `sasl: {{ mechanism: SCRAM-SHA-512, username: ..., password: ${{KAFKA_PASSWORD}} }}`",
                    sec.protocol.as_str().to_uppercase()
                ),
            );
            }
            if !sec.protocol.uses_sasl() && sec.sasl.is_some() {
                err(
                    at.field("security.sasl"),
                    format!(
                    "SASL credentials are ignored with protocol {}; use SASL_SSL or SASL_PLAINTEXT",
                    sec.protocol.as_str().to_uppercase()
                ),
                );
            }
            if let Some(tls) = &sec.tls {
                for (field, file) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                    if let Some(f) = file {
                        if !std::path::Path::new(f).exists() {
                            err(
                                at.field(&format!("security.tls.{field}")),
                                format!("file `{f}` does not exist"),
                            );
                        }
                    }
                }
                if tls.cert.is_some() != tls.key.is_some() {
                    err(
                        at.field("security.tls"),
                        "`cert` and `key` go together for mutual TLS; set both or neither".into(),
                    );
                }
            }
        }
        let p = &self.producer;
        for key in p.options.keys() {
            if let Some((_, owner)) = TYPED_PRODUCER_KEYS.iter().find(|(k, _)| k == key) {
                err(
                    at.field(&format!("producer.options.{key}")),
                    format!("conflicts with {owner}; set it there instead"),
                );
            }
        }
        if p.max_buffered_records == 0 || p.max_buffered_records > 2_147_483_647 {
            err(
                at.field("producer.max_buffered_records"),
                format!(
                    "{} is out of range; use 1 to 2147483647",
                    p.max_buffered_records
                ),
            );
        }
        if p.max_buffered_bytes.0 < 1024 || p.max_buffered_bytes.0 / 1024 > 2_147_483_647 {
            err(
                at.field("producer.max_buffered_bytes"),
                format!(
                    "{} bytes is out of range; use 1KiB to 2TiB",
                    p.max_buffered_bytes.0
                ),
            );
        }
        if p.batch_size == 0 || p.batch_size > 2_147_483_647 {
            err(
                at.field("producer.batch_size"),
                format!("{} is out of range; use 1 to 2147483647", p.batch_size),
            );
        }
        if p.linger_ms > 900_000 {
            err(
                at.field("producer.linger_ms"),
                format!("{} is out of range; use 0 to 900000", p.linger_ms),
            );
        }
        if !p.message_timeout.is_zero() && p.message_timeout.as_millis() <= p.linger_ms as u128 {
            err(
                at.field("producer.message_timeout"),
                "must be longer than linger_ms (or 0 for no timeout)".into(),
            );
        }
        if p.idempotence && p.acks != Acks::All {
            err(
                at.field("producer.acks"),
                format!(
                    "idempotence needs acks=all, not {}; set `idempotence: false` to use acks={}",
                    p.acks.as_str(),
                    p.acks.as_str()
                ),
            );
        }
    }
}

impl DlqConfig {
    /// Checks `dlq:` (at `at`).
    pub fn validate(&self, at: At<'_>, errors: &mut Vec<ConfigError>) {
        if !super::valid_topic_name(&self.topic) {
            errors.push(ConfigError::new(
                at.field("topic"),
                format!(
                    "`{}` is not a valid topic name; use letters, digits, `.`, `_` and `-`",
                    self.topic
                ),
            ));
        }
    }
}

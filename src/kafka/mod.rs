//! Kafka: the `kafka:` and `dlq:` sections, the client settings every client shares (producer,
//! consumers, admin), its log and error handling, and metadata checks. The producing sink is in
//! `sink::kafka`.

mod admin;
mod config;
mod diagnose;

pub use admin::{fetch_metadata, metadata_blocking, BrokerInfo, MetadataError};
pub use config::{
    Acks, Compression, DlqConfig, KafkaConfig, OnFull, ProducerConfig, SaslConfig, SaslMechanism,
    SecurityConfig, SecurityProtocol, TlsConfig,
};
pub use diagnose::{report as report_diagnosis, Diagnosis};

/// Whether `name` is a legal Kafka topic name.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

/// Whether `name` matches a pattern: exact, `prefix*`, or `*`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether `pattern` is one [`pattern_matches`] takes for topics: `*`, a legal topic name, or
/// one followed by `*` (`ticks.*`); the problem in words when not.
pub fn check_topic_pattern(pattern: &str) -> Result<(), String> {
    let fixed = pattern.strip_suffix('*').unwrap_or(pattern);
    if fixed.is_empty() && !pattern.is_empty() {
        return Ok(());
    }
    if fixed.contains('*') {
        return Err(format!(
            "`{pattern}`: `*` may only end a pattern, e.g. `ticks.*`"
        ));
    }
    let legal = fixed.len() <= 249
        && fixed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-');
    if fixed.is_empty() || !legal {
        return Err(format!(
            "`{pattern}` is not a topic pattern; write a topic name, `prefix*` or `*`"
        ));
    }
    Ok(())
}

/// Topics kgate writes only when a pattern names them explicitly: the schema registry's
/// `_schemas`, Kafka's internal `__*` and Kafka Connect's `connect-*` (the DLQ topic too, see
/// [`TopicAllow::reserve`]).
pub fn reserved_topic(name: &str) -> bool {
    name == "_schemas" || name.starts_with("__") || name.starts_with("connect-")
}

/// Which topics a writer (a pipeline's rendered topic, an HTTP token) may write: patterns
/// ([`pattern_matches`]), except that a reserved topic ([`reserved_topic`], the DLQ topic)
/// matches only a pattern within the reserved names (`_schemas`, `connect-*`, `__*`, the DLQ
/// topic's own name), never a broader one such as `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicAllow {
    patterns: Vec<String>,
    reserved: Vec<String>,
}

impl TopicAllow {
    /// The topics `patterns` match.
    pub fn new(patterns: Vec<String>) -> TopicAllow {
        TopicAllow {
            patterns,
            reserved: Vec::new(),
        }
    }

    /// Every topic but the reserved ones (`*`).
    pub fn any() -> TopicAllow {
        TopicAllow::new(vec!["*".into()])
    }

    /// Reserves one more name (the DLQ topic): written only when a pattern names it.
    pub fn reserve(&mut self, name: &str) {
        if !name.is_empty() && !self.reserved.iter().any(|r| r == name) {
            self.reserved.push(name.to_string());
        }
    }

    /// Whether `name` is reserved.
    pub fn is_reserved(&self, name: &str) -> bool {
        reserved_topic(name) || self.reserved.iter().any(|r| r == name)
    }

    /// Whether `name` may be written.
    pub fn allows(&self, name: &str) -> bool {
        self.allows_by(&self.patterns, name)
    }

    /// Whether other `patterns` (an HTTP token's) allow `name`, with this list's reserved
    /// names.
    pub fn allows_by(&self, patterns: &[String], name: &str) -> bool {
        let reserved = self.is_reserved(name);
        patterns.iter().any(|p| {
            pattern_matches(p, name)
                && (!reserved || self.is_reserved(p.strip_suffix('*').unwrap_or(p)))
        })
    }

    /// The patterns, as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext};

/// How often the same kind of client error is logged: librdkafka reports a down broker many
/// times a second, which would drown everything else.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

/// Logs librdkafka's messages at debug and its errors at warn, at most once per
/// [`ERROR_LOG_EVERY`] (with the number suppressed meanwhile). An error that the settings cause
/// (a refused login, a failed TLS handshake) is logged as what to fix instead (see
/// `diagnose`), at error level, and the broker-down errors that follow from it are not.
#[derive(Default)]
pub struct ErrorLog {
    /// The settings the client was made with, to name what to fix; none = plain reports.
    kafka: Option<KafkaConfig>,
    last: Mutex<Option<(Instant, u64)>>,
}

impl ErrorLog {
    /// The error log of a client made with `k`.
    pub fn new(k: &KafkaConfig) -> ErrorLog {
        ErrorLog {
            kafka: Some(k.clone()),
            last: Mutex::default(),
        }
    }

    /// A librdkafka log line.
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", "{fac}: {message}")
            }
            _ => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    /// A client error (broker down, authentication failed, ...).
    pub fn error(&self, error: KafkaError, reason: &str) {
        if let Some(k) = &self.kafka {
            if let Some(d) = diagnose::diagnose(k, &error, reason) {
                diagnose::report(&d);
                return;
            }
        }
        let mut last = self.last.lock().expect("error log lock");
        if diagnose::recently_reported() && is_broker_down(&error) {
            // The connection a refused login or handshake closed: already said.
            if let Some((_, suppressed)) = &mut *last {
                *suppressed += 1;
            }
            return;
        }
        match &mut *last {
            Some((at, suppressed)) if at.elapsed() < ERROR_LOG_EVERY => *suppressed += 1,
            _ => {
                let suppressed = last.map(|(_, n)| n).unwrap_or(0);
                if suppressed > 0 {
                    tracing::warn!(target: "librdkafka", "Kafka client: {error}: {reason} ({suppressed} similar errors in the last {ERROR_LOG_EVERY:?} not shown)");
                } else {
                    tracing::warn!(target: "librdkafka", "Kafka client: {error}: {reason}");
                }
                *last = Some((Instant::now(), 0));
            }
        }
    }
}

/// Errors that follow from a broker being unreachable, whatever the cause.
fn is_broker_down(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(C::AllBrokersDown | C::BrokerTransportFailure)
    )
}

/// How many client errors a [`QuietContext`] keeps for its caller.
const QUIET_ERRORS_KEPT: usize = 16;

/// The context of kgate's short-lived clients (metadata, admin, tail): quiet logging. It keeps
/// the last client errors, so that the caller can say why a request timed out (a refused login
/// is reported there, not by the request).
#[derive(Default)]
pub struct QuietContext {
    log: ErrorLog,
    errors: Mutex<Vec<(KafkaError, String)>>,
}

impl QuietContext {
    /// What to fix, if one of the errors seen so far comes from the settings `k`.
    pub fn diagnosis(&self, k: &KafkaConfig) -> Option<Diagnosis> {
        let errors = self.errors.lock().expect("quiet context lock");
        errors
            .iter()
            .rev()
            .find_map(|(e, reason)| diagnose::diagnose(k, e, reason))
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        // The caller reports what failed (a metadata fetch times out with a clear message).
        let mut errors = self.errors.lock().expect("quiet context lock");
        if errors.len() == QUIET_ERRORS_KEPT {
            errors.remove(0);
        }
        errors.push((error, reason.to_string()));
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// Settings every kgate Kafka client shares: brokers, client id, TLS and SASL.
pub fn base_client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", k.brokers.join(","))
        .set("client.id", &k.client_id)
        // librdkafka logs every failed connect; kgate reports broker trouble itself.
        .set("log.connection.close", "false");
    if let Some(sec) = &k.security {
        apply_security(&mut c, sec);
    }
    c
}

fn apply_security(c: &mut ClientConfig, sec: &SecurityConfig) {
    c.set("security.protocol", sec.protocol.as_str());
    if let Some(s) = &sec.sasl {
        c.set("sasl.mechanism", s.mechanism.as_str())
            .set("sasl.username", &s.username)
            .set("sasl.password", &s.password);
    }
    if let Some(t) = &sec.tls {
        if let Some(ca) = &t.ca {
            c.set("ssl.ca.location", ca);
        }
        if let Some(cert) = &t.cert {
            c.set("ssl.certificate.location", cert);
        }
        if let Some(key) = &t.key {
            c.set("ssl.key.location", key);
        }
        if let Some(pw) = &t.key_password {
            c.set("ssl.key.password", pw);
        }
        c.set(
            "ssl.endpoint.identification.algorithm",
            if t.verify_hostname { "https" } else { "none" },
        );
    }
}

/// The largest input a kgate source takes with its default limits: the WebSocket client's
/// message limit (64 MiB). MQTT `max_packet_size` and device `max_frame` default to 1 MiB,
/// `http.max_body` to 10 MB. The producer is made from `kafka:` alone, before the sources, so
/// it plans for this; with a source limit set higher, a bigger record is refused as
/// `too_large` (into the DLQ), unless `kafka.producer.options` sets `message.max.bytes`.
pub const LARGEST_INPUT: u64 = 64 * 1024 * 1024;

/// Room for a record's key, headers and framing on top of the largest input.
const RECORD_HEADROOM: u64 = 64 * 1024;

/// librdkafka's default `message.max.bytes`; kgate never sets it lower unless the producer
/// buffer is smaller.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: u64 = 1_000_000;

/// The most kgate sets `message.max.bytes` to: below the broker's `socket.request.max.bytes`
/// (100 MiB by default), past which the broker closes the connection instead of answering, and
/// librdkafka would retry that request forever (`message_timeout: 0s`).
const MESSAGE_MAX_BYTES_CEILING: u64 = 100 * 1024 * 1024 - 1024 * 1024;

/// The producer's `message.max.bytes` when `kafka.producer.options` does not set it: room for
/// the largest record a source can hand over (`largest_input` plus headroom for key and
/// headers), at least librdkafka's default, at most the producer buffer (`buffer_bytes`) and
/// 99 MiB (under the broker's request limit).
///
/// Why raise the producer's limit rather than refuse big input at the edge: librdkafka's
/// default (1,000,000 bytes) is below what the sources take (MQTT `max_packet_size` and device
/// `max_frame` 1 MiB, `http.max_body` 10 MB, the WebSocket client 64 MiB), so records the
/// topic would take were refused in kgate, and their DLQ copies with them. The limit that
/// counts is the topic's `max.message.bytes` at the broker: set per topic, checked on the
/// compressed batch, and unknown at the edge. Refusing at the edge would also need an answer
/// from every source, and MQTT has none that neither loops (not acked: the broker resends) nor
/// loses (acked: gone). So the producer takes what a source took and the broker judges; a
/// record Kafka still refuses as too large goes to the DLQ as `too_large` with its first bytes,
/// its size and its sha256 (see `sink::kafka`), and the source gets that answer.
///
/// The buffer bound: a record larger than the whole producer buffer would wait for room
/// forever; within `message.max.bytes` it is refused at once as too large instead.
pub fn message_max_bytes(largest_input: u64, buffer_bytes: u64) -> u64 {
    largest_input
        .saturating_add(RECORD_HEADROOM)
        .clamp(LIBRDKAFKA_MESSAGE_MAX_BYTES, MESSAGE_MAX_BYTES_CEILING)
        .min(buffer_bytes)
        .max(1000)
}

/// The producer's settings: the shared ones, the typed producer fields, then `options`.
pub fn producer_client_config(k: &KafkaConfig) -> ClientConfig {
    let p = &k.producer;
    let buffer_kbytes = (p.max_buffered_bytes.0 / 1024).max(1);
    let mut c = base_client_config(k);
    c.set("acks", p.acks.as_str())
        .set("enable.idempotence", p.idempotence.to_string())
        .set("compression.type", p.compression.as_str())
        .set("linger.ms", p.linger_ms.to_string())
        .set("batch.size", p.batch_size.to_string())
        // 0 = never expire: during an outage records wait (and sources are blocked by the
        // bounded buffer) instead of timing out after librdkafka's default 300 s and being lost.
        .set(
            "message.timeout.ms",
            p.message_timeout.as_millis().to_string(),
        )
        .set(
            "request.timeout.ms",
            p.request_timeout.as_millis().max(1).to_string(),
        )
        .set(
            "queue.buffering.max.messages",
            p.max_buffered_records.to_string(),
        )
        .set("queue.buffering.max.kbytes", buffer_kbytes.to_string());
    if !p.options.contains_key("message.max.bytes") {
        c.set(
            "message.max.bytes",
            message_max_bytes(LARGEST_INPUT, buffer_kbytes * 1024).to_string(),
        );
    }
    for (key, value) in &p.options {
        c.set(key, value);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_defaults_and_passthrough() {
        let cfg = crate::gateway::Config::from_yaml_str(
            "kafka:\n  producer:\n    options: {queue.buffering.backpressure.threshold: '5'}\npipelines: [{name: p, source: {websocket: {urls: ['ws://h:1/ws']}}, topic: t}]\n",
            "test.yaml",
            &|_| None,
        )
        .unwrap();
        let c = producer_client_config(&cfg.kafka);
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("compression.type"), Some("zstd"));
        assert_eq!(c.get("linger.ms"), Some("10"));
        assert_eq!(c.get("batch.size"), Some("131072"));
        assert_eq!(c.get("message.timeout.ms"), Some("0"));
        assert_eq!(c.get("queue.buffering.max.messages"), Some("10000"));
        assert_eq!(c.get("queue.buffering.max.kbytes"), Some("102400"));
        assert_eq!(c.get("queue.buffering.backpressure.threshold"), Some("5"));
        assert_eq!(c.get("message.max.bytes"), Some("67174400"));
    }

    #[test]
    fn message_max_bytes_covers_the_sources_within_kafkas_bounds() {
        let mib = 1024 * 1024;
        let buffer = 100 * mib;
        assert_eq!(
            message_max_bytes(LARGEST_INPUT, buffer),
            64 * mib + 64 * 1024
        );
        // Never below librdkafka's default, unless the buffer is smaller.
        assert_eq!(message_max_bytes(1000, buffer), 1_000_000);
        assert_eq!(message_max_bytes(LARGEST_INPUT, 512 * 1024), 512 * 1024);
        // Below the broker's request limit.
        assert_eq!(message_max_bytes(1 << 30, 1 << 40), 99 * mib);
        assert_eq!(message_max_bytes(0, 1024), 1024);
    }

    #[test]
    fn message_max_bytes_follows_the_buffer_and_yields_to_options() {
        let load = |producer: &str| {
            crate::gateway::Config::from_yaml_str(
                &format!("kafka:\n  producer: {producer}\npipelines: [{{name: p, source: {{websocket: {{urls: ['ws://h:1/ws']}}}}, topic: t}}]\n"),
                "test.yaml",
                &|_| None,
            )
            .unwrap()
        };
        let c = producer_client_config(&load("{max_buffered_bytes: 4MiB}").kafka);
        assert_eq!(c.get("message.max.bytes"), Some("4194304"));
        let c = producer_client_config(&load("{options: {message.max.bytes: '2000000'}}").kafka);
        assert_eq!(c.get("message.max.bytes"), Some("2000000"));
    }

    #[test]
    fn debug_output_keeps_the_secrets() {
        let cfg = crate::gateway::Config::from_yaml_str(
            "kafka:\n  security: {protocol: SASL_SSL, sasl: {mechanism: PLAIN, username: app, password: pw-1234}, tls: {key_password: kp-5678}}\npipelines: [{name: p, source: {websocket: {urls: ['ws://h:1/ws']}}, topic: t}]\n",
            "test.yaml",
            &|_| None,
        )
        .unwrap();
        let shown = format!("{:?}", cfg.kafka);
        assert!(shown.contains("username: \"app\""), "{shown}");
        assert!(
            !shown.contains("pw-1234") && !shown.contains("kp-5678"),
            "{shown}"
        );
        // librdkafka still gets them.
        let c = base_client_config(&cfg.kafka);
        assert_eq!(c.get("sasl.password"), Some("pw-1234"));
        assert_eq!(c.get("ssl.key.password"), Some("kp-5678"));
    }

    fn load(security: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<KafkaConfig, String> {
        crate::gateway::Config::from_yaml_str(
            &format!("kafka:\n  security: {security}\npipelines: [{{name: p, source: {{websocket: {{urls: ['ws://h:1/ws']}}}}, topic: t}}]\n"),
            "test.yaml",
            env,
        )
        .map(|c| c.kafka)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_password_that_reads_as_a_number_is_never_quoted_back() {
        let err = load(
            "{protocol: SASL_SSL, sasl: {mechanism: PLAIN, username: u, password: 987654321}}",
            &|_| None,
        )
        .unwrap_err();
        assert!(!err.contains("987654321"), "{err}");
        assert!(
            err.contains("kafka.security.sasl.password: a secret must be a string, not a number"),
            "{err}"
        );
        // From the environment, digits stay the password they are (leading zeros too).
        let env = |name: &str| (name == "PW").then(|| "0012345".to_string());
        let k = load(
            "{protocol: SASL_SSL, sasl: {mechanism: PLAIN, username: u, password: '${PW}'}, tls: {key_password: '${PW}'}}",
            &env,
        )
        .unwrap();
        let sec = k.security.unwrap();
        assert_eq!(sec.sasl.unwrap().password, "0012345");
        assert_eq!(sec.tls.unwrap().key_password.as_deref(), Some("0012345"));
    }

    #[test]
    fn allow_lists_keep_reserved_topics_out_unless_named() {
        let mut a = TopicAllow::any();
        a.reserve("kgate.dlq");
        assert!(a.allows("ticks.kraken"));
        for t in [
            "_schemas",
            "__consumer_offsets",
            "connect-configs",
            "kgate.dlq",
        ] {
            assert!(!a.allows(t), "{t}");
        }
        let mut a = TopicAllow::new(vec![
            "ticks.*".into(),
            "_schemas".into(),
            "connect-*".into(),
            "kgate.dlq".into(),
        ]);
        a.reserve("kgate.dlq");
        assert!(a.allows("ticks.x") && !a.allows("tick"));
        assert!(a.allows("_schemas") && a.allows("connect-offsets") && a.allows("kgate.dlq"));
        assert!(!a.allows("__consumer_offsets"));
        let mut a = TopicAllow::new(vec!["kgate.*".into(), "c*".into()]);
        a.reserve("kgate.dlq");
        assert!(a.allows("kgate.x") && !a.allows("kgate.dlq") && !a.allows("connect-x"));
        assert!(check_topic_pattern("*").is_ok() && check_topic_pattern("a.b*").is_ok());
        for bad in ["", "a*b", "**", "has space", "a/b*"] {
            assert!(check_topic_pattern(bad).is_err(), "{bad}");
        }
    }
}

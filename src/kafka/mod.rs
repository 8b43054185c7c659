//! Kafka: the `kafka:` and `dlq:` sections, the client settings every client shares (producer,
//! consumers, admin), its log and error handling, and metadata checks. The producing sink is in
//! `sink::kafka`.

mod admin;
mod config;
mod diagnose;

pub use admin::{fetch_metadata, BrokerInfo, MetadataError};
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

/// The producer's settings: the shared ones, the typed producer fields, then `options`.
pub fn producer_client_config(k: &KafkaConfig) -> ClientConfig {
    let p = &k.producer;
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
        .set(
            "queue.buffering.max.kbytes",
            (p.max_buffered_bytes.0 / 1024).max(1).to_string(),
        );
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
}

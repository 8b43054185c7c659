//! Client errors that the settings cause, not the network: a refused SASL login, a TLS handshake
//! that fails. librdkafka retries such a connection for ever and reports each failure; kgate
//! turns them into one line that names the mechanism, the user and what to change, logged at
//! most once per [`ERROR_LOG_EVERY`] whichever client met it. No line carries a password: only
//! the user name, the mechanism, file paths and librdkafka's reason (which never holds
//! credentials).

use std::sync::Mutex;
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::{KafkaConfig, SecurityProtocol, ERROR_LOG_EVERY};

/// What to fix, and what librdkafka said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// What went wrong and what to change; the same for every report of one problem.
    pub fix: String,
    /// librdkafka's reason, without the broker prefix and the retry bookkeeping.
    pub detail: String,
}

impl std::fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (librdkafka: {})", self.fix, self.detail)
    }
}

/// What to fix, when `error` (with librdkafka's `reason`) comes from `k.security` or from a
/// listener that expects another protocol; `None` for network and broker trouble.
pub fn diagnose(k: &KafkaConfig, error: &KafkaError, reason: &str) -> Option<Diagnosis> {
    let code = error.rdkafka_error_code();
    let (broker, detail) = split_reason(k, reason);
    let protocol = k.security.as_ref().map(|s| s.protocol).unwrap_or_default();
    let lower = detail.to_ascii_lowercase();
    let fix = if code == Some(RDKafkaErrorCode::Authentication)
        || lower.contains("sasl authentication error")
        || lower.contains("sasl handshake failed")
    {
        sasl_failure(k, &broker, &lower)
    } else if code == Some(RDKafkaErrorCode::SSL)
        || lower.contains("ssl handshake failed")
        || lower.contains("ssl routines")
    {
        tls_failure(k, &broker, &lower, protocol)
    } else if lower.contains("incorrect security.protocol") {
        format!(
            "Kafka {broker} closed the connection before answering: kafka.security.protocol is {}; does that port expect another protocol (an SSL or SASL_SSL listener closes plaintext clients)? Check the port and kafka.security.protocol",
            protocol.as_str().to_uppercase()
        )
    } else {
        return None;
    };
    Some(Diagnosis { fix, detail })
}

/// `sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: … (after 5ms in state
/// AUTH_REQ)` → (`127.0.0.1:9094`, `SASL authentication error: …`).
fn split_reason(k: &KafkaConfig, reason: &str) -> (String, String) {
    let mut broker = k.brokers.join(",");
    let mut detail = reason.trim();
    if let Some((head, rest)) = detail.split_once(": ") {
        if let Some((_, addr)) = head.split_once("://") {
            let addr = addr.split('/').next().unwrap_or(addr);
            if !addr.is_empty() {
                broker = addr.to_string();
                detail = rest.trim();
            }
        }
    }
    // librdkafka's retry bookkeeping, "(after 5ms in state AUTH_REQ, 3 identical error(s)
    // suppressed)", changes from one report to the next.
    if let Some(i) = detail.rfind(" (after ") {
        if detail.ends_with(')') {
            detail = &detail[..i];
        }
    }
    (broker, detail.to_string())
}

fn sasl_failure(k: &KafkaConfig, broker: &str, lower: &str) -> String {
    let Some(sasl) = k.security.as_ref().and_then(|s| s.sasl.as_ref()) else {
        return format!(
            "Kafka {broker} wants a SASL login and kafka.security.sasl is not set: add `sasl: {{mechanism: SCRAM-SHA-512, username: ..., password: ${{KAFKA_PASSWORD}}}}`"
        );
    };
    let mech = sasl.mechanism.as_str();
    let user = &sasl.username;
    if lower.contains("not supported by broker") || lower.contains("unsupported sasl mechanism") {
        return format!(
            "Kafka {broker} does not offer SASL {mech} (user \"{user}\"): set kafka.security.sasl.mechanism to one it offers"
        );
    }
    format!(
        "Kafka {broker} refused the SASL {mech} login of user \"{user}\": wrong password, unknown user, or no {mech} credentials for it on the broker; fix kafka.security.sasl.username / password (or the mechanism)"
    )
}

fn tls_failure(k: &KafkaConfig, broker: &str, lower: &str, protocol: SecurityProtocol) -> String {
    let tls = k.security.as_ref().and_then(|s| s.tls.as_ref());
    if lower.contains("mismatch") {
        return format!(
            "the TLS certificate of Kafka {broker} does not name that host: connect by a name its certificate lists, or set kafka.security.tls.verify_hostname: false"
        );
    }
    if lower.contains("certificate verify failed") || lower.contains("could not be verified") {
        let ca = match tls.and_then(|t| t.ca.as_deref()) {
            Some(ca) => format!("kafka.security.tls.ca `{ca}`"),
            None => "the system's CAs; kafka.security.tls.ca is not set".to_string(),
        };
        return format!(
            "the TLS certificate of Kafka {broker} is not signed by a CA kgate trusts ({ca}): set kafka.security.tls.ca to the CA file that signed the broker's certificate"
        );
    }
    if lower.contains("certificate required")
        || lower.contains("alert bad certificate")
        || lower.contains("alert unknown ca")
        || lower.contains("alert handshake failure")
        || lower.contains("client ssl authentication might be required")
    {
        return match tls.and_then(|t| t.cert.as_deref()) {
            None => format!(
                "Kafka {broker} requires a client certificate (mutual TLS) and none was sent: set kafka.security.tls.cert and key"
            ),
            Some(cert) => format!(
                "Kafka {broker} did not accept the client certificate kafka.security.tls.cert `{cert}`: use one signed by a CA the broker trusts"
            ),
        };
    }
    if lower.contains("wrong version number")
        || lower.contains("packet length too long")
        || lower.contains("record layer failure")
        || lower.contains("plaintext broker listener")
    {
        return format!(
            "Kafka {broker} does not speak TLS on that port (kafka.security.protocol is {}): is it a PLAINTEXT or SASL_PLAINTEXT listener? Check the port and kafka.security.protocol",
            protocol.as_str().to_uppercase()
        );
    }
    format!("the TLS handshake with Kafka {broker} failed: check kafka.security.tls")
}

/// The last problem reported.
struct Last {
    /// Its `fix`.
    fix: String,
    /// When it was last logged.
    logged: Instant,
    /// Reports not logged since.
    suppressed: u64,
    /// When it was last reported (logged or not).
    seen: Instant,
}

/// Shared by every Kafka client of the process (the producer, the metadata watcher): one
/// refused login is one line per [`ERROR_LOG_EVERY`], whichever client met it.
static LAST: Mutex<Option<Last>> = Mutex::new(None);

/// Logs `d` (an error: a person has to change a setting), unless the same problem was logged
/// within [`ERROR_LOG_EVERY`].
pub fn report(d: &Diagnosis) {
    let mut last = LAST.lock().expect("diagnosis log lock");
    if let Some(line) = next_line(&mut last, d, Instant::now()) {
        tracing::error!(target: "kgate::kafka", "{line}");
    }
}

/// Whether a problem was reported within [`ERROR_LOG_EVERY`]: the broker-down errors that a
/// refused login causes are then no news.
pub fn recently_reported() -> bool {
    let last = LAST.lock().expect("diagnosis log lock");
    last.as_ref()
        .is_some_and(|l| l.seen.elapsed() < ERROR_LOG_EVERY)
}

/// The rate limit: the line to log now for `d`, if any.
fn next_line(last: &mut Option<Last>, d: &Diagnosis, now: Instant) -> Option<String> {
    let mut repeats = String::new();
    if let Some(l) = last {
        if l.fix == d.fix {
            l.seen = now;
            if now.duration_since(l.logged) < ERROR_LOG_EVERY {
                l.suppressed += 1;
                return None;
            }
            if l.suppressed > 0 {
                repeats = format!(
                    " ({} similar errors in the last {ERROR_LOG_EVERY:?} not shown)",
                    l.suppressed
                );
            }
        }
    }
    *last = Some(Last {
        fix: d.fix.clone(),
        logged: now,
        suppressed: 0,
        seen: now,
    });
    Some(format!(
        "{d}; kgate keeps the records and retries, /readyz stays 503 until it succeeds{repeats}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(security: &str) -> KafkaConfig {
        let cfg = crate::gateway::Config::from_yaml_str(
            &format!("kafka:\n  brokers: ['127.0.0.1:9094']\n  security: {security}\npipelines: [{{name: p, source: {{websocket: {{urls: ['ws://h:1/ws']}}}}, topic: t}}]\n"),
            "test.yaml",
            &|_| None,
        )
        .unwrap();
        cfg.kafka
    }

    const SCRAM: &str = "{protocol: SASL_SSL, sasl: {mechanism: SCRAM-SHA-256, username: app, password: hunter2-secret}}";

    fn global(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::Global(code)
    }

    #[test]
    fn a_refused_login_names_the_mechanism_the_user_and_the_fix_not_the_password() {
        let k = config(SCRAM);
        let d = diagnose(
            &k,
            &global(RDKafkaErrorCode::Authentication),
            "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256 (after 302ms in state AUTH_REQ, 4 identical error(s) suppressed)",
        )
        .unwrap()
        .to_string();
        assert!(
            d.starts_with(
                "Kafka 127.0.0.1:9094 refused the SASL SCRAM-SHA-256 login of user \"app\""
            ),
            "{d}"
        );
        assert!(
            d.contains("fix kafka.security.sasl.username / password"),
            "{d}"
        );
        assert!(d.ends_with("(librdkafka: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256)"), "{d}");
        assert!(!d.contains("hunter2"), "{d}");
    }

    #[test]
    fn an_untrusted_certificate_names_the_ca_file_whichever_report_says_it() {
        let mut k = config(SCRAM);
        k.security.as_mut().unwrap().tls = Some(super::super::TlsConfig {
            ca: Some("/etc/other-ca.pem".into()),
            cert: None,
            key: None,
            key_password: None,
            verify_hostname: true,
        });
        let handshake = diagnose(
            &k,
            &global(RDKafkaErrorCode::SSL),
            "sasl_ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 4ms in state SSL_HANDSHAKE)",
        )
        .unwrap();
        assert!(
            handshake.fix.contains(
                "not signed by a CA kgate trusts (kafka.security.tls.ca `/etc/other-ca.pem`)"
            ),
            "{handshake}"
        );
        // librdkafka reports the same failure as a transport error too: the same fix.
        let transport = diagnose(
            &k,
            &global(RDKafkaErrorCode::BrokerTransportFailure),
            "sasl_ssl://127.0.0.1:9094/bootstrap: error:0A000086:SSL routines::certificate verify failed (after 4ms in state SSL_HANDSHAKE)",
        )
        .unwrap();
        assert_eq!(transport.fix, handshake.fix);
    }

    #[test]
    fn a_missing_client_certificate_says_to_set_one() {
        let k = config("{protocol: SSL, tls: {}}");
        let d = diagnose(
            &k,
            &global(RDKafkaErrorCode::BrokerTransportFailure),
            "ssl://127.0.0.1:9095/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42 (after 0ms in state APIVERSION_QUERY)",
        )
        .unwrap();
        assert!(
            d.fix.contains(
                "requires a client certificate (mutual TLS) and none was sent: set kafka.security.tls.cert and key"
            ),
            "{d}"
        );
    }

    #[test]
    fn network_trouble_is_not_a_security_problem() {
        let k = config(SCRAM);
        assert_eq!(
            diagnose(
                &k,
                &global(RDKafkaErrorCode::AllBrokersDown),
                "1/1 brokers are down"
            ),
            None
        );
        assert_eq!(
            diagnose(
                &k,
                &global(RDKafkaErrorCode::BrokerTransportFailure),
                "sasl_ssl://127.0.0.1:9094/bootstrap: Connect to ipv4#127.0.0.1:9094 failed: Connection refused (after 0ms in state CONNECT)"
            ),
            None
        );
    }

    #[test]
    fn the_same_problem_is_logged_once_per_period_with_the_count() {
        let d = |fix: &str, detail: &str| Diagnosis {
            fix: fix.into(),
            detail: detail.into(),
        };
        let mut last = None;
        let t0 = Instant::now();
        assert!(next_line(&mut last, &d("bad login", "a"), t0).is_some());
        let s = Duration::from_secs;
        // Another wording of librdkafka's is the same problem.
        assert_eq!(next_line(&mut last, &d("bad login", "b"), t0 + s(1)), None);
        assert_eq!(next_line(&mut last, &d("bad login", "a"), t0 + s(2)), None);
        // Another problem is news at once.
        assert!(next_line(&mut last, &d("bad CA", "c"), t0 + s(3)).is_some());
        assert_eq!(next_line(&mut last, &d("bad CA", "c"), t0 + s(4)), None);
        let again = next_line(&mut last, &d("bad CA", "c"), t0 + ERROR_LOG_EVERY + s(4)).unwrap();
        assert!(
            again.ends_with("(1 similar errors in the last 30s not shown)"),
            "{again}"
        );
    }
}

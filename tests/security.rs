//! `kafka.security` end to end against the real local broker's secure listeners: SASL_SSL with
//! SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN, and SSL with a client certificate (mutual TLS). Each
//! produces through `kgate run` and consumes the records back over the same listener. A wrong
//! password and a wrong CA are one clear line from `check` and from `run`, and no output ever
//! holds the password.
//!
//! Run through `scripts/test security`: it starts the broker with its secure listeners
//! (`scripts/services up kafka`) and exports KGATE_SASL_SSL_BROKERS, KGATE_SSL_BROKERS and
//! KGATE_TLS_DIR (the test CA and the client certificate).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::config::ClientConfig;

use common::*;

/// The broker's SASL user (scripts/lib/kafka.sh).
const USER: &str = "kgate";
const PASSWORD: &str = "kgate-secret";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the security tests through `scripts/test security`, which \
             starts the broker with its secure listeners (scripts/services up kafka) and exports \
             KGATE_SASL_SSL_BROKERS, KGATE_SSL_BROKERS and KGATE_TLS_DIR; with a KAFKA_PORT other \
             than 9092, set KAFKA_SASL_SSL_PORT and KAFKA_SSL_PORT too"
        )
    })
}

fn sasl_ssl_brokers() -> String {
    env("KGATE_SASL_SSL_BROKERS")
}

fn ssl_brokers() -> String {
    env("KGATE_SSL_BROKERS")
}

/// A file of the test CA folder (`ca.pem`, `client.pem`, `client.key`).
fn tls_file(name: &str) -> String {
    let path = PathBuf::from(env("KGATE_TLS_DIR")).join(name);
    assert!(
        path.is_file(),
        "{} is missing: `scripts/services up kafka` makes the test CA (scripts/lib/tls.sh)",
        path.display()
    );
    path.to_str().unwrap().to_string()
}

/// One way to talk to the broker: what goes in `kafka.security` and the same for a consumer.
struct Security {
    brokers: String,
    /// The `kafka:` section's `security:` value, YAML flow style.
    yaml: String,
    /// librdkafka settings of a consumer that talks the same way.
    client: Vec<(&'static str, String)>,
}

fn sasl_ssl(mechanism: &str, password: &str, ca: &str) -> Security {
    Security {
        brokers: sasl_ssl_brokers(),
        yaml: format!(
            "{{protocol: SASL_SSL, sasl: {{mechanism: {mechanism}, username: {USER}, password: '{password}'}}, tls: {{ca: '{ca}'}}}}"
        ),
        client: vec![
            ("security.protocol", "sasl_ssl".into()),
            ("sasl.mechanism", mechanism.into()),
            ("sasl.username", USER.into()),
            ("sasl.password", password.into()),
            ("ssl.ca.location", ca.into()),
        ],
    }
}

fn mutual_tls() -> Security {
    let (ca, cert, key) = (
        tls_file("ca.pem"),
        tls_file("client.pem"),
        tls_file("client.key"),
    );
    Security {
        brokers: ssl_brokers(),
        yaml: format!("{{protocol: SSL, tls: {{ca: '{ca}', cert: '{cert}', key: '{key}'}}}}"),
        client: vec![
            ("security.protocol", "ssl".into()),
            ("ssl.ca.location", ca),
            ("ssl.certificate.location", cert),
            ("ssl.key.location", key),
        ],
    }
}

/// A `kgate run` config: one WebSocket pipeline from `feed` into `topic`.
fn config(sec: &Security, metrics_port: u16, feed: &str, topic: &str) -> String {
    format!(
        "kafka:\n  brokers: ['{}']\n  security: {}\nmetrics:\n  listen: '127.0.0.1:{metrics_port}'\ndlq: {{topic: '{topic}.dlq'}}\nshutdown_timeout: 20s\npipelines:\n  - name: ticks\n    source: {{websocket: {{urls: ['{feed}'], backoff_max: 1s}}}}\n    topic: {topic}\n    key: '${{exchange}}|${{symbol}}'\n",
        sec.brokers, sec.yaml
    )
}

/// `kgate check` on `path`: (succeeded, stdout + stderr).
fn check(path: &Path) -> (bool, String) {
    let out = Command::new(kgate_bin())
        .args([
            "check",
            "--config",
            path.to_str().unwrap(),
            "--timeout",
            "10s",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn assert_secret_absent(secret: &str, what: &str, text: &str) {
    assert!(
        !text.contains(secret),
        "the password `{secret}` appears in {what}:\n{text}"
    );
}

const EVENTS: usize = 300;

/// `check` passes, `run` delivers [`EVENTS`] records, and they are read back over the same
/// secure listener; the password appears in no output.
fn produce_and_consume(sec: Security, password: Option<&str>) {
    let topic = unique("secure");
    let feed_port = free_port();
    let feed = format!("ws://127.0.0.1:{feed_port}/ws");
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config(&sec, mport, &feed, &topic));

    // Before the feed runs: check's test connection would take messages.
    let (_, text) = check(&path);
    let kafka_line = text
        .lines()
        .find(|l| l.contains(&format!("kafka {}", sec.brokers)))
        .unwrap_or_else(|| panic!("no kafka line from check:\n{text}"));
    assert!(
        kafka_line.starts_with(&format!("ok   kafka {}: 1 broker(s) answered", sec.brokers)),
        "{text}"
    );

    let listen = format!("127.0.0.1:{feed_port}");
    let count = EVENTS.to_string();
    let _synth = spawn_kgate(&[
        "synth", "--listen", &listen, "--feed", "ticker", "--rate", "0", "--count", &count, "--id",
        &topic,
    ]);
    let mut gw = spawn_kgate(&["run", "--config", path.to_str().unwrap()]);

    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &sec.brokers);
    for (k, v) in &sec.client {
        client.set(*k, v);
    }
    let recs = consume_with(client, &topic, EVENTS, Duration::from_secs(90));
    let (set, dups) = seqs(&recs);
    assert_eq!(dups, 0, "duplicates in Kafka");
    assert_eq!(
        set.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        (1..=EVENTS as u64).collect::<Vec<_>>(),
        "records read back over {}; log:\n{}",
        sec.brokers,
        gw.log_text()
    );
    wait_until(
        Duration::from_secs(20),
        || http_get(&format!("127.0.0.1:{mport}"), "/readyz").map(|r| r.0) == Some(200),
        "/readyz to turn ready",
    );
    let s = stop(&mut gw, 30);
    assert_eq!(
        (s["accepted"], s["delivered"], s["undelivered"]),
        (EVENTS as u64, EVENTS as u64, 0)
    );
    if let Some(pw) = password {
        assert_secret_absent(pw, "check's output", &text);
        assert_secret_absent(pw, "run's log", &gw.log_text());
    }
}

#[test]
fn sasl_ssl_scram_sha_256_round_trip() {
    produce_and_consume(
        sasl_ssl("SCRAM-SHA-256", PASSWORD, &tls_file("ca.pem")),
        Some(PASSWORD),
    );
}

#[test]
fn sasl_ssl_scram_sha_512_round_trip() {
    produce_and_consume(
        sasl_ssl("SCRAM-SHA-512", PASSWORD, &tls_file("ca.pem")),
        Some(PASSWORD),
    );
}

#[test]
fn sasl_ssl_plain_round_trip() {
    produce_and_consume(
        sasl_ssl("PLAIN", PASSWORD, &tls_file("ca.pem")),
        Some(PASSWORD),
    );
}

#[test]
fn mutual_tls_round_trip() {
    produce_and_consume(mutual_tls(), None);
}

/// What `check` and `run` say about a setting the broker refuses: `check` fails with one line
/// containing each of `expect`; `run` keeps going (no crash, no loop of errors), /readyz stays
/// 503, and its log holds one line about it; `secret` appears nowhere.
fn refused(sec: Security, expect: &[&str], secret: &str) {
    let topic = unique("refused");
    let mport = free_port();
    let feed = format!("ws://127.0.0.1:{}/ws", free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config(&sec, mport, &feed, &topic));

    let (ok, text) = check(&path);
    assert!(!ok, "check passed:\n{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("kafka {}", sec.brokers)))
        .collect();
    assert_eq!(lines.len(), 1, "one kafka line from check:\n{text}");
    assert!(
        lines[0].starts_with(&format!("FAIL kafka {}: ", sec.brokers)),
        "{text}"
    );
    for e in expect {
        assert!(
            lines[0].contains(e),
            "`{e}` missing from check's line:\n{text}"
        );
    }
    assert_secret_absent(secret, "check's output", &text);

    let mut gw = spawn_kgate(&["run", "--config", path.to_str().unwrap()]);
    wait_until(
        Duration::from_secs(20),
        || gw.log_text().contains(expect[0]),
        "run to say what to fix",
    );
    // librdkafka retries about every second: a few seconds more must add no line.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "kgate run exited; log:\n{}",
        gw.log_text()
    );
    assert_eq!(
        http_get(&format!("127.0.0.1:{mport}"), "/readyz")
            .unwrap()
            .0,
        503
    );
    let log = gw.log_text();
    let said: Vec<&str> = log.lines().filter(|l| l.contains(expect[0])).collect();
    assert_eq!(said.len(), 1, "one line about it in run's log:\n{log}");
    for e in expect {
        assert!(said[0].contains(e), "`{e}` missing from run's line:\n{log}");
    }
    assert!(
        said[0].contains(" ERROR ") && said[0].contains("/readyz stays 503"),
        "{log}"
    );
    // Nothing else about Kafka: no broker-down noise behind it.
    let kafka_lines = log
        .lines()
        .filter(|l| l.contains("librdkafka") || l.contains("kgate::kafka"))
        .count();
    assert_eq!(kafka_lines, 1, "other Kafka lines in run's log:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_secret_absent(secret, "run's log", &log);
    let s = stop(&mut gw, 30);
    assert_eq!(s["accepted"], 0);
}

#[test]
fn a_wrong_password_is_one_clear_line_and_never_printed() {
    let secret = format!("wrong-{}", unique("pw").replace('.', "-"));
    refused(
        sasl_ssl("SCRAM-SHA-512", &secret, &tls_file("ca.pem")),
        &[
            "refused the SASL SCRAM-SHA-512 login of user \"kgate\"",
            "fix kafka.security.sasl.username / password",
        ],
        &secret,
    );
}

#[test]
fn a_wrong_ca_is_one_clear_line() {
    // A CA of its own, which did not sign the broker's certificate.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other-ca.pem");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=not the kgate test CA", "-keyout"])
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .expect("openssl (Debian: apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = ca.to_str().unwrap();
    refused(
        sasl_ssl("SCRAM-SHA-256", PASSWORD, ca),
        &[
            &format!("is not signed by a CA kgate trusts (kafka.security.tls.ca `{ca}`)"),
            "set kafka.security.tls.ca to the CA file that signed the broker's certificate",
        ],
        PASSWORD,
    );
}

#[test]
fn mutual_tls_without_a_client_certificate_says_to_set_one() {
    let mut sec = mutual_tls();
    let ca = tls_file("ca.pem");
    sec.yaml = format!("{{protocol: SSL, tls: {{ca: '{ca}'}}}}");
    let topic = unique("nocert");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config(&sec, free_port(), "ws://127.0.0.1:9/ws", &topic),
    );
    let (ok, text) = check(&path);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("FAIL kafka {0}: Kafka {0} requires a client certificate (mutual TLS) and none was sent: set kafka.security.tls.cert and key", sec.brokers)),
        "{text}"
    );
}

#[test]
fn dlq_inspect_with_a_wrong_password_says_what_to_fix_at_once() {
    let secret = format!("wrong-{}", unique("pw").replace('.', "-"));
    let sec = sasl_ssl("SCRAM-SHA-512", &secret, &tls_file("ca.pem"));
    let topic = unique("refused");
    let feed = format!("ws://127.0.0.1:{}/ws", free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config(&sec, free_port(), &feed, &topic));
    let started = std::time::Instant::now();
    let out = Command::new(kgate_bin())
        .args([
            "dlq",
            "inspect",
            "--topic",
            &format!("{topic}.dlq"),
            "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("refused the SASL SCRAM-SHA-512 login")
            && text.contains("fix kafka.security.sasl.username / password"),
        "{text}"
    );
    assert!(text.contains(&sec.brokers), "{text}");
    // Answered at once, not after the metadata timeout.
    assert!(started.elapsed() < Duration::from_secs(8), "{text}");
    assert_secret_absent(&secret, "dlq inspect's output", &text);
}

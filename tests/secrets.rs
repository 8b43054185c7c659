//! Secrets are never printed: a config with distinctive passwords, tokens and a WebSocket feed
//! URL carrying `?apikey=` runs against the real local Kafka (and the registry and Mosquitto
//! when KGATE_REGISTRY_URL / KGATE_MQTT_URL name them), and none of the secrets is in
//! `kgate check`'s output, `kgate run`'s log, `/metrics`, `kgate config show` or the headers of
//! a DLQ record.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Each secret distinct from everything else in the output, so that a find is a leak.
const API_KEY: &str = "apikey-Zq81xW4";
const HTTP_TOKEN: &str = "httptoken-Kp27vN9s0aL3";
const KEY_PASSWORD: &str = "keypw-Hx63mB1";
const REGISTRY_PASSWORD: &str = "regpw-Jd45tC8";
const MQTT_PASSWORD: &str = "mqttpw-Wr92eF6";
const SASL_PASSWORD: &str = "saslpw-Ub70gT3";
const ENV_PASSWORD: &str = "0071234009";

/// `kgate ARGS`: (succeeded, stdout + stderr).
fn kgate(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(kgate_bin())
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Panics naming the secret and where it was found.
fn assert_no_secret(what: &str, text: &str, extra: &[&str]) {
    for s in [
        API_KEY,
        HTTP_TOKEN,
        KEY_PASSWORD,
        REGISTRY_PASSWORD,
        MQTT_PASSWORD,
        SASL_PASSWORD,
        ENV_PASSWORD,
    ]
    .iter()
    .chain(extra)
    {
        assert!(!text.contains(s), "{what} holds the secret {s}:\n{text}");
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_check_run_metrics_config_show_or_the_dlq() {
    let topic = unique("secrets");
    let dlq = unique("secrets.dlq");
    let msgs = vec![
        r#"{"id":1}"#.to_string(),
        r#"{"id":2,"broken"#.to_string(),
        r#"{"id":3}"#.to_string(),
    ];
    let feed = serve_messages(msgs, Duration::from_millis(50)).await;
    let url = format!("{feed}?apikey={API_KEY}&v=1");
    let mport = free_port();
    let hport = free_port();
    let registry = std::env::var("KGATE_REGISTRY_URL").ok();
    let mqtt = std::env::var("KGATE_MQTT_URL").ok();
    let mut text = format!(
        "kafka:\n  brokers: ['{}']\n  security: {{protocol: PLAINTEXT, tls: {{key_password: '{KEY_PASSWORD}'}}}}\n\
         metrics: {{listen: '127.0.0.1:{mport}'}}\n\
         dlq: {{topic: '{dlq}'}}\n\
         http:\n  listen: '127.0.0.1:{hport}'\n  auth: [{{name: ingest, token: '{HTTP_TOKEN}', topics: ['{topic}']}}]\n",
        brokers()
    );
    if let Some(r) = &registry {
        text.push_str(&format!(
            "schema_registry: {{url: '{r}', username: kgate, password: '{REGISTRY_PASSWORD}'}}\n"
        ));
    }
    text.push_str(&format!(
        "pipelines:\n  - name: feed\n    source: {{websocket: {{urls: ['{url}']}}}}\n    topic: {topic}\n"
    ));
    if let Some(m) = &mqtt {
        text.push_str(&format!(
            "  - name: mq\n    source: {{mqtt: {{url: '{m}', username: kgate, password: '{MQTT_PASSWORD}', subscriptions: [{{topic: '{}/#'}}]}}}}\n    topic: {topic}\n",
            unique("secrets")
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &text);
    let envs: [(&str, &str); 0] = [];

    // check: the feed is named with its key redacted.
    let (ok, out) = kgate(&["check", "--config", p(&path), "--timeout", "5s"], &envs);
    assert_no_secret("kgate check", &out, &[]);
    let shown = format!("websocket {feed}?apikey=***&v=*** (pipeline feed): connected");
    assert!(out.contains(&shown), "no `{shown}` in:\n{out}");
    assert!(ok, "{out}");

    // config show: every secret ***.
    let (ok, out) = kgate(&["config", "show", "--config", p(&path)], &envs);
    assert!(ok, "{out}");
    assert_no_secret("kgate config show", &out, &[]);
    assert!(out.contains("key_password: '***'"), "{out}");
    assert!(out.contains("token: '***'"), "{out}");
    assert!(out.contains(&format!("{feed}?apikey=***&v=***")), "{out}");
    if mqtt.is_some() {
        assert!(out.contains("password: '***'"), "{out}");
    }

    // run: the logs, /metrics and the DLQ record of the malformed message.
    let mut gw = spawn_run(dir.path(), &text);
    let b = brokers();
    let (t2, d2) = (topic.clone(), dlq.clone());
    let good = tokio::task::spawn_blocking(move || consume(&b, &t2, 2, Duration::from_secs(60)));
    let b = brokers();
    let bad = tokio::task::spawn_blocking(move || consume(&b, &d2, 1, Duration::from_secs(60)));
    let (good, bad) = (good.await.unwrap(), bad.await.unwrap());
    assert!(good.len() >= 2, "{}", gw.log_text());
    assert_eq!(bad.len(), 1, "{}", gw.log_text());
    let headers = format!("{:?}", bad[0].headers);
    assert_no_secret("the DLQ record's headers", &headers, &[]);
    assert!(bad[0].headers["source"].contains("apikey=***"), "{headers}");

    let metrics = http_get(&format!("127.0.0.1:{mport}"), "/metrics")
        .expect("/metrics answers")
        .1;
    assert_no_secret("/metrics", &metrics, &[]);
    assert!(metrics.contains("apikey=***"), "{metrics}");

    let s = stop(&mut gw, 30);
    assert_eq!(s["dead-lettered"], 1, "{}", gw.log_text());
    let log = gw.log_text();
    assert_no_secret("kgate run's log", &log, &[]);
    assert!(log.contains("apikey=***"), "{log}");
}

/// A SASL password (and an all-digit one from the environment) is in no output of `check` or
/// `config show`, whether or not the broker takes the login. The secure listener of
/// scripts/test (KGATE_SASL_SSL_BROKERS, KGATE_TLS_DIR) is used when it is there; otherwise the
/// handshake fails, which must not print the password either.
#[test]
fn no_sasl_password_in_check_or_config_show() {
    let brokers =
        std::env::var("KGATE_SASL_SSL_BROKERS").unwrap_or_else(|_| "127.0.0.1:9094".into());
    let ca = std::env::var("KGATE_TLS_DIR")
        .map(|d| format!(", tls: {{ca: '{d}/ca.pem'}}"))
        .unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    for password in [SASL_PASSWORD.to_string(), "${KAFKA_PW}".to_string()] {
        let text = format!(
            "kafka:\n  brokers: ['{brokers}']\n  security: {{protocol: SASL_SSL, sasl: {{mechanism: SCRAM-SHA-512, username: kgate-nobody, password: '{password}'}}{ca}}}\n\
             pipelines:\n  - name: feed\n    source: {{websocket: {{urls: ['ws://127.0.0.1:1/ws?apikey={API_KEY}']}}}}\n    topic: t\n"
        );
        let path = write_config(dir.path(), &text);
        let envs = [("KAFKA_PW", ENV_PASSWORD)];
        let (ok, out) = kgate(&["check", "--config", p(&path), "--timeout", "3s"], &envs);
        assert!(!ok, "a wrong login and a closed feed pass check:\n{out}");
        assert_no_secret("kgate check", &out, &[]);
        assert!(out.contains("ws://127.0.0.1:1/ws?apikey=***"), "{out}");
        let (ok, out) = kgate(&["config", "show", "--config", p(&path)], &envs);
        assert!(ok, "{out}");
        assert_no_secret("kgate config show", &out, &[]);
        assert!(out.contains("password: '***'"), "{out}");
    }
    // A literal number is refused without being quoted back (`0071234009` would be a string to
    // YAML; a number has no leading zero).
    let path = write_config(
        dir.path(),
        "kafka:\n  security: {protocol: SASL_SSL, sasl: {mechanism: PLAIN, username: u, password: 8123400917}}\npipelines: [{name: p, topic: t, source: {websocket: {urls: ['ws://h:1/ws']}}}]\n",
    );
    for args in [
        vec!["check", "--config", p(&path)],
        vec!["config", "show", "--config", p(&path)],
    ] {
        let (ok, out) = kgate(&args, &[]);
        assert!(!ok, "{out}");
        assert!(
            out.contains("a secret must be a string, not a number"),
            "{out}"
        );
        assert_no_secret("a config error", &out, &["8123400917"]);
    }
}

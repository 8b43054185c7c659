//! `wss://` feeds against the real local Kafka: `kgate synth --tls-cert` serves TLS with a
//! throw-away CA made here, `kgate run` verifies it with `tls.ca` (or presents a client
//! certificate), and a certificate it must not trust fails `check` in one line and delivers
//! nothing. Run through `scripts/test`, which starts the broker.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::pki::{generate, Pki};
use common::*;

fn config(metrics_port: u16, topic: &str, source: &str) -> String {
    format!(
        "kafka:\n  brokers: ['{}']\nmetrics:\n  listen: '127.0.0.1:{metrics_port}'\ndlq: {{topic: '{topic}.dlq'}}\nshutdown_timeout: 20s\npipelines:\n  - name: feed\n    source:\n      websocket:\n{source}    topic: {topic}\n    key: '${{exchange}}|${{symbol}}'\n",
        brokers()
    )
}

/// The `websocket:` section's body (indented for [`config`]).
fn websocket(url: &str, tls: &str) -> String {
    let mut s = format!(
        "        urls: ['{url}']\n        backoff_initial: 100ms\n        backoff_max: 200ms\n"
    );
    if !tls.is_empty() {
        s.push_str(&format!("        tls: {{{tls}}}\n"));
    }
    s
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `kgate synth` serving `wss://` with `pki`'s server certificate; returns it and its URL.
fn spawn_wss_synth(pki: &Pki, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "--tls-cert",
        p(&pki.server_cert),
        "--tls-key",
        p(&pki.server_key),
    ];
    args.extend_from_slice(extra);
    let (synth, url) = spawn_synth("ticker", &args);
    let url = url.replacen("ws://", "wss://", 1);
    wait_until(
        Duration::from_secs(5),
        || synth.log_text().contains(&format!("feed at {url}")),
        "synth to announce its wss:// URL",
    );
    (synth, url)
}

fn check(dir: &Path, cfg: &str) -> (Output, String) {
    check_env(dir, cfg, &[])
}

fn check_env(dir: &Path, cfg: &str, envs: &[(&str, &str)]) -> (Output, String) {
    let path = write_config(dir, cfg);
    let out = Command::new(kgate_bin())
        .args(["check", "--config", p(&path), "--timeout", "5s"])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

fn metrics(port: u16) -> String {
    http_get(&format!("127.0.0.1:{port}"), "/metrics")
        .map(|(_, t)| t)
        .unwrap_or_default()
}

/// Reads `n` records and checks they are exactly seq 1..=n of `url`'s synth, once each.
fn assert_exactly(topic: &str, url: &str, n: u64, gw: &Proc) {
    let recs = consume(&brokers(), topic, n as usize, Duration::from_secs(60));
    let (set, dups) = seqs(&recs);
    assert_eq!(dups, 0, "duplicates in Kafka");
    assert_eq!(
        recs.len() as u64,
        n,
        "records in Kafka; log:\n{}",
        gw.log_text()
    );
    let port = url
        .trim_start_matches("wss://127.0.0.1:")
        .trim_end_matches("/ws");
    let want: BTreeSet<(String, u64)> = (1..=n).map(|s| (format!("synth-{port}"), s)).collect();
    assert_eq!(set, want);
}

/// `synth --tls-cert/--tls-key` → `run` with `tls: {ca}` → exactly N records; `check` then
/// reaches the feed over TLS too, with `tls.ca` and with the system's roots.
#[test]
fn wss_feed_verified_by_its_ca_delivers_exactly_n() {
    const N: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let pki = generate(dir.path(), "feed");
    let (_synth, url) = spawn_wss_synth(&pki, &["--rate", "0", "--count", &N.to_string()]);
    let topic = unique("wss");
    let mport = free_port();
    let cfg = config(
        mport,
        &topic,
        &websocket(&url, &format!("ca: '{}'", p(&pki.ca))),
    );
    let mut gw = spawn_run(dir.path(), &cfg);
    assert_exactly(&topic, &url, N, &gw);
    let m = metrics(mport);
    assert_eq!(
        metric(&m, "kafka_producer_websocket_messages_received_total", &[]),
        N as f64
    );
    assert_eq!(
        metric(&m, "kafka_producer_websocket_connection_errors_total", &[]),
        0.0
    );

    // Every seq was sent: check's own connection gets nothing and takes nothing.
    let (out, stdout) = check(dir.path(), &cfg);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "ok   websocket {url} (pipeline feed): connected in"
        )),
        "{stdout}"
    );

    // Without `tls:`, the system's roots; OpenSSL takes them from SSL_CERT_FILE when set.
    let (out, stdout) = check_env(
        dir.path(),
        &config(mport, &topic, &websocket(&url, "")),
        &[("SSL_CERT_FILE", p(&pki.ca))],
    );
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "ok   websocket {url} (pipeline feed): connected in"
        )),
        "{stdout}"
    );

    let s = stop(&mut gw, 30);
    assert_eq!((s["accepted"], s["delivered"], s["undelivered"]), (N, N, 0));
}

/// A feed whose certificate is from another CA: `check` fails in one line naming the URL and
/// the problem; `run` retries, logs it once (not once per attempt, and no key material), and
/// delivers nothing. Without `tls:` the system's roots do not know the test CA either.
#[test]
fn wss_feed_from_an_untrusted_ca_fails_clearly_and_delivers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate(dir.path(), "feed");
    let other = generate(dir.path(), "other");
    let (_synth, url) = spawn_wss_synth(&pki, &["--rate", "0", "--count", "100"]);
    let topic = unique("wss.untrusted");
    let mport = free_port();
    // A client certificate too, so that there is key material that must not be printed.
    let tls = format!(
        "ca: '{}', cert: '{}', key: '{}'",
        p(&other.ca),
        p(&other.client_cert),
        p(&other.client_key)
    );
    let cfg = config(mport, &topic, &websocket(&url, &tls));

    let (out, stdout) = check(dir.path(), &cfg);
    assert!(!out.status.success(), "{stdout}");
    let fails: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(
        fails,
        [format!(
            "FAIL websocket {url} (pipeline feed): TLS handshake failed: certificate verify failed: unable to get local issuer certificate (the feed's certificate was checked against the CA in tls.ca `{}`)",
            p(&other.ca)
        )],
        "{stdout}"
    );

    let (out, stdout) = check(dir.path(), &config(mport, &topic, &websocket(&url, "")));
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("FAIL websocket {url} (pipeline feed): TLS handshake failed: certificate verify failed: unable to get local issuer certificate (the feed's certificate was checked against the system's roots)")),
        "{stdout}"
    );

    let mut gw = spawn_run(dir.path(), &cfg);
    wait_until(
        Duration::from_secs(20),
        || {
            metric(
                &metrics(mport),
                "kafka_producer_websocket_connection_errors_total",
                &[],
            ) >= 10.0
        },
        "ten failed connects",
    );
    let m = metrics(mport);
    assert_eq!(
        metric(&m, "kafka_producer_websocket_connections_total", &[]),
        0.0
    );
    let s = stop(&mut gw, 30);
    assert_eq!((s["accepted"], s["delivered"]), (0, 0), "{s:?}");

    let log = gw.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot connect"))
        .collect();
    assert_eq!(warned.len(), 1, "one line for ten failures:\n{log}");
    assert!(warned[0].contains("WARN"), "{log}");
    assert!(warned[0].contains(&url), "{log}");
    assert!(
        warned[0].contains("certificate verify failed: unable to get local issuer certificate"),
        "{log}"
    );
    let key = std::fs::read_to_string(&other.client_key).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    assert!(
        !log.contains("PRIVATE KEY") && !log.contains(key_body),
        "key material in the log:\n{log}"
    );
    assert!(consume(&brokers(), &topic, 1, Duration::from_secs(3)).is_empty());
}

/// `synth --tls-client-ca`: without a client certificate `check` says the feed wants one; with
/// `tls: {cert, key}` (the key in the traditional EC form) `run` delivers exactly N.
#[test]
fn mutual_tls_feed_delivers_with_the_client_certificate() {
    const N: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let pki = generate(dir.path(), "feed");
    let (_synth, url) = spawn_wss_synth(
        &pki,
        &[
            "--tls-client-ca",
            p(&pki.ca),
            "--rate",
            "0",
            "--count",
            &N.to_string(),
        ],
    );
    let topic = unique("wss.mutual");
    let mport = free_port();

    let (out, stdout) = check(
        dir.path(),
        &config(
            mport,
            &topic,
            &websocket(&url, &format!("ca: '{}'", p(&pki.ca))),
        ),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("FAIL websocket {url} (pipeline feed): TLS handshake failed: tlsv13 alert certificate required (the feed wants a client certificate: set tls.cert and tls.key)")),
        "{stdout}"
    );

    let tls = format!(
        "ca: '{}', cert: '{}', key: '{}'",
        p(&pki.ca),
        p(&pki.client_cert),
        p(&pki.client_key)
    );
    let mut gw = spawn_run(dir.path(), &config(mport, &topic, &websocket(&url, &tls)));
    assert_exactly(&topic, &url, N, &gw);
    let s = stop(&mut gw, 30);
    assert_eq!((s["accepted"], s["delivered"]), (N, N));
}

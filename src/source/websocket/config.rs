//! `source.websocket:` — the feeds a pipeline reads, and their checks.

use std::time::Duration;

use serde::Deserialize;

use tokio_tungstenite::tungstenite::http::Uri;

use crate::config::{redact_url, At, ConfigError};

/// `source.websocket:` — WebSocket feeds that kgate connects to and reads.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WebsocketSourceConfig {
    /// `ws://` or `wss://` URLs, read concurrently: one connection each.
    pub urls: Vec<String>,
    /// Messages sent after every (re)connect: strings as is, mappings as JSON.
    #[serde(default)]
    pub subscribe: Vec<serde_json::Value>,
    /// Interval of WebSocket pings; `0s` = none.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_ping", with = "humantime_serde")]
    pub ping_interval: Duration,
    /// No message for this long → reconnect (counted in `…_messages_timeout_total`).
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_ws_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First reconnect delay; doubled per failed attempt up to `backoff_max`, with jitter.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Timeout of the TCP + TLS (`wss://`) + WebSocket handshake.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How `wss://` feeds are verified, and a client certificate for mutual TLS; none = the
    /// system's roots verify every `wss://` feed's certificate and host name.
    #[serde(default)]
    pub tls: Option<WebsocketTlsConfig>,
}

/// `source.websocket.tls:` — PEM files for `wss://` feeds (read once at start).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WebsocketTlsConfig {
    /// CA bundle (PEM) the feeds' certificates must chain to, instead of the system's roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// Client certificate (PEM, then any intermediates) for mutual TLS; goes with `key`.
    #[serde(default)]
    pub cert: Option<String>,
    /// Client private key (PEM, unencrypted) for mutual TLS; goes with `cert`.
    #[serde(default)]
    pub key: Option<String>,
    /// Accept any certificate for any host name: for tests only, as anyone on the path can then
    /// read and change the feed; kgate logs a warning at start.
    #[serde(default)]
    pub insecure_skip_verify: bool,
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

impl WebsocketSourceConfig {
    /// Checks the section; the feeds to read once it is valid.
    pub(super) fn check(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<Vec<Uri>> {
        let before = errors.len();
        if self.urls.is_empty() {
            errors.push(ConfigError::new(
                at.field("urls"),
                "no URLs; list at least one `ws://host:port/path`",
            ));
        }
        let mut uris = Vec::with_capacity(self.urls.len());
        for (j, u) in self.urls.iter().enumerate() {
            let uri = u
                .parse::<Uri>()
                .ok()
                .filter(|uri| uri.host().is_some())
                .filter(|_| u.starts_with("ws://") || u.starts_with("wss://"));
            match uri {
                Some(uri) => uris.push(uri),
                None => errors.push(ConfigError::new(
                    at.field(&format!("urls[{j}]")),
                    format!(
                        "`{}` is not a WebSocket URL; write e.g. `ws://127.0.0.1:4200/ws` or `wss://…`",
                        redact_url(u)
                    ),
                )),
            }
        }
        if let Some(tls) = &self.tls {
            check_tls(tls, &self.urls, at, errors);
        }
        if self.timeout.is_zero() {
            errors.push(ConfigError::new(
                at.field("timeout"),
                "must be more than 0; e.g. `30s`",
            ));
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            errors.push(ConfigError::new(
                at.field("backoff_initial"),
                "must be more than 0 and at most backoff_max",
            ));
        }
        (errors.len() == before).then_some(uris)
    }
}

/// `tls:` needs `wss://` URLs, files that exist, `cert` with `key`, and no `ca` that
/// `insecure_skip_verify` would ignore. (Their contents are read when the connector is built.)
fn check_tls(tls: &WebsocketTlsConfig, urls: &[String], at: At<'_>, errors: &mut Vec<ConfigError>) {
    for (j, u) in urls.iter().enumerate() {
        if u.starts_with("ws://") {
            errors.push(ConfigError::new(
                at.field(&format!("urls[{j}]")),
                format!(
                    "`{}` is plain WebSocket but `tls` is set, and it applies to `wss://` URLs only; write `wss://`, or read this feed in a pipeline without `tls`",
                    redact_url(u)
                ),
            ));
        }
    }
    for (field, file) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
        let Some(f) = file else { continue };
        let path = std::path::Path::new(f);
        let problem = if !path.exists() {
            "does not exist"
        } else if !path.is_file() {
            "is not a file"
        } else {
            continue;
        };
        errors.push(ConfigError::new(
            at.field(&format!("tls.{field}")),
            format!("file `{f}` {problem}"),
        ));
    }
    if tls.cert.is_some() != tls.key.is_some() {
        errors.push(ConfigError::new(
            at.field("tls"),
            "`cert` and `key` go together for mutual TLS; set both or neither",
        ));
    }
    if tls.insecure_skip_verify && tls.ca.is_some() {
        errors.push(ConfigError::new(
            at.field("tls.insecure_skip_verify"),
            "`insecure_skip_verify: true` verifies nothing, so `ca` would be ignored; remove one of them",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Vec<ConfigError> {
        let c: WebsocketSourceConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let ok = c.check(At("ws"), &mut errors);
        assert_eq!(ok.is_some(), errors.is_empty(), "{errors:?}");
        errors
    }

    fn has(errors: &[ConfigError], path: &str, text: &str) -> bool {
        errors
            .iter()
            .any(|e| e.path == path && e.message.contains(text))
    }

    #[test]
    fn tls_is_optional_and_wss_needs_none() {
        assert!(check("urls: ['wss://feed.example/ws', 'ws://127.0.0.1:1/ws']").is_empty());
        let c: WebsocketSourceConfig = serde_yaml::from_str("urls: ['wss://h/ws']").unwrap();
        assert!(c.tls.is_none());
        let c: WebsocketSourceConfig =
            serde_yaml::from_str("urls: ['wss://h/ws']\ntls: {}").unwrap();
        assert!(!c.tls.unwrap().insecure_skip_verify, "verify by default");
    }

    #[test]
    fn tls_files_must_exist_and_cert_goes_with_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let ca = ca.to_str().unwrap();
        assert!(check(&format!("urls: ['wss://h/ws']\ntls: {{ca: '{ca}'}}")).is_empty());
        let e = check(&format!(
            "urls: ['wss://h/ws']\ntls: {{ca: /nonexistent/ca.pem, cert: '{ca}'}}"
        ));
        assert!(
            has(&e, "ws.tls.ca", "`/nonexistent/ca.pem` does not exist"),
            "{e:?}"
        );
        assert!(has(&e, "ws.tls", "`cert` and `key` go together"), "{e:?}");
        assert_eq!(e.len(), 2, "{e:?}");
        let d = dir.path().to_str().unwrap();
        let e = check(&format!("urls: ['wss://h/ws']\ntls: {{key: '{d}'}}"));
        assert!(has(&e, "ws.tls.key", "is not a file"), "{e:?}");
        assert!(has(&e, "ws.tls", "`cert` and `key` go together"), "{e:?}");
    }

    #[test]
    fn tls_applies_to_wss_urls_only() {
        let e = check("urls: ['wss://a/ws', 'ws://b/ws']\ntls: {insecure_skip_verify: true}");
        assert!(
            has(
                &e,
                "ws.urls[1]",
                "`ws://b/ws` is plain WebSocket but `tls` is set"
            ),
            "{e:?}"
        );
        assert_eq!(e.len(), 1, "{e:?}");
    }

    #[test]
    fn insecure_skip_verify_leaves_no_ca_to_ignore() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let e = check(&format!(
            "urls: ['wss://h/ws']\ntls: {{ca: '{}', insecure_skip_verify: true}}",
            ca.display()
        ));
        assert!(
            has(&e, "ws.tls.insecure_skip_verify", "`ca` would be ignored"),
            "{e:?}"
        );
        assert!(check("urls: ['wss://h/ws']\ntls: {insecure_skip_verify: true}").is_empty());
    }
}

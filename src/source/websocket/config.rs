//! `source.websocket:` — the feeds a pipeline reads, and their checks.

use std::time::Duration;

use serde::Deserialize;

use tokio_tungstenite::tungstenite::http::Uri;

use crate::config::{At, ConfigError};

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
    /// Timeout of the TCP + WebSocket handshake.
    #[schemars(with = "crate::config::HumanDuration")]
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
                    format!("`{u}` is not a WebSocket URL; write e.g. `ws://127.0.0.1:4200/ws` or `wss://…`"),
                )),
            }
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

//! `metrics:` — where Prometheus scrapes and which constant labels every series carries.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::{yes, At, ConfigError, Secret, ServerTlsFiles};

/// `metrics:` — Prometheus endpoint and health checks.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve metrics and the health endpoints at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address of `/metrics` (and `/`), `/healthz` and `/readyz`.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
    /// Constant labels put on every series, e.g. `{did_provider: "did:key"}`; names are letters,
    /// digits and `_`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Connections served at once; past it a connection is answered 503 and closed. Its own
    /// room, apart from the HTTP server's, so that `/readyz` answers while ingest is busy.
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    /// Serve `/metrics` and the health endpoints over HTTPS with these PEM files; none = plain
    /// HTTP (keep the port internal then).
    #[serde(default)]
    pub tls: Option<ServerTlsFiles>,
    /// A bearer token for `POST /-/reload` (write `${RELOAD_TOKEN}`): with it, a reload needs
    /// `Authorization: Bearer <token>` from any peer; without it only loopback peers may ask.
    #[serde(default)]
    pub reload_token: Option<Secret>,
}

fn default_max_connections() -> u64 {
    64
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_connections: default_max_connections(),
            tls: None,
            reload_token: None,
            enabled: true,
            listen: default_metrics_listen(),
            labels: BTreeMap::new(),
        }
    }
}

fn default_metrics_listen() -> String {
    "0.0.0.0:9000".into()
}

impl MetricsConfig {
    /// Checks `metrics:` (at `at`); the address to serve on (`None` when disabled) once valid.
    pub fn resolve(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<SocketAddr> {
        let listen = match (self.enabled, self.listen.parse::<SocketAddr>()) {
            (false, _) => None,
            (true, Ok(a)) => Some(a),
            (true, Err(_)) => {
                errors.push(ConfigError::new(
                    at.field("listen"),
                    format!(
                        "`{}` is not an address; write e.g. `0.0.0.0:9000`",
                        self.listen
                    ),
                ));
                None
            }
        };
        if let Some(tls) = &self.tls {
            for (field, f) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !std::path::Path::new(f).is_file() {
                    errors.push(ConfigError::new(
                        at.field(&format!("tls.{field}")),
                        format!("file `{f}` does not exist"),
                    ));
                }
            }
        }
        if self.reload_token.as_ref().is_some_and(|t| t.is_empty()) {
            errors.push(ConfigError::new(
                at.field("reload_token"),
                "empty (is its environment variable set?); set it, or remove `reload_token` to allow reloads from loopback only",
            ));
        }
        for name in self.labels.keys() {
            let ok = name
                .chars()
                .next()
                .map(|ch| ch.is_ascii_alphabetic() || ch == '_')
                .unwrap_or(false)
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                && !name.starts_with("__");
            if !ok {
                errors.push(ConfigError::new(
                    at.field(&format!("labels.{name}")),
                    "not a valid Prometheus label name; use letters, digits and `_`, not starting with a digit",
                ));
            }
        }
        listen
    }
}

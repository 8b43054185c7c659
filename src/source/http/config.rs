//! `http:` — the HTTP ingest server (REST Proxy v2 `POST /topics/{topic}` and
//! `POST /ingest/{pipeline}`), and `source.http:` of the pipelines it feeds.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{At, ByteSize, ConfigError, Secret};

/// `http:` — the HTTP ingest server: `POST /topics/{topic}` (REST Proxy v2) and
/// `POST /ingest/{pipeline}` on one port.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, e.g. `0.0.0.0:8082` (not the `metrics.listen` one).
    pub listen: String,
    /// Largest request body accepted (413 above it), e.g. `10MB`.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// How long a request waits for Kafka to acknowledge its records; records not acknowledged
    /// by then are answered 503 (they may still be written: at-least-once).
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// How long a record may wait for room in a full producer buffer before the request is
    /// answered 429.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// `Retry-After` sent with 429 and 503 answers.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub retry_after: Duration,
    /// Bearer tokens / API keys and what each may write; none = the routes are open (no
    /// authentication).
    #[schemars(extend("default" = []))]
    #[serde(default)]
    pub auth: Vec<HttpAuthConfig>,
    /// Serve HTTPS with these PEM files; none = plain HTTP.
    #[serde(default)]
    pub tls: Option<HttpTlsConfig>,
    /// Connections served at once (kept below the open-file limit, with room for Kafka and
    /// the metrics listener); past it a connection is answered 503 with `Retry-After` and
    /// closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    /// Time a client has to send a request's headers, and an idle keep-alive connection to
    /// start its next request; then the connection is closed.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a client has to send a request's whole body once its headers are in; a slower
    /// body is answered 408.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Records one request may carry (`/ingest` items, REST `records`); more are answered 413
    /// before any is written, so one request cannot make a huge answer or hold the buffer.
    #[serde(default = "default_max_records")]
    pub max_records: u64,
}

fn default_max_body() -> ByteSize {
    ByteSize(10 * 1000 * 1000)
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_wait() -> Duration {
    Duration::from_millis(100)
}
fn default_retry_after() -> Duration {
    Duration::from_secs(1)
}
fn default_max_connections() -> u64 {
    1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_records() -> u64 {
    10_000
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}

/// One accepted token (`Authorization: Bearer T` or `X-API-Key: T`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HttpAuthConfig {
    /// A name for logs and templates (`${@token_name}`); default `token<N>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The token, at least 16 characters (write `${ENV_VAR}`); or `token_file`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A file holding the token, instead of `token` (trailing whitespace is ignored).
    #[serde(default)]
    pub token_file: Option<String>,
    /// Topics it may write through `POST /topics/{topic}`, and through `POST /ingest` when
    /// listed (a record routed elsewhere goes to the DLQ as `topic_not_allowed`): names,
    /// `prefix*` or `*`. The DLQ topic, `_schemas` and `connect-*` only when named.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Pipelines it may feed through `POST /ingest/{pipeline}`: names, `prefix*` or `*`.
    #[serde(default)]
    pub pipelines: Vec<String>,
}

/// `http.tls:` — PEM certificate chain and private key.
pub type HttpTlsConfig = crate::config::ServerTlsFiles;

/// `source.http:` — a pipeline fed by `POST /ingest/{pipeline}` on the top-level `http:` server
/// (which must be configured).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Request headers copied onto every record (and its DLQ record), e.g. `[x-request-id]`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Overrides `http.max_body` for this pipeline.
    #[serde(default)]
    pub max_body: Option<ByteSize>,
}

impl HttpAuthConfig {
    /// The token: inline, or read from `token_file`.
    pub fn resolve_token(&self) -> Result<String, String> {
        match (&self.token, &self.token_file) {
            (Some(t), None) => Ok(t.expose().to_string()),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map(|s| s.trim_end().to_string())
                .map_err(|e| format!("cannot read token_file `{f}`: {e}")),
            (Some(_), Some(_)) => Err("set `token` or `token_file`, not both".into()),
            (None, None) => Err(
                "no token; set `token: \"${INGEST_TOKEN}\"` or `token_file: /path/to/token`".into(),
            ),
        }
    }
}

pub use crate::kafka::pattern_matches;

impl HttpConfig {
    /// Checks `http:` (at `at`) against the pipelines it feeds (`http_pipelines`, by name) and
    /// the metrics address; the server's settings, tokens read, once it is valid.
    pub fn resolve(
        &self,
        at: At<'_>,
        http_pipelines: &[&str],
        metrics_listen: Option<&str>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<HttpServerSettings> {
        let before = errors.len();
        let mut tokens = Vec::new();
        let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
        if self.listen.parse::<SocketAddr>().is_err() {
            err(
                at.field("listen"),
                format!(
                    "`{}` is not an address; write e.g. `0.0.0.0:8082`",
                    self.listen
                ),
            );
        }
        if metrics_listen == Some(self.listen.as_str()) {
            err(
                at.field("listen"),
                format!(
                    "`{}` is also metrics.listen; give the HTTP server its own port",
                    self.listen
                ),
            );
        }
        if self.max_records == 0 {
            err(at.field("max_records"), "must be at least 1".into());
        }
        if self.max_connections == 0 {
            err(at.field("max_connections"), "must be at least 1".into());
        }
        if self.header_timeout.is_zero() {
            err(
                at.field("header_timeout"),
                "must be more than 0; e.g. `10s`".into(),
            );
        }
        if self.body_timeout.is_zero() {
            err(
                at.field("body_timeout"),
                "must be more than 0; e.g. `30s`".into(),
            );
        }
        if self.max_body.0 == 0 {
            err(at.field("max_body"), "must be more than 0".into());
        }
        if self.ack_timeout.is_zero() {
            err(
                at.field("ack_timeout"),
                "must be more than 0; e.g. `30s`".into(),
            );
        }
        if self.retry_after.is_zero() {
            err(
                at.field("retry_after"),
                "must be at least 1s (Retry-After is in whole seconds)".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, a) in self.auth.iter().enumerate() {
            match a.resolve_token() {
                Ok(t) if t.is_empty() => err(
                    at.field(&format!("auth[{i}].token")),
                    "empty token (is the environment variable set to an empty value?)".into(),
                ),
                Ok(t) if t.len() < 16 => err(
                    at.field(&format!("auth[{i}].token")),
                    format!(
                        "token of {} characters is too short to be a secret; use at least 16",
                        t.len()
                    ),
                ),
                Ok(t) => {
                    tokens.push(Token {
                        name: std::sync::Arc::from(
                            a.name.clone().unwrap_or_else(|| format!("token{i}")),
                        ),
                        secret: t.clone().into_bytes(),
                        topics: a.topics.clone(),
                        pipelines: a.pipelines.clone(),
                    });
                    if !seen.insert(t) {
                        err(
                            at.field(&format!("auth[{i}].token")),
                            "the same token is listed twice; merge the entries".into(),
                        );
                    }
                }
                Err(e) => err(
                    at.field(&format!(
                        "auth[{i}].{}",
                        if a.token_file.is_some() {
                            "token_file"
                        } else {
                            "token"
                        }
                    )),
                    e,
                ),
            }
            if a.topics.is_empty() && a.pipelines.is_empty() {
                err(
                    at.field(&format!("auth[{i}]")),
                    "allows nothing; list `topics: [...]` and/or `pipelines: [...]` (`*` for all)"
                        .into(),
                );
            }
            for (j, p) in a.pipelines.iter().enumerate() {
                let known = http_pipelines.iter().any(|name| pattern_matches(p, name));
                if !known && !p.ends_with('*') {
                    err(
                        at.field(&format!("auth[{i}].pipelines[{j}]")),
                        format!("no pipeline named `{p}` has `source: {{ http: {{}} }}`"),
                    );
                }
            }
        }
        if let Some(tls) = &self.tls {
            for (field, f) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !std::path::Path::new(f).is_file() {
                    err(
                        at.field(&format!("tls.{field}")),
                        format!("file `{f}` does not exist"),
                    );
                }
            }
        }
        let listen = self.listen.parse::<SocketAddr>().ok()?;
        (errors.len() == before).then(|| HttpServerSettings {
            listen,
            tokens,
            config: self.clone(),
        })
    }
}

/// Resolved `http:`: the address parsed and the tokens read.
#[derive(Debug, Clone)]
pub struct HttpServerSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The accepted tokens.
    pub tokens: Vec<Token>,
    /// The section as written (limits, timeouts, TLS files).
    pub config: HttpConfig,
}

/// One accepted token, read from `http.auth[i]`.
#[derive(Clone)]
pub struct Token {
    /// For logs and `${@token_name}`.
    pub name: std::sync::Arc<str>,
    /// The secret, compared in constant time.
    pub secret: Vec<u8>,
    /// Topics it may write (patterns).
    pub topics: Vec<String>,
    /// Pipelines it may feed (patterns).
    pub pipelines: Vec<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .field("pipelines", &self.pipelines)
            .finish_non_exhaustive()
    }
}

impl HttpSourceConfig {
    /// Checks `source.http` (at `at`).
    pub(super) fn check(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> bool {
        let before = errors.len();
        if self.max_body.is_some_and(|b| b.0 == 0) {
            errors.push(ConfigError::new(
                at.field("max_body"),
                "must be more than 0",
            ));
        }
        for (j, name) in self.headers.iter().enumerate() {
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(ConfigError::new(
                    at.field(&format!("headers[{j}]")),
                    format!("`{name}` is not an HTTP header name"),
                ));
            }
        }
        errors.len() == before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigErrors;
    use crate::gateway::Config;
    use crate::source::SourceConfig;

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_yaml_str(text, "kgate.yaml", &|k| {
            (k == "TOKEN").then(|| "0123456789abcdef-secret".to_string())
        })
    }

    #[test]
    fn http_section_with_defaults_and_env_token() {
        let c = load("http:\n  listen: '127.0.0.1:8082'\n  auth:\n    - {token: '${TOKEN}', topics: ['logs.*'], pipelines: [orders]}\npipelines:\n  - name: orders\n    source: {http: {headers: [x-request-id]}}\n    topic: orders\n").unwrap();
        let h = c.http.unwrap();
        assert_eq!(h.max_body, ByteSize(10_000_000));
        assert_eq!(h.ack_timeout, Duration::from_secs(30));
        assert_eq!(h.max_wait, Duration::from_millis(100));
        assert_eq!(
            h.auth[0].resolve_token().unwrap(),
            "0123456789abcdef-secret"
        );
        let SourceConfig::Http(s) = &c.pipelines[0].source else {
            panic!()
        };
        assert_eq!(s.headers, vec!["x-request-id".to_string()]);
        assert!(pattern_matches("logs.*", "logs.app"));
        assert!(!pattern_matches("logs.*", "log"));
        assert!(pattern_matches("*", "x"));
    }

    #[test]
    fn http_errors_name_their_path() {
        let e = load("http:\n  listen: nowhere\n  ack_timeout: 0s\n  tls: {cert_file: /no/cert.pem, key_file: /no/key.pem}\n  auth:\n    - {token: short, topics: ['*']}\n    - {topics: ['*']}\n    - {token: '0123456789abcdefgh', pipelines: [nope]}\npipelines:\n  - name: a\n    source: {http: {headers: ['bad header']}}\n    topic: t\n").unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "http.listen",
            "http.ack_timeout",
            "http.tls.cert_file",
            "http.tls.key_file",
            "http.auth[0].token",
            "http.auth[1].token",
            "http.auth[2].pipelines[0]",
            "pipelines[0].source.http.headers[0]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}\n{e}");
        }
        let e =
            load("pipelines:\n  - name: a\n    source: {http: {}}\n    topic: t\n").unwrap_err();
        assert_eq!(e.errors[0].path, "pipelines[0].source.http");
        assert!(e.errors[0].message.contains("top-level `http:`"), "{e}");
        let e = load("http: {listen: '127.0.0.1:1', lisen: x}\npipelines: [{name: a, source: {http: {}}, topic: t}]\n").unwrap_err();
        assert_eq!(e.errors[0].path, "http.lisen", "{e}");
    }
}

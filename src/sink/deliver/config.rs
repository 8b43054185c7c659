//! `sink:` of a consumer — where records read from Kafka are handed over (stdout, a file, an
//! HTTP webhook or a long-lived command) and how they are batched, with their checks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{At, ByteSize, ConfigError, Secret};

/// `sink:` — where a consumer hands the records it reads: exactly one of `stdout`, `file`,
/// `webhook`, `command`, plus how records are grouped into batches. A record's offset is
/// committed only once its batch was taken (or, after the retries, dead-lettered).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DeliverConfig {
    /// Print records as JSON lines on standard output: one record a line, or with
    /// `batch.max_records` above 1 one JSON array (the batch) a line.
    #[serde(default)]
    pub stdout: Option<StdoutConfig>,
    /// Append records as JSON lines to a file, rotated by size and/or age; each batch is
    /// fsynced before its records count as delivered.
    #[serde(default)]
    pub file: Option<FileConfig>,
    /// POST each batch as a JSON array to an HTTP endpoint; a 2xx answer delivers the batch.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Write each batch to a long-lived child process's stdin (JSON lines) and read one answer
    /// line per batch from its stdout: `ok`, or an error text.
    #[serde(default)]
    pub command: Option<CommandConfig>,
    /// How records are grouped into batches (default: single records).
    #[serde(default)]
    pub batch: BatchConfig,
}

/// `sink.stdout:` — no settings; write `stdout: {}`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct StdoutConfig {}

/// `sink.file:` — JSON lines appended to `path`; the full file is renamed to
/// `<path>.<UTC time>` when it reaches `max_bytes` or is `rotate_every` old.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FileConfig {
    /// The file written (created if missing, appended to if present), e.g. `out/trades.ndjson`.
    pub path: PathBuf,
    /// Rotate once the file holds this many bytes, e.g. `100MB`; none by default.
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
    /// Rotate once the file is this old, e.g. `1h`; none by default.
    #[schemars(with = "Option<crate::config::HumanDuration>")]
    #[serde(default, with = "humantime_serde")]
    pub rotate_every: Option<Duration>,
}

/// `sink.webhook:` — an HTTP endpoint that takes a JSON array of records per POST.
/// 2xx: delivered. 408, 429, 5xx, a timeout or a connection error: tried again after a
/// jittered, doubling pause, up to `max_attempts` in all; then (or at once on another 4xx) each
/// record of the batch goes to the DLQ as `sink_failed` and its offset is committed.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL POSTed to, e.g. `https://hooks.example.com/trades`.
    pub url: String,
    /// Extra request headers, e.g. `{X-Api-Key: '${HOOK_KEY}'}`; values are secrets (never
    /// printed).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// A bearer token sent as `Authorization: Bearer <token>` (never printed), e.g.
    /// `${HOOK_TOKEN}`.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// How long one POST may take before it counts as failed. Default `10s`.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per batch, the first included, before its records go to the DLQ. Default 5.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The pause after the first failed attempt; it doubles after each one (with ±50 %
    /// jitter), up to `max_backoff`. Default `200ms`.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// The longest pause between attempts. Default `30s`.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

/// `sink.command:` — a child process started once (and again if it exits) that reads one
/// batch a line on stdin (a record object, or with `batch.max_records` above 1 a JSON array)
/// and answers one line per batch on stdout: `ok`, or an error text (tried again like a
/// webhook, then the DLQ). Its stderr is kgate's.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CommandConfig {
    /// The program and its arguments, e.g. `[python3, handler.py, --verbose]` (no shell).
    pub command: Vec<String>,
    /// How long to wait for the answer line of a batch; past it the child is restarted and the
    /// attempt counts as failed. Default `30s`.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per batch, the first included, before its records go to the DLQ. Default 5.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The pause after the first failed attempt; doubles after each (±50 % jitter). Default
    /// `200ms`.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// The longest pause between attempts. Default `30s`.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

/// `sink.batch:` — a batch closes at `max_records` or `max_bytes` (of the records' values),
/// or `timeout` after its first record, whichever comes first; at shutdown at once.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BatchConfig {
    /// Records per batch; 1 (the default) hands records over singly.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Value bytes per batch, e.g. `1MB` (the default); a single larger record is a batch of
    /// its own.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// How long a batch that is not full waits for more records. Default `1s`.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_batch_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            timeout: default_batch_timeout(),
        }
    }
}

impl WebhookConfig {
    /// A webhook to `url` with the defaults.
    pub fn new(url: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            headers: BTreeMap::new(),
            bearer_token: None,
            timeout: default_webhook_timeout(),
            max_attempts: default_max_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl CommandConfig {
    /// A command with the defaults.
    pub fn new(command: Vec<String>) -> CommandConfig {
        CommandConfig {
            command,
            timeout: default_command_timeout(),
            max_attempts: default_max_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_max_records() -> usize {
    1
}
fn default_max_bytes() -> ByteSize {
    ByteSize(1_000_000)
}
fn default_batch_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

/// Checks what serde cannot express (at `at`); true when the section is valid.
pub fn check(c: &DeliverConfig, at: At<'_>, errors: &mut Vec<ConfigError>) -> bool {
    let before = errors.len();
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
    let set = [
        c.stdout.is_some(),
        c.file.is_some(),
        c.webhook.is_some(),
        c.command.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        err(
            at.field(""),
            format!(
                "{} sink kinds set; write exactly one of `stdout: {{}}`, `file: {{path: ...}}`, \
                 `webhook: {{url: ...}}`, `command: {{command: [...]}}`",
                if set == 0 { "no" } else { "several" }
            ),
        );
    }
    if c.batch.max_records == 0 {
        err(
            at.field("batch.max_records"),
            "must be at least 1 (1 = single records)".into(),
        );
    }
    if c.batch.max_bytes.0 == 0 {
        err(
            at.field("batch.max_bytes"),
            "must be above 0; e.g. `1MB`".into(),
        );
    }
    if c.batch.timeout.is_zero() {
        err(
            at.field("batch.timeout"),
            "must be above 0; e.g. `1s`".into(),
        );
    }
    if let Some(f) = &c.file {
        if f.path.as_os_str().is_empty() {
            err(
                at.field("file.path"),
                "empty; write e.g. `out/records.ndjson`".into(),
            );
        }
        if f.max_bytes.is_some_and(|b| b.0 == 0) {
            err(
                at.field("file.max_bytes"),
                "must be above 0; e.g. `100MB`".into(),
            );
        }
        if f.rotate_every.is_some_and(|d| d < Duration::from_secs(1)) {
            err(
                at.field("file.rotate_every"),
                "must be at least 1s; e.g. `1h`".into(),
            );
        }
    }
    if let Some(w) = &c.webhook {
        match reqwest::Url::parse(&w.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => err(
                at.field("webhook.url"),
                format!(
                    "`{}` is not an http:// or https:// URL; write e.g. `https://hooks.example.com/in`",
                    crate::config::redact_url(&w.url)
                ),
            ),
        }
        for (name, v) in &w.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                err(
                    at.field(&format!("webhook.headers.{name}")),
                    format!("`{name}` is not an HTTP header name"),
                );
            } else if reqwest::header::HeaderValue::from_str(v.expose()).is_err() {
                err(
                    at.field(&format!("webhook.headers.{name}")),
                    "the value is not a valid HTTP header value (control characters?)".into(),
                );
            }
        }
        retry_checks(&at, "webhook", w.max_attempts, w.timeout, &mut err);
    }
    if let Some(cm) = &c.command {
        if cm.command.first().is_none_or(|p| p.trim().is_empty()) {
            err(
                at.field("command.command"),
                "no program; write e.g. `[python3, handler.py]`".into(),
            );
        }
        retry_checks(&at, "command", cm.max_attempts, cm.timeout, &mut err);
    }
    errors.len() == before
}

fn retry_checks(
    at: &At<'_>,
    kind: &str,
    max_attempts: u32,
    timeout: Duration,
    err: &mut impl FnMut(String, String),
) {
    if max_attempts == 0 {
        err(
            at.field(&format!("{kind}.max_attempts")),
            "must be at least 1 (1 = no retry)".into(),
        );
    }
    if timeout.is_zero() {
        err(
            at.field(&format!("{kind}.timeout")),
            "must be above 0; e.g. `10s`".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let c: DeliverConfig = crate::config::from_yaml(yaml).unwrap();
        let mut e = Vec::new();
        check(&c, At("sink"), &mut e);
        e.into_iter().map(|e| e.path).collect()
    }

    /// The schema a pipeline's `sink:` will show editors: every struct closed, every field
    /// documented.
    #[test]
    fn json_schema_is_closed_and_documented() {
        let s = serde_json::to_value(schemars::schema_for!(DeliverConfig)).unwrap();
        assert_eq!(s["additionalProperties"], false, "{s:#}");
        for def in [
            "WebhookConfig",
            "FileConfig",
            "CommandConfig",
            "BatchConfig",
        ] {
            let d = &s["$defs"][def];
            assert_eq!(d["additionalProperties"], false, "{def}: {d:#}");
            for (name, p) in d["properties"].as_object().unwrap() {
                assert!(p.get("description").is_some(), "{def}.{name} has no doc");
            }
        }
    }

    #[test]
    fn defaults_and_checks_with_paths() {
        let c: DeliverConfig = crate::config::from_yaml(
            "webhook: {url: 'http://h:1/x', bearer_token: s3cret}\nbatch: {max_records: 100}",
        )
        .unwrap();
        let w = c.webhook.as_ref().unwrap();
        assert_eq!(w.max_attempts, 5);
        assert_eq!(w.timeout, Duration::from_secs(10));
        assert_eq!(c.batch.max_records, 100);
        assert_eq!(c.batch.timeout, Duration::from_secs(1));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(errors("stdout: {}").is_empty());
        assert_eq!(errors("{}"), ["sink"]);
        assert_eq!(errors("stdout: {}\nfile: {path: x}"), ["sink"]);
        assert_eq!(
            errors("webhook: {url: 'ftp://x', max_attempts: 0}\nbatch: {max_records: 0}"),
            [
                "sink.batch.max_records",
                "sink.webhook.url",
                "sink.webhook.max_attempts"
            ]
        );
        assert_eq!(errors("command: {command: []}"), ["sink.command.command"]);
        assert_eq!(
            errors("file: {path: x, rotate_every: 10ms, max_bytes: 0}"),
            ["sink.file.max_bytes", "sink.file.rotate_every"]
        );
    }
}

//! `schema_registry:` — where the registry is and how to talk to it, with its checks; and the
//! subject naming strategies of Confluent's serializers.

use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::config::{redact_url, ConfigError, Secret};

/// `schema_registry:` — where the Confluent-compatible schema registry is and how to talk to it.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g. `http://127.0.0.1:8081` (Confluent) or
    /// `http://127.0.0.1:8080/apis/ccompat/v7` (Apicurio).
    pub url: String,
    /// HTTP basic auth user (Confluent Cloud: the API key).
    #[serde(default)]
    pub username: Option<String>,
    /// HTTP basic auth password (write `${ENV_VAR}`); needs `username`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS files for an `https://` registry (PEM; the client key in PKCS#8).
    #[serde(default)]
    pub tls: Option<RegistryTlsConfig>,
    /// Timeout of one request (connect + answer).
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a subject's latest schema is used before it is looked up again: a version
    /// registered meanwhile is used from the next refresh on, with no restart (at least `1s`).
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
}

/// `schema_registry.tls:` — PEM files.
pub type RegistryTlsConfig = crate::config::TlsFiles;

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_refresh() -> Duration {
    Duration::from_secs(300)
}

impl RegistryConfig {
    /// A config with only the URL set (the rest default). Credentials written in the URL
    /// (`https://user:pass@host/`) become `username` / `password`.
    pub fn from_url(url: &str) -> RegistryConfig {
        let mut c = RegistryConfig {
            url: url.to_string(),
            username: None,
            password: None,
            tls: None,
            timeout: default_timeout(),
            refresh: default_refresh(),
        };
        if let Ok(mut u) = Url::parse(url) {
            if !u.username().is_empty() {
                c.username = Some(percent_decode(u.username()));
                c.password = u.password().map(|p| Secret::new(percent_decode(p)));
                let _ = u.set_username("");
                let _ = u.set_password(None);
                c.url = u.to_string();
            }
        }
        c
    }
}

/// Credentials in a URL are percent-encoded (`p%40ss` is `p@ss`).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Checks a `schema_registry` section; pushes one error per problem, each with its path under
/// `path` (e.g. `schema_registry.tls.key_file`).
pub fn validate_config(c: &RegistryConfig, path: &str, errors: &mut Vec<ConfigError>) {
    let mut err = |field: &str, message: String| {
        errors.push(ConfigError {
            path: if field.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{field}")
            },
            message,
        })
    };
    let https = match Url::parse(&c.url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
            if u.query().is_some() || u.fragment().is_some() {
                err(
                    "url",
                    format!(
                        "`{}` has a query or fragment; give the base URL only",
                        redact_url(&c.url)
                    ),
                );
            }
            if !u.username().is_empty() {
                err(
                    "url",
                    "credentials in the URL; use `username` and `password: ${REGISTRY_PASSWORD}`"
                        .into(),
                );
            }
            u.scheme() == "https"
        }
        Ok(u) => {
            err(
                "url",
                format!(
                    "`{}` is a {}: URL; the registry is http:// or https://",
                    redact_url(&c.url),
                    u.scheme()
                ),
            );
            false
        }
        Err(e) => {
            err(
                "url",
                format!(
                    "`{}` is not a URL ({e}); write e.g. `http://127.0.0.1:8081` (Confluent) or `http://127.0.0.1:8080/apis/ccompat/v7` (Apicurio)",
                    redact_url(&c.url)
                ),
            );
            false
        }
    };
    if c.password.is_some() && c.username.is_none() {
        err(
            "username",
            "a password without a username; set both (basic auth) or neither".into(),
        );
    }
    if c.timeout.is_zero() {
        err("timeout", "must be more than 0; write e.g. `10s`".into());
    }
    if c.refresh < Duration::from_secs(1) {
        err("refresh", "must be at least 1s; write e.g. `5m`".into());
    }
    if let Some(tls) = &c.tls {
        if !https {
            err(
                "tls",
                format!(
                    "TLS files are set but `{}` is not https://",
                    redact_url(&c.url)
                ),
            );
        }
        for (field, file) in [
            ("tls.ca_file", &tls.ca_file),
            ("tls.cert_file", &tls.cert_file),
            ("tls.key_file", &tls.key_file),
        ] {
            if let Some(f) = file {
                if !std::path::Path::new(f).is_file() {
                    err(field, format!("file `{f}` does not exist"));
                }
            }
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            err(
                "tls",
                "`cert_file` and `key_file` go together for mutual TLS; set both or neither".into(),
            );
        }
        if let Some(k) = &tls.key_file {
            if let Ok(text) = std::fs::read_to_string(k) {
                if let Some(problem) = key_format_problem(&text, k) {
                    err("tls.key_file", problem);
                }
            }
        }
    }
}

/// Why a PEM key file cannot be used as the client key (native-tls wants unencrypted PKCS#8).
pub(super) fn key_format_problem(pem: &str, file: &str) -> Option<String> {
    let convert =
        format!("convert it with `openssl pkcs8 -topk8 -nocrypt -in {file} -out key.pk8.pem`");
    if pem.contains("-----BEGIN PRIVATE KEY-----") {
        None
    } else if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        Some(format!("the key is encrypted; {convert}"))
    } else if pem.contains("PRIVATE KEY-----") {
        Some(format!(
            "the key is not PKCS#8 (`BEGIN PRIVATE KEY`); {convert}"
        ))
    } else {
        Some("no PEM private key in the file".into())
    }
}

// ------------------------------------------------------------------------------------- naming

/// How a subject name is made from a topic and a record (Confluent's `*SubjectNameStrategy`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value` / `<topic>-key` (the default of Confluent's serializers).
    #[default]
    TopicName,
    /// `<record full name>`: one schema for the record type, in every topic.
    RecordName,
    /// `<topic>-<record full name>`.
    TopicRecordName,
}

/// The subject a record's schema is registered under. As in Confluent's serializers, only the
/// topic-name strategy tells keys from values (`-key` / `-value`); the record-based ones name
/// the subject after the record alone.
pub fn subject(
    strategy: SubjectStrategy,
    topic: &str,
    record_full_name: &str,
    is_key: bool,
) -> String {
    match strategy {
        SubjectStrategy::TopicName => {
            format!("{topic}-{}", if is_key { "key" } else { "value" })
        }
        SubjectStrategy::RecordName => record_full_name.to_string(),
        SubjectStrategy::TopicRecordName => format!("{topic}-{record_full_name}"),
    }
}

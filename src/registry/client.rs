//! A client of the Confluent Schema Registry REST API (Confluent, Apicurio's `/apis/ccompat/v7`,
//! Karapace, Redpanda): subjects, versions, schemas by id (cached: ids are immutable),
//! registration and compatibility checks, with errors that name the subject, the registry and
//! the fix. Also the subject naming strategies of Confluent's serializers.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::config::{key_format_problem, RegistryConfig};
use crate::config::redact_url;

// ------------------------------------------------------------------------------------- types

/// Which version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The newest.
    Latest,
    /// Version N (1, 2, ...).
    Number(u32),
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Number(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Version, String> {
        match s {
            "latest" | "-1" => Ok(Version::Latest),
            _ => match s.parse::<u32>() {
                Ok(n) if n > 0 => Ok(Version::Number(n)),
                _ => Err(format!("`{s}` is not a version; use 1, 2, ... or `latest`")),
            },
        }
    }
}

/// One version of a subject, as the registry stores it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RegisteredSchema {
    /// The subject.
    pub subject: String,
    /// Its version within the subject.
    pub version: u32,
    /// The schema id (what the Confluent wire format carries after the magic byte).
    pub id: u32,
    /// The schema text.
    pub schema: String,
    /// `AVRO` (omitted by registries for Avro), `JSON` or `PROTOBUF`.
    #[serde(rename = "schemaType", default = "avro")]
    pub schema_type: String,
}

fn avro() -> String {
    "AVRO".into()
}

// ------------------------------------------------------------------------------------- errors

/// What went wrong talking to the registry; every message names the registry and the fix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The client could not be built (TLS files).
    #[error("schema registry client: {0}")]
    Setup(String),
    /// Nothing answers at the URL.
    #[error("cannot reach the schema registry at {url}: {reason}; is it running? (scripts/services up registry)")]
    Unreachable {
        /// Registry base URL.
        url: String,
        /// The innermost cause, e.g. `Connection refused (os error 111)`.
        reason: String,
    },
    /// No answer within the timeout.
    #[error("the schema registry at {url} did not answer within {timeout:?}; is it overloaded, or is schema_registry.timeout too short?")]
    Timeout {
        /// Registry base URL.
        url: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// 401.
    #[error("the schema registry at {url} refused the credentials (HTTP 401): check schema_registry.username and password{}", if *.with_credentials { "" } else { " (none were sent)" })]
    Unauthorized {
        /// Registry base URL.
        url: String,
        /// Whether credentials were sent.
        with_credentials: bool,
    },
    /// 403.
    #[error("the schema registry at {url} denied {what} (HTTP 403): the user lacks the permission; {message}")]
    Forbidden {
        /// Registry base URL.
        url: String,
        /// What was asked.
        what: String,
        /// The registry's message.
        message: String,
    },
    /// 40401.
    #[error("subject {subject} not found at {url}: register it first with kgate schemas register {subject} --file schemas/{}.avsc", file_stem(subject))]
    SubjectNotFound {
        /// The subject.
        subject: String,
        /// Registry base URL.
        url: String,
    },
    /// 40402.
    #[error("version {version} of subject {subject} not found at {url}; list the versions with kgate schemas versions {subject}")]
    VersionNotFound {
        /// The subject.
        subject: String,
        /// The version asked for.
        version: Version,
        /// Registry base URL.
        url: String,
    },
    /// 40403.
    #[error("schema id {id} not found at {url}: the record was written with a schema this registry does not have (another registry, or a deleted schema?)")]
    SchemaNotFound {
        /// The id.
        id: u32,
        /// Registry base URL.
        url: String,
    },
    /// 409: not compatible with the subject's existing versions.
    #[error("the schema is not compatible with subject {subject} at {url}: {message}; see why with kgate schemas check {subject} --file FILE")]
    Incompatible {
        /// The subject.
        subject: String,
        /// Registry base URL.
        url: String,
        /// The registry's explanation.
        message: String,
    },
    /// 422: the registry cannot parse the schema.
    #[error("the schema registry at {url} rejected the schema for subject {subject} as invalid: {message}")]
    InvalidSchema {
        /// The subject.
        subject: String,
        /// Registry base URL.
        url: String,
        /// The registry's explanation.
        message: String,
    },
    /// Any other error answer.
    #[error("{method} {request} answered HTTP {status}{}: {message}{}", code.map(|c| format!(" (error code {c})")).unwrap_or_default(), hint_for(*status, code.is_some()))]
    Http {
        /// HTTP method.
        method: String,
        /// Full request URL.
        request: String,
        /// HTTP status.
        status: u16,
        /// Confluent `error_code`, when the body had one.
        code: Option<i64>,
        /// The registry's message (or body).
        message: String,
    },
    /// A 2xx answer that is not what the API promises.
    #[error("{request} answered something that is not the Confluent schema registry API ({message}); is {url} the registry's Confluent-compatible API?")]
    BadResponse {
        /// Registry base URL.
        url: String,
        /// Full request URL.
        request: String,
        /// What was wrong.
        message: String,
    },
}

fn file_stem(subject: &str) -> &str {
    subject
        .strip_suffix("-value")
        .or_else(|| subject.strip_suffix("-key"))
        .unwrap_or(subject)
}

fn hint_for(status: u16, had_code: bool) -> &'static str {
    if status == 404 && !had_code {
        "; is the URL the Confluent-compatible API? (Apicurio: http://HOST:PORT/apis/ccompat/v7)"
    } else {
        ""
    }
}

// ------------------------------------------------------------------------------------- client

/// What a request is about, for error messages.
#[derive(Clone, Copy)]
enum About<'a> {
    Registry,
    Subject(&'a str),
    Version(&'a str, Version),
    Id(u32),
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

/// A Confluent schema registry client. Cheap to share (`Arc`); all methods take `&self`.
pub struct RegistryClient {
    http: reqwest::Client,
    base: Url,
    url: String,
    auth: Option<(String, Option<String>)>,
    timeout: Duration,
    refresh: Duration,
    by_id: Mutex<HashMap<u32, String>>,
    latest: Mutex<HashMap<String, (Instant, RegisteredSchema)>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl RegistryClient {
    /// A client for `cfg` (reads the TLS files now).
    pub fn new(cfg: &RegistryConfig) -> Result<RegistryClient, RegistryError> {
        let base = Url::parse(cfg.url.trim_end_matches('/')).map_err(|e| {
            RegistryError::Setup(format!("`{}` is not a URL: {e}", redact_url(&cfg.url)))
        })?;
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!("kgate/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = &cfg.tls {
            let read = |f: &str| {
                std::fs::read(f)
                    .map_err(|e| RegistryError::Setup(format!("cannot read TLS file `{f}`: {e}")))
            };
            if let Some(ca) = &tls.ca_file {
                let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?).map_err(|e| {
                    RegistryError::Setup(format!("`{ca}` is not a PEM CA bundle: {e}"))
                })?;
                for c in certs {
                    b = b.add_root_certificate(c);
                }
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                let key_pem = read(key)?;
                if let Some(p) = key_format_problem(&String::from_utf8_lossy(&key_pem), key) {
                    return Err(RegistryError::Setup(format!("`{key}`: {p}")));
                }
                let id =
                    reqwest::Identity::from_pkcs8_pem(&read(cert)?, &key_pem).map_err(|e| {
                        RegistryError::Setup(format!(
                            "client certificate `{cert}` with key `{key}`: {e}"
                        ))
                    })?;
                b = b.identity(id);
            }
        }
        let http = b
            .build()
            .map_err(|e| RegistryError::Setup(format!("cannot set up the HTTP client: {e}")))?;
        Ok(RegistryClient {
            http,
            url: redact_url(base.as_str()).trim_end_matches('/').to_string(),
            base,
            auth: cfg
                .username
                .clone()
                .map(|u| (u, cfg.password.as_ref().map(|p| p.expose().to_string()))),
            timeout: cfg.timeout,
            refresh: cfg.refresh,
            by_id: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
        })
    }

    /// A client for a bare URL (credentials in the URL are used for basic auth).
    pub fn from_url(url: &str) -> Result<RegistryClient, RegistryError> {
        RegistryClient::new(&RegistryConfig::from_url(url))
    }

    /// The registry's base URL (without credentials), as shown in messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// All subjects (not the deleted ones).
    pub async fn list_subjects(&self) -> Result<Vec<String>, RegistryError> {
        self.call(Method::GET, &["subjects"], &[], None, About::Registry)
            .await
    }

    /// The version numbers of a subject, oldest first.
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        self.call(
            Method::GET,
            &["subjects", subject, "versions"],
            &[],
            None,
            About::Subject(subject),
        )
        .await
    }

    /// One version of a subject.
    pub async fn get_version(
        &self,
        subject: &str,
        version: Version,
    ) -> Result<RegisteredSchema, RegistryError> {
        let v = version.to_string();
        let mut s: RegisteredSchema = self
            .call(
                Method::GET,
                &["subjects", subject, "versions", &v],
                &[],
                None,
                About::Version(subject, version),
            )
            .await?;
        if s.subject.is_empty() {
            s.subject = subject.to_string();
        }
        self.by_id
            .lock()
            .unwrap()
            .entry(s.id)
            .or_insert_with(|| s.schema.clone());
        Ok(s)
    }

    /// The latest version of a subject, looked up again only when the cached one is older than
    /// `refresh`. If the registry cannot be reached then, the cached one is kept (and the error
    /// logged): a registry outage does not stop records whose schema is known.
    pub async fn latest_cached(&self, subject: &str) -> Result<RegisteredSchema, RegistryError> {
        let cached = self.latest.lock().unwrap().get(subject).cloned();
        if let Some((at, s)) = &cached {
            if at.elapsed() < self.refresh {
                return Ok(s.clone());
            }
        }
        match self.get_version(subject, Version::Latest).await {
            Ok(s) => {
                self.latest
                    .lock()
                    .unwrap()
                    .insert(subject.to_string(), (Instant::now(), s.clone()));
                Ok(s)
            }
            Err(e @ (RegistryError::Unreachable { .. } | RegistryError::Timeout { .. })) => {
                match cached {
                    Some((_, s)) => {
                        tracing::warn!(subject, error = %e, "keeping the cached schema (version {}, id {})", s.version, s.id);
                        Ok(s)
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The schema text of an id (cached for the life of the client: ids never change).
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        if let Some(s) = self.by_id.lock().unwrap().get(&id) {
            return Ok(s.clone());
        }
        #[derive(Deserialize)]
        struct ById {
            schema: String,
        }
        let idt = id.to_string();
        let got: ById = self
            .call(
                Method::GET,
                &["schemas", "ids", &idt],
                &[],
                None,
                About::Id(id),
            )
            .await?;
        self.by_id.lock().unwrap().insert(id, got.schema.clone());
        Ok(got.schema)
    }

    /// Registers an Avro schema under a subject (a no-op returning the existing id when the
    /// subject already has the same schema); returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Id {
            id: u32,
        }
        let got: Id = self
            .call(
                Method::POST,
                &["subjects", subject, "versions"],
                &[],
                Some(json!({ "schema": schema })),
                About::Subject(subject),
            )
            .await?;
        self.by_id
            .lock()
            .unwrap()
            .entry(got.id)
            .or_insert_with(|| schema.to_string());
        Ok(got.id)
    }

    /// The version of `subject` that has this schema (`POST /subjects/{subject}`); a subject
    /// without it answers [`RegistryError::SubjectNotFound`] or an HTTP 404 error.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<RegisteredSchema, RegistryError> {
        let mut s: RegisteredSchema = self
            .call(
                Method::POST,
                &["subjects", subject],
                &[],
                Some(json!({ "schema": schema })),
                About::Subject(subject),
            )
            .await?;
        if s.subject.is_empty() {
            s.subject = subject.to_string();
        }
        Ok(s)
    }

    /// Whether `schema` may be registered as the next version of `subject` under its
    /// compatibility level, and why not. Registries that say "no" without reasons (Apicurio)
    /// get reasons worked out here with Avro's schema resolution rules.
    pub async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<(bool, Vec<String>), RegistryError> {
        #[derive(Deserialize)]
        struct Answer {
            is_compatible: bool,
            #[serde(default)]
            messages: Vec<String>,
        }
        let a: Answer = self
            .call(
                Method::POST,
                &["compatibility", "subjects", subject, "versions", "latest"],
                &[("verbose", "true")],
                Some(json!({ "schema": schema })),
                About::Subject(subject),
            )
            .await?;
        if a.is_compatible || !a.messages.is_empty() {
            return Ok((a.is_compatible, a.messages));
        }
        let level = self
            .compatibility_level(subject)
            .await
            .unwrap_or_else(|_| "BACKWARD".into());
        let mut existing = Vec::new();
        if level.ends_with("_TRANSITIVE") {
            for v in self.versions(subject).await? {
                existing.push(self.get_version(subject, Version::Number(v)).await?);
            }
        } else {
            existing.push(self.get_version(subject, Version::Latest).await?);
        }
        let mut reasons = incompatibility_reasons(&level, schema, &existing);
        if reasons.is_empty() && !level.starts_with("BACKWARD") {
            // Apicurio checks with BACKWARD rules when the subject has no rule of its own.
            reasons = incompatibility_reasons("BACKWARD", schema, &existing);
        }
        if reasons.is_empty() {
            reasons.push(format!(
                "the registry says not compatible (level {level}) but gives no reason"
            ));
        }
        Ok((false, reasons))
    }

    /// The compatibility level of a subject (`BACKWARD`, `FULL_TRANSITIVE`, `NONE`, ...), or the
    /// registry's default when the subject has none of its own.
    pub async fn compatibility_level(&self, subject: &str) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct Level {
            #[serde(rename = "compatibilityLevel", alias = "compatibility")]
            level: String,
        }
        let own: Result<Level, _> = self
            .call(
                Method::GET,
                &["config", subject],
                &[],
                None,
                About::Subject(subject),
            )
            .await;
        match own {
            Ok(l) => Ok(l.level),
            Err(_) => {
                let global: Level = self
                    .call(Method::GET, &["config"], &[], None, About::Registry)
                    .await?;
                Ok(global.level)
            }
        }
    }

    /// Sets a subject's compatibility level (`BACKWARD`, `FORWARD`, `FULL`, `NONE`, and the
    /// `_TRANSITIVE` variants).
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let _: Value = self
            .call(
                Method::PUT,
                &["config", subject],
                &[],
                Some(json!({ "compatibility": level })),
                About::Subject(subject),
            )
            .await?;
        Ok(())
    }

    /// Deletes a subject (soft; `permanent` also removes it for good, which registries only
    /// allow after a soft delete). Returns the versions deleted.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        let soft: Vec<u32> = self
            .call(
                Method::DELETE,
                &["subjects", subject],
                &[],
                None,
                About::Subject(subject),
            )
            .await?;
        if permanent {
            let _: Value = self
                .call(
                    Method::DELETE,
                    &["subjects", subject],
                    &[("permanent", "true")],
                    None,
                    About::Subject(subject),
                )
                .await?;
        }
        self.latest.lock().unwrap().remove(subject);
        Ok(soft)
    }

    fn endpoint(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query);
        }
        u
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Value>,
        about: About<'_>,
    ) -> Result<T, RegistryError> {
        let endpoint = self.endpoint(segments, query);
        let mut req = self.http.request(method.clone(), endpoint.clone()).header(
            reqwest::header::ACCEPT,
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, p.as_ref());
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| RegistryError::BadResponse {
                url: self.url.clone(),
                request: format!("{method} {endpoint}"),
                message: format!("{e}; body: {}", brief(&bytes)),
            });
        }
        Err(self.status_error(&method, &endpoint, status, &bytes, about))
    }

    fn transport_error(&self, e: reqwest::Error) -> RegistryError {
        if e.is_timeout() {
            return RegistryError::Timeout {
                url: self.url.clone(),
                timeout: self.timeout,
            };
        }
        // The innermost cause says it best ("Connection refused (os error 111)").
        let mut reason = e.to_string();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = s.to_string();
            src = s.source();
        }
        RegistryError::Unreachable {
            url: self.url.clone(),
            reason,
        }
    }

    fn status_error(
        &self,
        method: &Method,
        endpoint: &Url,
        status: StatusCode,
        body: &[u8],
        about: About<'_>,
    ) -> RegistryError {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let code = parsed.as_ref().and_then(|b| b.error_code);
        let message = parsed
            .and_then(|b| b.message)
            .unwrap_or_else(|| brief(body));
        let url = self.url.clone();
        let subject = match about {
            About::Subject(s) | About::Version(s, _) => s.to_string(),
            _ => String::new(),
        };
        match (status.as_u16(), code) {
            (401, _) => RegistryError::Unauthorized {
                url,
                with_credentials: self.auth.is_some(),
            },
            (403, _) => RegistryError::Forbidden {
                url,
                what: format!("{method} {}", endpoint.path()),
                message,
            },
            (_, Some(40401)) if !subject.is_empty() => {
                RegistryError::SubjectNotFound { subject, url }
            }
            (_, Some(40402)) => RegistryError::VersionNotFound {
                subject,
                version: match about {
                    About::Version(_, v) => v,
                    _ => Version::Latest,
                },
                url,
            },
            (_, Some(40403)) => match about {
                About::Id(id) => RegistryError::SchemaNotFound { id, url },
                _ => RegistryError::Http {
                    method: method.to_string(),
                    request: endpoint.to_string(),
                    status: status.as_u16(),
                    code,
                    message,
                },
            },
            (409, _) if !subject.is_empty() => RegistryError::Incompatible {
                subject,
                url,
                message: strip_exception(&message),
            },
            (422, _) if !subject.is_empty() => RegistryError::InvalidSchema {
                subject,
                url,
                message: strip_exception(&message),
            },
            _ => RegistryError::Http {
                method: method.to_string(),
                request: endpoint.to_string(),
                status: status.as_u16(),
                code,
                message,
            },
        }
    }
}

/// Apicurio prefixes messages with the Java exception class: drop it.
fn strip_exception(message: &str) -> String {
    match message.split_once(": ") {
        Some((class, rest)) if class.contains('.') && !class.contains(' ') => rest.to_string(),
        _ => message.to_string(),
    }
}

fn brief(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.is_empty() {
        "(empty body)".into()
    } else if s.chars().count() > 300 {
        format!("{}...", s.chars().take(300).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Why `new` may not follow `existing` under compatibility `level`, by Avro's resolution rules
/// (BACKWARD: the new schema reads data written with the old; FORWARD: the old reads the new;
/// FULL: both). Empty when no reason is found (or the schemas are not Avro).
pub fn incompatibility_reasons(
    level: &str,
    new: &str,
    existing: &[RegisteredSchema],
) -> Vec<String> {
    use apache_avro::schema_compatibility::SchemaCompatibility;
    let Ok(new_schema) = crate::avro::parse_apache(new) else {
        return Vec::new();
    };
    let base = level.trim_end_matches("_TRANSITIVE");
    let (backward, forward) = match base {
        "BACKWARD" => (true, false),
        "FORWARD" => (false, true),
        "FULL" => (true, true),
        _ => (false, false),
    };
    let mut out = Vec::new();
    for old in existing {
        if !old.schema_type.eq_ignore_ascii_case("AVRO") {
            continue;
        }
        let Ok(old_schema) = crate::avro::parse_apache(&old.schema) else {
            continue;
        };
        if backward {
            if let Err(e) = SchemaCompatibility::can_read(&old_schema, &new_schema) {
                out.push(format!(
                    "{level}: data written with version {} (id {}) cannot be read with the new schema: {}",
                    old.version,
                    old.id,
                    compat_chain(&e)
                ));
            }
        }
        if forward {
            if let Err(e) = SchemaCompatibility::can_read(&new_schema, &old_schema) {
                out.push(format!(
                    "{level}: data written with the new schema cannot be read with version {} (id {}): {}",
                    old.version,
                    old.id,
                    compat_chain(&e)
                ));
            }
        }
    }
    out
}

fn compat_chain(e: &dyn std::error::Error) -> String {
    let clean = |s: String| {
        s.trim_start_matches("Incompatible schemata! ")
            .trim_start_matches("Incompatible schema types! ")
            .to_string()
    };
    let mut parts = vec![clean(e.to_string())];
    let mut src = e.source();
    while let Some(s) = src {
        parts.push(clean(s.to_string()));
        src = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::config::*;

    #[test]
    fn topic_name_strategy_tells_keys_from_values() {
        let s = SubjectStrategy::TopicName;
        assert_eq!(subject(s, "trades", "ex.Trade", false), "trades-value");
        assert_eq!(subject(s, "trades", "ex.Trade", true), "trades-key");
    }

    #[test]
    fn record_strategies_name_the_record() {
        assert_eq!(
            subject(SubjectStrategy::RecordName, "trades", "ex.Trade", false),
            "ex.Trade"
        );
        assert_eq!(
            subject(SubjectStrategy::RecordName, "trades", "ex.Trade", true),
            "ex.Trade"
        );
        assert_eq!(
            subject(
                SubjectStrategy::TopicRecordName,
                "trades",
                "ex.Trade",
                false
            ),
            "trades-ex.Trade"
        );
        assert_eq!(
            subject(SubjectStrategy::TopicRecordName, "trades", "ex.Trade", true),
            "trades-ex.Trade"
        );
    }

    #[test]
    fn strategy_reads_from_config_names() {
        let s: SubjectStrategy = serde_json::from_str("\"topic_record_name\"").unwrap();
        assert_eq!(s, SubjectStrategy::TopicRecordName);
        assert_eq!(SubjectStrategy::default(), SubjectStrategy::TopicName);
    }

    #[test]
    fn versions_parse() {
        assert_eq!("latest".parse::<Version>(), Ok(Version::Latest));
        assert_eq!("3".parse::<Version>(), Ok(Version::Number(3)));
        assert!("0".parse::<Version>().is_err());
        assert!("x".parse::<Version>().is_err());
        assert_eq!(Version::Number(2).to_string(), "2");
    }

    #[test]
    fn urls_with_credentials_become_basic_auth() {
        let c = RegistryConfig::from_url("https://key:p%40ss@sr.example.com/");
        assert_eq!(c.username.as_deref(), Some("key"));
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.url, "https://sr.example.com/");
        let plain = RegistryConfig::from_url("http://127.0.0.1:8081/apis/ccompat/v7");
        assert_eq!(plain.username, None);
        assert_eq!(plain.url, "http://127.0.0.1:8081/apis/ccompat/v7");
    }

    #[test]
    fn endpoints_keep_the_base_path_and_encode_subjects() {
        let c = RegistryClient::from_url("http://127.0.0.1:8081/apis/ccompat/v7/").unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:8081/apis/ccompat/v7");
        assert_eq!(
            c.endpoint(&["subjects", "a/b c", "versions"], &[("verbose", "true")])
                .as_str(),
            "http://127.0.0.1:8081/apis/ccompat/v7/subjects/a%2Fb%20c/versions?verbose=true"
        );
        let root = RegistryClient::from_url("http://127.0.0.1:8081").unwrap();
        assert_eq!(
            root.endpoint(&["subjects"], &[]).as_str(),
            "http://127.0.0.1:8081/subjects"
        );
    }

    fn validate(c: &RegistryConfig) -> Vec<String> {
        let mut errors = Vec::new();
        validate_config(c, "schema_registry", &mut errors);
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn validation_names_the_paths() {
        let mut c = RegistryConfig::from_url("ftp://x");
        c.password = Some("p".into());
        c.timeout = Duration::ZERO;
        c.tls = Some(RegistryTlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            cert_file: Some("/nonexistent/cert.pem".into()),
            key_file: None,
        });
        let errs = validate(&c);
        let has = |p: &str| errs.iter().any(|e| e.starts_with(p));
        assert!(
            has("schema_registry.url: `ftp://x` is a ftp: URL"),
            "{errs:?}"
        );
        assert!(has("schema_registry.username:"), "{errs:?}");
        assert!(has("schema_registry.timeout:"), "{errs:?}");
        assert!(has("schema_registry.tls: TLS files are set"), "{errs:?}");
        assert!(
            has("schema_registry.tls.ca_file: file `/nonexistent/ca.pem`"),
            "{errs:?}"
        );
        assert!(
            has("schema_registry.tls: `cert_file` and `key_file`"),
            "{errs:?}"
        );
        assert!(validate(&RegistryConfig::from_url("http://127.0.0.1:8081")).is_empty());
        assert!(validate(&RegistryConfig::from_url("not a url"))[0].contains("is not a URL"));
    }

    #[test]
    fn key_formats() {
        assert_eq!(
            key_format_problem("-----BEGIN PRIVATE KEY-----\n", "k"),
            None
        );
        assert!(
            key_format_problem("-----BEGIN RSA PRIVATE KEY-----\n", "k.pem")
                .unwrap()
                .contains("openssl pkcs8 -topk8 -nocrypt -in k.pem")
        );
        assert!(
            key_format_problem("-----BEGIN ENCRYPTED PRIVATE KEY-----\n", "k")
                .unwrap()
                .contains("encrypted")
        );
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = RegistryError::SubjectNotFound {
            subject: "TradeEvent-value".into(),
            url: "http://127.0.0.1:8081/apis/ccompat/v7".into(),
        };
        assert_eq!(
            e.to_string(),
            "subject TradeEvent-value not found at http://127.0.0.1:8081/apis/ccompat/v7: register it first with kgate schemas register TradeEvent-value --file schemas/TradeEvent.avsc"
        );
        assert_eq!(
            strip_exception("io.apicurio.registry.rules.violation.RuleViolationException: Incompatible artifact: X"),
            "Incompatible artifact: X"
        );
        assert_eq!(
            strip_exception("Schema 2 not found."),
            "Schema 2 not found."
        );
    }

    fn reg(version: u32, schema: &str) -> RegisteredSchema {
        RegisteredSchema {
            subject: "s".into(),
            version,
            id: version,
            schema: schema.into(),
            schema_type: "AVRO".into(),
        }
    }

    #[test]
    fn local_reasons_follow_avro_resolution() {
        let v1 = r#"{"type":"record","name":"T","fields":[{"name":"a","type":"string"}]}"#;
        let int_a = r#"{"type":"record","name":"T","fields":[{"name":"a","type":"int"}]}"#;
        let new_required = r#"{"type":"record","name":"T","fields":[{"name":"a","type":"string"},{"name":"b","type":"long"}]}"#;
        let new_optional = r#"{"type":"record","name":"T","fields":[{"name":"a","type":"string"},{"name":"b","type":["null","long"],"default":null}]}"#;

        let r = incompatibility_reasons("BACKWARD", int_a, &[reg(1, v1)]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("version 1 (id 1)") && r[0].contains("'a'"),
            "{r:?}"
        );
        let r = incompatibility_reasons("BACKWARD", new_required, &[reg(1, v1)]);
        assert!(r[0].contains("'b'") && r[0].contains("default"), "{r:?}");
        assert!(incompatibility_reasons("BACKWARD", new_optional, &[reg(1, v1)]).is_empty());
        // Adding a required field is fine forward (old readers ignore it).
        assert!(incompatibility_reasons("FORWARD", new_required, &[reg(1, v1)]).is_empty());
        assert_eq!(
            incompatibility_reasons("FULL_TRANSITIVE", int_a, &[reg(1, v1), reg(2, v1)]).len(),
            4
        );
        assert!(incompatibility_reasons("NONE", int_a, &[reg(1, v1)]).is_empty());
    }
}

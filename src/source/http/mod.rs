//! The HTTP source: one server (`http.listen`) with two routes, each answering only once Kafka
//! has acknowledged every record of the request (or said why not):
//!
//! - `POST /topics/{topic}` — the Confluent REST Proxy v2 produce call ([`rest`]);
//! - `POST /ingest/{pipeline}` — JSON, JSON arrays or NDJSON into a pipeline whose source is
//!   `http: {}` ([`ingest`]): its transforms, templates and DLQ apply per record.
//!
//! Backpressure is answered, not absorbed: a record that finds the producer buffer full for
//! `http.max_wait` makes the request 429 with `Retry-After`; Kafka unreachable (no metadata in
//! the last 30 s) or an acknowledgement later than `http.ack_timeout` makes it 503. No record
//! is ever answered 2xx unless Kafka acknowledged it.

mod config;
mod ingest;
pub mod rest;

#[doc(hidden)]
pub use ingest::split_body;

pub use config::{
    pattern_matches, HttpAuthConfig, HttpConfig, HttpServerSettings, HttpSourceConfig,
    HttpTlsConfig, Token,
};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use std::sync::Mutex;

use crate::serve::tls;

use futures_util::future::BoxFuture;

use super::{Probe, ProbeCtx, Source, SourceCtx, SourceKind};
use crate::config::{At, ConfigError};
use crate::encode::Format;
use crate::event::Fate;
use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::registry::SchemaCache;

impl SourceKind for HttpSourceConfig {
    fn name(&self) -> &'static str {
        "http"
    }
    fn resolve(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<Box<dyn Source>> {
        self.check(at, errors)
            .then(|| Box::new(HttpSource(self.clone())) as Box<dyn Source>)
    }
    fn served_over_http(&self) -> bool {
        true
    }
    fn answers_clients(&self) -> bool {
        true
    }
}

/// Resolved `source.http`: the pipeline is served at `POST /ingest/{name}` by the one HTTP
/// server (started by `run` with every route registered).
#[derive(Debug)]
pub struct HttpSource(HttpSourceConfig);

impl Source for HttpSource {
    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> BoxFuture<'a, Vec<Probe>> {
        let base = ctx.http_base.unwrap_or("http://?");
        let p = ctx.pipeline;
        Box::pin(async move {
            vec![Probe::ok(format!(
                "http (pipeline {p}): POST {base}/ingest/{p}"
            ))]
        })
    }

    fn spawn(self: Box<Self>, ctx: SourceCtx, _tasks: &mut JoinSet<()>) {
        let format = ctx.pipeline.processor().format();
        ctx.http_routes
            .lock()
            .expect("routes lock")
            .push(HttpPipeline {
                pipeline: ctx.pipeline,
                config: self.0,
                format,
            });
    }
}

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `http.tls` files are unusable.
    #[error(transparent)]
    Tls(tls::TlsError),
    /// The address is taken or not ours.
    #[error("cannot listen for HTTP on {addr}: {source}; set http.listen to a free address")]
    Bind {
        /// `http.listen`.
        addr: SocketAddr,
        /// The OS's reason.
        source: std::io::Error,
    },
}

/// The `/ingest` routes of the HTTP server, filled in by the `http` sources as they start.
pub type Routes = Arc<Mutex<Vec<HttpPipeline>>>;

/// The served `/ingest/{pipeline}` table, by pipeline name: swapped by `kgate run` when a
/// reload adds, changes or removes an `http` pipeline. A request takes its pipeline out of it
/// once, so that one in flight keeps the pipeline it started on (and gets its acks) after a
/// swap.
pub type RouteTable = Arc<std::sync::RwLock<HashMap<String, Arc<HttpPipeline>>>>;

/// A pipeline fed over HTTP, with its `source.http` settings.
pub struct HttpPipeline {
    /// The compiled pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Its `source.http:` settings.
    pub config: HttpSourceConfig,
    /// Its output format (`raw` pipelines take any body as one event).
    pub format: Format,
}

/// What the handlers share.
struct Server {
    config: HttpConfig,
    tokens: Vec<Token>,
    pipelines: RouteTable,
    /// The REST Proxy route's pipeline (records built by the route, see `Pipeline::passthrough`).
    rest: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    topics: rest::TopicCache,
    /// The registry's schemas, for the REST Proxy's `avro` embedded format; `None` without
    /// `schema_registry:` in the config.
    schemas: Option<Arc<SchemaCache>>,
}

/// The client address, for logs, `${@remote_addr}` and the DLQ `source` header.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

/// What the HTTP server serves.
pub struct Served {
    /// The `/ingest` routes (the pipelines whose source is `http`), swappable while serving.
    pub pipelines: RouteTable,
    /// The REST Proxy route's pipeline.
    pub rest: Arc<Pipeline>,
    /// For the request metrics and `/readyz`'s state.
    pub metrics: Arc<Metrics>,
    /// The registry's schemas for the REST Proxy's `avro` embedded format (`None` without
    /// `schema_registry:`).
    pub schemas: Option<Arc<SchemaCache>>,
    /// For the REST Proxy's topic lookups.
    pub kafka: KafkaConfig,
}

/// Binds `http.listen` (so that a taken port fails at start) and serves until `stop`; then it
/// stops accepting and lets in-flight requests finish (they wait for their acks). The server
/// runs as one task in `tasks`.
pub async fn spawn(
    settings: &HttpServerSettings,
    served: Served,
    stop: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, ServeError> {
    let Served {
        pipelines,
        rest,
        metrics,
        schemas,
        kafka,
    } = served;
    let config = &settings.config;
    let addr = settings.listen;
    let tokens = settings.tokens.clone();
    if tokens.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the HTTP routes are open to anyone who reaches {addr}: no http.auth tokens are configured; add `auth: [{{token: \"${{INGEST_TOKEN}}\", topics: [...], pipelines: [...]}}]` or listen on 127.0.0.1"
        );
    }
    let tls = match &config.tls {
        Some(t) => Some(tls::acceptor(t, "http").map_err(ServeError::Tls)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let server = Arc::new(Server {
        config: config.clone(),
        tokens,
        pipelines,
        rest,
        metrics,
        topics: rest::TopicCache::new(kafka, stop.clone()),
        schemas,
    });
    let app = Router::new()
        .route("/topics/{topic}", post(rest::produce))
        .route("/ingest/{pipeline}", post(ingest::ingest))
        .fallback(not_found)
        .with_state(server);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        "HTTP ingest at {scheme}://{local} (POST /topics/{{topic}}, POST /ingest/{{pipeline}})"
    );
    let limits = crate::serve::Limits {
        max_connections: crate::serve::connection_cap(config.max_connections as usize, 1),
        header_timeout: config.header_timeout,
    };
    match tls {
        None => {
            let accept = crate::serve::tcp(listener);
            tasks.spawn(crate::serve::serve(accept, app, limits, Peer, stop));
        }
        Some(acceptor) => {
            // Handshakes in progress count against the same cap as connections served.
            let listener =
                tls::TlsListener::new(listener, acceptor, limits.max_connections, stop.clone());
            tasks.spawn(crate::serve::serve(
                listener.into_accept(),
                app,
                limits,
                Peer,
                stop,
            ));
        }
    }
    Ok(local)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        404,
        format!(
            "no route {}; use POST /topics/{{topic}} or POST /ingest/{{pipeline}}",
            uri.path()
        ),
    )
    .into_response()
}

/// An error answer: `{"error_code": …, "message": …}` (the REST Proxy's shape).
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, d: Duration) -> ApiError {
        self.retry_after = Some(d.as_secs().max(1));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error_code": self.code, "message": self.message});
        let mut r = json_response(self.status, &body, JSON);
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kgate\""),
            );
        }
        r
    }
}

const JSON: &str = "application/json";
const KAFKA_V2_JSON: &str = "application/vnd.kafka.v2+json";

fn json_response(status: StatusCode, body: &serde_json::Value, content_type: &str) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static(JSON)),
    );
    r
}

impl Server {
    /// 503 when Kafka has not answered metadata requests lately: nothing would be acknowledged.
    fn check_ready(&self) -> Result<(), ApiError> {
        if self.metrics.is_ready() {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                50301,
                "Kafka is unavailable (no broker metadata in the last 30s); nothing was written, retry later",
            )
            .retry_after(self.config.retry_after))
        }
    }

    /// Who is calling: `None` without `http.auth`; else the token, or 401.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Option<&Token>, ApiError> {
        if self.tokens.is_empty() {
            return Ok(None);
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .or_else(|| {
                headers
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
            });
        let Some(given) = given else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                401,
                "missing credentials; send `Authorization: Bearer <token>` or `X-API-Key: <token>`",
            ));
        };
        // Compare with every token in constant time, so that timing tells nothing.
        let mut found = None;
        for t in &self.tokens {
            if constant_time_eq(given.as_bytes(), &t.secret) {
                found = Some(t);
            }
        }
        found.map(Some).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                401,
                "unknown token; check the `Authorization: Bearer` or `X-API-Key` value",
            )
        })
    }

    /// Reads the body up to `limit` bytes; 413 beyond.
    async fn read_body(
        &self,
        body: Body,
        headers: &HeaderMap,
        limit: u64,
    ) -> Result<Bytes, ApiError> {
        let too_big = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                413,
                format!("request body is larger than the limit of {limit} bytes (http.max_body); send smaller batches"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_big());
        }
        let limited = http_body_util::Limited::new(body, limit as usize);
        let collected = tokio::time::timeout(self.config.body_timeout, limited.collect())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    408,
                    format!(
                        "the request body did not arrive within {:?} (http.body_timeout); nothing was written",
                        self.config.body_timeout
                    ),
                )
            })?;
        match collected {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                400,
                format!("cannot read the request body: {e}"),
            )),
        }
    }

    /// 413 when a request carries more than `http.max_records` records.
    fn check_records(&self, n: usize) -> Result<(), ApiError> {
        let max = self.config.max_records;
        if n as u64 > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                413,
                format!("{n} records in one request, more than http.max_records ({max}); send them in smaller batches; nothing was written"),
            ));
        }
        Ok(())
    }

    /// Counts an answered request.
    fn observe(&self, route: &str, status: StatusCode, started: Instant) {
        let m = &self.metrics;
        m.http_requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        m.http_request_duration
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Hands records over one by one (`send` gives the hand-over and the fate's receiver), then
    /// waits for their fates until `http.ack_timeout` after `started`. Once one finds the
    /// buffer full the rest are not sent: they would only wait `max_wait` each to be refused.
    async fn send_each<T, F, Fut>(
        &self,
        items: impl IntoIterator<Item = T>,
        started: Instant,
        mut send: F,
    ) -> Vec<Slot>
    where
        F: FnMut(usize, T) -> (Fut, oneshot::Receiver<Fate>),
        Fut: std::future::Future<Output = ()>,
    {
        let mut slots = Vec::new();
        let mut busy = false;
        for (i, item) in items.into_iter().enumerate() {
            if busy {
                slots.push(Slot::NotSent);
                continue;
            }
            let (handed, rx) = send(i, item);
            handed.await;
            let slot = Slot::after_send(rx);
            busy = slot.is_busy();
            slots.push(slot);
        }
        settle(
            &mut slots,
            tokio::time::Instant::from_std(started + self.config.ack_timeout),
        )
        .await;
        slots
    }

    /// A JSON answer, with `Retry-After` when it is 429 or 503.
    fn answer(&self, status: StatusCode, body: &serde_json::Value, content_type: &str) -> Response {
        let mut r = json_response(status, body, content_type);
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.config.retry_after.as_secs().max(1)),
            );
        }
        r
    }

    fn observe_records(&self, route: &str, n: usize) {
        self.metrics
            .http_records_per_request
            .with_label_values(&[route])
            .observe(n as f64);
    }
}

fn token_allows(t: Option<&Token>, f: impl Fn(&Token) -> &[String], name: &str) -> bool {
    match t {
        None => true,
        Some(t) => f(t).iter().any(|p| pattern_matches(p, name)),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The media type of a request, lower-cased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
}

/// Where a record of a request stands.
enum Slot {
    /// Handed to the sink; its fate is awaited.
    Waiting(oneshot::Receiver<Fate>),
    /// Settled.
    Done(Fate),
    /// Not handed over because an earlier record found the buffer full.
    NotSent,
    /// Not acknowledged within `http.ack_timeout`; it may still be written.
    TimedOut,
}

impl Slot {
    /// After handing a record over: the sink answers `Busy` at once, so look before the next.
    fn after_send(mut rx: oneshot::Receiver<Fate>) -> Slot {
        match rx.try_recv() {
            Ok(f) => Slot::Done(f),
            Err(oneshot::error::TryRecvError::Empty) => Slot::Waiting(rx),
            Err(oneshot::error::TryRecvError::Closed) => Slot::Done(Fate::Failed {
                message: "the acknowledgement was lost".into(),
            }),
        }
    }

    fn is_busy(&self) -> bool {
        matches!(self, Slot::Done(Fate::Busy))
    }
}

/// Waits for every record's fate until `deadline`.
async fn settle(slots: &mut [Slot], deadline: tokio::time::Instant) {
    for s in slots.iter_mut() {
        if let Slot::Waiting(rx) = s {
            *s = match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(f)) => Slot::Done(f),
                Ok(Err(_)) => Slot::Done(Fate::Failed {
                    message: "the acknowledgement was lost".into(),
                }),
                Err(_) => Slot::TimedOut,
            };
        }
    }
}

/// The request's status from its records' fates: 200 only if all were delivered; otherwise
/// the most actionable failure: 429 (buffer full: retry), 503 (not acknowledged in time),
/// 500 (Kafka refused or failed), else `rejected` (the route's status for rejected input).
fn overall_status(slots: &[Slot], rejected: StatusCode) -> StatusCode {
    let mut status = StatusCode::OK;
    let rank = |s: StatusCode| match s.as_u16() {
        429 => 4,
        503 => 3,
        500 => 2,
        200 => 0,
        _ => 1,
    };
    for s in slots {
        let this = match s {
            Slot::Done(Fate::Delivered { .. }) => StatusCode::OK,
            Slot::Done(Fate::Busy) | Slot::NotSent => StatusCode::TOO_MANY_REQUESTS,
            Slot::TimedOut | Slot::Waiting(_) => StatusCode::SERVICE_UNAVAILABLE,
            Slot::Done(Fate::DeadLettered { .. }) => rejected,
            Slot::Done(Fate::Failed { .. } | Fate::Dropped) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if rank(this) > rank(status) {
            status = this;
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ErrorType;

    #[test]
    fn status_prefers_what_the_client_can_act_on() {
        let ok = || {
            Slot::Done(Fate::Delivered {
                topic: "t".into(),
                partition: 0,
                offset: 1,
            })
        };
        let dlq = || {
            Slot::Done(Fate::DeadLettered {
                error_type: ErrorType::InvalidJson,
                message: "x".into(),
                partition: 0,
                offset: 1,
            })
        };
        let unp = StatusCode::UNPROCESSABLE_ENTITY;
        assert_eq!(overall_status(&[ok(), ok()], unp), StatusCode::OK);
        assert_eq!(overall_status(&[ok(), dlq()], unp), unp);
        assert_eq!(
            overall_status(&[dlq(), Slot::TimedOut], unp),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            overall_status(&[Slot::TimedOut, Slot::NotSent, ok()], unp),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

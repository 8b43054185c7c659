//! The web UI (`kgate ui`, or `ui:` beside the pipelines in `kgate run`): server-rendered
//! pages with a little vanilla JavaScript over a JSON API (`/api/…`) on the real broker and
//! registry — topics, messages (Avro decoded), consumer groups and their lag, schemas, the DLQ
//! with replay, and kgate's own pipelines' counters. Assets are embedded in the binary.
//!
//! Served through [`crate::serve`] (connection cap, header timeouts, optional TLS) like the
//! metrics listener. Read-only unless `ui.write` is on and the user has the `write` role
//! ([`auth`]).

pub mod api;
pub mod auth;
pub mod browse;
pub mod config;
pub mod lag;
pub mod overview;
pub mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

pub use config::UiConfig;

use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;
use crate::registry::SchemaCache;

/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the UI serves from: the cluster, the registry, kgate's own counters (inside `kgate
/// run`), the sessions and the background jobs.
pub struct Ui {
    /// `ui:`.
    pub config: UiConfig,
    /// The brokers and their security.
    pub kafka: KafkaConfig,
    /// The DLQ topic (`dlq.topic`).
    pub dlq_topic: String,
    /// The schema registry, when configured.
    pub registry: Option<Arc<SchemaCache>>,
    /// kgate's pipelines' counters, inside `kgate run`.
    pub metrics: Option<Arc<Metrics>>,
    /// Sessions and tokens.
    pub auth: auth::Auth,
    /// Whether the UI is served over TLS (the cookie is then `Secure`).
    pub tls: bool,
    /// The producer of `POST /api/topics/{topic}/messages`, made on first use.
    producer: OnceLock<FutureProducer>,
    /// DLQ replays started from the UI.
    jobs: Mutex<HashMap<u64, api::ReplayJob>>,
    next_job: AtomicU64,
    /// Consumer group lag over time, sampled while the UI serves.
    pub lag: Arc<lag::LagHistory>,
    /// kgate's pipelines as configured (inside `kgate run`), for the overview.
    pipelines: OnceLock<Vec<overview::PipelineInfo>>,
}

impl Ui {
    /// The UI's state.
    pub fn new(
        config: UiConfig,
        kafka: KafkaConfig,
        dlq_topic: String,
        registry: Option<Arc<SchemaCache>>,
        metrics: Option<Arc<Metrics>>,
    ) -> Arc<Ui> {
        Arc::new(Ui {
            auth: auth::Auth::new(&config),
            lag: Arc::new(lag::LagHistory::new(config.lag_sample_interval)),
            tls: config.tls.is_some(),
            config,
            kafka,
            dlq_topic,
            registry,
            metrics,
            producer: OnceLock::new(),
            jobs: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(1),
            pipelines: OnceLock::new(),
        })
    }

    /// Tells the overview what each of `kgate run`'s pipelines reads and writes (set once).
    pub fn describe_pipelines(&self, infos: Vec<overview::PipelineInfo>) {
        let _ = self.pipelines.set(infos);
    }

    /// The pipelines [`Ui::describe_pipelines`] was given.
    pub fn pipelines(&self) -> &[overview::PipelineInfo] {
        self.pipelines.get().map_or(&[], Vec::as_slice)
    }
}

/// The routes: pages, the JSON API, the assets, the login page.
pub fn router(ui: Arc<Ui>) -> Router {
    let guarded = Router::new()
        .route("/", get(pages::overview))
        .route("/topics", get(pages::topics))
        .route("/topics/{topic}", get(pages::topic))
        .route("/groups", get(pages::groups))
        .route("/groups/{group}", get(pages::group))
        .route("/schemas", get(pages::schemas))
        .route("/dlq", get(pages::dlq))
        .route("/logout", post(pages::logout))
        .route("/api/overview", get(api::overview))
        .route("/api/topics", get(api::topics).post(api::create_topic))
        .route(
            "/api/topics/{topic}",
            get(api::topic).delete(api::delete_topic),
        )
        .route(
            "/api/topics/{topic}/messages",
            get(api::messages).post(api::produce),
        )
        .route("/api/groups", get(api::groups))
        .route("/api/topics/{topic}/configs", post(api::alter_topic))
        .route("/api/topics/{topic}/partitions", post(api::add_partitions))
        .route(
            "/api/groups/{group}",
            get(api::group).delete(api::delete_group),
        )
        .route("/api/groups/{group}/reset", post(api::reset_group))
        .route("/api/groups/{group}/history", get(api::group_history))
        .route(
            "/api/schemas/{subject}/compatibility",
            post(api::compatibility),
        )
        .route("/api/schemas", get(api::schemas))
        .route(
            "/api/schemas/{subject}/versions/{version}",
            get(api::schema_version),
        )
        .route("/api/dlq", get(api::dlq))
        .route("/api/dlq/replay", post(api::replay))
        .route("/api/dlq/replay/{id}", get(api::replay_status))
        .route("/api/me", get(api::me))
        .layer(axum::middleware::from_fn_with_state(
            ui.clone(),
            auth::guard,
        ));
    Router::new()
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/assets/{file}", get(pages::asset))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(guarded)
        .with_state(ui)
}

/// Why the UI could not start.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// The TLS files.
    #[error(transparent)]
    Tls(#[from] crate::serve::tls::TlsError),
    /// The address is taken or not ours.
    #[error("ui.listen: cannot listen on {addr}: {error}; is another process using the port? (pick another with --listen)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

/// Serves the UI on `addr` until `shutdown` (and samples the watched groups' lag); the task
/// that serves it, once listening.
pub async fn serve(
    addr: SocketAddr,
    ui: Arc<Ui>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, UiError> {
    let acceptor = match &ui.config.tls {
        Some(t) => Some(crate::serve::tls::acceptor(t, "ui")?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| UiError::Listen { addr, error })?;
    let max_connections = crate::serve::connection_cap(ui.config.max_connections as usize, 3);
    let limits = crate::serve::Limits {
        max_connections,
        header_timeout: HEADER_TIMEOUT,
    };
    tokio::spawn(ui.lag.clone().run(ui.kafka.clone(), shutdown.clone()));
    let app = router(ui);
    let info = |peer| peer;
    Ok(match acceptor {
        None => tokio::spawn(crate::serve::serve(
            crate::serve::tcp(listener),
            app,
            limits,
            info,
            shutdown,
        )),
        Some(acceptor) => {
            let listener = crate::serve::tls::TlsListener::new(
                listener,
                acceptor,
                max_connections,
                shutdown.clone(),
            );
            tokio::spawn(crate::serve::serve(
                listener.into_accept(),
                app,
                limits,
                info,
                shutdown,
            ))
        }
    })
}

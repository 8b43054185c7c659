//! Sources turn bytes from the outside into events and learn each one's fate through its
//! [`Ack`](crate::event::Ack). Each kind is a folder (`config.rs` for its section and its checks,
//! `mod.rs` for its runtime) and one arm of [`SourceConfig`]; this file holds the enum, the one
//! `match` over it, and the two traits every kind implements.

pub mod device;
pub mod http;
pub mod kafka;
pub mod mqtt;
pub mod poll;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{At, ConfigError};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// A pipeline's source as written in the config; exactly one kind per pipeline.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceConfig {
    /// WebSocket client fan-in: one connection per URL.
    Websocket(websocket::WebsocketSourceConfig),
    /// A WebSocket server that devices connect to (optionally speaking WRP).
    DeviceWebsocket(device::DeviceSourceConfig),
    /// `POST /ingest/{name}` on the `http:` server.
    Http(http::HttpSourceConfig),
    /// MQTT subscriber with acks after Kafka.
    Mqtt(mqtt::MqttSourceConfig),
    /// Kafka consumer group, at-least-once: offsets are committed after Kafka holds the result.
    Kafka(kafka::KafkaSourceConfig),
    /// Polls HTTP APIs: one task per request (and `for_each` item); each response is an event.
    HttpPoll(poll::HttpPollSourceConfig),
}

impl SourceConfig {
    /// The kind's config, behind the trait every kind implements: the one `match` on kinds.
    pub fn kind(&self) -> &dyn SourceKind {
        match self {
            SourceConfig::Websocket(c) => c,
            SourceConfig::DeviceWebsocket(c) => c,
            SourceConfig::Http(c) => c,
            SourceConfig::Mqtt(c) => c,
            SourceConfig::Kafka(c) => c,
            SourceConfig::HttpPoll(c) => c,
        }
    }

    /// Checks the source's section (at `at`, e.g. `pipelines[0].source`), collecting every
    /// problem; the source ready to probe or run when there is none.
    pub fn resolve(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<Box<dyn Source>> {
        let kind = self.kind();
        let path = at.field(kind.name());
        kind.resolve(At(&path), errors)
    }
}

/// A kind of source, implemented by its config type.
pub trait SourceKind {
    /// Its key in the config (`websocket`, `mqtt`, ...).
    fn name(&self) -> &'static str;
    /// Checks the raw section (at `at`), collecting every problem; when there is none, the
    /// source with its values parsed (addresses, URLs, filters), which runtime code takes.
    fn resolve(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<Box<dyn Source>>;
    /// Whether its events arrive through the `http:` server (which must then be configured).
    fn served_over_http(&self) -> bool {
        false
    }
    /// Whether it tells its clients that Kafka holds their records (an HTTP answer, an MQTT
    /// PUBACK), which `acks: 0` cannot know.
    fn answers_clients(&self) -> bool {
        false
    }
}

/// What a probe needs to know beyond the source itself.
pub struct ProbeCtx<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// How long to wait for each target.
    pub timeout: Duration,
    /// The HTTP server's base URL (`http://0.0.0.0:8082`), when there is one.
    pub http_base: Option<&'a str>,
}

/// One outcome of a probe (`kgate check` prints it as a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Passed?
    pub ok: bool,
    /// What was checked and what was found.
    pub text: String,
}

impl Probe {
    /// A passed check.
    pub fn ok(text: impl Into<String>) -> Probe {
        Probe {
            ok: true,
            text: text.into(),
        }
    }
    /// A failed check.
    pub fn fail(text: impl Into<String>) -> Probe {
        Probe {
            ok: false,
            text: text.into(),
        }
    }
}

/// What a running source is given.
pub struct SourceCtx {
    /// The pipeline its events go to.
    pub pipeline: Arc<Pipeline>,
    /// The metrics registry (for the kind's own series).
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown: stop reading, hand over what was read, return.
    pub stop: CancellationToken,
    /// The routes of the one HTTP server: an `http` source registers its pipeline there.
    pub http_routes: http::Routes,
    /// The `kafka:` section (brokers, security), for sources that read from Kafka.
    pub kafka: crate::kafka::KafkaConfig,
    /// The schema registry's cache, when one is configured: the Kafka source decodes
    /// Confluent-framed Avro input through it.
    pub schemas: Option<Arc<crate::registry::SchemaCache>>,
}

/// A resolved source, ready to probe (`kgate check`) or run (`kgate run`).
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Checks what it reaches (a feed, a broker, a listen address): one [`Probe`] per target.
    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> BoxFuture<'a, Vec<Probe>>;
    /// Starts its tasks in `tasks`; they stop when `ctx.stop` is cancelled, after handing every
    /// event they read to the pipeline.
    fn spawn(self: Box<Self>, ctx: SourceCtx, tasks: &mut JoinSet<()>);
}

/// A delay drawn from `[d/2, d]` ("equal jitter"), so that many clients that lost the same
/// server do not come back in step.
pub fn jittered(d: Duration) -> Duration {
    use rand::Rng;
    let ms = d.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
}

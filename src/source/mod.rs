//! Sources turn bytes from the outside into events; one file per kind.

pub mod device;
pub mod http;
pub mod mqtt;
pub mod websocket;

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::SourceConfig;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// Starts the tasks of a pipeline's source; they stop when `stop` is cancelled, after handing
/// every event they read to the pipeline.
pub fn spawn(
    config: &SourceConfig,
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    match config {
        SourceConfig::Websocket(ws) => websocket::spawn(ws, pipeline, metrics, stop, tasks),
        SourceConfig::DeviceWebsocket(d) => device::spawn(d, pipeline, metrics, stop, tasks),
        // Served by the one HTTP server (`http::spawn`, started by `run`).
        SourceConfig::Http(_) => {}
        SourceConfig::Mqtt(m) => mqtt::spawn(m, pipeline, metrics, stop, tasks),
    }
}

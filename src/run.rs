//! `kgate run`: metrics, the sink, the pipelines and their sources; then an orderly shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SourceConfig};
use crate::kafka::{fetch_metadata, KafkaSink};
use crate::metrics::{self, Metrics};
use crate::pipeline::Pipeline;
use crate::registry::RegistryClient;
use crate::schema_cache::SchemaCache;
use crate::source::http::HttpPipeline;

/// What a run did, reported at shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Events handed to the sink.
    pub accepted: u64,
    /// Acknowledged by Kafka.
    pub delivered: u64,
    /// Written to the DLQ.
    pub dead_lettered: u64,
    /// Dropped on a full buffer.
    pub dropped: u64,
    /// Neither delivered nor dead-lettered.
    pub failed: u64,
    /// Still unacknowledged when the shutdown timeout ran out.
    pub undelivered: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accepted {}, delivered {}, dead-lettered {}, dropped {}, failed {}, undelivered {}",
            self.accepted,
            self.delivered,
            self.dead_lettered,
            self.dropped,
            self.failed,
            self.undelivered
        )
    }
}

/// How often `/readyz` refreshes broker metadata.
const METADATA_EVERY: Duration = Duration::from_secs(10);

/// Runs every pipeline until `shutdown` is cancelled, then stops the sources, drains the
/// pipelines and flushes the producer within `shutdown_timeout`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Summary> {
    let metrics = Metrics::new(&config.metrics.labels);
    let server_stop = CancellationToken::new();
    let server = if config.metrics.enabled {
        let addr: SocketAddr = config.metrics.listen.parse()?;
        let h = metrics::serve(addr, metrics.clone(), server_stop.clone()).await?;
        tracing::info!("metrics at http://{addr}/metrics (health: /healthz, /readyz)");
        Some(h)
    } else {
        None
    };

    let sink = KafkaSink::new(&config.kafka, &config.dlq.topic, metrics.clone())?;

    let watcher_stop = CancellationToken::new();
    {
        let k = config.kafka.clone();
        let m = metrics.clone();
        let stop = watcher_stop.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match fetch_metadata(&k, Duration::from_secs(5)).await {
                    Ok(info) => {
                        if warned || !m.is_ready() {
                            tracing::info!(brokers = ?info.brokers, "Kafka is reachable");
                        }
                        warned = false;
                        m.mark_metadata_ok();
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!(
                                "{e}; records are kept and sources wait until it is back"
                            );
                            warned = true;
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(METADATA_EVERY) => {}
                }
            }
        });
    }

    let schemas = match &config.schema_registry {
        Some(rc) => {
            let client = RegistryClient::new(rc).map_err(|e| anyhow::anyhow!("{e}"))?;
            Some(SchemaCache::new(client, Some(metrics.clone())))
        }
        None => None,
    };
    let mut pipelines = Vec::new();
    for pc in &config.pipelines {
        let pipeline = Arc::new(Pipeline::with_schemas(pc, sink.clone(), schemas.clone())?);
        // The schemas of fixed topics are fetched now, so that a missing subject or an
        // unreachable registry stops the start with the fix; templated topics load theirs
        // when first met.
        if let (Some(cache), Some(topic)) = (&schemas, pipeline.processor().fixed_topic()) {
            for subject in pipeline.processor().subjects(topic) {
                let l = cache
                    .load(&subject)
                    .await
                    .map_err(|e| anyhow::anyhow!("pipeline {}: {e}", pc.name))?;
                tracing::info!(pipeline = %pc.name, subject = %subject, version = l.version, id = l.id, "schema loaded");
            }
        }
        pipelines.push(pipeline);
    }
    let refresher_stop = CancellationToken::new();
    if let (Some(cache), Some(rc)) = (&schemas, &config.schema_registry) {
        cache.spawn_refresher(rc.refresh, refresher_stop.clone());
    }

    let sources_stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut http_pipelines = Vec::new();
    for (pc, pipeline) in config.pipelines.iter().zip(pipelines) {
        if let SourceConfig::Http(h) = &pc.source {
            http_pipelines.push(HttpPipeline {
                pipeline: pipeline.clone(),
                config: h.clone(),
                format: pc.format,
            });
        }
        crate::source::spawn(
            &pc.source,
            pipeline,
            metrics.clone(),
            sources_stop.clone(),
            &mut tasks,
        );
        tracing::info!(pipeline = %pc.name, topic = %pc.topic, "pipeline started");
    }

    if let Some(h) = &config.http {
        // In `tasks`: on shutdown it stops accepting and lets in-flight requests get their acks.
        crate::source::http::spawn(
            h,
            http_pipelines,
            sink.clone(),
            metrics.clone(),
            schemas.clone(),
            &config.kafka,
            sources_stop.clone(),
            &mut tasks,
        )
        .await?;
    }

    shutdown.cancelled().await;
    let started = Instant::now();
    let deadline = started + config.shutdown_timeout;
    tracing::info!(
        inflight = sink.inflight(),
        timeout = ?config.shutdown_timeout,
        "shutting down: stopping sources, then flushing"
    );
    sources_stop.cancel();
    let joined = tokio::time::timeout_at(deadline.into(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        tracing::warn!("sources did not stop in time (is Kafka down with the buffer full?)");
        tasks.abort_all();
    }
    let left = sink
        .drain(deadline.saturating_duration_since(Instant::now()))
        .await;
    watcher_stop.cancel();
    refresher_stop.cancel();
    let t = sink.totals();
    let summary = Summary {
        accepted: t.accepted.load(Ordering::Relaxed),
        delivered: t.delivered.load(Ordering::Relaxed),
        dead_lettered: t.dead_lettered.load(Ordering::Relaxed),
        dropped: t.dropped.load(Ordering::Relaxed),
        failed: t.failed.load(Ordering::Relaxed),
        undelivered: left.max(0) as u64,
    };
    server_stop.cancel();
    if let Some(h) = server {
        let _ = h.await;
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shutdown complete: {summary}"
    );
    Ok(summary)
}

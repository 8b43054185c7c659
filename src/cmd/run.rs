//! `kgate run`: metrics, the sink, the pipelines and their sources; then an orderly shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::kafka::{fetch_metadata, report_diagnosis, KafkaConfig, MetadataError};
use crate::metrics::{self, Metrics};
use crate::pipeline::{Pipeline, Processor};
use crate::registry::{RegistryClient, SchemaCache};
use crate::sink::{DeliverSink, KafkaSink, Sink, SpoolSink};
use crate::source::{http, SourceCtx};

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
pub async fn run(gateway: Gateway, shutdown: CancellationToken) -> anyhow::Result<Summary> {
    let Gateway {
        config,
        metrics_listen,
        http: http_settings,
        ui_listen,
        pipelines: plans,
    } = gateway;
    let metrics = Metrics::new(&config.metrics.labels);
    let server_stop = CancellationToken::new();
    let server = match metrics_listen {
        Some(addr) => {
            let cap = crate::serve::connection_cap(config.metrics.max_connections as usize, 2);
            let tls = config.metrics.tls.as_ref();
            let h = metrics::serve(addr, cap, tls, metrics.clone(), server_stop.clone()).await?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!("metrics at {scheme}://{addr}/metrics (health: /healthz, /readyz)");
            Some(h)
        }
        None => None,
    };
    let kafka_sink = KafkaSink::new(&config.kafka, &config.dlq.topic, metrics.clone())?;
    let sink: Arc<dyn Sink> = kafka_sink.clone();
    // Stopped once everything is flushed: the broker watcher and the schema refresher.
    let background_stop = CancellationToken::new();
    watch_brokers(
        config.kafka.clone(),
        metrics.clone(),
        background_stop.clone(),
    );
    let schemas = match &config.schema_registry {
        Some(rc) => {
            let cache = SchemaCache::new(RegistryClient::new(rc)?, Some(metrics.clone()));
            Some(cache)
        }
        None => None,
    };
    if let (Some(addr), Some(u)) = (ui_listen, &config.ui) {
        let ui = crate::ui::Ui::new(
            u.clone(),
            config.kafka.clone(),
            config.dlq.topic.clone(),
            schemas.clone(),
            Some(metrics.clone()),
        );
        ui.describe_pipelines(
            config
                .pipelines
                .iter()
                .map(|p| crate::gateway::pipeline_info(p, &ui.dlq_topic))
                .collect(),
        );
        crate::ui::serve(addr, ui, server_stop.clone()).await?;
        tracing::info!(
            "web UI at {}://{addr}/",
            if u.tls.is_some() { "https" } else { "http" }
        );
    }
    let Built {
        pipelines,
        txn_sinks,
        deliver_sinks,
        spool_sinks,
    } = build_pipelines(plans, &kafka_sink, &config, &metrics, schemas.as_ref()).await?;
    if let (Some(cache), Some(rc)) = (&schemas, &config.schema_registry) {
        cache.spawn_refresher(rc.refresh, background_stop.clone());
    }

    let sources_stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let http_routes = start_sources(
        pipelines,
        &metrics,
        &config,
        schemas.as_ref(),
        &sources_stop,
        &mut tasks,
    );
    if let Some(h) = &http_settings {
        let routes = std::mem::take(&mut *http_routes.lock().expect("routes lock"));
        let served = http::Served {
            pipelines: routes,
            rest: Arc::new(Pipeline::passthrough("rest-proxy", sink.clone())),
            metrics: metrics.clone(),
            schemas: schemas.clone(),
            kafka: config.kafka.clone(),
        };
        // In `tasks`: on shutdown it stops accepting and lets in-flight requests get their acks.
        http::spawn(h, served, sources_stop.clone(), &mut tasks).await?;
    }

    shutdown.cancelled().await;
    let mut sinks = vec![sink.clone()];
    sinks.extend(txn_sinks);
    let summary = stop(
        config.shutdown_timeout,
        &deliver_sinks,
        &spool_sinks,
        &sinks,
        sources_stop,
        tasks,
    )
    .await;
    background_stop.cancel();
    server_stop.cancel();
    if let Some(h) = server {
        let _ = h.await;
    }
    Ok(summary)
}

/// A started pipeline: its name and topic (for the log), the pipeline, its source.
type Started = (
    Arc<Pipeline>,
    Box<dyn crate::source::Source>,
    Arc<str>,
    String,
);

/// Builds each pipeline's processor (loading the schemas of fixed topics and of `validate:`
/// now) in front of `sink`, or of a handle on it with the pipeline's own DLQ topic, or, for an
/// `exactly_once` pipeline, in front of a transactional sink of its own (returned too, to be
/// drained at shutdown). Every DLQ topic is reserved in every pipeline's `topics_allowed`.
async fn build_pipelines(
    plans: Vec<crate::gateway::PipelinePlan>,
    sink: &Arc<KafkaSink>,
    config: &crate::gateway::Config,
    metrics: &Arc<Metrics>,
    schemas: Option<&Arc<SchemaCache>>,
) -> anyhow::Result<Built> {
    let mut started = Vec::with_capacity(plans.len());
    let mut txn_sinks: Vec<Arc<dyn Sink>> = Vec::new();
    let mut deliver_sinks: Vec<Arc<dyn Sink>> = Vec::new();
    let mut spool_sinks: Vec<Arc<dyn Sink>> = Vec::new();
    let dlq_topics: Vec<String> = plans
        .iter()
        .filter_map(|p| p.spec.dlq_topic.clone())
        .chain([sink.dlq_topic().to_string()])
        .collect();
    for plan in plans {
        let name = plan.spec.name.clone();
        let topic = plan.spec.topic_text.clone();
        let dlq = plan.spec.dlq_topic.clone();
        let exactly_once = plan.spec.exactly_once;
        let sink_config = plan.spec.sink.clone();
        let spool = plan.spec.spool.clone();
        let mut processor = Processor::from_spec(plan.spec, schemas.cloned())?;
        for t in &dlq_topics {
            processor.reserve_topic(t);
        }
        if let Some(cache) = schemas {
            load_fixed_subjects(&processor, cache).await?;
        }
        let dlq_topic = dlq.as_deref().unwrap_or(&config.dlq.topic);
        let to: Arc<dyn Sink> = if let Some(c) = &sink_config {
            let dlq: Arc<dyn Sink> = match &dlq {
                Some(t) => sink.with_dlq(t),
                None => sink.clone(),
            };
            let s: Arc<dyn Sink> = DeliverSink::new(c, dlq, metrics.clone(), schemas.cloned())
                .with_context(|| format!("pipeline {name}: its sink"))?;
            tracing::info!(pipeline = %name, "records go to a consumer sink");
            deliver_sinks.push(s.clone());
            s
        } else if exactly_once {
            let id = transactional_id(&name);
            tracing::info!(pipeline = %name, transactional_id = %id.id, "exactly-once: writing in Kafka transactions");
            let s: Arc<dyn Sink> =
                KafkaSink::with_transactions(&config.kafka, dlq_topic, metrics.clone(), Some(&id))?;
            txn_sinks.push(s.clone());
            s
        } else {
            match &dlq {
                Some(t) => sink.with_dlq(t),
                None => sink.clone(),
            }
        };
        let to = match &spool {
            Some(sp) => {
                let s = open_spool(sp, &name, to, config, metrics)?;
                spool_sinks.push(s.clone());
                s
            }
            None => to,
        };
        let pipeline = Arc::new(Pipeline::from_processor(processor, to));
        started.push((pipeline, plan.source, name, topic));
    }
    Ok(Built {
        pipelines: started,
        txn_sinks,
        deliver_sinks,
        spool_sinks,
    })
}

/// Opens a pipeline's disk spool in front of `to`; logs what it found (cut tails, records to
/// produce again).
fn open_spool(
    sp: &crate::spool::SpoolSpec,
    name: &Arc<str>,
    to: Arc<dyn Sink>,
    config: &crate::gateway::Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn Sink>> {
    let memory = config
        .kafka
        .producer
        .max_buffered_records
        .clamp(1024, 1 << 20) as usize;
    let (s, opened) = SpoolSink::open(sp, name.clone(), to, memory, Some(metrics.spool(name)))
        .with_context(|| format!("pipeline {name}: its spool"))?;
    for t in &opened.truncations {
        tracing::warn!(pipeline = %name, "spool: a torn or corrupt tail was cut: {t}");
    }
    if opened.acks_lost {
        tracing::warn!(pipeline = %name, "spool: its ack file was torn; every record it holds is produced again (duplicates)");
    }
    tracing::info!(
        pipeline = %name,
        dir = %sp.dir.display(),
        when = ?sp.when,
        unacked = opened.unacked,
        "spool opened; its unacknowledged records are produced first"
    );
    Ok(s)
}

/// The pipelines built, and the sinks besides the shared Kafka sink that shutdown drains.
struct Built {
    pipelines: Vec<Started>,
    /// Transactional sinks of `exactly_once` pipelines.
    txn_sinks: Vec<Arc<dyn Sink>>,
    /// Consumer sinks of pipelines with `sink:` (drained while their sources stop: a source
    /// waits for the fates of its open batch).
    deliver_sinks: Vec<Arc<dyn Sink>>,
    /// Disk spools in front of the Kafka sink (drained once the sources stopped, before it).
    spool_sinks: Vec<Arc<dyn Sink>>,
}

/// How long an exactly-once transaction may stay open before the broker aborts it.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The `transactional.id` of an exactly-once pipeline: `kgate.<pipeline>.<host>`, the same at
/// every restart on this host (a restart fences the killed process and aborts its open
/// transaction), distinct between hosts (gateways on several machines share a group's
/// partitions without fencing each other).
fn transactional_id(pipeline: &str) -> crate::sink::TransactionalId {
    crate::sink::TransactionalId {
        id: format!("kgate.{pipeline}.{}", hostname()),
        timeout: TRANSACTION_TIMEOUT,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Spawns every pipeline's source; returns the `/ingest` routes the `http` sources registered.
fn start_sources(
    pipelines: Vec<Started>,
    metrics: &Arc<Metrics>,
    config: &crate::gateway::Config,
    schemas: Option<&Arc<SchemaCache>>,
    stop: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> http::Routes {
    let http_routes = http::Routes::default();
    for (pipeline, source, name, topic) in pipelines {
        let ctx = SourceCtx {
            pipeline,
            metrics: metrics.clone(),
            stop: stop.clone(),
            http_routes: http_routes.clone(),
            kafka: config.kafka.clone(),
            schemas: schemas.cloned(),
        };
        // What a source's tasks log carries its pipeline and kind (the sources spawn their
        // tasks `in_current_span`).
        let kind = config
            .pipelines
            .iter()
            .find(|p| *p.name == *name)
            .map_or("", |p| p.source.kind().name());
        let span = tracing::info_span!("source", pipeline = %name, source = kind);
        let _entered = span.enter();
        source.spawn(ctx, tasks);
        tracing::info!(pipeline = %name, %topic, "pipeline started");
    }
    http_routes
}

/// The orderly shutdown: stop the sources (they hand over what they read) while the consumer
/// sinks flush their open batches (a Kafka source waits for those fates), then wait for every
/// accepted record to settle in the Kafka sinks (which carry the consumer sinks' DLQ records),
/// all within `timeout`; the summary is logged.
async fn stop(
    timeout: Duration,
    deliver: &[Arc<dyn Sink>],
    spools: &[Arc<dyn Sink>],
    sinks: &[Arc<dyn Sink>],
    sources_stop: CancellationToken,
    mut tasks: JoinSet<()>,
) -> Summary {
    let started = Instant::now();
    let deadline = started + timeout;
    tracing::info!(
        inflight = sinks.iter().map(|s| s.inflight()).sum::<i64>(),
        ?timeout,
        "shutting down: stopping sources, then flushing"
    );
    sources_stop.cancel();
    let flushes = futures_util::future::join_all(deliver.iter().map(|d| d.drain(timeout)));
    let (flushed, joined) = tokio::join!(
        flushes,
        tokio::time::timeout_at(deadline.into(), async {
            while tasks.join_next().await.is_some() {}
        })
    );
    if joined.is_err() {
        tracing::warn!("sources did not stop in time (is Kafka down with the buffer full?)");
        tasks.abort_all();
    }
    let mut left: i64 = flushed.iter().map(|l| (*l).max(0)).sum();
    // A spool hands on what it holds, then keeps what Kafka did not take for the next start.
    for s in spools {
        left += s
            .drain(deadline.saturating_duration_since(Instant::now()))
            .await
            .max(0);
    }
    for sink in sinks {
        left += sink
            .drain(deadline.saturating_duration_since(Instant::now()))
            .await
            .max(0);
    }
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    // A consumer sink's dead-lettered records are counted once, where their DLQ record was
    // written (the Kafka sink).
    let sum = |f: fn(&crate::sink::Totals) -> &std::sync::atomic::AtomicU64| -> u64 {
        let kafka: u64 = sinks.iter().map(|s| load(f(s.totals()))).sum();
        let consumers: u64 = deliver
            .iter()
            .map(|s| {
                let t = s.totals();
                let v = load(f(t));
                if std::ptr::eq(f(t), &t.dead_lettered) {
                    0
                } else if std::ptr::eq(f(t), &t.accepted) {
                    v.saturating_sub(load(&t.dead_lettered))
                } else {
                    v
                }
            })
            .sum();
        kafka + consumers
    };
    let summary = Summary {
        accepted: sum(|t| &t.accepted),
        delivered: sum(|t| &t.delivered),
        dead_lettered: sum(|t| &t.dead_lettered),
        dropped: sum(|t| &t.dropped),
        failed: sum(|t| &t.failed),
        undelivered: left as u64,
    };
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shutdown complete: {summary}"
    );
    summary
}

/// Fetches broker metadata every [`METADATA_EVERY`] for `/readyz`, logging when Kafka goes
/// away and comes back. A refused login or TLS handshake is logged as what to fix (at most
/// once per period, shared with the producer's reports of it).
fn watch_brokers(k: KafkaConfig, m: Arc<Metrics>, stop: CancellationToken) {
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
                Err(MetadataError::Refused { diagnosis, .. }) => {
                    report_diagnosis(&diagnosis);
                    warned = true;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!("{e}; records are kept and sources wait until it is back");
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

/// Fetches the schemas of a pipeline with a fixed topic, and of its `validate: {avro: …}`, now,
/// so that a missing subject or an unreachable registry stops the start with the fix;
/// templated topics load theirs when first met.
async fn load_fixed_subjects(p: &Processor, cache: &SchemaCache) -> anyhow::Result<()> {
    let fixed = p.fixed_topic().map(|t| p.subjects(t)).unwrap_or_default();
    let validate = p.validate_subject().map(str::to_string);
    for subject in fixed.into_iter().chain(validate) {
        let l = cache
            .load(&subject)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("pipeline {}", p.name()))?;
        tracing::info!(pipeline = %p.name(), subject = %subject, version = l.version, id = l.id, "schema loaded");
    }
    Ok(())
}

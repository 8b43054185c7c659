//! `kgate run`: metrics, the producer, the pipelines and their sources; live reloads of the
//! config; then an orderly shutdown.
//!
//! Each pipeline runs as a unit of its own (its stop token, its tasks, the sinks it owns, and
//! its handle on the shared producer, which counts what it handed over until settled), so that
//! a reload stops and drains the pipelines that changed while the others keep running, and
//! swaps the shared producer behind a lock without restarting any.
//!
//! Here: loading, the start (each pipeline's `Unit`) and the shutdown, and the state that a
//! reload changes (`Runtime`); `reload.rs`: what a reload does and what triggers one;
//! `producer.rs`: the shared producer and a pipeline's handle on it.

mod producer;
mod reload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigErrors;
use crate::gateway::Gateway;
use crate::kafka::{fetch_metadata, report_diagnosis, KafkaConfig, MetadataError};
use crate::metrics::{self, Metrics};
use crate::pipeline::{Pipeline, Processor};
use crate::registry::{RegistryClient, SchemaCache};
use crate::sink::{DeliverSink, KafkaSink, Sink, SpoolSink};
use crate::source::http::{self, HttpPipeline};
use crate::source::SourceCtx;
use producer::{OnProducer, Producer};

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

/// A config file loaded for `kgate run`: resolved, and as text with `${VAR}` filled in (what a
/// reload compares, section by section).
pub struct Loaded {
    /// The resolved config.
    pub gateway: Gateway,
    /// The file as YAML → JSON, interpolated.
    pub value: serde_json::Value,
    /// A hash of the file's bytes (what `--watch` compares).
    hash: u64,
}

/// Reads, interpolates, parses and resolves the config file at `path` (the checks of `kgate
/// check`, without its probes).
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = crate::config::read(path)?;
    let env = |k: &str| std::env::var(k).ok();
    let gateway = Gateway::from_yaml_str(&text, &path.display().to_string(), &env)?;
    let value = crate::config::interpolated(&text, &env).unwrap_or_default();
    Ok(Loaded {
        gateway,
        value,
        hash: hash_bytes(text.as_bytes()),
    })
}

fn hash_bytes(b: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// Where a reload comes from: the file and its triggers besides `POST /-/reload`.
pub struct Reloads {
    /// The config file.
    pub path: PathBuf,
    /// Poll the file every second and reload it when its content changed.
    pub watch: bool,
    /// One message per SIGHUP.
    pub hangups: mpsc::UnboundedReceiver<()>,
}

/// Runs every pipeline until `shutdown` is cancelled, reloading the config on the triggers of
/// `reloads`; then stops the sources, drains the pipelines and flushes the producer within
/// `shutdown_timeout`.
pub async fn run(
    loaded: Loaded,
    reloads: Reloads,
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    let Loaded {
        gateway,
        value,
        hash,
    } = loaded;
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
    let producer = Arc::new(Producer {
        current: tokio::sync::RwLock::new(kafka_sink),
    });
    // Stopped once everything is flushed: the broker watcher and the schema refresher.
    let background_stop = CancellationToken::new();
    let brokers_stop = background_stop.child_token();
    watch_brokers(config.kafka.clone(), metrics.clone(), brokers_stop.clone());
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
    let refresher_stop = background_stop.child_token();
    if let (Some(cache), Some(rc)) = (&schemas, &config.schema_registry) {
        cache.spawn_refresher(rc.refresh, refresher_stop.clone());
    }
    let routes = http::RouteTable::default();
    let sections = pipeline_sections(&value);
    let env = Env {
        metrics: metrics.clone(),
        producer: producer.clone(),
        routes: routes.clone(),
    };
    let units = start_units(&env, plans, &sections, &config, schemas.as_ref()).await?;

    let http_stop = CancellationToken::new();
    let mut http_tasks = JoinSet::new();
    if let Some(h) = &http_settings {
        let rest: Arc<dyn Sink> =
            Arc::new(OnProducer::new(producer.clone(), None, &config.dlq.topic));
        let served = http::Served {
            pipelines: routes.clone(),
            rest: Arc::new(Pipeline::passthrough("rest-proxy", rest)),
            metrics: metrics.clone(),
            schemas: schemas.clone(),
            kafka: config.kafka.clone(),
        };
        // On shutdown it stops accepting and lets in-flight requests get their acks.
        http::spawn(h, served, http_stop.clone(), &mut http_tasks).await?;
    }
    let runtime = Arc::new(Runtime {
        env,
        path: reloads.path.clone(),
        http_served: http_settings.is_some(),
        state: tokio::sync::Mutex::new(State {
            config,
            value,
            units,
            schemas,
            refresher_stop,
            brokers_stop,
            background_stop: background_stop.clone(),
            retired: Counts::default(),
            stopped: false,
        }),
    });
    {
        let st = runtime.state.lock().await;
        runtime.arm_endpoint(&st.config);
    }
    runtime.spawn_triggers(reloads, hash, shutdown.clone());

    shutdown.cancelled().await;
    let summary = runtime.shutdown(http_stop, http_tasks).await;
    background_stop.cancel();
    server_stop.cancel();
    if let Some(h) = server {
        let _ = h.await;
    }
    Ok(summary)
}

/// What every pipeline is built from.
struct Env {
    metrics: Arc<Metrics>,
    producer: Arc<Producer>,
    routes: http::RouteTable,
}

/// One running pipeline: its source's tasks and stop token, and the sinks it owns.
struct Unit {
    name: Arc<str>,
    /// Its `pipelines[i]` section as read (interpolated): what a reload compares.
    section: serde_json::Value,
    /// Restarted when `kafka:` changes (its source or sink builds Kafka clients of its own).
    uses_kafka_clients: bool,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// Its handle on the shared producer (absent for an `exactly_once` pipeline).
    on_producer: Option<Arc<OnProducer>>,
    /// A consumer sink (`sink:`), drained while its source stops.
    deliver: Option<Arc<dyn Sink>>,
    /// Its disk spool, drained once its source stopped.
    spool: Option<Arc<dyn Sink>>,
    /// Its transactional producer (`exactly_once`).
    txn: Option<Arc<dyn Sink>>,
    /// Its `/ingest/{name}` route, when its source is `http`.
    route: Option<Arc<HttpPipeline>>,
}

/// Each pipeline's section by name, from the interpolated file.
fn pipeline_sections(value: &serde_json::Value) -> HashMap<String, serde_json::Value> {
    value
        .get("pipelines")
        .and_then(|p| p.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p.get("name")?.as_str()?.to_string(), p.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// Builds and starts `plans` (each pipeline's processor, loading the schemas of fixed topics
/// and of `validate:` now, in front of its handle on the shared producer — or of its own
/// transactional producer for `exactly_once`, behind a consumer sink or a spool when it has
/// one); every DLQ topic of `config` is reserved in every pipeline's `topics_allowed`.
async fn start_units(
    env: &Env,
    plans: Vec<crate::gateway::PipelinePlan>,
    sections: &HashMap<String, serde_json::Value>,
    config: &crate::gateway::Config,
    schemas: Option<&Arc<SchemaCache>>,
) -> anyhow::Result<Vec<Unit>> {
    let dlq_topics = dlq_topics(config);
    let mut units = Vec::with_capacity(plans.len());
    for plan in plans {
        let section = sections.get(&*plan.spec.name).cloned().unwrap_or_default();
        units.push(start_unit(env, plan, section, &dlq_topics, config, schemas).await?);
    }
    Ok(units)
}

/// Every DLQ topic of `config` (the pipelines' own and the root one's): reserved in every
/// pipeline's `topics_allowed`.
fn dlq_topics(config: &crate::gateway::Config) -> Vec<String> {
    config
        .pipelines
        .iter()
        .filter_map(|p| p.dlq.as_ref().map(|d| d.topic.clone()))
        .chain([config.dlq.topic.clone()])
        .collect()
}

async fn start_unit(
    env: &Env,
    plan: crate::gateway::PipelinePlan,
    section: serde_json::Value,
    dlq_topics: &[String],
    config: &crate::gateway::Config,
    schemas: Option<&Arc<SchemaCache>>,
) -> anyhow::Result<Unit> {
    let metrics = &env.metrics;
    let name = plan.spec.name.clone();
    let topic = plan.spec.topic_text.clone();
    let dlq = plan.spec.dlq_topic.clone();
    let exactly_once = plan.spec.exactly_once;
    let sink_config = plan.spec.sink.clone();
    let spool = plan.spec.spool.clone();
    let mut processor = Processor::from_spec(plan.spec, schemas.cloned())?;
    for t in dlq_topics {
        processor.reserve_topic(t);
    }
    if let Some(cache) = schemas {
        load_fixed_subjects(&processor, cache).await?;
    }
    let dlq_topic = dlq.as_deref().unwrap_or(&config.dlq.topic);
    let mut unit = Unit {
        name: name.clone(),
        section,
        uses_kafka_clients: false,
        stop: CancellationToken::new(),
        tasks: JoinSet::new(),
        on_producer: None,
        deliver: None,
        spool: None,
        txn: None,
        route: None,
    };
    let to: Arc<dyn Sink> = if exactly_once && sink_config.is_none() {
        let id = transactional_id(&name);
        tracing::info!(pipeline = %name, transactional_id = %id.id, "exactly-once: writing in Kafka transactions");
        let s: Arc<dyn Sink> =
            KafkaSink::with_transactions(&config.kafka, dlq_topic, metrics.clone(), Some(&id))?;
        unit.txn = Some(s.clone());
        s
    } else {
        let p = Arc::new(OnProducer::new(
            env.producer.clone(),
            dlq.as_deref(),
            &config.dlq.topic,
        ));
        unit.on_producer = Some(p.clone());
        p
    };
    let to: Arc<dyn Sink> = match &sink_config {
        Some(c) => {
            let s: Arc<dyn Sink> = DeliverSink::new(c, to, metrics.clone(), schemas.cloned())
                .with_context(|| format!("pipeline {name}: its sink"))?;
            tracing::info!(pipeline = %name, "records go to a consumer sink");
            unit.deliver = Some(s.clone());
            s
        }
        _ => to,
    };
    let to = match &spool {
        Some(sp) => {
            let s = open_spool_when_free(sp, &name, to, config, metrics).await?;
            unit.spool = Some(s.clone());
            s
        }
        None => to,
    };
    let pipeline = Arc::new(Pipeline::from_processor(processor, to));
    let kind = config
        .pipelines
        .iter()
        .find(|p| *p.name == *name)
        .map_or("", |p| p.source.kind().name());
    unit.uses_kafka_clients = kind == "kafka" || exactly_once;
    let http_routes = http::Routes::default();
    let ctx = SourceCtx {
        pipeline,
        metrics: metrics.clone(),
        stop: unit.stop.clone(),
        http_routes: http_routes.clone(),
        kafka: config.kafka.clone(),
        schemas: schemas.cloned(),
    };
    {
        // What a source's tasks log carries its pipeline and kind (the sources spawn their
        // tasks `in_current_span`).
        let span = tracing::info_span!("source", pipeline = %name, source = kind);
        let _entered = span.enter();
        plan.source.spawn(ctx, &mut unit.tasks);
    }
    let registered = std::mem::take(&mut *http_routes.lock().expect("routes lock"));
    if let Some(hp) = registered.into_iter().next() {
        let hp = Arc::new(hp);
        env.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), hp.clone());
        unit.route = Some(hp);
    }
    tracing::info!(pipeline = %name, %topic, "pipeline started");
    Ok(unit)
}

/// What sinks counted, added up (for the summary, across producers swapped out and pipelines
/// stopped by reloads).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    accepted: u64,
    delivered: u64,
    dead_lettered: u64,
    dropped: u64,
    failed: u64,
}

impl Counts {
    /// A Kafka sink's totals.
    fn of_kafka(s: &dyn Sink) -> Counts {
        let t = s.totals();
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            accepted: l(&t.accepted),
            delivered: l(&t.delivered),
            dead_lettered: l(&t.dead_lettered),
            dropped: l(&t.dropped),
            failed: l(&t.failed),
        }
    }

    /// A consumer sink's: its dead-lettered records are counted once, where their DLQ record
    /// was written (the Kafka sink).
    fn of_consumer(s: &dyn Sink) -> Counts {
        let c = Counts::of_kafka(s);
        Counts {
            accepted: c.accepted.saturating_sub(c.dead_lettered),
            dead_lettered: 0,
            ..c
        }
    }

    fn add(&mut self, o: Counts) {
        self.accepted += o.accepted;
        self.delivered += o.delivered;
        self.dead_lettered += o.dead_lettered;
        self.dropped += o.dropped;
        self.failed += o.failed;
    }
}

/// The running gateway, as reloads change it (its reload methods: `reload.rs`).
struct Runtime {
    env: Env,
    path: PathBuf,
    /// Whether the HTTP server runs (`http:` at start): `http` pipelines need it.
    http_served: bool,
    /// One reload (or the shutdown) at a time.
    state: tokio::sync::Mutex<State>,
}

struct State {
    /// The config running now (sections that need a restart stay as they were started).
    config: crate::gateway::Config,
    /// The same, interpolated: what the next reload compares with.
    value: serde_json::Value,
    units: Vec<Unit>,
    schemas: Option<Arc<SchemaCache>>,
    refresher_stop: CancellationToken,
    brokers_stop: CancellationToken,
    background_stop: CancellationToken,
    /// What producers swapped out and sinks of stopped pipelines counted.
    retired: Counts,
    /// Shut down: no more reloads.
    stopped: bool,
}

impl Runtime {
    /// The orderly shutdown: stop every source and the HTTP server (they hand over what they
    /// read; in-flight requests get their acks) while the consumer sinks flush their open
    /// batches (a Kafka source waits for those fates), then wait for every accepted record to
    /// settle in the spools and the Kafka sinks, all within `shutdown_timeout`; the summary is
    /// logged.
    async fn shutdown(&self, http_stop: CancellationToken, http_tasks: JoinSet<()>) -> Summary {
        let mut st = self.state.lock().await;
        st.stopped = true;
        let timeout = st.config.shutdown_timeout;
        let units = std::mem::take(&mut st.units);
        let producer = self.env.producer.current.read().await.clone();
        let mut stops = vec![http_stop];
        let mut deliver = Vec::new();
        let mut spools = Vec::new();
        let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
        // The HTTP server's tasks and each pipeline's.
        let mut tasks = vec![http_tasks];
        for u in units {
            stops.push(u.stop);
            deliver.extend(u.deliver);
            spools.extend(u.spool);
            sinks.extend(u.txn);
            tasks.push(u.tasks);
        }
        sinks.push(producer);
        let retired = st.retired;
        drop(st);
        stop(timeout, &deliver, &spools, &sinks, stops, tasks, retired).await
    }
}

/// The shutdown's order: stop the sources (they hand over what they read) while the consumer
/// sinks flush their open batches (a Kafka source waits for those fates), then wait for every
/// accepted record to settle in the Kafka sinks (which carry the consumer sinks' DLQ records),
/// all within `timeout`; the summary is logged.
async fn stop(
    timeout: Duration,
    deliver: &[Arc<dyn Sink>],
    spools: &[Arc<dyn Sink>],
    sinks: &[Arc<dyn Sink>],
    stops: Vec<CancellationToken>,
    mut tasks: Vec<JoinSet<()>>,
    retired: Counts,
) -> Summary {
    let started = Instant::now();
    let deadline = started + timeout;
    tracing::info!(
        inflight = sinks.iter().map(|s| s.inflight()).sum::<i64>(),
        ?timeout,
        "shutting down: stopping sources, then flushing"
    );
    for s in &stops {
        s.cancel();
    }
    let flushes = futures_util::future::join_all(deliver.iter().map(|d| d.drain(timeout)));
    let (flushed, joined) = tokio::join!(
        flushes,
        tokio::time::timeout_at(deadline.into(), async {
            for set in tasks.iter_mut() {
                while set.join_next().await.is_some() {}
            }
        })
    );
    if joined.is_err() {
        tracing::warn!("sources did not stop in time (is Kafka down with the buffer full?)");
        for set in tasks.iter_mut() {
            set.abort_all();
        }
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
    let mut c = retired;
    for s in sinks {
        c.add(Counts::of_kafka(&**s));
    }
    for s in deliver {
        c.add(Counts::of_consumer(&**s));
    }
    let summary = Summary {
        accepted: c.accepted,
        delivered: c.delivered,
        dead_lettered: c.dead_lettered,
        dropped: c.dropped,
        failed: c.failed,
        undelivered: left as u64,
    };
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shutdown complete: {summary}"
    );
    summary
}

/// [`open_spool`], waiting (up to `shutdown_timeout`) while this process still holds the
/// directory's lock: a pipeline restarted by a reload opens the spool its old self just
/// drained, whose flusher lets the lock go at its next tick.
async fn open_spool_when_free(
    sp: &crate::spool::SpoolSpec,
    name: &Arc<str>,
    to: Arc<dyn Sink>,
    config: &crate::gateway::Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn Sink>> {
    let deadline = Instant::now() + config.shutdown_timeout;
    let ours = format!("pid {}", std::process::id());
    loop {
        match open_spool(sp, name, to.clone(), config, metrics) {
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.downcast_ref::<crate::spool::SpoolError>(),
                        Some(crate::spool::SpoolError::Locked { holder, .. }) if *holder == ours
                    ) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn value(yaml: &str, env: &[(&str, &str)]) -> serde_json::Value {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::config::interpolated(yaml, &|k| env.get(k).cloned()).unwrap()
    }

    #[test]
    fn pipelines_compare_by_name_after_interpolation() {
        let yaml = "pipelines:\n  - {name: a, source: {websocket: {urls: ['${T}']}}, topic: a}\n  - {name: b, source: {http: {}}, topic: b}\n";
        let one = pipeline_sections(&value(yaml, &[("T", "x")]));
        let same = pipeline_sections(&value(
            "pipelines:\n- name: b\n  source: {http: {}}\n  topic: b\n- {name: a, topic: a, source: {websocket: {urls: [\"${T}\"]}}}\n",
            &[("T", "x")],
        ));
        let other = pipeline_sections(&value(yaml, &[("T", "y")]));
        assert_eq!(one.len(), 2);
        // Reordered and reformatted: the same sections.
        assert_eq!(one, same);
        // A changed environment value changes the section that uses it, not the others.
        assert_ne!(one["a"], other["a"]);
        assert_eq!(one["b"], other["b"]);
    }
}

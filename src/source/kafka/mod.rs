//! Kafka source: a consumer group that reads topics of the `kafka:` cluster and hands each
//! record to the pipeline as an event, at-least-once.
//!
//! **Offsets.** librdkafka commits every `commit_interval` (`enable.auto.commit`), but only the
//! offsets kgate stored (`enable.auto.offset.store=false`). kgate stores a record's offset only
//! once its [`Fate`] is persisted (Kafka holds the output record or its DLQ record), and in
//! partition order: each partition keeps a queue of the offsets handed to the pipeline; a record
//! settled before the ones ahead of it waits for them. So a committed offset never passes a
//! record that Kafka does not hold; after a crash the group resumes at the last commit and
//! records since then are read again (at-least-once: duplicates, no loss).
//!
//! **A fate that is not persisted** (`Dropped`, `Busy`, `Failed`): the offsets before it are
//! stored, its own is not; kgate forgets what is pending in that partition behind it (those
//! fates are ignored), skips what it reads from that partition meanwhile, and after
//! [`RETRY_AFTER`] seeks the partition back to the record, so that it and what follows are read
//! and handed over again (a failed seek is tried again; the partition stays blocked until then).
//!
//! **Shutdown.** On `stop`: no more fetching; the fates of what was handed over are awaited
//! (bounded by the gateway's `shutdown_timeout`, after which the task is aborted and the last
//! stored offsets are what counts), stored, committed synchronously, and the consumer closed.
//!
//! **Exactly-once** (a pipeline whose sink writes in transactions): see [`eos`].
//!
//! Not built yet: waiting for pending fates at a rebalance in at-least-once mode (records of a
//! revoked partition that were in flight are read again by its new owner).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use prometheus::IntCounter;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Probe, ProbeCtx, Source, SourceCtx, SourceKind};
use crate::config::{At, ConfigError};
use crate::event::{ErrorType, Event, Fate, Origin, Rejection};
use crate::kafka::{ErrorLog, KafkaConfig};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::registry::SchemaCache;

mod config;
mod eos;

pub use config::{KafkaSourceConfig, StartAt};

/// How long a partition waits before its record that Kafka does not hold is read again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Most records handed over whose fate is not known yet; past it kgate stops fetching.
const MAX_PENDING: usize = 10_000;

impl SourceKind for KafkaSourceConfig {
    fn name(&self) -> &'static str {
        "kafka"
    }
    fn resolve(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<Box<dyn Source>> {
        if !config::check(self, at, errors) {
            return None;
        }
        Some(Box::new(KafkaSource {
            config: self.clone(),
        }))
    }
}

/// Resolved `source.kafka`.
#[derive(Debug)]
pub struct KafkaSource {
    config: KafkaSourceConfig,
}

impl Source for KafkaSource {
    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> BoxFuture<'a, Vec<Probe>> {
        Box::pin(async move {
            // The brokers are probed with `kafka:`; here only what this source reads.
            vec![Probe::ok(format!(
                "kafka source (pipeline {}): topics {} as group `{}` on the `kafka:` brokers",
                ctx.pipeline,
                self.config.topics.join(", "),
                self.config.group
            ))]
        })
    }

    fn spawn(self: Box<Self>, ctx: SourceCtx, tasks: &mut JoinSet<()>) {
        let txn = ctx.pipeline.transactions();
        let consumer = match make_consumer(
            &self.config,
            &ctx.kafka,
            ctx.pipeline.name(),
            ctx.metrics.clone(),
            txn.is_some(),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(pipeline = %ctx.pipeline.name(), error = %e, "cannot create the Kafka consumer");
                return;
            }
        };
        let group: Arc<str> = Arc::from(self.config.group.as_str());
        let records = RecordCounters::new(ctx.metrics.clone(), group.clone());
        if let Some(txn) = txn {
            let run = eos::TxnRunner {
                consumer,
                pipeline: ctx.pipeline,
                stop: ctx.stop,
                group,
                records,
                txn,
                start: self.config.start,
                schemas: ctx.schemas,
                topics: Topics::default(),
            };
            tasks.spawn(tracing::Instrument::in_current_span(run.run()));
            return;
        }
        let run = Runner {
            consumer,
            pipeline: ctx.pipeline,
            stop: ctx.stop,
            records,
            group,
            schemas: ctx.schemas,
            topics: Topics::default(),
            parts: HashMap::new(),
            fates: FuturesUnordered::new(),
            pending: 0,
        };
        tasks.spawn(tracing::Instrument::in_current_span(run.run()));
    }
}

/// The consumer's context: librdkafka's logs and errors the gateway's way, rebalances logged,
/// commits and lag counted.
struct SourceContext {
    log: ErrorLog,
    pipeline: Arc<str>,
    group: Arc<str>,
    metrics: Arc<Metrics>,
    /// Set when partitions are revoked (an exactly-once batch in flight is then aborted).
    revoked: AtomicBool,
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason)
    }
    fn stats(&self, stats: rdkafka::Statistics) {
        let lag = &self.metrics.consumer.lag;
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                // -1: librdkafka's internal partition, or not known yet.
                if *p >= 0 && part.consumer_lag >= 0 {
                    lag.with_label_values(&[topic.as_str(), &p.to_string(), &self.group])
                        .set(part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = r {
            self.revoked.store(true, Ordering::SeqCst);
        }
    }
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(tpl) => {
                tracing::info!(pipeline = %self.pipeline, partitions = tpl.count(), "Kafka source: partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(pipeline = %self.pipeline, partitions = tpl.count(), "Kafka source: partitions revoked")
            }
            Rebalance::Error(e) => {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "Kafka source: rebalance failed")
            }
        }
    }
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let elements = offsets.elements();
        let mut topics: Vec<&str> = elements.iter().map(|e| e.topic()).collect();
        topics.dedup();
        match result {
            Ok(()) => {
                for t in topics {
                    self.metrics.consumer.commits.with_label_values(&[t]).inc();
                }
            }
            // Nothing stored since the last commit: not an error.
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "Kafka source: offset commit failed (the next one carries the same offsets)");
                for t in topics {
                    self.metrics.consumer.errors.with_label_values(&[t]).inc();
                }
            }
        }
    }
}

type KConsumer = StreamConsumer<SourceContext>;

/// How often librdkafka reports statistics (the lag gauges).
const STATS_EVERY: Duration = Duration::from_secs(5);

/// The consumer: shared client settings, `options`, then kgate's own. At-least-once: automatic
/// commits of the offsets kgate stored. Exactly-once (`transactional`): no commits of its own
/// (offsets go with each transaction).
fn make_consumer(
    c: &KafkaSourceConfig,
    k: &KafkaConfig,
    pipeline: &Arc<str>,
    metrics: Arc<Metrics>,
    transactional: bool,
) -> Result<KConsumer, KafkaError> {
    let mut cc = crate::kafka::base_client_config(k);
    for (key, v) in &c.options {
        cc.set(key, v);
    }
    cc.set("group.id", &c.group)
        .set("enable.auto.commit", (!transactional).to_string())
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", c.start.as_str())
        // Records of aborted transactions are never read (librdkafka's default, made explicit).
        .set("isolation.level", "read_committed")
        .set(
            "statistics.interval.ms",
            STATS_EVERY.as_millis().to_string(),
        )
        .set(
            "auto.commit.interval.ms",
            c.commit_interval.as_millis().to_string(),
        );
    let consumer: KConsumer = cc.create_with_context(SourceContext {
        log: ErrorLog::new(k),
        pipeline: pipeline.clone(),
        group: Arc::from(c.group.as_str()),
        metrics,
        revoked: AtomicBool::new(false),
    })?;
    let topics: Vec<&str> = c.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Hands a record's event to the pipeline. A Confluent-framed Avro value (magic byte 0, which
/// no JSON text starts with) is decoded through the registry first (`decoded`; the DLQ keeps
/// the original bytes); one that cannot be decoded goes to the DLQ as `schema_unavailable`.
async fn hand_to(pipeline: &Pipeline, schemas: Option<&SchemaCache>, mut ev: Event) {
    if let (Some(cache), Some(0)) = (schemas, ev.raw.first().copied()) {
        match cache.decode(&ev.raw).await {
            Ok((_, v)) => {
                ev.decoded = Some(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()));
            }
            Err(e) => {
                let r = Rejection {
                    error_type: ErrorType::SchemaUnavailable,
                    message: format!(
                        "an Avro record (Confluent framing) that cannot be decoded: {e}"
                    ),
                    source_topic: ev.meta.get("kafka.topic").unwrap_or_default().to_string(),
                };
                return pipeline.reject(ev, r).await;
            }
        }
    }
    pipeline.handle(ev).await
}

/// The event of a record, with its source values, input headers and a waiting ack; `topic` is
/// the record's topic, shared (see [`Topics`]). The payload is copied once, from librdkafka's
/// buffer into the event.
fn record_event<M: Message>(
    m: &M,
    topic: &Arc<str>,
    pipeline: &Arc<str>,
    group: &str,
) -> (Event, oneshot::Receiver<Fate>) {
    let partition = m.partition();
    let offset = m.offset();
    let raw = Bytes::copy_from_slice(m.payload().unwrap_or_default());
    // The partition and offset are source values and DLQ headers of their own.
    let origin = Origin::now(pipeline.clone(), topic.clone());
    let (mut ev, rx) = Event::with_ack(raw, origin);
    ev.meta.insert("kafka.topic", &**topic);
    ev.meta.insert("kafka.partition", partition.to_string());
    ev.meta.insert("kafka.offset", offset.to_string());
    ev.meta.insert("kafka.group", group);
    if let Some(ms) = m.timestamp().to_millis() {
        ev.meta.insert("kafka.timestamp", ms.to_string());
    }
    if let Some(k) = m.key() {
        ev.meta
            .insert("kafka.key", String::from_utf8_lossy(k).into_owned());
    }
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            let v = h.value.unwrap_or_default();
            ev.meta.insert(
                format!("kafka.header.{}", h.key),
                String::from_utf8_lossy(v).into_owned(),
            );
            ev.headers.push((h.key.to_string(), v.to_vec()));
        }
    }
    (ev, rx)
}

/// Topic names read so far, each shared by every event of its topic instead of copied.
#[derive(Default)]
struct Topics(HashMap<String, Arc<str>>);

impl Topics {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(t) = self.0.get(name) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(name);
        self.0.insert(name.to_string(), t.clone());
        t
    }
}

/// A topic partition.
type Tp = (Arc<str>, i32);

/// `kafka_consumer_records_total{topic,group}` of each topic read, resolved once per topic.
struct RecordCounters {
    metrics: Arc<Metrics>,
    group: Arc<str>,
    by_topic: HashMap<Arc<str>, IntCounter>,
}

impl RecordCounters {
    fn new(metrics: Arc<Metrics>, group: Arc<str>) -> RecordCounters {
        RecordCounters {
            metrics,
            group,
            by_topic: HashMap::new(),
        }
    }

    fn get(&mut self, topic: &Arc<str>) -> &IntCounter {
        self.by_topic.entry(topic.clone()).or_insert_with(|| {
            self.metrics
                .consumer
                .records
                .with_label_values(&[topic, &self.group])
        })
    }
}

/// The records of one partition handed over and not yet settled, by offset (`None` = fate not
/// known yet), and its generation (bumped when the queue is forgotten: older fates are ignored).
/// Blocked from a fate not persisted until the seek back: records read meanwhile are skipped
/// (they are read again), so that nothing behind the failed record is stored.
#[derive(Default)]
struct Partition {
    queue: BTreeMap<i64, Option<Fate>>,
    generation: u64,
    blocked: bool,
}

/// What a settled fate lets a partition do.
#[derive(Debug, Default, PartialEq, Eq)]
struct Advance {
    /// Records taken off the queue (settled, or forgotten behind a failure).
    removed: usize,
    /// The last offset whose record and all before it Kafka holds: to store.
    store: Option<i64>,
    /// The offset of a record Kafka does not hold, with its fate: read again from there.
    retry: Option<(i64, Fate)>,
}

impl Partition {
    /// A record to hand over; its fate comes with this generation. None while blocked: skip it.
    fn push(&mut self, offset: i64) -> Option<u64> {
        if self.blocked {
            return None;
        }
        self.queue.insert(offset, None);
        Some(self.generation)
    }

    /// After the seek back: forgets what is pending (how many) and takes records again.
    fn unblock(&mut self) -> usize {
        self.blocked = false;
        self.forget()
    }

    /// Forgets every pending record (their fates, when they come, are ignored); how many.
    fn forget(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        self.generation += 1;
        n
    }

    /// Records the fate of `offset` (of `generation`) and takes the settled head off the queue,
    /// in order, up to the first record whose fate is unknown or not persisted.
    fn settle(&mut self, generation: u64, offset: i64, fate: Fate) -> Advance {
        let mut adv = Advance::default();
        if generation != self.generation {
            return adv; // Forgotten: it will be read again.
        }
        if let Some(slot) = self.queue.get_mut(&offset) {
            *slot = Some(fate);
        }
        while let Some(entry) = self.queue.first_entry() {
            let Some(fate) = entry.get() else { break };
            if !fate.is_persisted() {
                let at = *entry.key();
                adv.retry = Some((at, fate.clone()));
                adv.removed += self.forget();
                self.blocked = true;
                break;
            }
            adv.store = Some(entry.remove_entry().0);
            adv.removed += 1;
        }
        adv
    }
}

/// A fate as it arrives: its partition, generation and offset.
type Settled = (Tp, u64, i64, Fate);

struct Runner {
    consumer: KConsumer,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    /// The consumer group (the DLQ's `consumer_group`).
    group: Arc<str>,
    records: RecordCounters,
    schemas: Option<Arc<SchemaCache>>,
    topics: Topics,
    parts: HashMap<Tp, Partition>,
    fates: FuturesUnordered<BoxFuture<'static, Settled>>,
    /// Records handed over whose partition queue holds them.
    pending: usize,
}

/// The fate of an event the pipeline dropped without settling it.
fn unsettled() -> Fate {
    Fate::Failed {
        message: "the event was dropped before its fate was known".into(),
    }
}

impl Runner {
    async fn run(mut self) {
        // A seek back waiting for its time: (partition, offset, when).
        let mut retries: Vec<(Tp, i64, tokio::time::Instant)> = Vec::new();
        loop {
            let next_retry = retries.iter().map(|r| r.2).min();
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                Some(s) = self.fates.next(), if !self.fates.is_empty() => {
                    if let Some(r) = self.settle(s) {
                        retries.push((r.0, r.1, tokio::time::Instant::now() + RETRY_AFTER));
                    }
                }
                _ = tokio::time::sleep_until(next_retry.unwrap_or_else(tokio::time::Instant::now)), if next_retry.is_some() => {
                    let now = tokio::time::Instant::now();
                    let (due, later): (Vec<_>, Vec<_>) = retries.into_iter().partition(|r| r.2 <= now);
                    retries = later;
                    for (tp, offset, _) in due {
                        if !self.seek_back(&tp, offset) {
                            retries.push((tp, offset, tokio::time::Instant::now() + RETRY_AFTER));
                        }
                    }
                }
                m = self.consumer.recv(), if self.pending < MAX_PENDING => match m {
                    Ok(m) => {
                        let topic = self.topics.get(m.topic());
                        let (ev, rx) = record_event(&m, &topic, self.pipeline.name(), &self.group);
                        let (partition, offset) = (m.partition(), m.offset());
                        drop(m);
                        self.hand_over(ev, rx, (topic, partition), offset).await
                    }
                    Err(e) => {
                        tracing::warn!(pipeline = %self.pipeline.name(), error = %e, "Kafka source: fetch failed");
                        self.records.metrics.consumer.errors.with_label_values(&["(fetch)"]).inc();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        self.shutdown().await;
    }

    /// Hands a record's event to the pipeline; its fate joins its partition's queue.
    async fn hand_over(&mut self, ev: Event, rx: oneshot::Receiver<Fate>, tp: Tp, offset: i64) {
        self.records.get(&tp.0).inc();
        let Some(generation) = self.parts.entry(tp.clone()).or_default().push(offset) else {
            return; // Blocked until its seek back: it is read again then.
        };
        self.pending += 1;
        self.fates
            .push(Box::pin(wait_fate(tp, generation, offset, rx)));
        hand_to(&self.pipeline, self.schemas.as_deref(), ev).await;
    }

    /// Records a fate and stores the offsets its partition can now commit, in order. Returns
    /// the partition and offset to read again when the head's fate is not persisted.
    fn settle(&mut self, (tp, generation, offset, fate): Settled) -> Option<(Tp, i64)> {
        let adv = self.parts.get_mut(&tp)?.settle(generation, offset, fate);
        self.pending -= adv.removed;
        if let Some(at) = adv.store {
            // librdkafka stores `at + 1`: the next record to read.
            if let Err(e) = self.consumer.store_offset(&tp.0, tp.1, at) {
                tracing::debug!(pipeline = %self.pipeline.name(), topic = %tp.0, partition = tp.1, error = %e, "Kafka source: offset not stored (partition revoked?)");
            }
        }
        let (at, fate) = adv.retry?;
        tracing::warn!(pipeline = %self.pipeline.name(), topic = %tp.0, partition = tp.1, offset = at, ?fate,
            "Kafka source: not committing a record that Kafka does not hold; reading the partition again from it");
        Some((tp, at))
    }

    /// Reads a partition again from `offset` (a record Kafka does not hold); false when the
    /// seek failed (the partition stays blocked and is tried again).
    fn seek_back(&mut self, tp: &Tp, offset: i64) -> bool {
        if let Err(e) =
            self.consumer
                .seek(&tp.0, tp.1, Offset::Offset(offset), Duration::from_secs(10))
        {
            tracing::warn!(pipeline = %self.pipeline.name(), topic = %tp.0, partition = tp.1, offset, error = %e,
                "Kafka source: cannot seek back yet; the partition stays paused");
            return false;
        }
        if let Some(part) = self.parts.get_mut(tp) {
            // Fates of records read since the failure are not stored either.
            self.pending -= part.unblock();
        }
        true
    }

    /// Stops fetching, waits for the fates handed over, stores, commits, closes.
    async fn shutdown(mut self) {
        if let Ok(tpl) = self.consumer.assignment() {
            let _ = self.consumer.pause(&tpl);
        }
        let waiting = self.pending;
        while self.pending > 0 {
            match self.fates.next().await {
                Some(s) => {
                    // A fate not persisted at shutdown: nothing behind it is stored; the next
                    // run reads it again.
                    let _ = self.settle(s);
                }
                None => break,
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(pipeline = %self.pipeline.name(), error = %e, "Kafka source: final commit failed; the next run reads the records since the last commit again")
            }
        }
        tracing::info!(pipeline = %self.pipeline.name(), settled = waiting, "Kafka source stopped; offsets committed");
        // The consumer leaves the group and closes on drop.
        drop(self.consumer);
    }
}

/// Awaits one record's fate.
async fn wait_fate(tp: Tp, generation: u64, offset: i64, rx: oneshot::Receiver<Fate>) -> Settled {
    let fate = rx.await.unwrap_or_else(|_| unsettled());
    (tp, generation, offset, fate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(offset: i64) -> Fate {
        Fate::Delivered {
            topic: "clean".into(),
            partition: 0,
            offset,
        }
    }

    #[test]
    fn offsets_are_stored_in_partition_order() {
        let mut p = Partition::default();
        let g = (10..15).map(|o| p.push(o).unwrap()).last().unwrap();
        // A later record settled first waits for the ones ahead of it.
        assert_eq!(p.settle(g, 12, delivered(2)), Advance::default());
        assert_eq!(p.settle(g, 11, delivered(1)), Advance::default());
        let dead = Fate::DeadLettered {
            error_type: crate::event::ErrorType::InvalidJson,
            message: "bad".into(),
            partition: 0,
            offset: 7,
        };
        assert_eq!(
            p.settle(g, 10, dead),
            Advance {
                removed: 3,
                store: Some(12),
                retry: None
            }
        );
        assert_eq!(
            p.settle(g, 13, delivered(3)),
            Advance {
                removed: 1,
                store: Some(13),
                retry: None
            }
        );
        assert_eq!(p.queue.len(), 1);
    }

    #[test]
    fn a_fate_not_persisted_stops_storing_and_forgets_what_follows() {
        let mut p = Partition::default();
        let g = (0..4).map(|o| p.push(o).unwrap()).last().unwrap();
        assert_eq!(p.settle(g, 2, delivered(2)), Advance::default());
        assert_eq!(
            p.settle(g, 1, Fate::Busy),
            Advance::default(),
            "waits for offset 0"
        );
        assert_eq!(
            p.settle(g, 0, delivered(0)),
            Advance {
                removed: 4,
                store: Some(0),
                retry: Some((1, Fate::Busy))
            }
        );
        assert!(p.queue.is_empty());
        // Fates of the forgotten records change nothing; until the seek back nothing is taken.
        assert_eq!(p.settle(g, 3, delivered(3)), Advance::default());
        assert_eq!(p.push(5), None);
        assert_eq!(p.unblock(), 0);
        let g2 = p.push(1).unwrap();
        assert_ne!(g, g2);
        assert_eq!(
            p.settle(g2, 1, delivered(1)),
            Advance {
                removed: 1,
                store: Some(1),
                retry: None
            }
        );
    }

    fn load(text: &str) -> Result<crate::gateway::Config, crate::config::ConfigErrors> {
        crate::gateway::Config::from_yaml_str(text, "kgate.yaml", &|_| None)
    }

    #[test]
    fn config_defaults_and_errors_with_paths() {
        let c = load("pipelines:\n  - name: v\n    source: {kafka: {topics: [telemetry.raw], group: g}}\n    topic: telemetry.clean\n    key: '${@kafka.key}'\n").unwrap();
        let crate::source::SourceConfig::Kafka(k) = &c.pipelines[0].source else {
            panic!("kafka source expected")
        };
        assert_eq!(k.start, StartAt::Latest);
        assert_eq!(k.commit_interval, Duration::from_secs(5));
        assert!(k.options.is_empty());

        let e = load("pipelines:\n  - name: a\n    source: {kafka: {topics: [t], group: g}}\n    topic: t\n  - name: b\n    source: {kafka: {topics: [], group: g, commit_interval: 10ms, options: {enable.auto.offset.store: 'true'}}}\n    topic: t\n").unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "pipelines[1].source.kafka.topics",
            "pipelines[1].source.kafka.commit_interval",
            "pipelines[1].source.kafka.options.enable.auto.offset.store",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}\n{e}");
        }
        let e = load("pipelines:\n  - name: a\n    source: {kafka: {topics: ['bad topic'], group: ''}}\n    topic: t\n").unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "pipelines[0].source.kafka.topics[0]",
            "pipelines[0].source.kafka.group",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}\n{e}");
        }
        let e = load("pipelines:\n  - name: a\n    source: {kafka: {topics: [t], group: g, start: middle}}\n    topic: t\n").unwrap_err();
        assert_eq!(e.errors[0].path, "pipelines[0].source.kafka.start", "{e}");
    }
}

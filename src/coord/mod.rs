//! Scale-out through Kafka: the kgate instances that run the same `websocket` pipeline share
//! its feeds, each feed read by one instance at a time, chosen by a Kafka consumer group rather
//! than by a consensus of kgate's own.
//!
//! Each instance joins the group `coordination.group` on the control topic
//! `kgate.coord.<pipeline>`, which has one partition per URL: the partitions the group assigns
//! to an instance are the URLs it reads (partition `i` is URL `i`, in config order). Nothing is
//! ever written to the control topic or committed; the consumer is polled only so that it
//! heartbeats and takes part in rebalances.
//!
//! **No feed read twice while all run.** The group uses the classic protocol's eager assignors
//! (`range,roundrobin`): at a rebalance every member gives up all its partitions before any is
//! assigned again. The revoke callback stops this instance's feeds and returns only once each
//! has stopped reading and handed what it read to the pipeline, so a feed's new owner connects
//! after its old one let go. The price: every rebalance reconnects every feed of the group.
//!
//! **Handover.** An instance that stops (SIGTERM) stops its feeds, then closes its consumer,
//! which leaves the group: the others rebalance at once. A killed or cut-off instance is
//! noticed after `session_timeout`, then its feeds move. What a feed sends while nobody reads
//! it is the feed's to keep or lose: kgate cannot replay it.
//!
//! This module knows nothing of WebSockets: it starts and stops numbered tasks
//! ([`Coordinated::start`]) as the group assigns and revokes their partitions.

mod config;

pub use config::{control_topic, CoordinationConfig, CoordinationSpec};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admin::AdminError;
use crate::kafka::{ErrorLog, KafkaConfig, MetadataError};
use crate::metrics::Metrics;

/// Starts task `i` (URL `i`): it must return once the token is cancelled, after handing what
/// it read to the pipeline.
pub type Start = Arc<dyn Fn(usize, CancellationToken) -> BoxFuture<'static, ()> + Send + Sync>;

/// What a pipeline's coordinator runs with.
pub struct Coordinated {
    /// `coordination:`, checked.
    pub spec: CoordinationSpec,
    /// The pipeline's name.
    pub pipeline: Arc<str>,
    /// Each task's name in logs (the feed's redacted URL), in partition order.
    pub names: Vec<Arc<str>>,
    /// The `kafka:` section (brokers, security).
    pub kafka: KafkaConfig,
    /// Where the coordination series go.
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown: stop the tasks, then leave the group.
    pub stop: CancellationToken,
    /// Starts a task.
    pub start: Start,
}

/// Why a coordinator could not join its group.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The control topic has more partitions than the pipeline has URLs.
    #[error("control topic {topic} has {found} partitions but pipeline {pipeline} has {want} URLs, and Kafka cannot remove partitions; stop every instance of this pipeline, delete the topic (`kgate topics delete {topic}`) and start them again: kgate creates it with {want}")]
    TooManyPartitions {
        /// The control topic.
        topic: String,
        /// Its partitions.
        found: usize,
        /// The pipeline's URLs.
        want: usize,
        /// The pipeline.
        pipeline: String,
    },
    /// Creating or growing the control topic failed.
    #[error("control topic {topic}: {source}")]
    Admin {
        /// The control topic.
        topic: String,
        /// What the brokers said.
        #[source]
        source: Box<AdminError>,
    },
    /// Reading the control topic's metadata failed.
    #[error("control topic {topic}: {source}")]
    Metadata {
        /// The control topic.
        topic: String,
        /// What failed.
        #[source]
        source: Box<MetadataError>,
    },
    /// The consumer could not be made or subscribed (bad client settings).
    #[error("group {group}: cannot create its consumer: {source}")]
    Client {
        /// The group.
        group: String,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
}

impl CoordError {
    /// Whether waiting may help (the brokers are unreachable), rather than a change of config
    /// or of the topic.
    fn transient(&self) -> bool {
        match self {
            CoordError::Admin { source, .. } => {
                source.kind() == crate::admin::ErrorKind::Unavailable
            }
            CoordError::Metadata { source, .. } => {
                matches!(**source, MetadataError::Unreachable { .. })
            }
            _ => false,
        }
    }
}

/// The coordination series: one set per pipeline and group.
pub struct CoordFamilies {
    owned: IntGaugeVec,
    rebalances: IntCounterVec,
    revoke: HistogramVec,
}

impl CoordFamilies {
    /// Registers the families in `r` (through [`Metrics::families`], once per registry).
    pub fn register(r: &Registry) -> CoordFamilies {
        let l = &["pipeline", "group"];
        let owned = IntGaugeVec::new(
            Opts::new(
                "kgate_coordination_owned_urls",
                "URLs of a coordinated pipeline that this instance reads now",
            ),
            l,
        )
        .expect("valid metric");
        let rebalances = IntCounterVec::new(
            Opts::new(
                "kgate_coordination_rebalances_total",
                "Assignments this instance received from its coordination group (one per rebalance)",
            ),
            l,
        )
        .expect("valid metric");
        let revoke = HistogramVec::new(
            HistogramOpts::new(
                "kgate_coordination_revoke_seconds",
                "Time from a revoke to every revoked feed stopped and its events handed over",
            )
            .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            l,
        )
        .expect("valid metric");
        r.register(Box::new(owned.clone()))
            .expect("registered once");
        r.register(Box::new(rebalances.clone()))
            .expect("registered once");
        r.register(Box::new(revoke.clone()))
            .expect("registered once");
        CoordFamilies {
            owned,
            rebalances,
            revoke,
        }
    }
}

/// How long the coordinator waits before it tries an unreachable cluster again (doubling).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long one poll of the control consumer waits: the poll loop's reaction time to `stop`.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Runs the coordinator of one pipeline until `stop`: the control topic made ready, the group
/// joined, tasks started and stopped as partitions come and go; at `stop` the tasks are
/// stopped, then the group left.
pub async fn run(c: Coordinated) {
    let want = c.names.len();
    let mut wait = RETRY_FIRST;
    loop {
        match ensure_topic(&c.kafka, &c.spec.topic, want, &c.pipeline).await {
            Ok(()) => break,
            Err(e) if e.transient() => {
                tracing::warn!(pipeline = %c.pipeline, group = %c.spec.group, error = %e, retry_in = ?wait, "coordination: cannot prepare the control topic; retrying");
            }
            Err(e) => {
                tracing::error!(pipeline = %c.pipeline, group = %c.spec.group, error = %e, "coordination: this instance reads none of the pipeline's feeds");
                return;
            }
        }
        tokio::select! {
            _ = c.stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
    let families = c.metrics.families(CoordFamilies::register);
    let labels = [&*c.pipeline, c.spec.group.as_str()];
    let owner = Arc::new(Owner {
        handle: tokio::runtime::Handle::current(),
        span: tracing::Span::current(),
        pipeline: c.pipeline.clone(),
        group: c.spec.group.clone(),
        topic: c.spec.topic.clone(),
        names: c.names,
        start: c.start,
        stop: c.stop.clone(),
        running: Mutex::new(BTreeMap::new()),
        owned: families.owned.with_label_values(&labels),
        rebalances: families.rebalances.with_label_values(&labels),
        revoke: families.revoke.with_label_values(&labels),
    });
    owner.owned.set(0);
    let consumer = match make_consumer(&c.spec, &c.kafka, owner.clone()) {
        Ok(consumer) => consumer,
        Err(e) => {
            tracing::error!(pipeline = %owner.pipeline, error = %e, "coordination: this instance reads none of the pipeline's feeds");
            return;
        }
    };
    tracing::info!(pipeline = %owner.pipeline, group = %owner.group, topic = %owner.topic, feeds = want, session_timeout = ?c.spec.session_timeout, "coordination: joining the group");
    // librdkafka calls the rebalance callbacks from `poll`, and the revoke callback blocks
    // until the feeds stopped: a thread of its own, outside the runtime (which it waits on).
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let poller = owner.clone();
    let stop = c.stop.clone();
    let spawned = std::thread::Builder::new()
        .name("kgate-coord".into())
        .spawn(move || {
            poll_until(&consumer, &stop);
            // Stop the feeds before leaving the group: their next owner must not start
            // while they still read.
            poller.release_all("stopping");
            // Closing the consumer leaves the group (the others rebalance at once).
            drop(consumer);
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        tracing::error!(pipeline = %owner.pipeline, error = %e, "coordination: cannot start its thread; this instance reads none of the pipeline's feeds");
        return;
    }
    let _ = done_rx.await;
    tracing::info!(pipeline = %owner.pipeline, group = %owner.group, "coordination: left the group");
}

/// Polls the control consumer (heartbeats ride librdkafka's own thread; rebalances and
/// errors come through here) until `stop`.
fn poll_until(consumer: &BaseConsumer<CoordContext>, stop: &CancellationToken) {
    while !stop.is_cancelled() {
        match consumer.poll(POLL_EVERY) {
            // Nothing is written there; a record someone else wrote is ignored.
            None | Some(Ok(_)) => {}
            Some(Err(e)) => consumer
                .context()
                .log
                .error(e, "coordination consumer (control topic)"),
        }
    }
}

/// Makes sure the control topic exists with `want` partitions: created when missing, grown
/// when it has fewer; refused when it has more.
async fn ensure_topic(
    k: &KafkaConfig,
    topic: &str,
    want: usize,
    pipeline: &str,
) -> Result<(), CoordError> {
    let admin = |source| CoordError::Admin {
        topic: topic.to_string(),
        source: Box::new(source),
    };
    let found = partitions(k, topic).await?;
    match found {
        None => match crate::admin::create_topic(k, topic, want as i32, None, &[]).await {
            // Another instance created it meanwhile: checked below like any other.
            Ok(()) | Err(AdminError::TopicExists { .. }) => {}
            Err(e) => return Err(admin(e)),
        },
        Some(n) if n < want => {
            tracing::info!(
                topic,
                from = n,
                to = want,
                "coordination: growing the control topic to one partition per URL"
            );
            if let Err(e) = crate::admin::add_partitions(k, topic, want).await {
                // Another instance grew it meanwhile: checked below.
                if e.kind() != crate::admin::ErrorKind::Invalid {
                    return Err(admin(e));
                }
            }
        }
        Some(_) => {}
    }
    // Until the metadata shows the topic as created (or grown).
    let deadline = Instant::now() + crate::admin::TIMEOUT;
    loop {
        let found = partitions(k, topic).await?;
        match found {
            Some(n) if n > want => {
                return Err(CoordError::TooManyPartitions {
                    topic: topic.to_string(),
                    found: n,
                    want,
                    pipeline: pipeline.to_string(),
                })
            }
            Some(n) if n == want => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(admin(AdminError::Invalid(format!(
                    "still {} partition(s) instead of {want} after creating or growing it; check the brokers' logs",
                    found.unwrap_or(0)
                ))))
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The partitions of `topic` (`None`: no such topic).
async fn partitions(k: &KafkaConfig, topic: &str) -> Result<Option<usize>, CoordError> {
    let kc = k.clone();
    let t = topic.to_string();
    let md = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<crate::kafka::QuietContext> =
            crate::kafka::base_client_config(&kc)
                .set("allow.auto.create.topics", "false")
                .create_with_context(Default::default())
                .map_err(MetadataError::Client)?;
        // All topics: asking for one by name could create it where the brokers auto-create.
        let md = crate::kafka::metadata_blocking(&consumer, &kc, None, crate::admin::TIMEOUT)?;
        Ok(md
            .topics()
            .iter()
            .find(|m| m.name() == t && m.error().is_none())
            .map(|m| m.partitions().len()))
    })
    .await
    .map_err(MetadataError::Cancelled)
    .and_then(|r| r);
    md.map_err(|source| CoordError::Metadata {
        topic: topic.to_string(),
        source: Box::new(source),
    })
}

fn make_consumer(
    spec: &CoordinationSpec,
    k: &KafkaConfig,
    owner: Arc<Owner>,
) -> Result<BaseConsumer<CoordContext>, CoordError> {
    let client = |source| CoordError::Client {
        group: spec.group.clone(),
        source,
    };
    let mut cc = crate::kafka::base_client_config(k);
    cc.set("group.id", &spec.group)
        // The classic protocol with its eager assignors: all partitions revoked before any is
        // assigned again (KIP-848's protocol and cooperative-sticky hand over incrementally,
        // without the stop-everything barrier the no-duplicates promise rests on).
        .set("group.protocol", "classic")
        .set("partition.assignment.strategy", "range,roundrobin")
        .set(
            "session.timeout.ms",
            spec.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            spec.heartbeat.as_millis().max(1).to_string(),
        )
        // It reads nothing and keeps no place.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest")
        .set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer<CoordContext> = cc
        .create_with_context(CoordContext {
            log: ErrorLog::new(k),
            owner,
        })
        .map_err(client)?;
    consumer.subscribe(&[&spec.topic]).map_err(client)?;
    Ok(consumer)
}

/// A running task: its token and its handle.
type Running = (CancellationToken, JoinHandle<()>);

/// What this instance reads now, and how to start and stop it.
struct Owner {
    handle: tokio::runtime::Handle,
    /// The source's span (pipeline, source), for the tasks' logs.
    span: tracing::Span,
    pipeline: Arc<str>,
    group: String,
    topic: String,
    names: Vec<Arc<str>>,
    start: Start,
    stop: CancellationToken,
    /// Partition → its task.
    running: Mutex<BTreeMap<i32, Running>>,
    owned: prometheus::IntGauge,
    rebalances: prometheus::IntCounter,
    revoke: prometheus::Histogram,
}

impl Owner {
    fn names_of(&self, parts: &[i32]) -> Vec<&str> {
        parts
            .iter()
            .filter_map(|p| self.names.get(*p as usize).map(|n| &**n))
            .collect()
    }

    /// Stops every running task and waits until each returned (stopped reading, handed over
    /// what it read); logs what stopped and how long it took.
    fn release_all(&self, why: &str) {
        let taken: Vec<(i32, Running)> = {
            let mut running = self.running.lock().expect("coordination lock");
            std::mem::take(&mut *running).into_iter().collect()
        };
        self.owned.set(0);
        if taken.is_empty() {
            return;
        }
        let started = Instant::now();
        let parts: Vec<i32> = taken.iter().map(|(p, _)| *p).collect();
        for (_, (token, _)) in &taken {
            token.cancel();
        }
        self.handle.block_on(async {
            for (_, (_, task)) in taken {
                let _ = task.await;
            }
        });
        let took = started.elapsed();
        self.revoke.observe(took.as_secs_f64());
        tracing::info!(pipeline = %self.pipeline, group = %self.group, urls = ?self.names_of(&parts), stopped_in_ms = took.as_millis() as u64, "coordination: feeds {why}: stopped and handed over");
    }

    /// Starts the tasks of `parts` that do not run yet (and stops any that runs but is not
    /// among them).
    fn assign(&self, mut parts: Vec<i32>) {
        self.rebalances.inc();
        let total = self.names.len();
        let unknown: Vec<i32> = parts
            .iter()
            .copied()
            .filter(|p| *p < 0 || *p as usize >= total)
            .collect();
        if !unknown.is_empty() {
            tracing::warn!(pipeline = %self.pipeline, topic = %self.topic, partitions = ?unknown, urls = total, "coordination: assigned partitions beyond the pipeline's URLs (was the control topic grown, or does another instance list more URLs?); they are ignored");
            parts.retain(|p| !unknown.contains(p));
        }
        let stale = {
            let running = self.running.lock().expect("coordination lock");
            running.keys().any(|p| !parts.contains(p))
        };
        if stale {
            // Not with the eager protocol (it revokes all first); kept safe all the same.
            self.release_all("no longer assigned");
        }
        if self.stop.is_cancelled() {
            return;
        }
        let mut running = self.running.lock().expect("coordination lock");
        for p in &parts {
            if running.contains_key(p) {
                continue;
            }
            let token = self.stop.child_token();
            let task = (self.start)(*p as usize, token.clone());
            let task = self.handle.spawn(task.instrument(self.span.clone()));
            running.insert(*p, (token, task));
        }
        self.owned.set(running.len() as i64);
        tracing::info!(pipeline = %self.pipeline, group = %self.group, owned = running.len(), of = total, urls = ?self.names_of(&parts), "coordination: feeds assigned");
    }
}

/// The control consumer's context: librdkafka's logs and errors the gateway's way, and the
/// rebalances that start and stop the feeds.
struct CoordContext {
    log: ErrorLog,
    owner: Arc<Owner>,
}

impl ClientContext for CoordContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason)
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}

impl ConsumerContext for CoordContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            // Before librdkafka lets the partitions go (and the group may give them to
            // another instance): every feed stopped, its events handed to the pipeline.
            Rebalance::Revoke(_) => self.owner.release_all("revoked"),
            Rebalance::Error(e) => {
                // librdkafka unassigns everything after a failed rebalance.
                tracing::warn!(pipeline = %self.owner.pipeline, group = %self.owner.group, error = %e, "coordination: rebalance failed; stopping this instance's feeds until the group assigns them again");
                self.owner
                    .release_all("unassigned after a failed rebalance");
            }
            Rebalance::Assign(_) => {}
        }
    }
    fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            self.owner.assign(partitions_of(tpl, &self.owner.topic));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An owner of three tasks; each, once told to stop, takes a while to hand over, then
    /// counts itself in `finished`.
    fn owner(
        rt: &tokio::runtime::Runtime,
        stop: &CancellationToken,
    ) -> (Owner, Arc<Mutex<Vec<usize>>>, Arc<AtomicUsize>) {
        let started = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(AtomicUsize::new(0));
        let (s, f) = (started.clone(), finished.clone());
        let start: Start = Arc::new(move |i, stop: CancellationToken| {
            s.lock().unwrap().push(i);
            let f = f.clone();
            Box::pin(async move {
                stop.cancelled().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                f.fetch_add(1, Ordering::SeqCst);
            })
        });
        let fam = CoordFamilies::register(&Registry::new());
        let l = ["p", "g"];
        let owner = Owner {
            handle: rt.handle().clone(),
            span: tracing::Span::none(),
            pipeline: Arc::from("p"),
            group: "g".into(),
            topic: "kgate.coord.p".into(),
            names: ["ws://a/ws", "ws://b/ws", "ws://c/ws"]
                .into_iter()
                .map(Arc::from)
                .collect(),
            start,
            stop: stop.clone(),
            running: Mutex::new(BTreeMap::new()),
            owned: fam.owned.with_label_values(&l),
            rebalances: fam.rebalances.with_label_values(&l),
            revoke: fam.revoke.with_label_values(&l),
        };
        (owner, started, finished)
    }

    #[test]
    fn a_revoke_returns_only_once_every_task_handed_over() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let stop = CancellationToken::new();
        let (owner, started, finished) = owner(&rt, &stop);
        // Partition 7 is beyond the three URLs: ignored.
        owner.assign(vec![0, 2, 7]);
        assert_eq!(*started.lock().unwrap(), [0, 2]);
        assert_eq!(owner.owned.get(), 2);
        assert_eq!(owner.rebalances.get(), 1);
        owner.release_all("revoked");
        assert_eq!(finished.load(Ordering::SeqCst), 2, "both tasks returned");
        assert_eq!(owner.owned.get(), 0);
        assert_eq!(owner.revoke.get_sample_count(), 1);
        // A task that runs but is not assigned any more is stopped first.
        owner.assign(vec![1]);
        owner.assign(vec![0]);
        assert_eq!(*started.lock().unwrap(), [0, 2, 1, 0]);
        assert_eq!(finished.load(Ordering::SeqCst), 3);
        assert_eq!(owner.owned.get(), 1);
        // Stopping: nothing new starts.
        stop.cancel();
        owner.release_all("stopping");
        assert_eq!(finished.load(Ordering::SeqCst), 4);
        owner.assign(vec![1, 2]);
        assert_eq!(started.lock().unwrap().len(), 4);
        assert_eq!(owner.owned.get(), 0);
    }
}

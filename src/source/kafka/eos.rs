//! Exactly-once: the Kafka source of an `exactly_once` pipeline, whose sink writes in Kafka
//! transactions ([`Transactions`]).
//!
//! **A batch is a transaction.** The runner waits for a record, begins a transaction, hands
//! records to the pipeline for up to [`BATCH_TIME`] (or [`BATCH_MAX`] records, or until `stop`),
//! then waits for every fate of the batch. When Kafka holds every output and DLQ record (all
//! fates persisted), it adds the batch's offsets (per partition, the next record to read) to
//! the transaction with the consumer's group metadata and commits: outputs, DLQ records and
//! offsets become visible together. Otherwise (a fate not persisted, a failed commit, partitions
//! revoked meanwhile) it aborts — read_committed readers never see the batch's records — and
//! rewinds the partitions it still owns to their committed offsets, so the batch is read and
//! written again.
//!
//! **Fencing.** The producer's `transactional.id` is stable for a pipeline on a host: a restart
//! after SIGKILL fences the killed producer and aborts its open transaction at `init`; the
//! consumer group's metadata travels with every offset commit (KIP-447), so a gateway whose
//! partitions moved to another member cannot commit them.
//!
//! The transactional calls block until the broker answers: they run in `block_in_place`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{
    hand_to, record_event, unsettled, KConsumer, RecordCounters, StartAt, Topics, RETRY_AFTER,
};
use crate::event::Fate;
use crate::pipeline::Pipeline;
use crate::registry::SchemaCache;
use crate::sink::Transactions;

/// How long a transaction collects records after its first.
const BATCH_TIME: Duration = Duration::from_millis(100);

/// Most records in one transaction.
const BATCH_MAX: usize = 20_000;

/// How often a commit that failed with a retriable error is tried again before the batch is
/// aborted.
const COMMIT_TRIES: u32 = 3;

pub(super) struct TxnRunner {
    pub(super) consumer: KConsumer,
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) stop: CancellationToken,
    pub(super) group: Arc<str>,
    pub(super) records: RecordCounters,
    pub(super) txn: Arc<dyn Transactions>,
    pub(super) start: StartAt,
    pub(super) schemas: Option<Arc<SchemaCache>>,
    pub(super) topics: Topics,
}

/// The records of one transaction: per partition its first and last offset, and their fates.
#[derive(Default)]
struct Batch {
    parts: BTreeMap<(Arc<str>, i32), (i64, i64)>,
    fates: FuturesUnordered<tokio::sync::oneshot::Receiver<Fate>>,
    len: usize,
}

impl Batch {
    fn add(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        let e = self
            .parts
            .entry((topic.clone(), partition))
            .or_insert((offset, offset));
        e.0 = e.0.min(offset);
        e.1 = e.1.max(offset);
        self.len += 1;
    }

    /// The offsets to commit: per partition, the record after the batch's last.
    fn offsets(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(self.parts.len());
        for ((t, p), (_, last)) in &self.parts {
            // Only fails for an invalid offset, which `last + 1` is not.
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(last + 1));
        }
        tpl
    }
}

/// What a transactional call's error means for the runner.
enum TxnError {
    /// Abort the transaction and read the batch again (why).
    Abort(String),
    /// Fenced or fatal: this producer cannot go on.
    Fatal(KafkaError),
}

fn classify(e: KafkaError) -> TxnError {
    match &e {
        KafkaError::Transaction(t) if t.is_fatal() => TxnError::Fatal(e),
        _ => TxnError::Abort(e.to_string()),
    }
}

fn is_retriable(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_retriable())
}

/// Runs a blocking transactional call off the async scheduler's hands.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl TxnRunner {
    pub(super) async fn run(mut self) {
        let name = self.pipeline.name().clone();
        if !self.init().await {
            return;
        }
        tracing::info!(pipeline = %name, group = %self.group, "Kafka source: exactly-once (transactions) ready");
        let mut committed = 0u64;
        let mut aborted = 0u64;
        loop {
            let first = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                m = self.consumer.recv() => m.map(|m| m.detach()),
            };
            let first = match first {
                Ok(m) => m,
                Err(e) => {
                    self.fetch_error(&e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            self.consumer
                .context()
                .revoked
                .store(false, Ordering::SeqCst);
            if let Err(e) = blocking(|| self.txn.begin()) {
                match classify(e) {
                    TxnError::Fatal(e) => return self.fatal(e),
                    TxnError::Abort(e) => {
                        tracing::warn!(pipeline = %name, error = %e, "Kafka source: cannot begin a transaction; reading again");
                        self.abort_and_rewind(&Batch::default(), first.partition_of())
                            .await;
                        continue;
                    }
                }
            }
            let mut batch = Batch::default();
            self.hand_over(&mut batch, first).await;
            let deadline = tokio::time::Instant::now() + BATCH_TIME;
            while batch.len < BATCH_MAX && !self.revoked() {
                let next = tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    m = self.consumer.recv() => m.map(|m| m.detach()),
                };
                match next {
                    Ok(m) => self.hand_over(&mut batch, m).await,
                    Err(e) => {
                        self.fetch_error(&e);
                        break;
                    }
                }
            }
            match self.finish(&mut batch).await {
                Ok(()) => committed += batch.len as u64,
                Err(TxnError::Fatal(e)) => return self.fatal(e),
                Err(TxnError::Abort(e)) => {
                    aborted += batch.len as u64;
                    tracing::warn!(pipeline = %name, records = batch.len, error = %e,
                        "Kafka source: transaction aborted; its records are read and written again");
                    self.abort_and_rewind(&batch, None).await;
                    if !self.stop.is_cancelled() {
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
        }
        tracing::info!(pipeline = %name, committed, aborted, "Kafka source (exactly-once) stopped");
        // The consumer leaves the group and closes on drop; its offsets went with the
        // transactions.
    }

    /// `init_transactions`, retried until the broker answers or `stop`; false to give up.
    async fn init(&self) -> bool {
        loop {
            match blocking(|| self.txn.init()) {
                Ok(()) => return true,
                Err(e) => {
                    if let TxnError::Fatal(e) = classify(e.clone()) {
                        self.fatal(e);
                        return false;
                    }
                    tracing::warn!(pipeline = %self.pipeline.name(), error = %e, "Kafka source: cannot initialize transactions yet; retrying");
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = tokio::time::sleep(RETRY_AFTER) => {}
            }
        }
    }

    fn revoked(&self) -> bool {
        self.consumer.context().revoked.load(Ordering::SeqCst)
    }

    fn fatal(&self, e: KafkaError) {
        tracing::error!(pipeline = %self.pipeline.name(), error = %e,
            "Kafka source: the transactional producer cannot go on (fenced by another gateway with the same transactional id, or a fatal error); this pipeline stops reading, restart kgate");
    }

    fn fetch_error(&self, e: &KafkaError) {
        tracing::warn!(pipeline = %self.pipeline.name(), error = %e, "Kafka source: fetch failed");
        self.records
            .metrics
            .consumer
            .errors
            .with_label_values(&["(fetch)"])
            .inc();
    }

    async fn hand_over(&mut self, batch: &mut Batch, m: rdkafka::message::OwnedMessage) {
        let topic = self.topics.get(m.topic());
        let (ev, rx) = record_event(&m, &topic, self.pipeline.name(), &self.group);
        self.records.get(&topic).inc();
        batch.add(&topic, m.partition(), m.offset());
        batch.fates.push(rx);
        hand_to(&self.pipeline, self.schemas.as_deref(), ev).await;
    }

    /// Waits for every fate of the batch; commits it with its offsets when Kafka holds all.
    async fn finish(&self, batch: &mut Batch) -> Result<(), TxnError> {
        let mut failed = None;
        while let Some(fate) = batch.fates.next().await {
            let fate = fate.unwrap_or_else(|_| unsettled());
            if !fate.is_persisted() && failed.is_none() {
                failed = Some(fate);
            }
        }
        if let Some(fate) = failed {
            return Err(TxnError::Abort(format!(
                "a record of the batch is not in Kafka: {fate:?}"
            )));
        }
        if self.revoked() {
            return Err(TxnError::Abort(
                "partitions were revoked during the batch".into(),
            ));
        }
        let offsets = batch.offsets();
        let Some(group) = self.consumer.group_metadata() else {
            return Err(TxnError::Abort(
                "the consumer has no group metadata yet".into(),
            ));
        };
        let mut tries = 0;
        loop {
            tries += 1;
            match blocking(|| self.txn.commit(&offsets, &group)) {
                Ok(()) => break,
                Err(e) if is_retriable(&e) && tries < COMMIT_TRIES => {
                    tracing::debug!(pipeline = %self.pipeline.name(), error = %e, "Kafka source: commit failed; trying again");
                }
                Err(e) => {
                    for (t, _) in batch.parts.keys() {
                        self.records
                            .metrics
                            .consumer
                            .errors
                            .with_label_values(&[t])
                            .inc();
                    }
                    return Err(classify(e));
                }
            }
        }
        let mut topics: Vec<&Arc<str>> = batch.parts.keys().map(|(t, _)| t).collect();
        topics.dedup();
        for t in topics {
            self.records
                .metrics
                .consumer
                .commits
                .with_label_values(&[t])
                .inc();
        }
        Ok(())
    }

    /// Aborts the open transaction and rewinds every partition this consumer still owns to its
    /// committed offset (or, without one, to the batch's first record of it), so that nothing
    /// read since the last commit is skipped.
    async fn abort_and_rewind(&self, batch: &Batch, also: Option<(Arc<str>, i32, i64)>) {
        if let Err(e) = blocking(|| self.txn.abort()) {
            if let TxnError::Fatal(e) = classify(e.clone()) {
                return self.fatal(e);
            }
            tracing::warn!(pipeline = %self.pipeline.name(), error = %e, "Kafka source: abort failed");
        }
        let mut first: BTreeMap<(Arc<str>, i32), i64> = batch
            .parts
            .iter()
            .map(|(tp, (lo, _))| (tp.clone(), *lo))
            .collect();
        if let Some((t, p, o)) = also {
            let e = first.entry((t, p)).or_insert(o);
            *e = (*e).min(o);
        }
        let assigned = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(pipeline = %self.pipeline.name(), error = %e, "Kafka source: no assignment to rewind");
                return;
            }
        };
        let committed = blocking(|| {
            self.consumer
                .committed_offsets(assigned.clone(), Duration::from_secs(10))
        });
        let committed = match committed {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(pipeline = %self.pipeline.name(), error = %e, "Kafka source: cannot read the committed offsets; rewinding to the batch");
                assigned.clone()
            }
        };
        for el in committed.elements() {
            let tp = (Arc::<str>::from(el.topic()), el.partition());
            let to = match el.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => match first.get(&tp) {
                    Some(o) => Offset::Offset(*o),
                    None if self.start == StartAt::Earliest => Offset::Beginning,
                    // Nothing of it was read in this batch: its position stands.
                    None => continue,
                },
            };
            if let Err(e) =
                self.consumer
                    .seek(el.topic(), el.partition(), to, Duration::from_secs(10))
            {
                tracing::warn!(pipeline = %self.pipeline.name(), topic = el.topic(), partition = el.partition(), error = %e,
                    "Kafka source: cannot rewind the partition; it is read from its committed offset at the next assignment");
            }
        }
    }
}

/// A record's topic, partition and offset, to rewind to when its transaction never began.
trait PartitionOf {
    fn partition_of(&self) -> Option<(Arc<str>, i32, i64)>;
}

impl PartitionOf for rdkafka::message::OwnedMessage {
    fn partition_of(&self) -> Option<(Arc<str>, i32, i64)> {
        Some((Arc::from(self.topic()), self.partition(), self.offset()))
    }
}

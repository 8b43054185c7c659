//! Sinks take what a pipeline made of an event and answer its [`Ack`](crate::event::Ack): a
//! record is delivered, or a rejection is dead-lettered, and the source learns which. Kafka is the
//! first sink ([`KafkaSink`]); [`MemorySink`] keeps records in memory so that the pipeline → sink
//! → ack path can be tested without a broker.

pub mod deliver;
mod kafka;
mod memory;
mod spool;

pub use deliver::{DeliverConfig, DeliverSink};
pub use kafka::{DlqRoute, KafkaSink, ProducerError, TransactionalId};
pub use memory::MemorySink;
pub use spool::{spooled, SpoolSink, Spooled};

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::event::{Event, Rejection};

/// A record ready for Kafka.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Target topic.
    pub topic: Arc<str>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Bytes,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Counts of what became of accepted events, for the shutdown report.
#[derive(Debug, Default)]
pub struct Totals {
    /// Events handed to the sink (records and rejections).
    pub accepted: AtomicU64,
    /// Acknowledged by Kafka.
    pub delivered: AtomicU64,
    /// Their DLQ record acknowledged by Kafka.
    pub dead_lettered: AtomicU64,
    /// Dropped on a full buffer (`on_full: drop_newest`).
    pub dropped: AtomicU64,
    /// Neither delivered nor dead-lettered.
    pub failed: AtomicU64,
    /// Taken back before Kafka had them, because their caller stopped waiting (a client that
    /// hung up, a request cancelled at shutdown); not counted in `accepted`.
    pub cancelled: AtomicU64,
}

/// Where records go. Every call settles the event's [`Ack`](crate::event::Ack) exactly once,
/// now or later (when the sink's destination acknowledged it).
pub trait Sink: Send + Sync {
    /// Takes a record made from `ev`; `partition` names one (`None`: the sink picks). Returns
    /// once the record is accepted (which may wait for buffer room: backpressure).
    fn send(&self, rec: OutRecord, partition: Option<i32>, ev: Event) -> BoxFuture<'_, ()>;
    /// Takes an event that was rejected, to keep it with its reason (the DLQ).
    fn dead_letter(&self, ev: Event, r: Rejection) -> BoxFuture<'_, ()>;
    /// Waits until everything accepted is settled or `timeout` passes; returns how many are not.
    fn drain(&self, timeout: Duration) -> BoxFuture<'_, i64>;
    /// The counts so far.
    fn totals(&self) -> &Totals;
    /// Events accepted and not settled yet.
    fn inflight(&self) -> i64;
    /// Where rejected events go (the DLQ topic), for messages that name it.
    fn dlq_topic(&self) -> &str;
    /// The Kafka transactions this sink writes in (`exactly_once` pipelines); `None` when its
    /// records are written outside transactions. Wrappers must pass it through.
    fn transactions(&self) -> Option<Arc<dyn Transactions>> {
        None
    }
}

/// Kafka transactions of a sink that writes in them: the Kafka source of an `exactly_once`
/// pipeline begins one per batch, hands the batch's events to the pipeline, waits for their
/// fates, then commits its offsets with the records (or aborts). The calls block until the
/// broker answers (up to the transaction timeout): make them from a blocking context.
pub trait Transactions: Send + Sync {
    /// Registers the transactional id with the broker, fencing an earlier producer with the same
    /// id and aborting its open transaction (a killed gateway's). Once, before `begin`.
    fn init(&self) -> Result<(), rdkafka::error::KafkaError>;
    /// Starts a transaction: records sent until `commit` or `abort` belong to it.
    fn begin(&self) -> Result<(), rdkafka::error::KafkaError>;
    /// Adds the consumer's `offsets` (the next record to read, per partition) to the transaction
    /// and commits it: the records and the offsets become visible together, or neither.
    fn commit(
        &self,
        offsets: &rdkafka::TopicPartitionList,
        group: &rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), rdkafka::error::KafkaError>;
    /// Aborts the open transaction: its records are never visible to read_committed readers.
    fn abort(&self) -> Result<(), rdkafka::error::KafkaError>;
}

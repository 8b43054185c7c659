//! The dead-letter queue as a library: reading a DLQ topic ([`read`]: its records, a summary by
//! error type and source topic, without joining a group or committing) and replaying it
//! ([`replay`]: exactly once, in its own consumer group and Kafka transactions). `kgate dlq`
//! (src/cmd/dlq.rs) and the web UI (src/ui) are two faces of this module; it prints nothing.

pub mod read;
pub mod replay;

pub use read::{
    bounds, bytes_json, read, record_json, summary_json, value_json, AvroDecoding, DlqRecord,
    Filter, Inspection, DLQ_HEADERS, REPLAYED_FROM, REPLAY_COUNT,
};
pub use replay::{
    refused_target, replay, transactional_id, Plan, Planner, ReplayCounts, ReplayRequest,
    TargetCheck, TokenBucket,
};

use rdkafka::error::KafkaError;

use crate::kafka::MetadataError;

/// Why reading or replaying a DLQ failed. The text names the brokers, the topic and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The brokers could not be reached or refused the client's settings.
    #[error(transparent)]
    Metadata(Box<MetadataError>),
    /// The DLQ topic does not exist.
    #[error("topic {topic} does not exist at {brokers}; is it the config's dlq.topic? (`kgate check --config FILE` lists the DLQ topic; nothing was dead-lettered yet if it was never created)")]
    NoTopic {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
    },
    /// A request to Kafka failed.
    #[error("{doing} at {brokers}: {source}")]
    Kafka {
        /// What was being done, e.g. `reading events.v1.dlq`.
        doing: String,
        /// The bootstrap servers.
        brokers: String,
        /// What librdkafka said.
        source: Box<KafkaError>,
    },
    /// No record arrived for a while although partitions had records left to read.
    #[error("reading {topic} at {brokers}: no record for {stall:?} while partitions {partitions} still had some to read; is the broker healthy, is the topic readable with these credentials (kafka.security){txn}?")]
    Stalled {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        brokers: String,
        /// How long nothing came.
        stall: std::time::Duration,
        /// The partitions left, comma-separated.
        partitions: String,
        /// `, and is a transaction on it left open` when reading committed records only.
        txn: &'static str,
    },
    /// The replay's target topic cannot be written.
    #[error("--to {to}: {why}")]
    Target {
        /// The target topic.
        to: String,
        /// Why not, with the fix.
        why: String,
    },
    /// The transactional producer could not start.
    #[error("starting the transactional producer at {brokers}: {why}; is the broker reachable, and may these credentials use transactional ids `kgate-dlq-replay.*` (ACL on TransactionalId) and write the target topics?")]
    Transactions {
        /// The bootstrap servers.
        brokers: String,
        /// What went wrong.
        why: String,
    },
    /// A replay batch failed and its transaction was aborted.
    #[error("{why}; nothing of this batch was committed; run the replay again to go on")]
    Batch {
        /// What went wrong.
        why: String,
    },
}

impl DlqError {
    /// A failed request: `doing` at `brokers`.
    pub(crate) fn kafka(doing: impl Into<String>, brokers: &str, source: KafkaError) -> DlqError {
        DlqError::Kafka {
            doing: doing.into(),
            brokers: brokers.into(),
            source: Box::new(source),
        }
    }
}

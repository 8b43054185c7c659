//! The one thing that travels: an [`Event`], and the [`Ack`] that tells its source what became of it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::oneshot;

pub use crate::transform::Meta;

/// Where an event came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Pipeline name.
    pub pipeline: Arc<str>,
    /// The source within it: a URL, a client address, an MQTT topic.
    pub source: Arc<str>,
    /// Wall-clock receive time (for the DLQ's `received_at`).
    pub received_at: SystemTime,
    /// Monotonic receive time (for accept → ack latency).
    pub accepted: Instant,
}

impl Origin {
    /// An origin stamped now.
    pub fn now(pipeline: Arc<str>, source: Arc<str>) -> Origin {
        Origin {
            pipeline,
            source,
            received_at: SystemTime::now(),
            accepted: Instant::now(),
        }
    }
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Kafka acknowledged it.
    Delivered {
        /// Topic written.
        topic: String,
        /// Partition written.
        partition: i32,
        /// Offset in the partition.
        offset: i64,
    },
    /// It was rejected and Kafka acknowledged its DLQ record.
    DeadLettered {
        /// Why it was rejected.
        error_type: ErrorType,
        /// The reason in words.
        message: String,
        /// Where the DLQ record landed.
        partition: i32,
        /// Its offset.
        offset: i64,
    },
    /// Dropped because the buffer was full and the pipeline drops rather than blocks.
    Dropped,
    /// Not taken: the buffer stayed full for the event's whole [`Event::max_wait`]. Nothing was
    /// written and nothing is counted as accepted; the source answers "busy, retry" (HTTP 429).
    Busy,
    /// Neither it nor a DLQ record of it could be written.
    Failed {
        /// The error.
        message: String,
    },
}

impl Fate {
    /// Whether Kafka holds the event or its DLQ record.
    pub fn is_persisted(&self) -> bool {
        matches!(self, Fate::Delivered { .. } | Fate::DeadLettered { .. })
    }
}

/// The handle a source keeps to learn an event's fate; answered exactly once.
/// Sources that need no answer (a WebSocket feed) use [`Ack::none`].
#[derive(Debug, Default)]
pub struct Ack(AckTo, Option<Arc<Unsettled>>);

/// Where a fate goes.
#[derive(Default)]
enum AckTo {
    #[default]
    Nobody,
    Channel(oneshot::Sender<Fate>),
    /// Called once: with the fate, or with `None` when the ack is dropped unanswered.
    Call(Box<dyn FnOnce(Option<Fate>) + Send + Sync>),
}

impl std::fmt::Debug for AckTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AckTo::Nobody => "Nobody",
            AckTo::Channel(_) => "Channel",
            AckTo::Call(_) => "Call",
        })
    }
}

/// How many events counted in it (see [`Ack::count_in`]) are not settled yet: answered, or let
/// go by the sink. `kgate run` keeps one per pipeline, to wait for what one pipeline handed
/// over to settle while the others keep running (a reload).
#[derive(Debug, Default)]
pub struct Unsettled {
    count: std::sync::atomic::AtomicI64,
    settled: tokio::sync::Notify,
}

impl Unsettled {
    /// Events counted and not settled yet.
    pub fn get(&self) -> i64 {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until none is left or `deadline` passes; what is left.
    pub async fn settle_by(&self, deadline: tokio::time::Instant) -> i64 {
        loop {
            let settled = self.settled.notified();
            let left = self.get();
            if left <= 0 || tokio::time::Instant::now() >= deadline {
                return left.max(0);
            }
            let _ = tokio::time::timeout_at(deadline, settled).await;
        }
    }
}

impl Ack {
    /// No one is waiting.
    pub fn none() -> Ack {
        Ack(AckTo::Nobody, None)
    }

    /// An ack and the receiver its source awaits.
    pub fn channel() -> (Ack, oneshot::Receiver<Fate>) {
        let (tx, rx) = oneshot::channel();
        (Ack(AckTo::Channel(tx), None), rx)
    }

    /// An ack that calls `f` where the fate is settled (a sink's delivery callback: keep it
    /// short, never block): with the fate, or with `None` when the ack is dropped unanswered
    /// (the runtime going away). For a wrapping sink that would otherwise spawn a task per
    /// record to await a [`Ack::channel`].
    pub fn call(f: impl FnOnce(Option<Fate>) + Send + Sync + 'static) -> Ack {
        Ack(AckTo::Call(Box::new(f)), None)
    }

    /// Counts this event in `c` until its fate is reported or the ack is dropped (a sink lets
    /// an event's ack go once it has settled it). Costs no allocation; whether someone waits
    /// is unchanged.
    pub fn count_in(&mut self, c: &Arc<Unsettled>) {
        if self.1.is_none() {
            c.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.1 = Some(c.clone());
        }
    }

    fn release(&mut self) {
        if let Some(c) = self.1.take() {
            c.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            c.settled.notify_waiters();
        }
    }

    /// Whether someone waits for the fate (so that it is worth building).
    pub fn is_waiting(&self) -> bool {
        match &self.0 {
            AckTo::Nobody => false,
            AckTo::Channel(tx) => !tx.is_closed(),
            AckTo::Call(_) => true,
        }
    }

    /// Reports the fate; later calls do nothing.
    pub fn resolve(&mut self, fate: Fate) {
        match std::mem::take(&mut self.0) {
            AckTo::Nobody => {}
            AckTo::Channel(tx) => {
                let _ = tx.send(fate);
            }
            AckTo::Call(f) => f(Some(fate)),
        }
        self.release();
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let AckTo::Call(f) = std::mem::take(&mut self.0) {
            f(None);
        }
        self.release();
    }
}

/// An event on its way from a source to Kafka.
#[derive(Debug)]
pub struct Event {
    /// The bytes as received.
    pub raw: Bytes,
    /// Headers that came with the input (MQTT properties, HTTP headers); kept in the DLQ too.
    pub headers: Vec<(String, Vec<u8>)>,
    /// What to parse when it differs from `raw`: a Confluent-framed Avro record the Kafka source
    /// decoded to JSON text. The DLQ keeps `raw`, the bytes as received.
    pub decoded: Option<Bytes>,
    /// Where and when it came from.
    pub origin: Origin,
    /// Who waits for its fate.
    pub ack: Ack,
    /// Values the source attaches for templates (`${@name}`).
    pub meta: Meta,
    /// How long the sink may wait for buffer room before answering [`Fate::Busy`]; `None`
    /// follows `kafka.producer.on_full` (block or drop).
    pub max_wait: Option<Duration>,
    /// Its QoS class (a pipeline's `qos:`); `None` follows `kafka.producer.on_full`.
    pub qos: Option<QosClass>,
}

impl Event {
    /// An event from raw bytes, received now.
    pub fn new(raw: Bytes, origin: Origin) -> Event {
        Event {
            raw,
            headers: Vec::new(),
            decoded: None,
            origin,
            ack: Ack::none(),
            meta: Meta::empty(),
            max_wait: None,
            qos: None,
        }
    }

    /// The same, with a waiting [`Ack`]; returns the receiver of its fate.
    pub fn with_ack(raw: Bytes, origin: Origin) -> (Event, oneshot::Receiver<Fate>) {
        let (ack, rx) = Ack::channel();
        let mut ev = Event::new(raw, origin);
        ev.ack = ack;
        (ev, rx)
    }
}

/// An event's quality of service (WRP's `qos` levels 0–99 in three classes): what the sink does
/// when the producer buffer is full, and whether its source waits for Kafka's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    /// 0–24: fire and forget; dropped (answered [`Fate::Dropped`], counted) when the buffer is
    /// full, never waits for room.
    Low,
    /// 25–74: waits for buffer room (backpressure), librdkafka retries it.
    Medium,
    /// 75–99: as `Medium`, and the pipeline returns only once Kafka acknowledged it, so the
    /// source takes its device's next input only then.
    High,
}

impl QosClass {
    /// Every class, lowest first.
    pub const ALL: [QosClass; 3] = [QosClass::Low, QosClass::Medium, QosClass::High];

    /// The class of a WRP `qos` level: 0–24 low, 25–74 medium, 75–99 high (below 0 counts as
    /// 0, above 99 as 99, as xmidt's wrp-go does).
    pub fn of_level(level: i64) -> QosClass {
        match level {
            ..=24 => QosClass::Low,
            25..=74 => QosClass::Medium,
            _ => QosClass::High,
        }
    }

    /// A class name (`low`, `medium`, `high`) or a level (`0`–`99`, clamped as
    /// [`QosClass::of_level`]); `None` for anything else.
    pub fn parse(text: &str) -> Option<QosClass> {
        let t = text.trim();
        match t {
            "low" => Some(QosClass::Low),
            "medium" => Some(QosClass::Medium),
            "high" => Some(QosClass::High),
            _ => t.parse::<i64>().ok().map(QosClass::of_level),
        }
    }

    /// Its name: the metric label and the config text.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Low => "low",
            QosClass::Medium => "medium",
            QosClass::High => "high",
        }
    }
}

impl std::fmt::Display for QosClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an event was rejected: it goes to the DLQ with these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why: the DLQ's `error_type` header.
    pub error_type: ErrorType,
    /// What was wrong.
    pub message: String,
    /// The topic it was meant for, when known (else the topic template).
    pub source_topic: String,
}

/// The kinds of rejection: each is the DLQ's `error_type` header and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// The input is not JSON (or not what the route expects).
    InvalidJson,
    /// A transform could not apply (e.g. a required `rename.from` is missing).
    TransformFailed,
    /// A field the topic, key or a header reads is missing or not a scalar.
    MissingField,
    /// The rendered topic is not a legal topic name.
    InvalidTopic,
    /// The rendered topic is outside the pipeline's `topics_allowed` (or the HTTP token's
    /// `topics`), or is a reserved topic (the DLQ, `_schemas`, `__*`, `connect-*`) not listed by
    /// name.
    TopicNotAllowed,
    /// The record does not fit its Avro schema.
    SchemaMismatch,
    /// The registry could not give the schema of the record's subject.
    SchemaUnavailable,
    /// The value could not be encoded otherwise.
    EncodeFailed,
    /// Kafka refused the record (unknown topic, not authorized, ...).
    ProduceFailed,
    /// The record is larger than Kafka takes (the producer's `message.max.bytes`, or the topic's
    /// `max.message.bytes` at the broker): its DLQ record keeps its first bytes, with its size
    /// and sha256 in headers.
    TooLarge,
    /// A device frame is not a valid WRP message.
    InvalidWrp,
    /// The record does not satisfy the pipeline's `validate:` rules (JSON Schema or Avro); the
    /// message names the JSON path and the rule.
    ValidationFailed,
    /// A consumer sink (webhook, command, file) did not take the record after its retries.
    SinkFailed,
    /// An `http_poll` request failed (a non-2xx answer, a body that is not JSON or has no
    /// `split` array) and `raw_on_error` keeps its body: the message names the URL (redacted)
    /// and the status.
    HttpError,
}

impl ErrorType {
    /// Every kind, in declaration order (for `kgate dlq inspect --error-type` and help texts).
    pub const ALL: [ErrorType; 14] = [
        ErrorType::InvalidJson,
        ErrorType::TransformFailed,
        ErrorType::MissingField,
        ErrorType::InvalidTopic,
        ErrorType::TopicNotAllowed,
        ErrorType::SchemaMismatch,
        ErrorType::SchemaUnavailable,
        ErrorType::EncodeFailed,
        ErrorType::ProduceFailed,
        ErrorType::TooLarge,
        ErrorType::InvalidWrp,
        ErrorType::ValidationFailed,
        ErrorType::SinkFailed,
        ErrorType::HttpError,
    ];

    /// The DLQ header text and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidJson => "invalid_json",
            ErrorType::TransformFailed => "transform_failed",
            ErrorType::MissingField => "missing_field",
            ErrorType::InvalidTopic => "invalid_topic",
            ErrorType::TopicNotAllowed => "topic_not_allowed",
            ErrorType::SchemaMismatch => "schema_mismatch",
            ErrorType::SchemaUnavailable => "schema_unavailable",
            ErrorType::EncodeFailed => "encode_failed",
            ErrorType::ProduceFailed => "produce_failed",
            ErrorType::TooLarge => "too_large",
            ErrorType::InvalidWrp => "invalid_wrp",
            ErrorType::ValidationFailed => "validation_failed",
            ErrorType::SinkFailed => "sink_failed",
            ErrorType::HttpError => "http_error",
        }
    }

    /// Whether it is an encoding failure (counted in `kafka_producer_encode_errors_total`).
    pub fn is_encoding(self) -> bool {
        matches!(
            self,
            ErrorType::SchemaMismatch | ErrorType::SchemaUnavailable | ErrorType::EncodeFailed
        )
    }
}

impl std::fmt::Display for ErrorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Compares with the header text (`error_type == "invalid_json"`), as a DLQ reader would.
impl PartialEq<&str> for ErrorType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_call_ack_is_called_once_with_the_fate_or_with_none_when_dropped() {
        let seen: Arc<Mutex<Vec<Option<Fate>>>> = Arc::default();
        let s = seen.clone();
        let mut a = Ack::call(move |f| s.lock().unwrap().push(f));
        assert!(a.is_waiting());
        a.resolve(Fate::Dropped);
        a.resolve(Fate::Busy);
        assert!(!a.is_waiting());
        drop(a);
        let s = seen.clone();
        drop(Ack::call(move |f| s.lock().unwrap().push(f)));
        assert_eq!(*seen.lock().unwrap(), vec![Some(Fate::Dropped), None]);
    }
}

//! The Kafka sink: one threaded producer whose delivery callback carries each record's ack,
//! metrics and original bytes, so that every accepted event ends delivered, dead-lettered,
//! dropped (when configured) or reported failed, and nothing in between is forgotten.
//!
//! A record Kafka refuses as too large (here, over `message.max.bytes`, or at the broker) goes
//! to the DLQ cut to its first bytes with its size and sha256 (`too_large`), so that the DLQ
//! write fits and the source learns `DeadLettered`. A send whose caller stops waiting while the
//! buffer is full gives its in-flight slot back ([`Admission`]).
//!
//! One producer serves every pipeline; a pipeline with its own DLQ topic (`dlq: {topic: …}`)
//! sends through a [`DlqRoute`] ([`KafkaSink::with_dlq`]), a handle whose DLQ topic rides in
//! each record's in-flight state, so that the delivery callback dead-letters a refused record
//! to its pipeline's DLQ.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify};

use futures_util::future::BoxFuture;

use super::{OutRecord, Sink, Totals, Transactions};
use crate::event::{Ack, ErrorType, Event, Fate, Meta, Origin, QosClass, Rejection};
use crate::kafka::{KafkaConfig, OnFull};
use crate::metrics::{Metrics, TopicMetrics};

/// What a DLQ record is made of: the input as received and why it is there.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    raw: Bytes,
    key: Option<Vec<u8>>,
    input_headers: Vec<(String, Vec<u8>)>,
    error_type: ErrorType,
    message: String,
    source_topic: String,
    /// Keep only the first bytes of `raw` and a bounded key and headers, with the size and
    /// sha256 of `raw`: for records too large for Kafka, and for a DLQ record that was.
    truncate: bool,
    /// Where the input was read, when it came from a Kafka topic.
    consumed: Option<Box<Consumed>>,
}

/// Where a record the Kafka source read came from (its event's `kafka.*` source values): the
/// consumer side of a DLQ record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Consumed {
    topic: String,
    partition: String,
    offset: String,
    group: String,
    /// How many times it was tried (`attempts` a sink set, else 1).
    attempts: String,
    /// The input record's key.
    key: Option<Vec<u8>>,
}

impl Consumed {
    /// Read from an event's source values; `None` unless the Kafka source made it.
    fn from_meta(meta: &Meta) -> Option<Box<Consumed>> {
        let topic = meta.get("kafka.topic")?;
        let get = |k: &str| meta.get(k).unwrap_or_default().to_string();
        Some(Box::new(Consumed {
            topic: topic.to_string(),
            partition: get("kafka.partition"),
            offset: get("kafka.offset"),
            group: get("kafka.group"),
            attempts: meta.get("attempts").unwrap_or("1").to_string(),
            key: meta.get("kafka.key").map(|k| k.as_bytes().to_vec()),
        }))
    }
}

impl DeadLetter {
    /// A letter for input from `consumed` (when read from Kafka: then its key is the input's
    /// and its `source_topic` the topic it was read from) or from elsewhere (`key`,
    /// `source_topic` as given).
    #[allow(clippy::too_many_arguments)]
    fn new(
        raw: Bytes,
        key: Option<Vec<u8>>,
        input_headers: Vec<(String, Vec<u8>)>,
        error_type: ErrorType,
        message: String,
        source_topic: String,
        consumed: Option<Box<Consumed>>,
    ) -> DeadLetter {
        let (key, source_topic) = match &consumed {
            Some(c) => (c.key.clone(), c.topic.clone()),
            None => (key, source_topic),
        };
        DeadLetter {
            raw,
            key,
            input_headers,
            truncate: error_type == ErrorType::TooLarge,
            error_type,
            message,
            source_topic,
            consumed,
        }
    }
}

/// An event on its way to the DLQ.
#[derive(Debug)]
struct DlqJob {
    letter: DeadLetter,
    origin: Origin,
    slot: Admission,
    /// The DLQ topic (the pipeline's own, or the sink's).
    dlq_topic: Arc<str>,
}

pub(crate) enum Kind {
    Data {
        topic: Arc<TopicMetrics>,
        raw: Bytes,
        input_headers: Vec<(String, Vec<u8>)>,
        /// The event's source values (moved, not copied): where a refused record was read.
        meta: Meta,
    },
    Dlq(DeadLetter),
}

/// What rides with a record through librdkafka and comes back in the delivery callback.
pub(crate) struct Inflight {
    kind: Kind,
    origin: Origin,
    slot: Admission,
    /// Where the record goes if Kafka refuses it (data), or where it went (DLQ).
    dlq_topic: Arc<str>,
}

struct Shared {
    metrics: Arc<Metrics>,
    /// The root `dlq:` topic, for pipelines without their own.
    dlq_topic: Arc<str>,
    totals: Totals,
    inflight: AtomicI64,
    /// Set while `drain` waits, so that deliveries only wake it when someone listens.
    draining: AtomicBool,
    settled: Notify,
    dlq_tx: mpsc::UnboundedSender<DlqJob>,
}

impl Shared {
    fn settle_one(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        self.metrics.inflight.dec();
        if self.draining.load(Ordering::Relaxed) {
            self.settled.notify_waiters();
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dlq_topic", &self.dlq_topic)
            .finish_non_exhaustive()
    }
}

/// An accepted event's place in the in-flight count, with its ack. It is settled exactly once:
/// by [`Admission::settle`], or by `Drop` when whoever holds it lets it go first — a send whose
/// caller stopped waiting (an HTTP client that hung up, a request cancelled at shutdown) drops
/// its record in the middle of waiting for buffer room, and the count must not stay up.
#[derive(Debug)]
pub(crate) struct Admission {
    shared: Arc<Shared>,
    ack: Ack,
    /// librdkafka had the record (it came back in a delivery report): dropping it unsettled
    /// is then a failure, not a send taken back.
    taken: bool,
    settled: bool,
}

impl Admission {
    /// Counts an event accepted and in flight.
    fn admit(shared: &Arc<Shared>, ack: Ack) -> Admission {
        shared.inflight.fetch_add(1, Ordering::AcqRel);
        shared.metrics.inflight.inc();
        shared.totals.accepted.fetch_add(1, Ordering::Relaxed);
        Admission {
            shared: shared.clone(),
            ack,
            taken: false,
            settled: false,
        }
    }

    /// Answers the ack (building the fate only when someone waits) and leaves the count.
    fn settle_with(mut self, fate: impl FnOnce() -> Fate) {
        if self.ack.is_waiting() {
            self.ack.resolve(fate());
        }
        self.settled = true;
        self.shared.settle_one();
    }

    fn settle(self, fate: Fate) {
        self.settle_with(|| fate)
    }

    /// Not taken after all (the buffer stayed full for the event's `max_wait`): un-accepts it.
    fn refuse(self) {
        self.shared.totals.accepted.fetch_sub(1, Ordering::Relaxed);
        self.settle(Fate::Busy);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let totals = &self.shared.totals;
        if self.taken {
            // A DLQ job abandoned (the runtime is going away): Kafka has neither copy.
            totals.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("a record refused by Kafka was abandoned before its DLQ write");
            self.ack.resolve(Fate::Failed {
                message: "abandoned before its DLQ write".into(),
            });
        } else {
            // The caller stopped waiting before librdkafka took it: nothing was written, so
            // it was not accepted after all, and whoever still waits may retry (Busy).
            totals.accepted.fetch_sub(1, Ordering::Relaxed);
            totals.cancelled.fetch_add(1, Ordering::Relaxed);
            self.ack.resolve(Fate::Busy);
        }
        self.shared.settle_one();
    }
}

/// Whether librdkafka or the broker refused a record (or its batch) as too large.
fn is_too_large(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}

/// The size of a record as librdkafka counts it against `message.max.bytes`, near enough:
/// value, key, and header names and values.
fn record_size(value: usize, key: usize, headers: impl Iterator<Item = usize>) -> usize {
    value + key + headers.sum::<usize>()
}

/// The producer context: turns delivery reports into acks, metrics and DLQ jobs.
pub(crate) struct SinkContext {
    shared: Arc<Shared>,
    errors: crate::kafka::ErrorLog,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.errors.log(level, fac, message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(error, reason)
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Inflight>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Box<Inflight>) {
        let Inflight {
            kind,
            origin,
            mut slot,
            dlq_topic,
        } = *opaque;
        slot.taken = true;
        let s = &self.shared;
        match (kind, result) {
            (Kind::Data { topic, .. }, Ok(msg)) => {
                topic.published.inc();
                topic
                    .duration
                    .observe(origin.accepted.elapsed().as_secs_f64());
                s.totals.delivered.fetch_add(1, Ordering::Relaxed);
                slot.settle_with(|| Fate::Delivered {
                    topic: msg.topic().to_string(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                });
            }
            (
                Kind::Data {
                    topic,
                    raw,
                    input_headers,
                    meta,
                },
                Err((err, msg)),
            ) => {
                topic.failures.inc();
                topic.delivery_errors.inc();
                let source_topic = msg.topic().to_string();
                let (error_type, message) = if is_too_large(err) {
                    let size = record_size(
                        msg.payload_len(),
                        msg.key_len(),
                        msg.headers().into_iter().flat_map(|h| {
                            h.iter()
                                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                        }),
                    );
                    tracing::warn!(topic = %source_topic, size, error = %err, "Kafka refused a record as too large; sending its first bytes to the DLQ");
                    (
                        ErrorType::TooLarge,
                        format!("{err}: the broker refused this record of {size} bytes (value, key and headers), or its batch, as larger than topic `{source_topic}` takes (its max.message.bytes)"),
                    )
                } else {
                    tracing::warn!(topic = %source_topic, error = %err, "Kafka refused a record; sending it to the DLQ");
                    (ErrorType::ProduceFailed, err.to_string())
                };
                let key = msg.key().map(|k| k.to_vec());
                // Stays in flight: the DLQ job settles it.
                let job = DlqJob {
                    letter: DeadLetter::new(
                        raw,
                        key,
                        input_headers,
                        error_type,
                        message,
                        source_topic,
                        Consumed::from_meta(&meta),
                    ),
                    origin,
                    slot,
                    dlq_topic,
                };
                if let Err(mpsc::error::SendError(job)) = s.dlq_tx.send(job) {
                    tracing::error!(
                        "DLQ writer stopped; a refused record could not be dead-lettered"
                    );
                    s.totals.failed.fetch_add(1, Ordering::Relaxed);
                    let message = job.letter.message;
                    job.slot.settle(Fate::Failed { message });
                }
            }
            (Kind::Dlq(letter), Ok(msg)) => {
                s.metrics
                    .dlq_published
                    .with_label_values(&[
                        &*dlq_topic,
                        letter.source_topic.as_str(),
                        letter.error_type.as_str(),
                    ])
                    .inc();
                s.totals.dead_lettered.fetch_add(1, Ordering::Relaxed);
                slot.settle(Fate::DeadLettered {
                    error_type: letter.error_type,
                    message: letter.message,
                    partition: msg.partition(),
                    offset: msg.offset(),
                });
            }
            (Kind::Dlq(mut letter), Err((err, _))) if is_too_large(err) && !letter.truncate => {
                // The DLQ topic takes less than the whole input: keep its first bytes.
                tracing::warn!(%dlq_topic, error_type = %letter.error_type, size = letter.raw.len(), error = %err,
                    "the DLQ refused a record as too large; writing its first bytes instead");
                letter.truncate = true;
                let job = DlqJob {
                    letter,
                    origin,
                    slot,
                    dlq_topic,
                };
                if let Err(mpsc::error::SendError(job)) = s.dlq_tx.send(job) {
                    tracing::error!("DLQ writer stopped; a DLQ record could not be written");
                    s.totals.failed.fetch_add(1, Ordering::Relaxed);
                    let l = job.letter;
                    job.slot.settle(Fate::Failed {
                        message: format!(
                            "{}: {}; DLQ write failed: {err}",
                            l.error_type, l.message
                        ),
                    });
                }
            }
            (Kind::Dlq(letter), Err((err, _))) => {
                s.metrics
                    .dlq_failures
                    .with_label_values(&[&*dlq_topic])
                    .inc();
                s.totals.failed.fetch_add(1, Ordering::Relaxed);
                let DeadLetter {
                    error_type,
                    message,
                    source_topic,
                    ..
                } = letter;
                tracing::error!(%dlq_topic, %source_topic, %error_type, reason = %message, error = %err,
                    "the DLQ refused a record: it is lost; check that the DLQ topic exists and accepts writes");
                slot.settle(Fate::Failed {
                    message: format!("{error_type}: {message}; DLQ write failed: {err}"),
                });
            }
        }
    }
}

/// Sends records to Kafka and rejected input to the DLQ; see the module docs.
pub struct KafkaSink {
    producer: Arc<ThreadedProducer<SinkContext>>,
    /// Its transactions, when it writes in them (`exactly_once`).
    txn: Option<Arc<KafkaTransactions>>,
    shared: Arc<Shared>,
    on_full: OnFull,
    /// The producer's `message.max.bytes`: what the DLQ copy of a record too large for Kafka
    /// is cut to fit in.
    max_record: u64,
}

/// The producer could not be created (librdkafka refused a setting).
#[derive(Debug, thiserror::Error)]
#[error("cannot create the Kafka producer: {0}; check kafka.producer.options")]
pub struct ProducerError(#[source] KafkaError);

/// How long to wait before retrying a send into a full buffer.
const FULL_RETRY: Duration = Duration::from_millis(2);

/// How much of a record too large for Kafka its DLQ record keeps (at most a quarter of
/// `message.max.bytes`).
pub const TOO_LARGE_PREFIX: usize = 64 * 1024;

/// What a truncated DLQ record keeps of the key and input headers together (at most an eighth
/// of `message.max.bytes`); the rest is left out and counted in headers.
const TRUNCATED_EXTRAS: usize = 16 * 1024;

/// The most of `error_message` a truncated DLQ record keeps.
const TRUNCATED_MESSAGE: usize = 4 * 1024;

/// The value, key and headers of a DLQ record; see the README's "The DLQ record".
fn dlq_record(
    letter: &DeadLetter,
    origin: &Origin,
    max_record: u64,
) -> (Bytes, Option<Vec<u8>>, OwnedHeaders) {
    let received_at = humantime::format_rfc3339_millis(origin.received_at).to_string();
    let failed_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let source = format!("{}:{}", origin.pipeline, origin.source);
    let mut value = letter.raw.clone();
    let mut key = letter.key.clone();
    let mut input: Vec<&(String, Vec<u8>)> = letter.input_headers.iter().collect();
    let mut message = letter.message.as_str();
    let mut extra: Vec<(&str, String)> = Vec::new();
    if letter.truncate {
        let limit = usize::try_from(max_record).unwrap_or(usize::MAX);
        value = value.slice(..value.len().min(TOO_LARGE_PREFIX.min(limit / 4)));
        let mut room = TRUNCATED_EXTRAS.min(limit / 8);
        if let Some(k) = key.take_if(|k| k.len() > room) {
            extra.push(("dropped_key_size", k.len().to_string()));
        }
        room -= key.as_ref().map_or(0, Vec::len);
        let before = input.len();
        input.retain(|(k, v)| {
            let fits = k.len() + v.len() <= room;
            if fits {
                room -= k.len() + v.len();
            }
            fits
        });
        if input.len() < before {
            extra.push(("dropped_headers", (before - input.len()).to_string()));
        }
        if message.len() > TRUNCATED_MESSAGE {
            let mut end = TRUNCATED_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message = &message[..end];
        }
        let digest = Sha256::digest(&letter.raw);
        let hex = digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        extra.push(("original_size", letter.raw.len().to_string()));
        extra.push(("original_sha256", hex));
    }
    if let Some(c) = &letter.consumed {
        extra.push(("source_partition", c.partition.clone()));
        extra.push(("source_offset", c.offset.clone()));
        extra.push(("consumer_group", c.group.clone()));
        extra.push(("attempts", c.attempts.clone()));
    }
    let mut headers = OwnedHeaders::new_with_capacity(input.len() + 7 + extra.len());
    for (k, v) in input {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    for (k, v) in [
        ("source", source.as_str()),
        ("pipeline", &*origin.pipeline),
        ("source_topic", letter.source_topic.as_str()),
        ("error_type", letter.error_type.as_str()),
        ("error_message", message),
        ("received_at", received_at.as_str()),
        ("failed_at", failed_at.as_str()),
    ]
    .into_iter()
    .chain(extra.iter().map(|(k, v)| (*k, v.as_str())))
    {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    (value, key, headers)
}

impl KafkaSink {
    /// Creates the producer (no broker needed yet) and starts the DLQ writer.
    pub fn new(
        k: &KafkaConfig,
        dlq_topic: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<KafkaSink>, ProducerError> {
        KafkaSink::with_transactions(k, dlq_topic, metrics, None)
    }

    /// [`KafkaSink::new`], writing in Kafka transactions with this id when there is one (see
    /// [`Sink::transactions`]).
    pub fn with_transactions(
        k: &KafkaConfig,
        dlq_topic: &str,
        metrics: Arc<Metrics>,
        txn: Option<&TransactionalId>,
    ) -> Result<Arc<KafkaSink>, ProducerError> {
        let (dlq_tx, dlq_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            metrics,
            dlq_topic: Arc::from(dlq_topic),
            totals: Totals::default(),
            inflight: AtomicI64::new(0),
            draining: AtomicBool::new(false),
            settled: Notify::new(),
            dlq_tx,
        });
        let mut config = crate::kafka::producer_client_config(k);
        if let Some(t) = txn {
            t.configure(&mut config);
        }
        let max_record = config
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1_000_000);
        let producer: ThreadedProducer<SinkContext> = config
            .create_with_context(SinkContext {
                shared: shared.clone(),
                errors: crate::kafka::ErrorLog::new(k),
            })
            .map_err(ProducerError)?;
        let producer = Arc::new(producer);
        let sink = Arc::new(KafkaSink {
            txn: txn.map(|t| {
                Arc::new(KafkaTransactions {
                    producer: producer.clone(),
                    timeout: t.timeout,
                })
            }),
            producer,
            shared,
            on_full: k.producer.on_full,
            max_record,
        });
        // Weak: the writer must not keep its sink (and its producer) alive once everyone else
        // let it go (a producer swapped out by a reload); it ends when `dlq_tx` does.
        let s = Arc::downgrade(&sink);
        tokio::spawn(KafkaSink::dlq_writer(s, dlq_rx));
        Ok(sink)
    }

    /// A handle on this sink for a pipeline with its own DLQ topic: the same producer, counts
    /// and drain; its rejections, and its records Kafka refuses, go to `dlq_topic`.
    pub fn with_dlq(self: &Arc<Self>, dlq_topic: &str) -> Arc<DlqRoute> {
        Arc::new(DlqRoute {
            sink: self.clone(),
            dlq_topic: Arc::from(dlq_topic),
        })
    }

    async fn dlq_writer(sink: std::sync::Weak<Self>, mut rx: mpsc::UnboundedReceiver<DlqJob>) {
        while let Some(job) = rx.recv().await {
            let Some(s) = sink.upgrade() else { return };
            s.produce_dlq(job).await;
        }
    }

    /// Hands a record to the producer, to `partition` when one is named. With `on_full: block`
    /// it waits for room (backpressure); with `drop_newest` it drops the record, counts it and
    /// acks it as dropped; with an event's `max_wait` it answers Busy after that long. An
    /// event's QoS class overrides `on_full`: `low` drops, `medium`/`high` wait. If the
    /// caller stops waiting first, the record is taken back: not accepted, acked Busy. Kafka
    /// refusing it sends it to `dlq_topic` (the sink's own DLQ topic through [`Sink::send`]; a
    /// pipeline's own through this, without a [`DlqRoute`] per record).
    pub async fn send_to(
        &self,
        rec: OutRecord,
        partition: Option<i32>,
        ev: Event,
        dlq_topic: &Arc<str>,
    ) {
        let Event {
            raw,
            headers: input_headers,
            origin,
            ack,
            max_wait,
            meta,
            qos,
            ..
        } = ev;
        let give_up = max_wait.map(|w| Instant::now() + w);
        let topic_metrics = self.shared.metrics.topic(&rec.topic);
        // A QoS class decides over `on_full`: `low` drops at once (whatever its `max_wait`),
        // `medium` and `high` wait for room.
        let drops_when_full = match qos {
            Some(class) => class == QosClass::Low,
            None => give_up.is_none() && self.on_full == OnFull::DropNewest,
        };
        let qos_dropped = qos.map(|class| {
            let m = &self.shared.metrics;
            let l = [&*origin.pipeline, class.as_str()];
            m.qos_events.with_label_values(&l).inc();
            m.qos_dropped.with_label_values(&l)
        });
        // No header list at all when there are none: librdkafka allocates one otherwise.
        let headers = (!rec.headers.is_empty()).then(|| {
            rec.headers.iter().fold(
                OwnedHeaders::new_with_capacity(rec.headers.len()),
                |h, (k, v)| {
                    h.insert(Header {
                        key: k,
                        value: Some(v),
                    })
                },
            )
        });
        let opaque = Box::new(Inflight {
            kind: Kind::Data {
                topic: topic_metrics.clone(),
                raw,
                input_headers,
                meta,
            },
            origin,
            slot: Admission::admit(&self.shared, ack),
            dlq_topic: dlq_topic.clone(),
        });
        let mut record = BaseRecord::with_opaque_to(&rec.topic, opaque).payload(&rec.value[..]);
        if let Some(k) = &rec.key {
            record = record.key(&k[..]);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    topic_metrics.requests.inc();
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if !drops_when_full && give_up.is_some_and(|t| Instant::now() >= t) {
                        // The source would rather answer "busy" than wait: un-accept it.
                        back.delivery_opaque.slot.refuse();
                        return;
                    }
                    if drops_when_full {
                        topic_metrics.drops.inc();
                        if let Some(c) = &qos_dropped {
                            c.inc();
                        }
                        self.shared.totals.dropped.fetch_add(1, Ordering::Relaxed);
                        back.delivery_opaque.slot.settle(Fate::Dropped);
                        return;
                    }
                    record = back;
                    // Dropped here when the caller stops waiting: the slot is given back.
                    tokio::time::sleep(FULL_RETRY).await;
                }
                Err((err, back)) => {
                    topic_metrics.requests.inc();
                    topic_metrics.failures.inc();
                    let op = *back.delivery_opaque;
                    let Kind::Data {
                        raw,
                        input_headers,
                        meta,
                        ..
                    } = op.kind
                    else {
                        unreachable!("data records carry Kind::Data")
                    };
                    let (error_type, message) = if is_too_large(&err) {
                        let size = record_size(
                            rec.value.len(),
                            rec.key.as_ref().map_or(0, Vec::len),
                            rec.headers.iter().map(|(k, v)| k.len() + v.len()),
                        );
                        tracing::warn!(topic = %rec.topic, size, limit = self.max_record, "a record is too large for Kafka; sending its first bytes to the DLQ");
                        (
                            ErrorType::TooLarge,
                            format!("{err}: the record is {size} bytes (value, key and headers), more than the producer takes (message.max.bytes {})", self.max_record),
                        )
                    } else {
                        tracing::warn!(topic = %rec.topic, error = %err, "Kafka refused a record; sending it to the DLQ");
                        (ErrorType::ProduceFailed, err.to_string())
                    };
                    self.produce_dlq(DlqJob {
                        letter: DeadLetter::new(
                            raw,
                            rec.key.clone(),
                            input_headers,
                            error_type,
                            message,
                            rec.topic.to_string(),
                            Consumed::from_meta(&meta),
                        ),
                        origin: op.origin,
                        slot: op.slot,
                        dlq_topic: op.dlq_topic,
                    })
                    .await;
                    return;
                }
            }
        }
    }

    /// Sends rejected input to `dlq_topic` with its original bytes and headers.
    pub async fn reject(&self, ev: Event, r: Rejection, dlq_topic: &Arc<str>) {
        self.shared
            .metrics
            .events_rejected
            .with_label_values(&[&ev.origin.pipeline, r.error_type.as_str()])
            .inc();
        if let Some(class) = ev.qos {
            self.shared
                .metrics
                .qos_events
                .with_label_values(&[&ev.origin.pipeline, class.as_str()])
                .inc();
        }
        if r.error_type.is_encoding() {
            self.shared
                .metrics
                .encode_errors
                .with_label_values(&[&r.source_topic, r.error_type.as_str()])
                .inc();
        }
        let slot = Admission::admit(&self.shared, ev.ack);
        let mut letter = DeadLetter::new(
            ev.raw,
            None,
            ev.headers,
            r.error_type,
            r.message,
            r.source_topic,
            Consumed::from_meta(&ev.meta),
        );
        // Rejected input is kept whole, whatever its reason.
        letter.truncate = false;
        self.produce_dlq(DlqJob {
            letter,
            origin: ev.origin,
            slot,
            dlq_topic: dlq_topic.clone(),
        })
        .await;
    }

    /// Produces a DLQ record for an event already counted in flight; always waits for room.
    /// One the producer refuses as too large is written again, cut to its first bytes.
    async fn produce_dlq(&self, mut job: DlqJob) {
        loop {
            let Some((err, back)) = self.send_dlq(job).await else {
                return;
            };
            if is_too_large(&err) && !back.letter.truncate {
                tracing::warn!(dlq_topic = %back.dlq_topic, error_type = %back.letter.error_type, size = back.letter.raw.len(), limit = self.max_record,
                    "a DLQ record is too large for Kafka; writing its first bytes instead");
                job = back;
                job.letter.truncate = true;
                continue;
            }
            let dlq_topic = &*back.dlq_topic;
            self.shared
                .metrics
                .dlq_failures
                .with_label_values(&[dlq_topic])
                .inc();
            self.shared.totals.failed.fetch_add(1, Ordering::Relaxed);
            let DeadLetter {
                error_type,
                message,
                ..
            } = back.letter;
            tracing::error!(%dlq_topic, error = %err, %error_type, "cannot write to the DLQ: the record is lost");
            back.slot.settle(Fate::Failed {
                message: format!("{error_type}: {message}; DLQ write failed: {err}"),
            });
            return;
        }
    }

    /// Hands one DLQ record to the producer, waiting for room; gives the job back with the
    /// error when the producer refuses it.
    async fn send_dlq(&self, job: DlqJob) -> Option<(KafkaError, DlqJob)> {
        let DlqJob {
            letter,
            origin,
            slot,
            dlq_topic,
        } = job;
        let (value, key, headers) = dlq_record(&letter, &origin, self.max_record);
        let opaque = Box::new(Inflight {
            kind: Kind::Dlq(letter),
            origin,
            slot,
            dlq_topic: dlq_topic.clone(),
        });
        let mut record = BaseRecord::with_opaque_to(&dlq_topic, opaque)
            .payload(&value[..])
            .headers(headers);
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return None,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    // Dropped here when the caller stops waiting: the slot is given back.
                    tokio::time::sleep(FULL_RETRY).await;
                }
                Err((err, back)) => {
                    let Inflight {
                        kind,
                        origin,
                        slot,
                        dlq_topic,
                    } = *back.delivery_opaque;
                    let Kind::Dlq(letter) = kind else {
                        unreachable!("DLQ records carry Kind::Dlq")
                    };
                    return Some((
                        err,
                        DlqJob {
                            letter,
                            origin,
                            slot,
                            dlq_topic,
                        },
                    ));
                }
            }
        }
    }

    /// Waits until every accepted record is settled or `timeout` passes; returns what is left.
    async fn drain_within(&self, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        self.shared.draining.store(true, Ordering::Relaxed);
        loop {
            let notified = self.shared.settled.notified();
            let left = self.inflight();
            if left <= 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let _ =
                tokio::time::timeout((deadline - now).min(Duration::from_millis(100)), notified)
                    .await;
        }
        let producer = self.producer.clone();
        let rest = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::task::spawn_blocking(move || producer.flush(rest)).await;
        self.inflight()
    }
}

impl Sink for KafkaSink {
    fn send(&self, rec: OutRecord, partition: Option<i32>, ev: Event) -> BoxFuture<'_, ()> {
        Box::pin(self.send_to(rec, partition, ev, &self.shared.dlq_topic))
    }
    fn dead_letter(&self, ev: Event, r: Rejection) -> BoxFuture<'_, ()> {
        Box::pin(self.reject(ev, r, &self.shared.dlq_topic))
    }
    fn drain(&self, timeout: Duration) -> BoxFuture<'_, i64> {
        Box::pin(self.drain_within(timeout))
    }
    fn totals(&self) -> &Totals {
        &self.shared.totals
    }
    fn inflight(&self) -> i64 {
        self.shared.inflight.load(Ordering::Acquire)
    }
    fn dlq_topic(&self) -> &str {
        &self.shared.dlq_topic
    }
    fn transactions(&self) -> Option<Arc<dyn Transactions>> {
        self.txn.clone().map(|t| t as Arc<dyn Transactions>)
    }
}

/// The settings of a transactional sink (`exactly_once` pipelines).
#[derive(Debug, Clone)]
pub struct TransactionalId {
    /// `transactional.id`: stable across restarts of one gateway, so that a restart fences the
    /// killed one and aborts its open transaction at once.
    pub id: String,
    /// `transaction.timeout.ms`: the broker aborts a transaction left open longer (a producer
    /// that died on another host); also each call's timeout.
    pub timeout: Duration,
}

impl TransactionalId {
    fn configure(&self, c: &mut rdkafka::ClientConfig) {
        let ms = self.timeout.as_millis().max(1000).to_string();
        // Transactions need idempotence, acks=all and a delivery timeout within the
        // transaction's (librdkafka refuses `message.timeout.ms=0`, never expire, with them).
        c.set("transactional.id", &self.id)
            .set("transaction.timeout.ms", &ms)
            .set("message.timeout.ms", &ms)
            .set("enable.idempotence", "true")
            .set("acks", "all");
    }
}

/// A transactional sink's producer, for [`Transactions`].
struct KafkaTransactions {
    producer: Arc<ThreadedProducer<SinkContext>>,
    timeout: Duration,
}

impl Transactions for KafkaTransactions {
    fn init(&self) -> Result<(), KafkaError> {
        self.producer.init_transactions(self.timeout)
    }
    fn begin(&self) -> Result<(), KafkaError> {
        self.producer.begin_transaction()
    }
    fn commit(
        &self,
        offsets: &rdkafka::TopicPartitionList,
        group: &rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), KafkaError> {
        self.producer
            .send_offsets_to_transaction(offsets, group, self.timeout)?;
        self.producer.commit_transaction(self.timeout)
    }
    fn abort(&self) -> Result<(), KafkaError> {
        self.producer.abort_transaction(self.timeout)
    }
}

/// A pipeline's handle on the [`KafkaSink`] with a DLQ topic of its own
/// ([`KafkaSink::with_dlq`]): records go through the one producer; rejections and refused
/// records go to its DLQ topic. Counts, in-flight and drain are the sink's.
pub struct DlqRoute {
    sink: Arc<KafkaSink>,
    dlq_topic: Arc<str>,
}

impl Sink for DlqRoute {
    fn send(&self, rec: OutRecord, partition: Option<i32>, ev: Event) -> BoxFuture<'_, ()> {
        Box::pin(self.sink.send_to(rec, partition, ev, &self.dlq_topic))
    }
    fn dead_letter(&self, ev: Event, r: Rejection) -> BoxFuture<'_, ()> {
        Box::pin(self.sink.reject(ev, r, &self.dlq_topic))
    }
    fn drain(&self, timeout: Duration) -> BoxFuture<'_, i64> {
        self.sink.drain(timeout)
    }
    fn totals(&self) -> &Totals {
        self.sink.totals()
    }
    fn inflight(&self) -> i64 {
        self.sink.inflight()
    }
    fn dlq_topic(&self) -> &str {
        &self.dlq_topic
    }
    fn transactions(&self) -> Option<Arc<dyn Transactions>> {
        self.sink.transactions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable_kafka(max_buffered_records: u64) -> KafkaConfig {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut k = KafkaConfig {
            brokers: vec![format!("127.0.0.1:{port}")],
            ..Default::default()
        };
        k.producer.max_buffered_records = max_buffered_records;
        k
    }

    fn record() -> OutRecord {
        OutRecord {
            topic: Arc::from("t"),
            key: None,
            value: Bytes::from_static(b"{}"),
            headers: Vec::new(),
        }
    }

    fn event() -> (Event, tokio::sync::oneshot::Receiver<Fate>) {
        Event::with_ack(
            Bytes::from_static(b"{}"),
            Origin::now(Arc::from("p"), Arc::from("test")),
        )
    }

    /// A send (or a DLQ write) dropped while it waits for buffer room gives its in-flight slot
    /// back and is answered Busy: not accepted, nothing written.
    #[tokio::test]
    async fn a_cancelled_send_gives_its_slot_back() {
        let sink = KafkaSink::new(
            &unreachable_kafka(1),
            "dlq",
            Metrics::new(&Default::default()),
        )
        .unwrap();
        let (ev, mut first) = event();
        sink.send(record(), None, ev).await;
        assert_eq!(sink.inflight(), 1, "the first fills the buffer and waits");
        let (ev, rx) = event();
        let r = tokio::time::timeout(Duration::from_millis(50), sink.send(record(), None, ev));
        assert!(r.await.is_err(), "the second waits for room");
        assert_eq!(rx.await.unwrap(), Fate::Busy);
        let (ev, rx) = event();
        let rejection = Rejection {
            error_type: ErrorType::InvalidJson,
            message: "not JSON".into(),
            source_topic: "t".into(),
        };
        let r = tokio::time::timeout(Duration::from_millis(50), sink.dead_letter(ev, rejection));
        assert!(r.await.is_err(), "the DLQ write waits for room too");
        assert_eq!(rx.await.unwrap(), Fate::Busy);
        let t = sink.totals();
        assert_eq!(sink.inflight(), 1);
        assert_eq!(t.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(t.cancelled.load(Ordering::Relaxed), 2);
        assert_eq!(sink.shared.metrics.inflight.get(), 1);
        assert!(first.try_recv().is_err(), "the accepted one still waits");
    }

    /// Under a full buffer a `low` event is dropped at once and counted per class, even with
    /// `on_full: block` and a `max_wait`; `medium` and `high` wait for room, even with
    /// `on_full: drop_newest`.
    #[tokio::test]
    async fn qos_classes_decide_what_a_full_buffer_does() {
        use futures_util::FutureExt;
        let mut k = unreachable_kafka(1);
        k.producer.on_full = OnFull::DropNewest;
        let metrics = Metrics::new(&Default::default());
        let sink = KafkaSink::new(&k, "dlq", metrics.clone()).unwrap();
        let classed = |class: QosClass| {
            let (mut ev, rx) = event();
            ev.qos = Some(class);
            (ev, rx)
        };
        let (ev, _first) = classed(QosClass::Medium);
        sink.send(record(), None, ev).await;
        assert_eq!(sink.inflight(), 1, "the first fills the buffer");
        for max_wait in [None, Some(Duration::from_secs(3600))] {
            let (mut ev, rx) = classed(QosClass::Low);
            ev.max_wait = max_wait;
            assert!(
                sink.send(record(), None, ev).now_or_never().is_some(),
                "low never waits"
            );
            assert_eq!(rx.await.unwrap(), Fate::Dropped);
        }
        for class in [QosClass::Medium, QosClass::High] {
            let (ev, rx) = classed(class);
            let mut send = sink.send(record(), None, ev);
            assert!(
                (&mut send).now_or_never().is_none(),
                "{class} waits for room"
            );
            drop(send);
            assert_eq!(rx.await.unwrap(), Fate::Busy, "{class}: taken back");
        }
        let count = |name: &str, class: &str| {
            metrics
                .render()
                .lines()
                .find(|l| {
                    l.starts_with(name)
                        && l.contains(&format!("class=\"{class}\""))
                        && l.contains("pipeline=\"p\"")
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert_eq!(count("kgate_qos_dropped_total", "low"), 2);
        assert_eq!(count("kgate_qos_dropped_total", "medium"), 0);
        assert_eq!(count("kgate_qos_events_total", "low"), 2);
        assert_eq!(count("kgate_qos_events_total", "medium"), 2);
        assert_eq!(count("kgate_qos_events_total", "high"), 1);
        assert_eq!(sink.totals().dropped.load(Ordering::Relaxed), 2);
    }

    fn header(h: &OwnedHeaders, name: &str) -> Option<String> {
        h.iter()
            .find(|x| x.key == name)
            .map(|x| String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())
    }

    #[test]
    fn a_truncated_dlq_record_keeps_the_first_bytes_size_and_sha256() {
        let raw: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let origin = Origin::now(Arc::from("p"), Arc::from("devices/d1"));
        let mut letter = DeadLetter {
            raw: Bytes::from(raw.clone()),
            key: Some(b"k1".to_vec()),
            input_headers: vec![
                ("trace".into(), b"abc".to_vec()),
                ("huge".into(), vec![b'x'; 20_000]),
                ("after".into(), b"1".to_vec()),
            ],
            error_type: ErrorType::TooLarge,
            message: "too large".into(),
            source_topic: "t".into(),
            truncate: true,
            consumed: None,
        };
        let (value, key, h) = dlq_record(&letter, &origin, 67_174_400);
        assert_eq!(&value[..], &raw[..TOO_LARGE_PREFIX]);
        assert_eq!(key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(header(&h, "error_type").as_deref(), Some("too_large"));
        assert_eq!(header(&h, "original_size").as_deref(), Some("200000"));
        let sha = Sha256::digest(&raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        assert_eq!(header(&h, "original_sha256"), Some(sha));
        assert_eq!(header(&h, "trace").as_deref(), Some("abc"));
        assert_eq!(header(&h, "after").as_deref(), Some("1"));
        assert_eq!(header(&h, "huge"), None);
        assert_eq!(header(&h, "dropped_headers").as_deref(), Some("1"));
        assert_eq!(header(&h, "source").as_deref(), Some("p:devices/d1"));

        // A small producer limit cuts deeper; a key over the room is left out.
        letter.key = Some(vec![b'k'; 300]);
        let (value, key, h) = dlq_record(&letter, &origin, 2000);
        assert_eq!(value.len(), 500);
        assert_eq!(key, None);
        assert_eq!(header(&h, "dropped_key_size").as_deref(), Some("300"));

        // Not truncated: everything as received, no size headers.
        letter.truncate = false;
        let (value, _, h) = dlq_record(&letter, &origin, 67_174_400);
        assert_eq!(value.len(), raw.len());
        assert_eq!(header(&h, "original_size"), None);
        assert_eq!(header(&h, "huge").map(|v| v.len()), Some(20_000));
    }

    #[test]
    fn a_consumed_record_keeps_where_it_was_read_and_its_key() {
        let origin = Origin::now(Arc::from("validator"), Arc::from("telemetry.raw[2]@41"));
        let mut meta = Meta::empty();
        meta.insert("kafka.topic", "telemetry.raw");
        meta.insert("kafka.partition", "2");
        meta.insert("kafka.offset", "41");
        meta.insert("kafka.group", "telemetry-validator");
        meta.insert("kafka.key", "dev-7");
        let letter = DeadLetter::new(
            Bytes::from_static(b"{oops"),
            Some(b"output-key".to_vec()),
            vec![("trace".into(), b"t1".to_vec())],
            ErrorType::ValidationFailed,
            "/temperature: maximum: 180 is greater than the maximum of 150".into(),
            "telemetry.clean".into(),
            Consumed::from_meta(&meta),
        );
        let before = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let (value, key, h) = dlq_record(&letter, &origin, 1_000_000);
        assert_eq!(&value[..], b"{oops");
        assert_eq!(key.as_deref(), Some(&b"dev-7"[..]), "the input's key");
        assert_eq!(header(&h, "trace").as_deref(), Some("t1"));
        assert_eq!(
            header(&h, "source_topic").as_deref(),
            Some("telemetry.raw"),
            "where it was read, not the output topic"
        );
        assert_eq!(header(&h, "source_partition").as_deref(), Some("2"));
        assert_eq!(header(&h, "source_offset").as_deref(), Some("41"));
        assert_eq!(
            header(&h, "consumer_group").as_deref(),
            Some("telemetry-validator")
        );
        assert_eq!(header(&h, "attempts").as_deref(), Some("1"));
        assert_eq!(
            header(&h, "error_type").as_deref(),
            Some("validation_failed")
        );
        let failed_at = header(&h, "failed_at").unwrap();
        assert!(
            failed_at >= before && failed_at.ends_with('Z'),
            "{failed_at}"
        );
        assert_eq!(failed_at.len(), "2026-01-01T00:00:00.000Z".len());

        // A sink's `attempts` wins; no key on the input: none on the DLQ record.
        let mut meta = Meta::empty();
        meta.insert("kafka.topic", "t");
        meta.insert("attempts", "4");
        let letter = DeadLetter::new(
            Bytes::new(),
            Some(b"k".to_vec()),
            Vec::new(),
            ErrorType::SinkFailed,
            "x".into(),
            "out".into(),
            Consumed::from_meta(&meta),
        );
        let (_, key, h) = dlq_record(&letter, &origin, 1_000_000);
        assert_eq!(key, None);
        assert_eq!(header(&h, "attempts").as_deref(), Some("4"));

        // Other sources: no consumer headers; the key and source topic as given.
        let letter = DeadLetter::new(
            Bytes::new(),
            Some(b"k".to_vec()),
            Vec::new(),
            ErrorType::ProduceFailed,
            "x".into(),
            "out".into(),
            Consumed::from_meta(&Meta::empty()),
        );
        let (_, key, h) = dlq_record(&letter, &origin, 1_000_000);
        assert_eq!(key.as_deref(), Some(&b"k"[..]));
        assert_eq!(header(&h, "source_topic").as_deref(), Some("out"));
        assert!(header(&h, "failed_at").is_some());
        for absent in [
            "source_partition",
            "source_offset",
            "consumer_group",
            "attempts",
        ] {
            assert_eq!(header(&h, absent), None, "{absent}");
        }
    }
}

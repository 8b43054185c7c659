//! The Kafka sink: one threaded producer whose delivery callback carries each record's ack,
//! metrics and original bytes, so that every accepted event ends delivered, dead-lettered,
//! dropped (when configured) or reported failed, and nothing in between is forgotten.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};
use tokio::sync::{mpsc, Notify};

use futures_util::future::BoxFuture;

use super::{OutRecord, Sink, Totals};
use crate::event::{Ack, ErrorType, Event, Fate, Origin, Rejection};
use crate::kafka::{KafkaConfig, OnFull};
use crate::metrics::{Metrics, TopicMetrics};

/// Why an event goes to the DLQ.
#[derive(Debug)]
struct DlqJob {
    raw: Bytes,
    key: Option<Vec<u8>>,
    input_headers: Vec<(String, Vec<u8>)>,
    origin: Origin,
    ack: Ack,
    error_type: ErrorType,
    message: String,
    source_topic: String,
}

pub(crate) enum Kind {
    Data {
        topic: Arc<TopicMetrics>,
        raw: Bytes,
        input_headers: Vec<(String, Vec<u8>)>,
    },
    Dlq {
        error_type: ErrorType,
        message: String,
        source_topic: String,
    },
}

/// What rides with a record through librdkafka and comes back in the delivery callback.
pub(crate) struct Inflight {
    kind: Kind,
    origin: Origin,
    ack: Ack,
}

struct Shared {
    metrics: Arc<Metrics>,
    dlq_topic: String,
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
            mut ack,
        } = *opaque;
        let s = &self.shared;
        match (kind, result) {
            (Kind::Data { topic, .. }, Ok(msg)) => {
                topic.published.inc();
                topic
                    .duration
                    .observe(origin.accepted.elapsed().as_secs_f64());
                s.totals.delivered.fetch_add(1, Ordering::Relaxed);
                if ack.is_waiting() {
                    ack.resolve(Fate::Delivered {
                        topic: msg.topic().to_string(),
                        partition: msg.partition(),
                        offset: msg.offset(),
                    });
                }
                s.settle_one();
            }
            (
                Kind::Data {
                    topic,
                    raw,
                    input_headers,
                },
                Err((err, msg)),
            ) => {
                topic.failures.inc();
                topic.delivery_errors.inc();
                let source_topic = msg.topic().to_string();
                tracing::warn!(topic = %source_topic, error = %err, "Kafka refused a record; sending it to the DLQ");
                let key = msg.key().map(|k| k.to_vec());
                // Stays in flight: the DLQ job settles it.
                let job = DlqJob {
                    raw,
                    key,
                    input_headers,
                    origin,
                    ack,
                    error_type: ErrorType::ProduceFailed,
                    message: err.to_string(),
                    source_topic,
                };
                if let Err(mpsc::error::SendError(mut job)) = s.dlq_tx.send(job) {
                    tracing::error!(
                        "DLQ writer stopped; a refused record could not be dead-lettered"
                    );
                    s.totals.failed.fetch_add(1, Ordering::Relaxed);
                    job.ack.resolve(Fate::Failed {
                        message: job.message,
                    });
                    s.settle_one();
                }
            }
            (
                Kind::Dlq {
                    error_type,
                    message,
                    source_topic,
                },
                Ok(msg),
            ) => {
                s.metrics
                    .dlq_published
                    .with_label_values(&[
                        s.dlq_topic.as_str(),
                        source_topic.as_str(),
                        error_type.as_str(),
                    ])
                    .inc();
                s.totals.dead_lettered.fetch_add(1, Ordering::Relaxed);
                ack.resolve(Fate::DeadLettered {
                    error_type,
                    message,
                    partition: msg.partition(),
                    offset: msg.offset(),
                });
                s.settle_one();
            }
            (
                Kind::Dlq {
                    error_type,
                    message,
                    source_topic,
                },
                Err((err, _)),
            ) => {
                s.metrics
                    .dlq_failures
                    .with_label_values(&[s.dlq_topic.as_str()])
                    .inc();
                s.totals.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(dlq_topic = %s.dlq_topic, %source_topic, %error_type, reason = %message, error = %err,
                    "the DLQ refused a record: it is lost; check that the DLQ topic exists and accepts writes");
                ack.resolve(Fate::Failed {
                    message: format!("{error_type}: {message}; DLQ write failed: {err}"),
                });
                s.settle_one();
            }
        }
    }
}

/// Sends records to Kafka and rejected input to the DLQ; see the module docs.
pub struct KafkaSink {
    producer: ThreadedProducer<SinkContext>,
    shared: Arc<Shared>,
    on_full: OnFull,
}

/// The producer could not be created (librdkafka refused a setting).
#[derive(Debug, thiserror::Error)]
#[error("cannot create the Kafka producer: {0}; check kafka.producer.options")]
pub struct ProducerError(#[source] KafkaError);

/// How long to wait before retrying a send into a full buffer.
const FULL_RETRY: Duration = Duration::from_millis(2);

impl KafkaSink {
    /// Creates the producer (no broker needed yet) and starts the DLQ writer.
    pub fn new(
        k: &KafkaConfig,
        dlq_topic: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<KafkaSink>, ProducerError> {
        let (dlq_tx, dlq_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            metrics,
            dlq_topic: dlq_topic.to_string(),
            totals: Totals::default(),
            inflight: AtomicI64::new(0),
            draining: AtomicBool::new(false),
            settled: Notify::new(),
            dlq_tx,
        });
        let producer: ThreadedProducer<SinkContext> = crate::kafka::producer_client_config(k)
            .create_with_context(SinkContext {
                shared: shared.clone(),
                errors: crate::kafka::ErrorLog::new(k),
            })
            .map_err(ProducerError)?;
        let sink = Arc::new(KafkaSink {
            producer,
            shared,
            on_full: k.producer.on_full,
        });
        let s = sink.clone();
        tokio::spawn(async move { s.dlq_writer(dlq_rx).await });
        Ok(sink)
    }

    async fn dlq_writer(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<DlqJob>) {
        while let Some(job) = rx.recv().await {
            self.produce_dlq(job).await;
        }
    }

    fn admit(&self) {
        self.shared.inflight.fetch_add(1, Ordering::AcqRel);
        self.shared.metrics.inflight.inc();
        self.shared.totals.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands a record to the producer, to `partition` when one is named. With `on_full: block`
    /// it waits for room (backpressure); with `drop_newest` it drops the record, counts it and
    /// acks it as dropped; with an event's `max_wait` it answers Busy after that long.
    async fn send_to(&self, rec: OutRecord, partition: Option<i32>, ev: Event) {
        let Event {
            raw,
            headers: input_headers,
            origin,
            ack,
            max_wait,
            ..
        } = ev;
        let give_up = max_wait.map(|w| Instant::now() + w);
        let topic_metrics = self.shared.metrics.topic(&rec.topic);
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
        self.admit();
        let opaque = Box::new(Inflight {
            kind: Kind::Data {
                topic: topic_metrics.clone(),
                raw,
                input_headers,
            },
            origin,
            ack,
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
                    if give_up.is_some_and(|t| Instant::now() >= t) {
                        // The source would rather answer "busy" than wait: un-accept it.
                        self.shared.totals.accepted.fetch_sub(1, Ordering::Relaxed);
                        let mut op = back.delivery_opaque;
                        op.ack.resolve(Fate::Busy);
                        self.shared.settle_one();
                        return;
                    }
                    if give_up.is_none() && self.on_full == OnFull::DropNewest {
                        topic_metrics.drops.inc();
                        self.shared.totals.dropped.fetch_add(1, Ordering::Relaxed);
                        let mut op = back.delivery_opaque;
                        op.ack.resolve(Fate::Dropped);
                        self.shared.settle_one();
                        return;
                    }
                    record = back;
                    tokio::time::sleep(FULL_RETRY).await;
                }
                Err((err, back)) => {
                    topic_metrics.requests.inc();
                    topic_metrics.failures.inc();
                    let op = *back.delivery_opaque;
                    let Kind::Data {
                        raw, input_headers, ..
                    } = op.kind
                    else {
                        unreachable!("data records carry Kind::Data")
                    };
                    tracing::warn!(topic = %rec.topic, error = %err, "Kafka refused a record; sending it to the DLQ");
                    self.produce_dlq(DlqJob {
                        raw,
                        key: rec.key.clone(),
                        input_headers,
                        origin: op.origin,
                        ack: op.ack,
                        error_type: ErrorType::ProduceFailed,
                        message: err.to_string(),
                        source_topic: rec.topic.to_string(),
                    })
                    .await;
                    return;
                }
            }
        }
    }

    /// Sends rejected input to the DLQ with its original bytes and headers.
    async fn reject(&self, ev: Event, r: Rejection) {
        self.shared
            .metrics
            .events_rejected
            .with_label_values(&[&ev.origin.pipeline, r.error_type.as_str()])
            .inc();
        if r.error_type.is_encoding() {
            self.shared
                .metrics
                .encode_errors
                .with_label_values(&[&r.source_topic, r.error_type.as_str()])
                .inc();
        }
        self.admit();
        self.produce_dlq(DlqJob {
            raw: ev.raw,
            key: None,
            input_headers: ev.headers,
            origin: ev.origin,
            ack: ev.ack,
            error_type: r.error_type,
            message: r.message,
            source_topic: r.source_topic,
        })
        .await;
    }

    /// Produces a DLQ record for an event already counted in flight; always waits for room.
    async fn produce_dlq(&self, job: DlqJob) {
        let received_at = humantime::format_rfc3339_millis(job.origin.received_at).to_string();
        let source = format!("{}:{}", job.origin.pipeline, job.origin.source);
        let mut headers = OwnedHeaders::new_with_capacity(job.input_headers.len() + 6);
        for (k, v) in &job.input_headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        for (k, v) in [
            ("source", source.as_str()),
            ("pipeline", &*job.origin.pipeline),
            ("source_topic", job.source_topic.as_str()),
            ("error_type", job.error_type.as_str()),
            ("error_message", job.message.as_str()),
            ("received_at", received_at.as_str()),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let opaque = Box::new(Inflight {
            kind: Kind::Dlq {
                error_type: job.error_type,
                message: job.message.clone(),
                source_topic: job.source_topic.clone(),
            },
            origin: job.origin,
            ack: job.ack,
        });
        let dlq_topic = self.shared.dlq_topic.clone();
        let mut record = BaseRecord::with_opaque_to(&dlq_topic, opaque)
            .payload(&job.raw[..])
            .headers(headers);
        if let Some(k) = &job.key {
            record = record.key(&k[..]);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(FULL_RETRY).await;
                }
                Err((err, back)) => {
                    let mut op = back.delivery_opaque;
                    self.shared
                        .metrics
                        .dlq_failures
                        .with_label_values(&[dlq_topic.as_str()])
                        .inc();
                    self.shared.totals.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%dlq_topic, error = %err, error_type = %job.error_type, "cannot write to the DLQ: the record is lost");
                    op.ack.resolve(Fate::Failed {
                        message: format!(
                            "{}: {}; DLQ write failed: {err}",
                            job.error_type, job.message
                        ),
                    });
                    self.shared.settle_one();
                    return;
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
        Box::pin(self.send_to(rec, partition, ev))
    }
    fn dead_letter(&self, ev: Event, r: Rejection) -> BoxFuture<'_, ()> {
        Box::pin(self.reject(ev, r))
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
}

//! Consumer sinks: where a consumer (`kgate consume`) hands the records it reads — standard
//! output, a rotating file, an HTTP webhook or a long-lived command — in batches.
//!
//! A [`DeliverSink`] is a [`Sink`]: the Kafka source hands it events and stores a record's
//! offset only once its Ack says the fate is persisted. So the sink answers each Ack only when
//! the destination took the record's batch ([`Fate::Delivered`], naming the record's own topic,
//! partition and offset: nothing was written to Kafka) or, after the retries, when its DLQ
//! record is acknowledged ([`Fate::DeadLettered`], via the DLQ sink it is given, with meta
//! `attempts`). A batch that stdout or a file could not take is answered [`Fate::Failed`] (its
//! offsets are not committed: it is read again) and [`DeliverSink::fatal`] is cancelled, since
//! a closed stdout or a full disk is not the record's fault and does not belong in the DLQ.
//!
//! One task owns the destination: it gathers events into batches (`batch.max_records`,
//! `max_bytes`, `timeout`), and for stdout and files writes every batch that is ready in one
//! write and one flush (or fsync), so that single records do not cost a syscall each.

mod command;
mod config;
mod encode;
mod file;
mod stdout;
mod webhook;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

pub use config::{
    check, BatchConfig, CommandConfig, DeliverConfig, FileConfig, StdoutConfig, WebhookConfig,
};

use super::{OutRecord, Sink, Totals};
use crate::event::{Ack, ErrorType, Event, Fate, Rejection};
use crate::metrics::Metrics;
use crate::registry::SchemaCache;

/// A consumer sink could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The config has problems (each with its path).
    #[error("{0}")]
    Invalid(crate::config::ConfigErrors),
    /// The file could not be opened.
    #[error("cannot open {path} for appending: {source}; check that its directory exists and is writable")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot set up the webhook client for {url}: {source}")]
    Webhook {
        /// The URL, redacted.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
}

/// Events waiting in front of the batching task; past it `send` waits (backpressure).
const QUEUE: usize = 8192;

/// At most this many records are taken off the queue before stdout or a file is written.
const GREEDY_RECORDS: usize = 4096;

/// How a destination answered one attempt.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth another attempt (5xx, timeout, connection refused, a command's error line).
    Retry(String),
    /// Not worth another (a 4xx): the DLQ at once.
    Final(String),
    /// The destination itself is gone (stdout closed, disk full): nothing is committed.
    Fatal(String),
}

/// How batches are laid out for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One record a line (NDJSON).
    Records,
    /// One batch a line: a JSON array.
    ArrayLines,
    /// The batch as one JSON array, no line break (an HTTP body).
    Array,
}

/// Retries of one batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    max_attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
}

impl Retry {
    const NONE: Retry = Retry {
        max_attempts: 1,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };

    /// The pause after failed attempt `n` (1-based): doubling, ±50 % jitter, capped.
    fn pause(&self, n: u32) -> Duration {
        let base = self
            .backoff
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(self.max_backoff);
        base.mul_f64(rand::random_range(0.5..1.5))
            .min(self.max_backoff)
    }
}

/// A destination. `deliver` gets one body (one batch, or for `coalesces` destinations every
/// ready batch) and says whether it was taken.
pub(crate) trait Target: Send {
    /// `stdout`, `file`, `webhook`, `command`: the metric label.
    fn kind(&self) -> &'static str;
    /// What the DLQ message names (a redacted URL, a program).
    fn describe(&self) -> String;
    /// How records are laid out.
    fn shape(&self) -> Shape;
    /// Whether several batches may go in one `deliver` (a stream: stdout, a file).
    fn coalesces(&self) -> bool;
    /// How a failed batch is tried again.
    fn retry(&self) -> Retry;
    /// Hands the body over; `records` is how many records it holds.
    fn deliver<'a>(
        &'a mut self,
        body: &'a [u8],
        records: usize,
    ) -> BoxFuture<'a, Result<(), Failure>>;
}

struct Shared {
    totals: Totals,
    inflight: AtomicI64,
    settled: Notify,
    /// Set by `drain`: a batch that is not full goes as soon as the queue is empty.
    draining: AtomicBool,
    flush: Notify,
    fatal: CancellationToken,
    metrics: Arc<Metrics>,
    kind: &'static str,
}

impl Shared {
    fn settle(&self, ack: &mut Ack, fate: Fate) {
        let counter = match &fate {
            Fate::Delivered { .. } => &self.totals.delivered,
            Fate::DeadLettered { .. } => &self.totals.dead_lettered,
            Fate::Dropped => &self.totals.dropped,
            _ => &self.totals.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Counted before the answer, so that whoever got it sees the counts include it.
        let last = self.inflight.fetch_sub(1, Ordering::AcqRel) == 1;
        ack.resolve(fate);
        if last {
            self.settled.notify_waiters();
        }
    }
}

/// A consumer sink: batches events for its destination and answers their Acks; see the
/// module doc.
pub struct DeliverSink {
    tx: mpsc::Sender<Item>,
    shared: Arc<Shared>,
    dlq: Arc<dyn Sink>,
    dlq_topic: String,
}

impl DeliverSink {
    /// Checks `config`, opens the destination (the file, the HTTP client, the child process)
    /// and starts the batching task. Rejected records and batches that fail their retries go
    /// to `dlq`; `schemas` decodes Confluent-framed Avro values.
    pub fn new(
        config: &DeliverConfig,
        dlq: Arc<dyn Sink>,
        metrics: Arc<Metrics>,
        schemas: Option<Arc<SchemaCache>>,
    ) -> Result<Arc<DeliverSink>, DeliverError> {
        let mut errors = Vec::new();
        if !check(config, crate::config::At("sink"), &mut errors) {
            return Err(DeliverError::Invalid(crate::config::ConfigErrors {
                file: "consumer sink".into(),
                errors,
            }));
        }
        let batched = config.batch.max_records > 1;
        let target: Box<dyn Target> = if config.stdout.is_some() {
            Box::new(stdout::Stdout::new(batched))
        } else if let Some(f) = &config.file {
            Box::new(file::RotatingFile::open(f)?)
        } else if let Some(w) = &config.webhook {
            Box::new(webhook::Webhook::new(w)?)
        } else if let Some(c) = &config.command {
            Box::new(command::Command::new(c, batched))
        } else {
            unreachable!("check() requires one kind")
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            totals: Totals::default(),
            inflight: AtomicI64::new(0),
            settled: Notify::new(),
            draining: AtomicBool::new(false),
            flush: Notify::new(),
            fatal: CancellationToken::new(),
            metrics,
            kind: target.kind(),
        });
        let dlq_topic = dlq.dlq_topic().to_string();
        let runner = Runner {
            rx,
            target,
            shared: shared.clone(),
            dlq: dlq.clone(),
            batch: config.batch.clone(),
            schemas,
            buf: Vec::with_capacity(64 * 1024),
        };
        tokio::spawn(runner.run());
        Ok(Arc::new(DeliverSink {
            tx,
            shared,
            dlq,
            dlq_topic,
        }))
    }

    /// Cancelled when the destination is gone for good (stdout closed, a file that cannot be
    /// written): the consumer should stop; the records it could not take are not committed.
    pub fn fatal(&self) -> CancellationToken {
        self.shared.fatal.clone()
    }

    /// The destination kind (`stdout`, `file`, `webhook`, `command`).
    pub fn kind(&self) -> &'static str {
        self.shared.kind
    }

    async fn accept(&self, rec: OutRecord, ev: Event) {
        self.shared.totals.accepted.fetch_add(1, Ordering::Relaxed);
        self.shared.inflight.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError(mut item)) = self.tx.send(Item { ev, rec }).await {
            let fate = Fate::Failed {
                message: "the consumer sink has stopped".into(),
            };
            self.shared.settle(&mut item.ev.ack, fate);
        }
    }

    async fn drain_within(&self, timeout: Duration) -> i64 {
        self.shared.draining.store(true, Ordering::Release);
        self.shared.flush.notify_one();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let settled = self.shared.settled.notified();
            let left = self.shared.inflight.load(Ordering::Acquire);
            if left <= 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return self.shared.inflight.load(Ordering::Acquire);
            }
        }
    }
}

impl Sink for DeliverSink {
    fn send(&self, rec: OutRecord, _partition: Option<i32>, ev: Event) -> BoxFuture<'_, ()> {
        // The record is what the pipeline made (for `kgate consume`'s raw pass-through, the
        // bytes as read); the event says where it was read and is what the DLQ keeps.
        Box::pin(self.accept(rec, ev))
    }
    fn dead_letter(&self, ev: Event, r: Rejection) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.totals.accepted.fetch_add(1, Ordering::Relaxed);
            self.shared.inflight.fetch_add(1, Ordering::AcqRel);
            to_dlq(&self.shared, &*self.dlq, ev, r).await
        })
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
        &self.dlq_topic
    }
}

/// Hands an event (counted in flight here) to the DLQ sink; its fate, when the DLQ sink
/// knows it, is counted here and passed on to the event's own Ack.
async fn to_dlq(shared: &Arc<Shared>, dlq: &dyn Sink, mut ev: Event, r: Rejection) {
    let (ack, rx) = Ack::channel();
    let mut own = std::mem::replace(&mut ev.ack, ack);
    let shared2 = shared.clone();
    tokio::spawn(async move {
        let fate = rx.await.unwrap_or_else(|_| Fate::Failed {
            message: "the DLQ sink dropped the record".into(),
        });
        shared2.settle(&mut own, fate);
    });
    dlq.dead_letter(ev, r).await;
}

/// The batching task: owns the destination.
struct Runner {
    rx: mpsc::Receiver<Item>,
    target: Box<dyn Target>,
    shared: Arc<Shared>,
    dlq: Arc<dyn Sink>,
    batch: BatchConfig,
    schemas: Option<Arc<SchemaCache>>,
    /// The body being written, reused.
    buf: Vec<u8>,
}

/// A record to hand over and the event it came from.
struct Item {
    ev: Event,
    rec: OutRecord,
}

/// Records gathered into one batch.
#[derive(Default)]
struct Open {
    events: Vec<Item>,
    bytes: u64,
    since: Option<tokio::time::Instant>,
}

impl Runner {
    async fn run(mut self) {
        let mut open = Open::default();
        let mut ready: Vec<Vec<Item>> = Vec::new();
        let mut closed = false;
        while !closed {
            let deadline = open.since.map(|t| t + self.batch.timeout);
            tokio::select! {
                biased;
                m = self.rx.recv() => match m {
                    Some(ev) => self.add(&mut open, &mut ready, ev),
                    None => closed = true,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    close(&mut open, &mut ready);
                }
                _ = self.shared.flush.notified() => close(&mut open, &mut ready),
            }
            let mut taken = ready.iter().map(Vec::len).sum::<usize>() + open.events.len();
            while taken < GREEDY_RECORDS {
                match self.rx.try_recv() {
                    Ok(ev) => {
                        self.add(&mut open, &mut ready, ev);
                        taken += 1;
                    }
                    Err(_) => break,
                }
            }
            // A steady stream keeps `recv` ready ahead of the timer: check the age here too.
            let expired = open
                .since
                .is_some_and(|t| t + self.batch.timeout <= tokio::time::Instant::now());
            if closed
                || expired
                || (self.shared.draining.load(Ordering::Acquire) && self.rx.is_empty())
            {
                close(&mut open, &mut ready);
            }
            if !ready.is_empty() {
                self.deliver(std::mem::take(&mut ready)).await;
            }
        }
    }

    fn add(&self, open: &mut Open, ready: &mut Vec<Vec<Item>>, ev: Item) {
        open.bytes += ev.rec.value.len() as u64;
        open.events.push(ev);
        if open.since.is_none() {
            open.since = Some(tokio::time::Instant::now());
        }
        if open.events.len() >= self.batch.max_records || open.bytes >= self.batch.max_bytes.0 {
            close(open, ready);
        }
    }

    /// Hands the ready batches over: all in one body for a stream, else one by one.
    async fn deliver(&mut self, batches: Vec<Vec<Item>>) {
        if self.target.coalesces() {
            self.buf.clear();
            for b in &batches {
                self.encode(b).await;
            }
            let started = Instant::now();
            let n: usize = batches.iter().map(Vec::len).sum();
            let result = self.target.deliver(&self.buf, n).await;
            self.finish(batches, result, 1, started).await;
        } else {
            for b in batches {
                self.buf.clear();
                self.encode(&b).await;
                let started = Instant::now();
                let (result, attempts) = self.attempt(b.len()).await;
                self.finish(vec![b], result, attempts, started).await;
            }
        }
    }

    /// Tries one body up to the destination's `max_attempts`; the last result and the count.
    async fn attempt(&mut self, records: usize) -> (Result<(), Failure>, u32) {
        let retry = self.target.retry();
        let mut n = 0;
        loop {
            n += 1;
            match self.target.deliver(&self.buf, records).await {
                Err(Failure::Retry(m)) if n < retry.max_attempts => {
                    let pause = retry.pause(n);
                    tracing::warn!(sink = self.shared.kind, to = %self.target.describe(), attempt = n,
                        max_attempts = retry.max_attempts, retry_in = ?pause, error = %m, "consumer sink: batch not taken; trying again");
                    tokio::time::sleep(pause).await;
                }
                r => return (r, n),
            }
        }
    }

    /// Lays out a batch in the destination's shape (decoding framed Avro values first).
    async fn encode(&mut self, batch: &[Item]) {
        let shape = self.target.shape();
        if shape != Shape::Records {
            self.buf.push(b'[');
        }
        for (i, Item { ev, rec }) in batch.iter().enumerate() {
            let decoded = ev.decoded.as_ref().filter(|_| rec.value == ev.raw);
            let avro = match &self.schemas {
                Some(cache) if decoded.is_none() && encode::is_framed(&rec.value) => {
                    Some(cache.decode(&rec.value).await.map(|(_, v)| v))
                }
                _ => None,
            };
            if i > 0 && shape != Shape::Records {
                self.buf.push(b',');
            }
            encode::record(&mut self.buf, ev, rec, decoded, avro.as_ref());
            if shape == Shape::Records {
                self.buf.push(b'\n');
            }
        }
        match shape {
            Shape::Records => {}
            Shape::ArrayLines => self.buf.extend_from_slice(b"]\n"),
            Shape::Array => self.buf.push(b']'),
        }
    }

    /// Answers the Acks of delivered batches, or sends their records to the DLQ.
    async fn finish(
        &mut self,
        batches: Vec<Vec<Item>>,
        result: Result<(), Failure>,
        attempts: u32,
        started: Instant,
    ) {
        let m = &self.shared.metrics.consumer;
        for b in &batches {
            m.batch_size
                .with_label_values(&[self.shared.kind])
                .observe(b.len() as f64);
        }
        let failure = match result {
            Ok(()) => {
                for Item { mut ev, .. } in batches.into_iter().flatten() {
                    let fate = delivered(&ev);
                    self.shared.settle(&mut ev.ack, fate);
                }
                m.batch_duration
                    .with_label_values(&[self.shared.kind])
                    .observe(started.elapsed().as_secs_f64());
                return;
            }
            Err(f) => f,
        };
        let topics: BTreeSet<String> = batches
            .iter()
            .flatten()
            .map(|i| i.ev.meta.get("kafka.topic").unwrap_or_default().to_string())
            .collect();
        for t in &topics {
            m.errors.with_label_values(&[t]).inc_by(u64::from(attempts));
        }
        match failure {
            Failure::Fatal(msg) => {
                tracing::error!(sink = self.shared.kind, to = %self.target.describe(), error = %msg,
                    "consumer sink: the destination is gone; stopping (the records it did not take are read again next time)");
                self.shared.fatal.cancel();
                for Item { mut ev, .. } in batches.into_iter().flatten() {
                    let fate = Fate::Failed {
                        message: msg.clone(),
                    };
                    self.shared.settle(&mut ev.ack, fate);
                }
            }
            Failure::Retry(msg) | Failure::Final(msg) => {
                let message = format!(
                    "{} sink {} did not take the batch after {attempts} attempt{}: {msg}",
                    self.shared.kind,
                    self.target.describe(),
                    if attempts == 1 { "" } else { "s" }
                );
                let n: usize = batches.iter().map(Vec::len).sum();
                tracing::warn!(sink = self.shared.kind, records = n, dlq_topic = %self.dlq.dlq_topic(), "{message}; the records go to the DLQ");
                for Item { mut ev, .. } in batches.into_iter().flatten() {
                    ev.meta.insert("attempts", attempts.to_string());
                    let r = Rejection {
                        error_type: ErrorType::SinkFailed,
                        message: message.clone(),
                        source_topic: ev.meta.get("kafka.topic").unwrap_or_default().to_string(),
                    };
                    to_dlq(&self.shared, &*self.dlq, ev, r).await;
                }
            }
        }
    }
}

/// Moves the open batch (if any) to the ready ones.
fn close(open: &mut Open, ready: &mut Vec<Vec<Item>>) {
    if !open.events.is_empty() {
        ready.push(std::mem::take(&mut open.events));
    }
    open.bytes = 0;
    open.since = None;
}

/// The fate of a record its destination took: where it was read (nothing was written to
/// Kafka).
fn delivered(ev: &Event) -> Fate {
    let m = &ev.meta;
    Fate::Delivered {
        topic: m.get("kafka.topic").unwrap_or_default().to_string(),
        partition: m
            .get("kafka.partition")
            .and_then(|p| p.parse().ok())
            .unwrap_or(-1),
        offset: m
            .get("kafka.offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or(-1),
    }
}

/// Runs blocking I/O (stdout, a file) on this thread, letting the runtime move its other
/// tasks elsewhere when it can.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Origin;
    use crate::sink::MemorySink;
    use bytes::Bytes;
    use tokio::sync::oneshot;

    fn event(offset: i64) -> (Event, oneshot::Receiver<Fate>) {
        let (mut ev, rx) = Event::with_ack(
            Bytes::from(format!("{{\"n\":{offset}}}")),
            Origin::now(Arc::from("consume"), Arc::from("t")),
        );
        ev.meta.insert("kafka.topic", "t");
        ev.meta.insert("kafka.partition", "0");
        ev.meta.insert("kafka.offset", offset.to_string());
        (ev, rx)
    }

    fn record() -> OutRecord {
        OutRecord {
            topic: Arc::from("t"),
            key: None,
            value: Bytes::new(),
            headers: Vec::new(),
        }
    }

    fn command(script: &str, max_records: usize, max_attempts: u32) -> DeliverConfig {
        let mut c = CommandConfig::new(vec!["sh".into(), "-c".into(), script.into()]);
        c.max_attempts = max_attempts;
        c.backoff = Duration::from_millis(1);
        DeliverConfig {
            command: Some(c),
            batch: BatchConfig {
                max_records,
                timeout: Duration::from_secs(3600),
                ..BatchConfig::default()
            },
            ..DeliverConfig::default()
        }
    }

    /// A child that answers one batch and exits is started again for the next: every record
    /// delivered, in batches of 2 (the last, partial one flushed by `drain`).
    #[tokio::test]
    async fn a_command_that_exits_is_restarted_and_every_batch_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "read -r l && printf '%s\\n' \"$l\" >> '{}' && echo ok",
            out.display()
        );
        let dlq = Arc::new(MemorySink::new());
        let sink = DeliverSink::new(
            &command(&script, 2, 3),
            dlq.clone(),
            Metrics::new(&Default::default()),
            None,
        )
        .unwrap();
        let mut fates = Vec::new();
        for o in 0..5 {
            let (ev, rx) = event(o);
            sink.send(record(), None, ev).await;
            fates.push(rx);
        }
        assert_eq!(sink.drain(Duration::from_secs(30)).await, 0);
        for (o, rx) in fates.into_iter().enumerate() {
            assert_eq!(
                rx.await.unwrap(),
                Fate::Delivered {
                    topic: "t".into(),
                    partition: 0,
                    offset: o as i64
                }
            );
        }
        let text = std::fs::read_to_string(&out).unwrap();
        let sizes: Vec<usize> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap()
                    .as_array()
                    .unwrap()
                    .len()
            })
            .collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert_eq!(sink.totals().delivered.load(Ordering::Relaxed), 5);
        assert!(dlq.rejections().is_empty());
    }

    /// A batch that is not full goes when its timeout passes, without a drain.
    #[tokio::test]
    async fn a_partial_batch_goes_at_its_timeout() {
        let mut c = command("while read -r l; do echo ok; done", 100, 1);
        c.batch.timeout = Duration::from_millis(50);
        let sink = DeliverSink::new(
            &c,
            Arc::new(MemorySink::new()),
            Metrics::new(&Default::default()),
            None,
        )
        .unwrap();
        let mut fates = Vec::new();
        for o in 0..3 {
            let (ev, rx) = event(o);
            sink.send(record(), None, ev).await;
            fates.push(rx);
        }
        for rx in fates {
            let fate = tokio::time::timeout(Duration::from_secs(20), rx)
                .await
                .expect("settled without a drain")
                .unwrap();
            assert!(matches!(fate, Fate::Delivered { .. }), "{fate:?}");
        }
        assert_eq!(sink.inflight(), 0);
    }

    /// A command that answers an error: the batch is tried `max_attempts` times, then each of
    /// its records is dead-lettered as sink_failed and its fate is DeadLettered.
    #[tokio::test]
    async fn a_batch_refused_after_its_attempts_goes_to_the_dlq() {
        let dlq = Arc::new(MemorySink::new());
        let sink = DeliverSink::new(
            &command("while read -r l; do echo 'nope: bad'; done", 3, 2),
            dlq.clone(),
            Metrics::new(&Default::default()),
            None,
        )
        .unwrap();
        let mut fates = Vec::new();
        for o in 0..3 {
            let (ev, rx) = event(o);
            sink.send(record(), None, ev).await;
            fates.push(rx);
        }
        for rx in fates {
            assert!(matches!(
                rx.await.unwrap(),
                Fate::DeadLettered {
                    error_type: ErrorType::SinkFailed,
                    ..
                }
            ));
        }
        assert_eq!(sink.drain(Duration::from_secs(5)).await, 0);
        let r = dlq.rejections();
        assert_eq!(r.len(), 3);
        for (i, (rej, raw)) in r.iter().enumerate() {
            assert_eq!(rej.error_type, ErrorType::SinkFailed);
            assert_eq!(rej.source_topic, "t");
            assert!(
                rej.message.contains("after 2 attempts") && rej.message.contains("nope: bad"),
                "{}",
                rej.message
            );
            assert_eq!(&raw[..], format!("{{\"n\":{i}}}").as_bytes());
        }
        let t = sink.totals();
        assert_eq!(t.dead_lettered.load(Ordering::Relaxed), 3);
        assert_eq!(t.delivered.load(Ordering::Relaxed), 0);
    }
}

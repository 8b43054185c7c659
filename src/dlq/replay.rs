//! Replaying a DLQ topic exactly once: read in the replay's own consumer group, each batch sent
//! in a Kafka transaction that also commits the group's offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use super::read::{bounds, DlqRecord, Filter, STALL};
use super::{DlqError, DLQ_HEADERS, REPLAYED_FROM, REPLAY_COUNT};
use crate::event::ErrorType;
use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;

/// What to replay and how: `kgate dlq replay`'s flags, or the web UI's replay form.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// The DLQ topic to replay.
    pub topic: String,
    /// Send every selected record to this topic, instead of back to its `source_topic` header.
    pub to: Option<String>,
    /// Only records with this `error_type` header (the others are read and committed too).
    pub error_type: Option<String>,
    /// Only records with this `source_topic` header.
    pub source_topic: Option<String>,
    /// Start at the first record written this long ago, or where the group stopped, whichever
    /// is later; else from the beginning.
    pub since: Option<Duration>,
    /// At most this many records a second; unlimited when `None`.
    pub rate: Option<f64>,
    /// Send and commit nothing: count, and list what would be sent.
    pub dry_run: bool,
    /// Records replayed this many times already are counted as exhausted and left.
    pub max_attempts: u32,
    /// The consumer group (`kgate-dlq-replay.<topic>` when `None`).
    pub group: Option<String>,
}

impl ReplayRequest {
    /// The consumer group.
    pub fn group(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("kgate-dlq-replay.{}", self.topic))
    }
}

/// The `transactional.id` of a replay of `dlq_topic` in `group`: the same on every restart, so
/// that a restarted replay fences the one it replaces and aborts its open transaction.
pub fn transactional_id(group: &str, dlq_topic: &str) -> String {
    format!("kgate-dlq-replay.{group}.{dlq_topic}")
}

/// Why `topic` may not be a replay's target (`dlq_topic` is the DLQ being replayed), with the
/// error type a record sent back to the DLQ for it gets.
pub fn refused_target(topic: &str, dlq_topic: &str) -> Option<(ErrorType, String)> {
    if !crate::kafka::valid_topic_name(topic) {
        Some((
            ErrorType::InvalidTopic,
            format!("`{topic}` is not a legal topic name (letters, digits, `.`, `_`, `-`)"),
        ))
    } else if topic == dlq_topic {
        Some((
            ErrorType::TopicNotAllowed,
            format!("{topic} is the DLQ being replayed; replay into another topic"),
        ))
    } else if crate::kafka::reserved_topic(topic) {
        Some((
            ErrorType::TopicNotAllowed,
            format!(
                "{topic} is reserved (`__*`, `_schemas`, `connect-*`); replay does not write it"
            ),
        ))
    } else {
        None
    }
}

impl DlqRecord {
    /// The record's `replay_count` header (0 when it was never replayed).
    pub fn replay_count(&self) -> u32 {
        self.header(REPLAY_COUNT)
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether the DLQ holds only the first bytes of the record (too_large).
    pub fn truncated(&self) -> bool {
        self.header("original_size").is_some()
    }

    /// The headers the record had before kgate dead-lettered it: the last one of each name in
    /// [`DLQ_HEADERS`] (kgate writes its own after the input's) and every earlier
    /// `replayed_from`/`replay_count` taken off.
    pub fn original_headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut drop = vec![false; self.headers.len()];
        for name in DLQ_HEADERS {
            if let Some(i) = self.headers.iter().rposition(|(k, _)| k == name) {
                drop[i] = true;
            }
        }
        self.headers
            .iter()
            .zip(drop)
            .filter(|((k, _), d)| !d && k != REPLAYED_FROM && k != REPLAY_COUNT)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// `<dlq_topic>[<partition>]@<offset>`.
    pub fn replayed_from(&self, dlq_topic: &str) -> String {
        format!("{dlq_topic}[{}]@{}", self.partition, self.offset)
    }

    /// The headers of the replayed record: the original ones, `replayed_from` and
    /// `replay_count` + 1.
    pub fn replay_headers(&self, dlq_topic: &str) -> Vec<(String, Vec<u8>)> {
        let mut h = self.original_headers();
        h.push((
            REPLAYED_FROM.into(),
            self.replayed_from(dlq_topic).into_bytes(),
        ));
        h.push((
            REPLAY_COUNT.into(),
            (self.replay_count() + 1).to_string().into_bytes(),
        ));
        h
    }

    /// The headers of the record sent back to the DLQ when its replay to `target` failed: the
    /// replayed record's, then kgate's DLQ headers with the new failure.
    pub fn back_to_dlq_headers(
        &self,
        dlq_topic: &str,
        group: &str,
        target: Option<&str>,
        error_type: ErrorType,
        message: &str,
    ) -> Vec<(String, Vec<u8>)> {
        let mut h = self.replay_headers(dlq_topic);
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let source_topic = target
            .map(str::to_string)
            .or_else(|| self.header("source_topic"));
        let mut add = |k: &str, v: String| h.push((k.to_string(), v.into_bytes()));
        add("source", format!("dlq-replay:{dlq_topic}"));
        add("pipeline", "dlq-replay".into());
        if let Some(t) = source_topic {
            add("source_topic", t);
        }
        add("error_type", error_type.as_str().into());
        add("error_message", message.into());
        add(
            "received_at",
            self.header("received_at").unwrap_or(now.clone()),
        );
        add("failed_at", now);
        add("consumer_group", group.into());
        h
    }
}

/// Whether a target topic may be written, else the error type and why not.
pub type TargetCheck = Result<(), (ErrorType, String)>;

/// What `replay` does with one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Send it to this topic.
    Send(String),
    /// Left out by --error-type/--source-topic.
    Filtered,
    /// Its replay_count reached --max-attempts.
    Exhausted,
    /// Only its first bytes are in the DLQ (too_large).
    Truncated,
    /// It cannot go to its target: back to the DLQ, with the target when there is one.
    Fail(Option<String>, ErrorType, String),
}

/// How a record is replayed.
pub struct Planner<'a> {
    /// The DLQ topic.
    pub dlq_topic: &'a str,
    /// --to.
    pub to: Option<&'a str>,
    /// The filters.
    pub filter: Filter,
    /// --max-attempts.
    pub max_attempts: u32,
}

impl Planner<'_> {
    /// What to do with `r`; `exists` says whether a topic exists (or why it cannot be
    /// written).
    pub fn plan(&self, r: &DlqRecord, exists: &mut dyn FnMut(&str) -> TargetCheck) -> Plan {
        if !self.filter.matches(r) {
            return Plan::Filtered;
        }
        if r.replay_count() >= self.max_attempts {
            return Plan::Exhausted;
        }
        if r.truncated() {
            return Plan::Truncated;
        }
        let target = match self.to {
            Some(t) => t.to_string(),
            None => match r.header("source_topic").filter(|t| !t.is_empty()) {
                Some(t) => t,
                None => {
                    return Plan::Fail(
                        None,
                        ErrorType::InvalidTopic,
                        "no source_topic header to replay it to; replay it with --to TOPIC".into(),
                    )
                }
            },
        };
        if let Some((ty, why)) = refused_target(&target, self.dlq_topic) {
            return Plan::Fail(Some(target), ty, why);
        }
        match exists(&target) {
            Ok(()) => Plan::Send(target),
            Err((ty, why)) => Plan::Fail(Some(target), ty, why),
        }
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayCounts {
    /// Records read from the DLQ.
    pub read: u64,
    /// Records the filters selected.
    pub selected: u64,
    /// Records sent to their target (committed).
    pub sent: u64,
    /// Records left out by the filters.
    pub filtered: u64,
    /// Records not sent: replay_count reached --max-attempts.
    pub exhausted: u64,
    /// Records not sent: too_large, only their first bytes are in the DLQ.
    pub truncated: u64,
    /// Records sent back to the DLQ (their target refused them).
    pub to_dlq: u64,
    /// Records sent (or, with --dry-run, to be sent) by target topic.
    pub by_target: BTreeMap<String, u64>,
    /// Records sent back to the DLQ by the new error type.
    pub failed_by_type: BTreeMap<String, u64>,
    /// Stopped by a signal before the end.
    pub interrupted: bool,
}

impl ReplayCounts {
    /// The report, as text.
    pub fn text(&self, dlq_topic: &str, dry_run: bool) -> String {
        let would = if dry_run { "would be " } else { "" };
        let mut out = format!(
            "{dlq_topic}: {} records read, {} selected: {} {would}sent, {} {would}sent back to the DLQ, {} exhausted (replay_count at --max-attempts), {} too_large (not replayable); {} skipped by the filters{}\n",
            self.read,
            self.selected,
            self.sent,
            self.to_dlq,
            self.exhausted,
            self.truncated,
            self.filtered,
            if self.interrupted { "; interrupted, run it again to go on" } else { "" },
        );
        for (t, n) in &self.by_target {
            out.push_str(&format!("  → {t}  {n}\n"));
        }
        for (t, n) in &self.failed_by_type {
            out.push_str(&format!("  back to the DLQ as {t}  {n}\n"));
        }
        out
    }

    /// The report, as one JSON object.
    pub fn json(&self) -> Value {
        json!({ "replay": {
            "read": self.read,
            "selected": self.selected,
            "sent": self.sent,
            "sent_to_dlq": self.to_dlq,
            "exhausted": self.exhausted,
            "too_large": self.truncated,
            "skipped_by_filter": self.filtered,
            "by_target": self.by_target,
            "back_to_dlq_by_error_type": self.failed_by_type,
            "interrupted": self.interrupted,
        }})
    }
}

/// A token bucket: at most `rate` records a second, in bursts of at most a tenth of a second's
/// worth (at least one).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64) -> TokenBucket {
        let burst = (rate / 10.0).max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token at `now`; how long to wait first when there is none.
    pub fn take_at(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Takes one token, sleeping until there is one.
    pub fn take(&mut self) {
        let wait = self.take_at(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// The replay producer's context: collects delivery results (by the index the record was sent
/// with) for the batch being sent.
#[derive(Default)]
struct ReplayContext {
    quiet: crate::kafka::QuietContext,
    results: std::sync::Mutex<Vec<(usize, Option<KafkaError>)>>,
}

impl ClientContext for ReplayContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(error, reason)
    }
}

impl ProducerContext for ReplayContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let e = result.as_ref().err().map(|(e, _)| e.clone());
        self.results
            .lock()
            .expect("replay results lock")
            .push((index, e));
    }
}

/// Whether a delivery error is the record's own (the topic refuses it: back to the DLQ), not a
/// broker or network trouble (the batch is aborted and the replay stops, to be run again).
fn record_error(e: &KafkaError) -> Option<ErrorType> {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code()? {
        C::MessageSizeTooLarge | C::InvalidMessageSize => Some(ErrorType::TooLarge),
        C::TopicAuthorizationFailed
        | C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::InvalidMessage
        | C::InvalidRecord
        | C::PolicyViolation => Some(ErrorType::ProduceFailed),
        C::InvalidTopic => Some(ErrorType::InvalidTopic),
        _ => None,
    }
}

/// How long one transaction step (init, send offsets, commit, abort) may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// The most records in one batch (one transaction).
const BATCH_RECORDS: usize = 1000;
/// The longest a batch is collected for before it is sent.
const BATCH_TIME: Duration = Duration::from_secs(1);

/// One record of a batch and what to do with it.
struct Item {
    record: DlqRecord,
    plan: Plan,
    /// In a produce request Kafka refused: sent alone on the next try.
    suspect: bool,
}

/// Builds Kafka headers.
fn owned_headers(h: &[(String, Vec<u8>)]) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(h.len());
    for (k, v) in h {
        out = out.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    out
}

/// A running replay.
struct Replayer<'a> {
    args: &'a ReplayRequest,
    brokers: String,
    group: String,
    consumer: BaseConsumer<crate::kafka::QuietContext>,
    producer: Option<BaseProducer<ReplayContext>>,
    counts: ReplayCounts,
    metrics: Option<Arc<Metrics>>,
}

impl Replayer<'_> {
    /// Sends `batch` and commits `offsets` in one transaction. Kafka refuses a produce request
    /// as a whole, so a refusal in a batch makes its records suspects: the transaction is
    /// aborted and the batch sent again, each suspect alone first; a suspect refused alone goes
    /// back to the DLQ instead (each retry, or each other one, settles at least one record, so this ends).
    fn send_batch(
        &mut self,
        batch: &mut [Item],
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), DlqError> {
        let Some(producer) = &self.producer else {
            return Ok(());
        };
        let dlq = self.args.topic.as_str();
        let mut tpl = TopicPartitionList::new();
        for (&p, &next) in offsets {
            tpl.add_partition_offset(dlq, p, Offset::Offset(next))
                .map_err(|e| {
                    DlqError::kafka(format!("committing offsets of {dlq}"), &self.brokers, e)
                })?;
        }
        let brokers = &self.brokers;
        let group = &self.group;
        let abort = |why: String| -> DlqError {
            let _ = producer.abort_transaction(TXN_TIMEOUT);
            DlqError::Batch { why }
        };
        let send = |i: usize, item: &Item| -> Result<(), DlqError> {
            let (topic, headers) = match &item.plan {
                Plan::Send(t) => (t.as_str(), item.record.replay_headers(dlq)),
                Plan::Fail(t, ty, why) => (
                    dlq,
                    item.record
                        .back_to_dlq_headers(dlq, group, t.as_deref(), *ty, why),
                ),
                _ => return Ok(()),
            };
            let mut rec = BaseRecord::with_opaque_to(topic, i)
                .payload(&item.record.value[..])
                .headers(owned_headers(&headers));
            if let Some(k) = &item.record.key {
                rec = rec.key(&k[..]);
            }
            loop {
                match producer.send(rec) {
                    Ok(()) => return Ok(()),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => {
                        return Err(abort(format!("sending to {topic} at {brokers}: {e}")))
                    }
                }
            }
        };
        // Flushes and reads the delivery results: Ok(true) when a record was refused (it is
        // marked: a suspect, or when `alone`, back to the DLQ).
        let settle = |batch: &mut [Item], alone: bool| -> Result<bool, DlqError> {
            if let Err(e) = producer.flush(TXN_TIMEOUT) {
                return Err(abort(format!("sending a batch to {brokers}: {e}")));
            }
            let results = std::mem::take(&mut *producer.context().results.lock().expect("lock"));
            let mut refused = false;
            let mut purged = false;
            for (i, e) in results {
                let Some(e) = e else { continue };
                let item = &mut batch[i];
                // A refusal makes the transaction abortable: librdkafka purges what was queued
                // after it. Those records are sent again with the batch.
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                ) {
                    purged = true;
                    continue;
                }
                match (&item.plan, record_error(&e)) {
                    (Plan::Send(t), Some(ty)) => {
                        refused = true;
                        if alone {
                            let why = format!("replay to {t} at {brokers}: {e}");
                            item.plan = Plan::Fail(Some(t.clone()), ty, why);
                        } else {
                            item.suspect = true;
                        }
                    }
                    (Plan::Send(t), None) => {
                        return Err(abort(format!("sending to {t} at {brokers}: {e}")))
                    }
                    _ => {
                        return Err(abort(format!(
                            "sending a record back to the DLQ {dlq} at {brokers}: {e}"
                        )))
                    }
                }
            }
            // Purged without a refusal of its own (after an abort, librdkafka may purge what
            // is queued while it bumps the producer epoch): the batch is tried again.
            Ok(refused || purged)
        };
        // Aborts the transaction to send the batch again.
        let abort_for_retry = || {
            producer
                .abort_transaction(TXN_TIMEOUT)
                .map_err(|e| DlqError::Batch {
                    why: format!(
                        "aborting a transaction at {brokers}: {e}{}",
                        fenced_hint(&e)
                    ),
                })
        };
        // Each abort costs a round more (see above).
        'retry: for _ in 0..4 * batch.len() + 4 {
            producer.begin_transaction().map_err(|e| DlqError::Batch {
                why: format!(
                    "beginning a transaction at {brokers}: {e}{}",
                    fenced_hint(&e)
                ),
            })?;
            producer.context().results.lock().expect("lock").clear();
            for i in 0..batch.len() {
                if batch[i].suspect && matches!(batch[i].plan, Plan::Send(_)) {
                    send(i, &batch[i])?;
                    if settle(batch, true)? {
                        abort_for_retry()?;
                        continue 'retry;
                    }
                }
            }
            for (i, item) in batch.iter().enumerate() {
                if !(item.suspect && matches!(item.plan, Plan::Send(_))) {
                    send(i, item)?;
                }
            }
            if settle(batch, false)? {
                abort_for_retry()?;
                continue;
            }
            let meta = self
                .consumer
                .group_metadata()
                .ok_or_else(|| DlqError::Batch {
                    why: "the DLQ consumer has no group metadata".into(),
                })?;
            let commit = producer
                .send_offsets_to_transaction(&tpl, &meta, TXN_TIMEOUT)
                .and_then(|()| producer.commit_transaction(TXN_TIMEOUT));
            if let Err(e) = commit {
                return Err(abort(format!(
                    "committing a batch at {brokers}: {e}{}",
                    fenced_hint(&e)
                )));
            }
            for item in batch.iter() {
                match &item.plan {
                    Plan::Send(t) => {
                        self.counts.sent += 1;
                        *self.counts.by_target.entry(t.clone()).or_default() += 1;
                        if let Some(m) = &self.metrics {
                            m.consumer
                                .dlq_replayed
                                .with_label_values(&[dlq, t.as_str()])
                                .inc();
                        }
                    }
                    Plan::Fail(_, ty, _) => {
                        self.counts.to_dlq += 1;
                        *self
                            .counts
                            .failed_by_type
                            .entry(ty.as_str().to_string())
                            .or_default() += 1;
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        Err(DlqError::Batch {
            why: format!("a batch kept being refused at {brokers}"),
        })
    }
}

/// What to do when a transaction call says this producer was fenced.
fn fenced_hint(e: &KafkaError) -> &'static str {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced) => {
            " (another `kgate dlq replay` of this DLQ in this --group started and took over; run one at a time per group)"
        }
        _ => "",
    }
}

/// Replays `args.topic`, stopping at the end offsets it had at the start, or when `stop` is
/// set (after committing the batch in progress). With `dry_run`, `shown` gets the records that
/// would be sent (with their target). `progress(records to read, counts so far)` is called as
/// records are read and after every batch (the CLI's progress line, the web UI's job).
pub fn replay(
    kafka: &KafkaConfig,
    args: &ReplayRequest,
    stop: &AtomicBool,
    metrics: Option<Arc<Metrics>>,
    shown: &mut Vec<(DlqRecord, String)>,
    progress: &mut dyn FnMut(u64, &ReplayCounts),
) -> Result<ReplayCounts, DlqError> {
    let brokers = kafka.brokers.join(",");
    let dlq = args.topic.as_str();
    let group = args.group();
    // The producer first: init_transactions fences a replay killed earlier and aborts its open
    // transaction, so the offsets read next are the last committed batch's.
    let producer = if args.dry_run {
        None
    } else {
        let p: BaseProducer<ReplayContext> = crate::kafka::producer_client_config(kafka)
            .set("transactional.id", transactional_id(&group, dlq))
            .set("transaction.timeout.ms", "120000")
            .set("message.timeout.ms", "60000")
            .set("allow.auto.create.topics", "false")
            .create_with_context(ReplayContext::default())
            .map_err(|e| DlqError::kafka("creating the producer", &brokers, e))?;
        p.init_transactions(TXN_TIMEOUT).map_err(|e| {
            let why = p.context().quiet.diagnosis(kafka).map(|d| d.to_string());
            DlqError::Transactions {
                brokers: brokers.clone(),
                why: why.unwrap_or_else(|| e.to_string()),
            }
        })?;
        Some(p)
    };
    let consumer: BaseConsumer<crate::kafka::QuietContext> =
        crate::kafka::base_client_config(kafka)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create_with_context(Default::default())
            .map_err(|e| DlqError::kafka("creating a consumer", &brokers, e))?;
    let mut ends = bounds(&consumer, kafka, dlq, args.since)?;
    // A --to that cannot be written would send every record back to the DLQ: refused first.
    if let Some(to) = &args.to {
        if let Err((_, why)) = topic_exists(&consumer, &brokers, to) {
            return Err(DlqError::Target {
                to: to.clone(),
                why,
            });
        }
    }
    // Go on where the group stopped.
    if !ends.is_empty() {
        let mut ask = TopicPartitionList::new();
        for &p in ends.keys() {
            ask.add_partition(dlq, p);
        }
        let committed = consumer
            .committed_offsets(ask, Duration::from_secs(30))
            .map_err(|e| {
                DlqError::kafka(
                    format!("reading the committed offsets of group {group} on {dlq}"),
                    &brokers,
                    e,
                )
            })?;
        for e in committed.elements() {
            if let (Offset::Offset(o), Some((low, _))) = (e.offset(), ends.get_mut(&e.partition()))
            {
                *low = o.max(*low);
            }
        }
        ends.retain(|_, (low, high)| low < high);
    }
    let total: u64 = ends
        .values()
        .map(|(l, h)| u64::try_from(h - l).unwrap_or(0))
        .sum();
    let mut r = Replayer {
        args,
        brokers: brokers.clone(),
        group: group.clone(),
        consumer,
        producer,
        counts: ReplayCounts::default(),
        metrics,
    };
    if ends.is_empty() {
        return Ok(r.counts);
    }
    let mut tpl = TopicPartitionList::new();
    for (&p, &(low, _)) in &ends {
        tpl.add_partition_offset(dlq, p, Offset::Offset(low))
            .map_err(|e| DlqError::kafka(format!("reading {dlq}"), &brokers, e))?;
    }
    r.consumer
        .assign(&tpl)
        .map_err(|e| DlqError::kafka(format!("reading {dlq}"), &brokers, e))?;
    let planner = Planner {
        dlq_topic: dlq,
        to: args.to.as_deref(),
        filter: Filter {
            error_type: args.error_type.clone(),
            source_topic: args.source_topic.clone(),
        },
        max_attempts: args.max_attempts,
    };
    let mut topics: HashMap<String, TargetCheck> = HashMap::new();
    let mut bucket = args.rate.map(TokenBucket::new);
    let mut last = Instant::now();
    while !ends.is_empty() && !stop.load(Ordering::Relaxed) {
        let mut batch: Vec<Item> = Vec::new();
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let started = Instant::now();
        while !ends.is_empty()
            && batch.len() < BATCH_RECORDS
            && started.elapsed() < BATCH_TIME
            && !stop.load(Ordering::Relaxed)
        {
            match r.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    let Some(&(_, end)) = ends.get(&m.partition()) else {
                        continue;
                    };
                    if m.offset() >= end {
                        ends.remove(&m.partition());
                        continue;
                    }
                    if m.offset() + 1 >= end {
                        ends.remove(&m.partition());
                    }
                    let record = DlqRecord::from_message(&m);
                    drop(m);
                    r.counts.read += 1;
                    offsets.insert(record.partition, record.offset + 1);
                    let consumer = &r.consumer;
                    let plan = planner.plan(&record, &mut |t| {
                        topics
                            .entry(t.to_string())
                            .or_insert_with(|| topic_exists(consumer, &brokers, t))
                            .clone()
                    });
                    match &plan {
                        Plan::Filtered => r.counts.filtered += 1,
                        Plan::Exhausted => {
                            r.counts.selected += 1;
                            r.counts.exhausted += 1;
                        }
                        Plan::Truncated => {
                            r.counts.selected += 1;
                            r.counts.truncated += 1;
                        }
                        Plan::Send(t) | Plan::Fail(Some(t), ..) if args.dry_run => {
                            r.counts.selected += 1;
                            if matches!(plan, Plan::Send(_)) {
                                r.counts.sent += 1;
                                *r.counts.by_target.entry(t.clone()).or_default() += 1;
                            } else {
                                r.counts.to_dlq += 1;
                            }
                            shown.push((record.clone(), t.clone()));
                        }
                        Plan::Fail(None, ..) if args.dry_run => {
                            r.counts.selected += 1;
                            r.counts.to_dlq += 1;
                            shown.push((record.clone(), "-".into()));
                        }
                        Plan::Send(_) | Plan::Fail(..) => {
                            r.counts.selected += 1;
                            if let Some(b) = &mut bucket {
                                b.take();
                                last = Instant::now();
                            }
                        }
                    }
                    if !args.dry_run {
                        batch.push(Item {
                            record,
                            plan,
                            suspect: false,
                        });
                    }
                }
                Some(Err(e)) => return Err(DlqError::kafka(format!("reading {dlq}"), &brokers, e)),
                None if last.elapsed() >= STALL => {
                    let left: Vec<String> = ends.keys().map(i32::to_string).collect();
                    return Err(DlqError::Stalled {
                        topic: dlq.into(),
                        brokers,
                        stall: STALL,
                        partitions: left.join(","),
                        txn: ", and is a transaction on it left open",
                    });
                }
                None => {
                    // A transaction marker or compacted record at the end: nothing to deliver.
                    if let Ok(at) = r.consumer.position() {
                        for e in at.elements() {
                            if let (Offset::Offset(o), Some(&(_, end))) =
                                (e.offset(), ends.get(&e.partition()))
                            {
                                if o >= end {
                                    ends.remove(&e.partition());
                                    offsets.entry(e.partition()).or_insert(o);
                                }
                            }
                        }
                    }
                }
            }
            progress(total, &r.counts);
        }
        if !offsets.is_empty() && !args.dry_run {
            r.send_batch(&mut batch, &offsets)?;
        }
        progress(total, &r.counts);
    }
    r.counts.interrupted = !ends.is_empty();
    Ok(r.counts)
}

/// Whether `topic` exists and may be written, from the metadata (never creating it).
fn topic_exists(
    consumer: &BaseConsumer<crate::kafka::QuietContext>,
    brokers: &str,
    topic: &str,
) -> TargetCheck {
    match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(md) => match md.topics().first().map(|t| (t.error(), t.partitions().len())) {
            Some((None, n)) if n > 0 => Ok(()),
            Some((Some(e), _)) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::TopicAuthorizationFailed => Err((
                ErrorType::ProduceFailed,
                format!("not authorized to write {topic} at {brokers}; grant these credentials Write on it, or replay with --to another topic"),
            )),
            _ => Err((
                ErrorType::ProduceFailed,
                format!("topic {topic} does not exist at {brokers}; create it (replay does not), or replay with --to another topic"),
            )),
        },
        Err(e) => Err((
            ErrorType::ProduceFailed,
            format!("reading the metadata of {topic} at {brokers}: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::read::tests::{dlq_rec, hdrs, KGATE};

    #[test]
    fn replay_takes_kgates_headers_off_and_keeps_the_inputs() {
        // An input header named like kgate's is kept: kgate's own is the last one.
        let r = dlq_rec(&[("trace", "t1"), ("source", "device-7")], KGATE);
        assert_eq!(
            r.original_headers(),
            hdrs(&[("trace", "t1"), ("source", "device-7")])
        );
        assert_eq!(
            r.replay_headers("e.dlq"),
            hdrs(&[
                ("trace", "t1"),
                ("source", "device-7"),
                ("replayed_from", "e.dlq[1]@42"),
                ("replay_count", "1"),
            ])
        );
        // An earlier replay's headers are replaced, its count goes on.
        let r = dlq_rec(
            &[
                ("trace", "t1"),
                ("replayed_from", "x[0]@1"),
                ("replay_count", "2"),
            ],
            KGATE,
        );
        assert_eq!(r.replay_count(), 2);
        assert_eq!(
            r.replay_headers("e.dlq"),
            hdrs(&[
                ("trace", "t1"),
                ("replayed_from", "e.dlq[1]@42"),
                ("replay_count", "3"),
            ])
        );
        // Back to the DLQ: the replayed record's headers, then kgate's for the new failure.
        let back = DlqRecord {
            headers: r.back_to_dlq_headers(
                "e.dlq",
                "g2",
                Some("gone.v1"),
                ErrorType::ProduceFailed,
                "topic gone.v1 does not exist",
            ),
            ..r.clone()
        };
        assert_eq!(back.replay_count(), 3);
        assert_eq!(back.header("source_topic").as_deref(), Some("gone.v1"));
        assert_eq!(back.header("error_type").as_deref(), Some("produce_failed"));
        assert_eq!(
            back.header("received_at").as_deref(),
            Some("2026-12-07T04:00:00.000Z")
        );
        assert!(back.header("failed_at").is_some());
        // Replayed once more, it comes out as it went in, with the count 4.
        assert_eq!(
            back.replay_headers("e.dlq"),
            hdrs(&[
                ("trace", "t1"),
                ("replayed_from", "e.dlq[1]@42"),
                ("replay_count", "4"),
            ])
        );
    }
    #[test]
    fn the_planner_filters_stops_at_max_attempts_and_refuses_bad_targets() {
        let planner = |to: Option<&'static str>, error_type: Option<&str>| Planner {
            dlq_topic: "e.dlq",
            to,
            filter: Filter {
                error_type: error_type.map(String::from),
                source_topic: None,
            },
            max_attempts: 2,
        };
        let mut exists = |t: &str| -> TargetCheck {
            if t == "gone.v1" {
                Err((ErrorType::ProduceFailed, "does not exist".into()))
            } else {
                Ok(())
            }
        };
        let r = dlq_rec(&[], KGATE);
        let p = planner(None, None);
        assert_eq!(p.plan(&r, &mut exists), Plan::Send("trades.v1".into()));
        assert_eq!(
            planner(Some("other.v1"), None).plan(&r, &mut exists),
            Plan::Send("other.v1".into())
        );
        assert_eq!(
            planner(None, Some("too_large")).plan(&r, &mut exists),
            Plan::Filtered
        );
        let tired = dlq_rec(&[("replay_count", "2")], KGATE);
        assert_eq!(p.plan(&tired, &mut exists), Plan::Exhausted);
        let mut cut = r.clone();
        cut.headers.extend(hdrs(&[("original_size", "9000000")]));
        assert_eq!(p.plan(&cut, &mut exists), Plan::Truncated);
        let to = |t: &str| {
            let mut r = r.clone();
            r.headers
                .push(("source_topic".into(), t.as_bytes().to_vec()));
            r
        };
        for (t, ty) in [
            ("gone.v1", ErrorType::ProduceFailed),
            ("e.dlq", ErrorType::TopicNotAllowed),
            ("__consumer_offsets", ErrorType::TopicNotAllowed),
            ("_schemas", ErrorType::TopicNotAllowed),
            ("bad topic", ErrorType::InvalidTopic),
        ] {
            match p.plan(&to(t), &mut exists) {
                Plan::Fail(Some(target), got, _) => {
                    assert_eq!((target.as_str(), got), (t, ty));
                }
                other => panic!("{t}: {other:?}"),
            }
        }
        let nowhere = dlq_rec(&[], &[("error_type", "produce_failed")]);
        assert!(matches!(
            p.plan(&nowhere, &mut exists),
            Plan::Fail(None, ErrorType::InvalidTopic, _)
        ));
    }
    #[test]
    fn the_transactional_id_is_stable_per_group_and_dlq() {
        assert_eq!(
            transactional_id("kgate-dlq-replay.e.dlq", "e.dlq"),
            "kgate-dlq-replay.kgate-dlq-replay.e.dlq.e.dlq"
        );
        assert_ne!(
            transactional_id("a", "e.dlq"),
            transactional_id("b", "e.dlq")
        );
    }

    #[test]
    fn the_bucket_paces() {
        // 100/s in bursts of 10: 10 at once, then one every 10 ms.
        let mut b = TokenBucket::new(100.0);
        let t0 = b.last;
        for _ in 0..10 {
            assert_eq!(b.take_at(t0), Duration::ZERO);
        }
        let wait = b.take_at(t0);
        assert!((wait.as_secs_f64() - 0.01).abs() < 1e-9, "{wait:?}");
        // A second later the bucket is full again, not fuller.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(b.take_at(t1), Duration::ZERO);
        }
        assert!(b.take_at(t1) > Duration::ZERO);
    }
}

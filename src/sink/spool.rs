//! A sink in front of another (the Kafka sink) that keeps what it takes in a disk spool
//! ([`crate::spool`]) until the inner sink has settled it.
//!
//! Why at the sink, not before the pipeline: what the sink receives is the pipeline's output
//! (topic, key, value, headers, partition), final and self-contained. Replaying it after a
//! crash needs neither the source nor the schema registry nor the transforms again, and gives
//! the very bytes the first attempt would have written (an Avro record keeps the schema id it
//! was encoded with, even if the subject moved on). Sources stay unaware of the spool: they see
//! a `Sink` whose `send` returns once the record is in the spool's buffer (or in memory), and
//! their `Ack` is answered when Kafka holds the record, as without a spool. Rejections go
//! through the spool too (their original bytes, headers and reason), so that a DLQ record is
//! not lost either.
//!
//! `when: always`: every record is appended (written through to the file, so a killed process
//! loses none; the group commit makes it durable against a power loss later, and is not waited
//! for: a record Kafka holds needs no disk); one forwarder hands records to the inner sink in
//! order. While the memory queue is full but no backlog is on disk, a sender first waits up to
//! [`HOLD_BEFORE_BACKLOG`] for room (the memory path's backpressure), so that a Kafka merely
//! slower than the feed does not make the forwarder read every record back from disk.
//! `when: overflow`: records go to the
//! inner sink from a bounded memory queue; once the queue is full, they are appended instead
//! (and every record after them, to keep the order) and read back from disk by the forwarder
//! when the inner sink takes records again. In both, a record is acked in the spool once Kafka
//! holds it or its DLQ record (a `Failed` one stays and is sent again); segments all acked are
//! deleted. At start, the records the spool still holds are produced first, in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, Notify};

use super::{OutRecord, Sink, Totals, Transactions};
use crate::event::{Ack, ErrorType, Event, Fate, Origin, Rejection};
use crate::metrics::SpoolMetrics;
use crate::spool::{Cursor, OnFull, Opened, Spool, SpoolError, SpoolSpec, SpoolWhen};

/// How many records the forwarder reads from disk at once.
const READ_BATCH: usize = 512;
/// How long a record taken by the spool may wait for room in the producer: for ever, in effect.
const WAIT_FOR_KAFKA: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long an `always` sender waits for room in the memory queue before it starts a backlog
/// on disk (see [`SpoolSink::take`]).
const HOLD_BEFORE_BACKLOG: Duration = Duration::from_millis(100);
/// How often a sender blocked on a full spool looks again (besides being woken).
const FULL_RETRY: Duration = Duration::from_millis(50);

/// What the forwarder hands on.
enum Item {
    Record {
        seq: Option<u64>,
        rec: OutRecord,
        partition: Option<i32>,
        ev: Event,
    },
    Rejection {
        seq: Option<u64>,
        ev: Event,
        r: Rejection,
    },
}

impl Item {
    fn ev(&mut self) -> &mut Event {
        match self {
            Item::Record { ev, .. } | Item::Rejection { ev, .. } => ev,
        }
    }

    fn set_seq(&mut self, s: u64) {
        match self {
            Item::Record { seq, .. } | Item::Rejection { seq, .. } => *seq = Some(s),
        }
    }

    /// How many bytes [`Item::encode`] writes.
    fn encoded_len(&self) -> usize {
        let headers = |h: &[(String, Vec<u8>)]| {
            4 + h.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>()
        };
        match self {
            Item::Record { rec, ev, .. } => {
                1 + 4
                    + 4
                    + rec.topic.len()
                    + 1
                    + rec.key.as_ref().map_or(0, |k| 4 + k.len())
                    + 4
                    + rec.value.len()
                    + 1
                    + if ev.raw != rec.value {
                        4 + ev.raw.len()
                    } else {
                        0
                    }
                    + headers(&rec.headers)
            }
            Item::Rejection { ev, r, .. } => {
                1 + 4 * 4
                    + r.error_type.as_str().len()
                    + r.message.len()
                    + r.source_topic.len()
                    + ev.raw.len()
                    + headers(&ev.headers)
            }
        }
    }

    /// The bytes the spool keeps of it (in one allocation of the exact size).
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len());
        match self {
            Item::Record {
                rec, partition, ev, ..
            } => {
                b.push(KIND_RECORD);
                b.extend_from_slice(&partition.unwrap_or(-1).to_le_bytes());
                put(&mut b, rec.topic.as_bytes());
                put_opt(&mut b, rec.key.as_deref());
                put(&mut b, &rec.value);
                // The input as received (for a DLQ record if Kafka refuses it), when it
                // differs from the value.
                put_opt(&mut b, (ev.raw != rec.value).then_some(&ev.raw[..]));
                put_headers(&mut b, &rec.headers);
            }
            Item::Rejection { ev, r, .. } => {
                b.push(KIND_REJECTION);
                put(&mut b, r.error_type.as_str().as_bytes());
                put(&mut b, r.message.as_bytes());
                put(&mut b, r.source_topic.as_bytes());
                put(&mut b, &ev.raw);
                put_headers(&mut b, &ev.headers);
            }
        }
        debug_assert_eq!(b.len(), self.encoded_len());
        b
    }
}

const KIND_RECORD: u8 = 1;
const KIND_REJECTION: u8 = 2;

fn put(b: &mut Vec<u8>, v: &[u8]) {
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    b.extend_from_slice(v);
}

fn put_opt(b: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            b.push(1);
            put(b, v);
        }
        None => b.push(0),
    }
}

fn put_headers(b: &mut Vec<u8>, h: &[(String, Vec<u8>)]) {
    b.extend_from_slice(&(h.len() as u32).to_le_bytes());
    for (k, v) in h {
        put(b, k.as_bytes());
        put(b, v);
    }
}

/// Reads back what [`Item::encode`] wrote.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn opt(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            _ => self.bytes().map(Some),
        }
    }
    fn headers(&mut self) -> Option<Vec<(String, Vec<u8>)>> {
        let n = self.u32()? as usize;
        let mut h = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            h.push((self.string()?, self.bytes()?.to_vec()));
        }
        Some(h)
    }
}

/// A spooled record made an [`Item`] again (its source's ack, if one still waits).
fn decode(pipeline: &Arc<str>, payload: &[u8], ack: Option<Ack>) -> Option<Item> {
    let mut r = Reader(payload);
    let origin = Origin::now(pipeline.clone(), Arc::from("spool"));
    match r.u8()? {
        KIND_RECORD => {
            let p = i32::from_le_bytes(r.take(4)?.try_into().ok()?);
            let topic: Arc<str> = Arc::from(std::str::from_utf8(r.bytes()?).ok()?);
            let key = r.opt()?.map(<[u8]>::to_vec);
            let value = Bytes::copy_from_slice(r.bytes()?);
            let raw = r.opt()?.map(Bytes::copy_from_slice);
            let headers = r.headers()?;
            let mut ev = Event::new(raw.unwrap_or_else(|| value.clone()), origin);
            ev.ack = ack.unwrap_or_default();
            Some(Item::Record {
                seq: None,
                rec: OutRecord {
                    topic,
                    key,
                    value,
                    headers,
                },
                partition: (p >= 0).then_some(p),
                ev,
            })
        }
        KIND_REJECTION => {
            let et = r.string()?;
            let error_type = ErrorType::ALL.into_iter().find(|e| e.as_str() == et)?;
            let message = r.string()?;
            let source_topic = r.string()?;
            let raw = Bytes::copy_from_slice(r.bytes()?);
            let mut ev = Event::new(raw, origin);
            ev.headers = r.headers()?;
            ev.ack = ack.unwrap_or_default();
            Some(Item::Rejection {
                seq: None,
                ev,
                r: Rejection {
                    error_type,
                    message,
                    source_topic,
                },
            })
        }
        _ => None,
    }
}

/// What a spooled record holds (`kgate spool inspect --records`).
#[derive(Debug, Clone)]
pub struct Spooled {
    /// The topic it goes to (a rejection: the topic it was meant for).
    pub topic: String,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value (a rejection: the input as received).
    pub value: Bytes,
    /// For a rejection on its way to the DLQ: why.
    pub rejected: Option<ErrorType>,
}

/// Reads a spool record's payload as [`SpoolSink`] wrote it; `None` when it is not one.
pub fn spooled(payload: &[u8]) -> Option<Spooled> {
    Some(match decode(&Arc::from(""), payload, None)? {
        Item::Record { rec, .. } => Spooled {
            topic: rec.topic.to_string(),
            key: rec.key,
            value: rec.value,
            rejected: None,
        },
        Item::Rejection { ev, r, .. } => Spooled {
            topic: r.source_topic,
            key: None,
            value: ev.raw,
            rejected: Some(r.error_type),
        },
    })
}

struct State {
    spool: Spool,
    /// Records from this sequence number on are on disk only: the forwarder reads them back.
    backlog_from: Option<u64>,
    /// The acks of records on disk only whose sources wait for them.
    waiting: HashMap<u64, Ack>,
}

struct Shared {
    name: Arc<str>,
    when: SpoolWhen,
    on_full: OnFull,
    fsync: Duration,
    state: Mutex<State>,
    /// Whether `State::backlog_from` is set (changed with it, under the lock): the forwarder
    /// reads it without the lock.
    in_backlog: AtomicBool,
    /// Records Kafka settled, to be acked in the spool at the next flush (or look at its
    /// state): the delivery callbacks do not contend with senders for the state's lock.
    acked: Mutex<Vec<u64>>,
    /// Records went to disk only: wakes the forwarder.
    backlog: Notify,
    /// A flush (which may have deleted segments) completed: wakes senders waiting for room.
    room: Notify,
    /// A record was settled: wakes `drain`.
    settled: Notify,
    /// Asks the flusher for a flush now.
    kick: std::sync::mpsc::SyncSender<()>,
    metrics: Option<SpoolMetrics>,
    /// Records taken into memory only (`overflow`) and not settled by the inner sink.
    outstanding: AtomicI64,
    /// Records on disk at start not yet handed on again (counted as replayed).
    replay_end: u64,
    stopped: AtomicBool,
    /// Where retries are spawned from (fates settle on the producer's threads).
    runtime: tokio::runtime::Handle,
    /// When the last write error was logged (unix s), to log one per period.
    warned_at: AtomicU64,
    /// Appends fail (a full disk): since when (unix ms; 0: they do not).
    failing_since: AtomicU64,
    /// Appends that failed since then.
    failed_writes: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state with the acks collected since the last look applied.
    fn state_acked(&self) -> MutexGuard<'_, State> {
        let mut st = self.state();
        let acked = std::mem::take(&mut *self.acked.lock().unwrap_or_else(|e| e.into_inner()));
        for seq in acked {
            st.spool.ack(seq);
        }
        st
    }

    /// Sets or clears the backlog (under the state's lock).
    fn set_backlog(&self, st: &mut State, from: Option<u64>) {
        st.backlog_from = from;
        self.in_backlog.store(from.is_some(), Ordering::Release);
    }

    fn kick(&self) {
        let _ = self.kick.try_send(());
    }

    /// One group commit: write and fsync what was appended, persist the acks, delete what is
    /// all acked; the fsync runs without the lock.
    fn flush(&self) {
        let job = {
            let mut st = self.state_acked();
            if !st.spool.is_dirty() {
                drop(st);
                self.update_metrics();
                return;
            }
            st.spool.begin_flush()
        };
        let result = job.and_then(|job| {
            let n = match job.sync() {
                Ok(n) => n,
                Err(source) => {
                    let mut st = self.state();
                    let path = st.spool.dir().to_path_buf();
                    st.spool.abandon(job);
                    return Err(SpoolError::Io {
                        path,
                        op: "fsync",
                        source,
                    });
                }
            };
            self.state().spool.complete(job, n)?;
            if let Some(m) = &self.metrics {
                m.fsyncs.inc_by(n);
            }
            Ok(())
        });
        if let Err(e) = result {
            if let Some(m) = &self.metrics {
                m.write_errors.inc();
            }
            self.warn(&e);
        }
        self.update_metrics();
        self.room.notify_waiters();
    }

    fn warn(&self, e: &SpoolError) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.warned_at.swap(now, Ordering::Relaxed) + 10 <= now {
            tracing::warn!(pipeline = %self.name, "{e}; records wait until the spool can write");
        }
    }

    /// An append failed (a full disk): the record stays with its sender, which waits and tries
    /// again. Counted each time; logged once per episode (until an append succeeds again).
    fn write_failed(&self, e: &SpoolError) {
        if let Some(m) = &self.metrics {
            m.write_errors.inc();
        }
        self.failed_writes.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis().max(1) as u64);
        if self
            .failing_since
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::error!(pipeline = %self.name, "{e}");
        }
    }

    /// An append succeeded: ends an episode of failed ones (logged).
    fn write_ok(&self, dir: &std::path::Path) {
        if self.failing_since.load(Ordering::Relaxed) == 0 {
            return;
        }
        let since = self.failing_since.swap(0, Ordering::AcqRel);
        if since == 0 {
            return;
        }
        let failed = self.failed_writes.swap(0, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let dir = dir.display();
        tracing::info!(pipeline = %self.name, failed_writes = failed, "spool {dir} takes records again after {:.1} s of failed writes (space was freed)", now.saturating_sub(since) as f64 / 1000.0);
    }

    fn update_metrics(&self) {
        let Some(m) = &self.metrics else {
            return;
        };
        let s = self.state_acked().spool.stats();
        m.bytes.set(s.bytes as i64);
        m.records.set(s.unacked as i64);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        m.oldest_age_seconds
            .set(s.oldest_ms.map_or(0, |t| now.saturating_sub(t) / 1000) as i64);
    }

    /// Records taken and not settled: in memory only, or in the spool and not acked.
    fn inflight(&self) -> i64 {
        self.outstanding.load(Ordering::Acquire) + self.state_acked().spool.stats().unacked as i64
    }
}

/// A sink that keeps records in a disk spool until its inner sink settled them; see the
/// module docs.
pub struct SpoolSink {
    inner: Arc<dyn Sink>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Item>,
}

impl SpoolSink {
    /// Opens the spool of `spec` for pipeline `name` in front of `inner`, starts its flusher
    /// and forwarder (in the current runtime); the records it still holds are handed on first.
    /// `memory` is how many records may wait in memory for the inner sink (`overflow`: before
    /// records go to disk). What opening found is returned for the caller to log.
    pub fn open(
        spec: &SpoolSpec,
        name: Arc<str>,
        inner: Arc<dyn Sink>,
        memory: usize,
        metrics: Option<SpoolMetrics>,
    ) -> Result<(Arc<SpoolSink>, Opened), SpoolError> {
        let (spool, opened) = Spool::open(&spec.dir, spec.options)?;
        if let Some(m) = &metrics {
            m.corruptions.inc_by(opened.truncations.len() as u64);
        }
        let backlog_from = (opened.unacked > 0).then(|| spool.unacked_cursor().next_seq);
        let replay_end = spool.next_seq();
        let (kick, kick_rx) = std::sync::mpsc::sync_channel(1);
        let shared = Arc::new(Shared {
            name,
            when: spec.when,
            on_full: spec.options.on_full,
            fsync: spec.fsync,
            state: Mutex::new(State {
                spool,
                backlog_from,
                waiting: HashMap::new(),
            }),
            in_backlog: AtomicBool::new(backlog_from.is_some()),
            acked: Mutex::new(Vec::new()),
            backlog: Notify::new(),
            room: Notify::new(),
            settled: Notify::new(),
            kick,
            metrics,
            outstanding: AtomicI64::new(0),
            replay_end,
            stopped: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            warned_at: AtomicU64::new(0),
            failing_since: AtomicU64::new(0),
            failed_writes: AtomicU64::new(0),
        });
        shared.update_metrics();
        let (tx, rx) = mpsc::channel(memory.max(1));
        let flusher = shared.clone();
        std::thread::Builder::new()
            .name(format!("spool-{}", flusher.name))
            .spawn(move || {
                while !flusher.stopped.load(Ordering::Acquire) {
                    let _ = kick_rx.recv_timeout(flusher.fsync);
                    flusher.flush();
                }
            })
            .map_err(|source| SpoolError::Io {
                path: spec.dir.clone(),
                op: "start its flusher thread",
                source,
            })?;
        let sink = Arc::new(SpoolSink {
            inner: inner.clone(),
            shared: shared.clone(),
            tx,
        });
        tokio::spawn(forward(shared, inner, rx));
        Ok((sink, opened))
    }

    /// The spool's state now.
    pub fn stats(&self) -> crate::spool::Stats {
        self.shared.state_acked().spool.stats()
    }

    /// Takes an item: to memory or disk per `when`, waiting for room when the spool is full
    /// and `on_full: block`.
    async fn take(&self, item: Item) {
        let sh = &self.shared;
        let mut item = item;
        let give_up = item.ev().max_wait.map(|w| Instant::now() + w);
        let mut payload: Option<Vec<u8>> = None;
        // `always` with the memory queue full but no backlog on disk yet: Kafka is behind, not
        // necessarily away. Wait a little for room, as the memory path would, instead of
        // starting a backlog that the forwarder must read back from disk (at full speed that
        // read-back was most of the spool's cost). Once a backlog exists, records go to disk
        // at once, so an outage costs this wait once.
        let mut permit = None;
        if sh.when == SpoolWhen::Always
            && self.tx.capacity() == 0
            && sh.state().backlog_from.is_none()
        {
            let hold = give_up.map_or(HOLD_BEFORE_BACKLOG, |t| {
                HOLD_BEFORE_BACKLOG.min(t.saturating_duration_since(Instant::now()))
            });
            if let Ok(Ok(p)) = tokio::time::timeout(hold, self.tx.reserve()).await {
                permit = Some(p);
            }
        }
        loop {
            item = match self.try_take(item, &mut payload, &mut permit) {
                None => return,
                Some(back) => back,
            };
            if give_up.is_some_and(|t| Instant::now() >= t) {
                item.ev().ack.resolve(Fate::Busy);
                return;
            }
            let room = sh.room.notified();
            tokio::select! {
                _ = room => {}
                _ = tokio::time::sleep(FULL_RETRY) => {}
            }
        }
    }

    /// One attempt of [`SpoolSink::take`]: the item back when it must wait for room.
    fn try_take(
        &self,
        mut item: Item,
        payload: &mut Option<Vec<u8>>,
        permit: &mut Option<mpsc::Permit<'_, Item>>,
    ) -> Option<Item> {
        let sh = &self.shared;
        let mut st = sh.state();
        if st.backlog_from.is_some() {
            // A backlog started meanwhile: after it, in order.
            *permit = None;
        }
        let disk_only = st.backlog_from.is_some() || (permit.is_none() && self.tx.capacity() == 0);
        if sh.when == SpoolWhen::Overflow && !disk_only {
            match self.tx.try_send(item) {
                Ok(()) => {
                    sh.outstanding.fetch_add(1, Ordering::AcqRel);
                    return None;
                }
                Err(mpsc::error::TrySendError::Full(back)) => item = back,
                Err(mpsc::error::TrySendError::Closed(mut back)) => {
                    back.ev().ack.resolve(Fate::Failed {
                        message: "the spool's forwarder stopped".into(),
                    });
                    return None;
                }
            }
        }
        let p = payload.get_or_insert_with(|| item.encode());
        match st.spool.append(p) {
            Ok(a) => {
                // Counted as it happens: records reach Kafka before the next flush.
                if let Some(m) = &sh.metrics {
                    m.writes.inc();
                }
                if sh.failing_since.load(Ordering::Relaxed) != 0 {
                    sh.write_ok(st.spool.dir());
                }
                if a.flush_now {
                    sh.kick();
                }
                if a.dropped_oldest > 0 {
                    tracing::warn!(pipeline = %sh.name, records = a.dropped_oldest, "the spool is full: its oldest segment was deleted (on_full: drop_oldest)");
                    if let Some(m) = &sh.metrics {
                        m.dropped.inc_by(a.dropped_oldest);
                    }
                    let t = self.inner.totals();
                    t.accepted.fetch_add(a.dropped_oldest, Ordering::Relaxed);
                    t.dropped.fetch_add(a.dropped_oldest, Ordering::Relaxed);
                    // Sources waiting for records that were on disk only learn their fate.
                    let w = st.spool.stats().watermark;
                    st.waiting.retain(|&seq, ack| {
                        if seq < w {
                            ack.resolve(Fate::Dropped);
                        }
                        seq >= w
                    });
                }
                let seq = a.seq;
                item.set_seq(seq);
                if let Some(p) = permit.take().filter(|_| !disk_only) {
                    // The room reserved in `take`, filled under the lock: memory order stays
                    // sequence order.
                    p.send(item);
                    return None;
                }
                if !disk_only {
                    match self.tx.try_send(item) {
                        Ok(()) => return None,
                        Err(
                            mpsc::error::TrySendError::Full(back)
                            | mpsc::error::TrySendError::Closed(back),
                        ) => item = back,
                    }
                }
                // On disk only: the forwarder reads it back in its turn.
                let ack = std::mem::take(&mut item.ev().ack);
                if ack.is_waiting() {
                    st.waiting.insert(seq, ack);
                }
                if st.backlog_from.is_none() {
                    sh.set_backlog(&mut st, Some(seq));
                }
                drop(st);
                sh.backlog.notify_one();
                None
            }
            Err(SpoolError::Full { .. }) if sh.on_full != OnFull::Block => {
                drop(st);
                if let Some(m) = &sh.metrics {
                    m.dropped.inc();
                }
                let t = self.inner.totals();
                t.accepted.fetch_add(1, Ordering::Relaxed);
                t.dropped.fetch_add(1, Ordering::Relaxed);
                item.ev().ack.resolve(Fate::Dropped);
                None
            }
            Err(SpoolError::Full { .. }) => Some(item),
            Err(e @ SpoolError::TooLarge { .. }) => {
                drop(st);
                sh.warn(&e);
                self.inner.totals().failed.fetch_add(1, Ordering::Relaxed);
                item.ev().ack.resolve(Fate::Failed {
                    message: e.to_string(),
                });
                None
            }
            Err(e) => {
                drop(st);
                // A full disk or a write error: the spool did not take it; the sender keeps it
                // (in memory) and tries again once a flush deleted segments, or soon
                // (backpressure: the source waits meanwhile). What is on disk goes on to Kafka.
                sh.write_failed(&e);
                Some(item)
            }
        }
    }
}

/// Hands records on to the inner sink in order: from memory, or read back from disk while
/// there is a backlog (first of all the records a previous run left).
async fn forward(shared: Arc<Shared>, inner: Arc<dyn Sink>, mut rx: mpsc::Receiver<Item>) {
    let mut cursor: Option<Cursor> = None;
    let mut replay_logged = false;
    loop {
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        // Memory first, without the lock. Senders put records in memory only while there is
        // no backlog, and start one under the lock after their last record there; so once the
        // backlog flag is seen, every record put in memory before it is seen too, and handed
        // on before the disk is read.
        let backlog = shared.in_backlog.load(Ordering::Acquire);
        match rx.try_recv() {
            Ok(item) => {
                hand_on(&shared, &inner, item).await;
                continue;
            }
            Err(mpsc::error::TryRecvError::Empty) => {}
            Err(mpsc::error::TryRecvError::Disconnected) => {
                if !backlog {
                    return;
                }
            }
        }
        let batch = if !backlog {
            cursor = None;
            None
        } else {
            let mut st = shared.state();
            match st.backlog_from {
                None => {
                    cursor = None;
                    None
                }
                Some(from) => {
                    let c = cursor.get_or_insert(Cursor::at(from));
                    let read = st
                        .spool
                        .write_buffered()
                        .and_then(|_| st.spool.read(c, READ_BATCH));
                    match read {
                        Ok(recs) if recs.is_empty() && c.next_seq >= st.spool.next_seq() => {
                            // Caught up: records go through memory again.
                            if from < shared.replay_end && !replay_logged {
                                replay_logged = true;
                                tracing::info!(pipeline = %shared.name, records = shared.replay_end - from, "spool: the records the last run left are handed to Kafka again");
                            }
                            shared.set_backlog(&mut st, None);
                            cursor = None;
                            None
                        }
                        Ok(recs) => {
                            let items: Vec<(u64, Option<Item>)> = recs
                                .iter()
                                .map(|r| {
                                    let ack = st.waiting.remove(&r.seq);
                                    (r.seq, decode(&shared.name, &r.payload, ack))
                                })
                                .collect();
                            Some((items, None))
                        }
                        Err(e) => Some((Vec::new(), Some(e))),
                    }
                }
            }
        };
        match batch {
            Some((_, Some(e))) => {
                shared.warn(&e);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Some((items, None)) if !items.is_empty() => {
                for (seq, item) in items {
                    if seq < shared.replay_end {
                        if let Some(m) = &shared.metrics {
                            m.replayed.inc();
                        }
                    }
                    match item {
                        Some(mut item) => {
                            item.set_seq(seq);
                            hand_on(&shared, &inner, item).await;
                        }
                        None => {
                            tracing::warn!(pipeline = %shared.name, seq, "a spooled record could not be read back (written by another kgate version?); skipped");
                            shared.state().spool.ack(seq);
                            shared.settled.notify_waiters();
                        }
                    }
                }
            }
            Some(_) => {
                // Nothing readable yet: wait for the next flush or append.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None => {
                let woke = shared.backlog.notified();
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => hand_on(&shared, &inner, item).await,
                        None => return,
                    },
                    _ = woke => {}
                }
            }
        }
    }
}

/// Hands one record on (one in the spool is in the kernel already: written through); its fate
/// acks it in the spool and reaches its source.
async fn hand_on(shared: &Arc<Shared>, inner: &Arc<dyn Sink>, mut item: Item) {
    let seq = match &item {
        Item::Record { seq, .. } | Item::Rejection { seq, .. } => *seq,
    };
    let source_ack = std::mem::take(&mut item.ev().ack);
    // Settled where the inner sink settles it (its delivery callback): no task per record.
    let settle = {
        let shared = shared.clone();
        let inner = inner.clone();
        move |fate: Option<Fate>| settle(&shared, inner, seq, source_ack, fate)
    };
    let ev = item.ev();
    ev.ack = Ack::call(settle);
    // It was taken (it is in the spool, or in memory in its turn): it waits for room in the
    // producer however long that takes (the spool's own `on_full` was applied when it was
    // taken; the producer's `on_full: drop_newest` does not drop it now).
    ev.max_wait = Some(WAIT_FOR_KAFKA);
    match item {
        Item::Record {
            rec, partition, ev, ..
        } => inner.send(rec, partition, ev).await,
        Item::Rejection { ev, r, .. } => inner.dead_letter(ev, r).await,
    }
}

/// A handed-on record's fate: acked in the spool and answered to its source, or (`Failed`)
/// kept and sent again; `None` (unanswered: the runtime is going away) leaves a record in
/// the spool for the next start.
fn settle(
    shared: &Arc<Shared>,
    inner: Arc<dyn Sink>,
    seq: Option<u64>,
    mut source_ack: Ack,
    fate: Option<Fate>,
) {
    match (fate, seq) {
        (Some(Fate::Failed { message }), Some(seq)) => {
            // Kafka holds neither it nor a DLQ record of it: the spool keeps it and sends it
            // again (its source waits on).
            tracing::warn!(pipeline = %shared.name, seq, "Kafka took neither a spooled record nor its DLQ record ({message}); it stays in the spool and is sent again in {RETRY_FAILED:?}");
            retry(shared.clone(), inner, seq, source_ack);
        }
        (Some(f), _) => {
            if let Some(seq) = seq {
                shared
                    .acked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(seq);
            }
            source_ack.resolve(f);
        }
        (None, _) => {}
    }
    if seq.is_none() {
        shared.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
    shared.settled.notify_waiters();
}

/// How long a spooled record whose fate was `Failed` waits before it is sent again.
const RETRY_FAILED: Duration = Duration::from_secs(1);

/// Sends record `seq` again from the spool after [`RETRY_FAILED`] (unless kgate is stopping:
/// then it stays for the next start).
fn retry(shared: Arc<Shared>, inner: Arc<dyn Sink>, seq: u64, source_ack: Ack) {
    let runtime = shared.runtime.clone();
    let again: BoxFuture<'static, ()> = Box::pin(async move {
        tokio::time::sleep(RETRY_FAILED).await;
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let item = {
            let st = shared.state();
            let mut c = Cursor::at(seq);
            st.spool
                .read(&mut c, 1)
                .ok()
                .and_then(|r| r.into_iter().next())
                .filter(|r| r.seq == seq)
                .and_then(|r| decode(&shared.name, &r.payload, Some(source_ack)))
        };
        // None: it is gone meanwhile (`on_full: drop_oldest`).
        if let Some(mut item) = item {
            item.set_seq(seq);
            hand_on(&shared, &inner, item).await;
        }
    });
    // From a delivery callback, outside the runtime.
    runtime.spawn(again);
}

impl Drop for SpoolSink {
    fn drop(&mut self) {
        // Its flusher and forwarder end with it.
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.kick();
        self.shared.backlog.notify_one();
    }
}

impl Sink for SpoolSink {
    fn send(&self, rec: OutRecord, partition: Option<i32>, ev: Event) -> BoxFuture<'_, ()> {
        Box::pin(self.take(Item::Record {
            seq: None,
            rec,
            partition,
            ev,
        }))
    }

    fn dead_letter(&self, ev: Event, r: Rejection) -> BoxFuture<'_, ()> {
        Box::pin(self.take(Item::Rejection { seq: None, ev, r }))
    }

    /// Waits until every record taken is settled (handed on from memory and disk, and settled
    /// by the inner sink) or `timeout` passes, then drains the inner sink and makes the acks
    /// durable; what is left stays in the spool for the next start.
    fn drain(&self, timeout: Duration) -> BoxFuture<'_, i64> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let settled = self.shared.settled.notified();
                if self.shared.inflight() <= 0 || tokio::time::Instant::now() >= deadline {
                    break;
                }
                self.shared.kick();
                tokio::select! {
                    _ = settled => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            let left = self
                .inner
                .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await;
            let shared = self.shared.clone();
            let _ = tokio::task::spawn_blocking(move || {
                shared.flush();
                shared.stopped.store(true, Ordering::Release);
                shared.kick();
            })
            .await;
            self.shared.inflight().max(left)
        })
    }

    fn totals(&self) -> &Totals {
        self.inner.totals()
    }

    fn inflight(&self) -> i64 {
        self.shared.inflight()
    }

    fn dlq_topic(&self) -> &str {
        self.inner.dlq_topic()
    }

    fn transactions(&self) -> Option<Arc<dyn Transactions>> {
        self.inner.transactions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{OnFull, SpoolOptions};

    /// An inner sink that takes at most `cap` records while closed (then `send` waits, like a
    /// full producer buffer with Kafka down) and answers them only once opened, in order.
    #[derive(Default)]
    struct Held {
        cap: usize,
        /// The first this many records sent are answered `Failed` (nothing written).
        fail_first: AtomicU64,
        state: Mutex<HeldState>,
        totals: Totals,
    }

    #[derive(Default)]
    struct HeldState {
        open: bool,
        held: Vec<(OutRecord, Event)>,
        delivered: Vec<OutRecord>,
    }

    impl HeldState {
        fn deliver(&mut self, rec: OutRecord, mut ev: Event) {
            ev.ack.resolve(Fate::Delivered {
                topic: rec.topic.to_string(),
                partition: 0,
                offset: self.delivered.len() as i64,
            });
            self.delivered.push(rec);
        }
    }

    impl Held {
        fn open(&self) {
            let mut st = self.state.lock().unwrap();
            st.open = true;
            for (rec, ev) in std::mem::take(&mut st.held) {
                st.deliver(rec, ev);
            }
        }

        fn held(&self) -> usize {
            self.state.lock().unwrap().held.len()
        }

        fn values(&self) -> Vec<String> {
            self.state
                .lock()
                .unwrap()
                .delivered
                .iter()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                .collect()
        }
    }

    impl Sink for Held {
        fn send(&self, rec: OutRecord, _p: Option<i32>, ev: Event) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                let mut ev = ev;
                let fail = self
                    .fail_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                if fail.is_ok() {
                    return ev.ack.resolve(Fate::Failed {
                        message: "refused".into(),
                    });
                }
                loop {
                    {
                        let mut st = self.state.lock().unwrap();
                        if st.open {
                            return st.deliver(rec, ev);
                        }
                        if st.held.len() < self.cap {
                            st.held.push((rec, ev));
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        }
        fn dead_letter(&self, mut ev: Event, r: Rejection) -> BoxFuture<'_, ()> {
            ev.ack.resolve(Fate::DeadLettered {
                error_type: r.error_type,
                message: r.message,
                partition: 0,
                offset: 0,
            });
            Box::pin(std::future::ready(()))
        }
        fn drain(&self, _t: Duration) -> BoxFuture<'_, i64> {
            Box::pin(std::future::ready(0))
        }
        fn totals(&self) -> &Totals {
            &self.totals
        }
        fn inflight(&self) -> i64 {
            0
        }
        fn dlq_topic(&self) -> &str {
            "held.dlq"
        }
    }

    fn spec(dir: &std::path::Path, when: SpoolWhen) -> SpoolSpec {
        SpoolSpec {
            dir: dir.join("p"),
            options: SpoolOptions::new(64 << 20, OnFull::Block),
            when,
            fsync: Duration::from_millis(5),
        }
    }

    fn record(i: usize) -> (OutRecord, Event) {
        let value = Bytes::from(format!("v{i}"));
        let rec = OutRecord {
            topic: Arc::from("t"),
            key: Some(format!("k{i}").into_bytes()),
            value: value.clone(),
            headers: vec![("h".into(), b"x".to_vec())],
        };
        (
            rec,
            Event::new(value, Origin::now(Arc::from("p"), Arc::from("test"))),
        )
    }

    fn expected(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("v{i}")).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn always_spools_every_record_then_hands_it_on_in_order() {
        let d = tempfile::tempdir().unwrap();
        let inner = Arc::new(Held::default());
        inner.open();
        let (s, opened) = SpoolSink::open(
            &spec(d.path(), SpoolWhen::Always),
            Arc::from("p"),
            inner.clone(),
            16,
            None,
        )
        .unwrap();
        assert_eq!(opened.unacked, 0);
        let mut fates = Vec::new();
        for i in 0..200 {
            let (rec, ev) = record(i);
            let (ack, rx) = Ack::channel();
            let mut ev = ev;
            ev.ack = ack;
            fates.push(rx);
            s.send(rec, None, ev).await;
        }
        assert_eq!(s.drain(Duration::from_secs(30)).await, 0);
        assert_eq!(inner.values(), expected(200));
        for (i, f) in fates.into_iter().enumerate() {
            assert!(
                matches!(f.await.unwrap(), Fate::Delivered { offset, .. } if offset == i as i64)
            );
        }
        let st = s.stats();
        assert_eq!((st.writes, st.unacked, st.segments), (200, 0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overflow_goes_to_disk_while_the_inner_sink_is_full_and_drains_in_order() {
        let d = tempfile::tempdir().unwrap();
        let inner = Arc::new(Held {
            cap: 10,
            ..Held::default()
        });
        let (s, _) = SpoolSink::open(
            &spec(d.path(), SpoolWhen::Overflow),
            Arc::from("p"),
            inner.clone(),
            8,
            None,
        )
        .unwrap();
        // Every send returns although the inner sink takes only 10: the feed keeps being read.
        for i in 0..500 {
            let (rec, ev) = record(i);
            s.send(rec, None, ev).await;
        }
        let st = s.stats();
        // At most the inner sink's 10, the queue's 8 and the one the forwarder holds went
        // through memory; the rest is on disk.
        assert!(st.writes >= 500 - 19, "{st:?}");
        assert_eq!(st.unacked, st.writes);
        assert!(inner.values().is_empty());
        inner.open();
        assert_eq!(s.drain(Duration::from_secs(30)).await, 0);
        assert_eq!(inner.values(), expected(500));
        assert_eq!(s.stats().unacked, 0);
        // Back to memory once drained.
        let writes = s.stats().writes;
        let (rec, ev) = record(500);
        s.send(rec, None, ev).await;
        assert_eq!(s.drain(Duration::from_secs(30)).await, 0);
        assert_eq!(s.stats().writes, writes);
        assert_eq!(inner.values(), expected(501));
    }

    #[test]
    fn records_left_unacked_are_handed_on_first_at_the_next_start() {
        let d = tempfile::tempdir().unwrap();
        let sp = spec(d.path(), SpoolWhen::Always);
        // First run: the inner sink takes 30 and answers none; then the process "dies".
        {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let inner = Arc::new(Held {
                cap: 1000,
                ..Held::default()
            });
            rt.block_on(async {
                let (s, _) = SpoolSink::open(&sp, Arc::from("p"), inner.clone(), 64, None).unwrap();
                for i in 0..30 {
                    let (rec, ev) = record(i);
                    s.send(rec, None, ev).await;
                }
                while inner.held() < 30 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                std::mem::forget(s);
            });
            drop(rt);
        }
        // The dead run's spool still holds the directory lock until its state goes: here the
        // forgotten sink keeps it, so a new start in the same process sees it locked, as a
        // second kgate would.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let inner = Arc::new(Held::default());
        inner.open();
        let e = rt
            .block_on(async { SpoolSink::open(&sp, Arc::from("p"), inner.clone(), 64, None) })
            .err()
            .unwrap();
        assert!(matches!(e, SpoolError::Locked { .. }), "{e}");
        // Another directory with the same files stands for the restarted process.
        let copy = tempfile::tempdir().unwrap();
        let to = copy.path().join("p");
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&sp.dir).unwrap() {
            let f = f.unwrap();
            if f.file_name() != "LOCK" {
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        }
        let sp2 = spec(copy.path(), SpoolWhen::Always);
        rt.block_on(async {
            let (s, opened) =
                SpoolSink::open(&sp2, Arc::from("p"), inner.clone(), 64, None).unwrap();
            assert_eq!(opened.unacked, 30);
            for i in 30..40 {
                let (rec, ev) = record(i);
                s.send(rec, None, ev).await;
            }
            assert_eq!(s.drain(Duration::from_secs(30)).await, 0);
        });
        assert_eq!(inner.values(), expected(40));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_spool_drops_or_answers_busy_per_on_full() {
        for on_full in [OnFull::DropNewest, OnFull::Block] {
            let d = tempfile::tempdir().unwrap();
            // Room for about 20 records; the inner sink takes 1000 and answers none.
            let mut sp = spec(d.path(), SpoolWhen::Always);
            sp.options = SpoolOptions {
                max_bytes: 20 * (crate::spool::FRAME_LEN + 40) + crate::spool::HEADER_LEN,
                segment_bytes: 1 << 20,
                batch_bytes: 1 << 20,
                on_full,
                write_through: true,
            };
            let inner = Arc::new(Held {
                cap: 1000,
                ..Held::default()
            });
            let (s, _) = SpoolSink::open(&sp, Arc::from("p"), inner.clone(), 64, None).unwrap();
            let mut fates = Vec::new();
            for i in 0..40 {
                let (rec, mut ev) = record(i);
                let (ack, rx) = Ack::channel();
                ev.ack = ack;
                ev.max_wait = Some(Duration::from_millis(1));
                fates.push(rx);
                s.send(rec, None, ev).await;
            }
            let taken = s.stats().writes as usize;
            assert!((10..40).contains(&taken), "{taken} taken");
            // The rest was answered at once: dropped (counted) or busy (not accepted).
            for f in fates.drain(taken..) {
                let fate = f.await.unwrap();
                match on_full {
                    OnFull::DropNewest => assert_eq!(fate, Fate::Dropped),
                    _ => assert_eq!(fate, Fate::Busy),
                }
            }
            let dropped = inner.totals().dropped.load(Ordering::Relaxed) as usize;
            match on_full {
                OnFull::DropNewest => assert_eq!(dropped, 40 - taken),
                _ => assert_eq!(dropped, 0),
            }
            // Once Kafka answers, the taken ones are delivered, in order.
            inner.open();
            assert_eq!(s.drain(Duration::from_secs(30)).await, 0);
            assert_eq!(inner.values(), expected(taken));
            for f in fates {
                assert!(matches!(f.await.unwrap(), Fate::Delivered { .. }));
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_kafka_failed_stays_in_the_spool_and_is_sent_again() {
        let d = tempfile::tempdir().unwrap();
        let inner = Arc::new(Held {
            fail_first: AtomicU64::new(3),
            ..Held::default()
        });
        inner.open();
        let (s, _) = SpoolSink::open(
            &spec(d.path(), SpoolWhen::Always),
            Arc::from("p"),
            inner.clone(),
            64,
            None,
        )
        .unwrap();
        let mut fates = Vec::new();
        for i in 0..10 {
            let (rec, mut ev) = record(i);
            let (ack, rx) = Ack::channel();
            ev.ack = ack;
            fates.push(rx);
            s.send(rec, None, ev).await;
        }
        assert_eq!(s.drain(Duration::from_secs(30)).await, 0);
        let mut got = inner.values();
        got.sort_by_key(|v| v[1..].parse::<u32>().unwrap());
        assert_eq!(got, expected(10), "each once");
        // Its source learns the fate of the second attempt.
        for f in fates {
            assert!(matches!(f.await.unwrap(), Fate::Delivered { .. }));
        }
        assert_eq!(s.stats().unacked, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_holds_the_source_back_and_drains_while_still_full() {
        let d = tempfile::tempdir().unwrap();
        let inner = Arc::new(Held {
            cap: 10_000,
            ..Held::default()
        });
        let (s, _) = SpoolSink::open(
            &spec(d.path(), SpoolWhen::Always),
            Arc::from("p"),
            inner.clone(),
            16,
            None,
        )
        .unwrap();
        // A disk that holds some 50 of these records (Kafka is down meanwhile).
        s.shared.state().spool.set_disk_cap(Some(3_000));
        let n = 400;
        let sent = Arc::new(AtomicU64::new(0));
        let (s2, sent2) = (s.clone(), sent.clone());
        let feed = tokio::spawn(async move {
            let mut fates = Vec::new();
            for i in 0..n {
                let (rec, mut ev) = record(i);
                let (ack, rx) = Ack::channel();
                ev.ack = ack;
                fates.push(rx);
                s2.send(rec, None, ev).await;
                sent2.fetch_add(1, Ordering::SeqCst);
            }
            fates
        });
        // The disk fills: the source is held back (its send does not return).
        while s.shared.failed_writes.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let held_at = sent.load(Ordering::SeqCst);
        assert!(held_at < n as u64, "never held back");
        assert_eq!(s.stats().writes, held_at);
        // Kafka returns, the disk stays as small: what is on disk goes, its segments are
        // deleted, and the rest is taken and delivered, each once, in order.
        inner.open();
        let fates = feed.await.unwrap();
        assert_eq!(s.drain(Duration::from_secs(60)).await, 0);
        assert_eq!(inner.values(), expected(n));
        for f in fates {
            assert!(matches!(f.await.unwrap(), Fate::Delivered { .. }));
        }
        let st = s.stats();
        assert_eq!((st.writes, st.unacked), (n as u64, 0));
        // The episode ended (an append went through after the failures).
        assert_eq!(s.shared.failing_since.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_spooled_rejection_and_record_read_back_as_written() {
        let (rec, mut ev) = record(7);
        ev.raw = Bytes::from_static(b"{\"raw\":1}");
        let item = Item::Record {
            seq: None,
            rec,
            partition: Some(3),
            ev,
        };
        let back = decode(&Arc::from("p"), &item.encode(), None).unwrap();
        let Item::Record {
            rec, partition, ev, ..
        } = back
        else {
            panic!("a record")
        };
        assert_eq!(partition, Some(3));
        assert_eq!(&*rec.topic, "t");
        assert_eq!(rec.key.as_deref(), Some(&b"k7"[..]));
        assert_eq!(&rec.value[..], b"v7");
        assert_eq!(rec.headers, vec![("h".to_string(), b"x".to_vec())]);
        assert_eq!(&ev.raw[..], b"{\"raw\":1}");
        let mut ev = Event::new(
            Bytes::from_static(b"not json"),
            Origin::now(Arc::from("p"), Arc::from("x")),
        );
        ev.headers = vec![("a".into(), b"b".to_vec())];
        let r = Rejection {
            error_type: ErrorType::InvalidJson,
            message: "bad".into(),
            source_topic: "t".into(),
        };
        let item = Item::Rejection {
            seq: None,
            ev,
            r: r.clone(),
        };
        let Some(Item::Rejection { ev, r: back, .. }) =
            decode(&Arc::from("p"), &item.encode(), None)
        else {
            panic!("a rejection")
        };
        assert_eq!(back, r);
        assert_eq!(&ev.raw[..], b"not json");
        assert_eq!(ev.headers, vec![("a".to_string(), b"b".to_vec())]);
        assert!(decode(&Arc::from("p"), &[9, 9], None).is_none());
    }
}

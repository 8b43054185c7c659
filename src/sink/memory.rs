//! A sink that keeps records in memory: the pipeline → sink → ack path without a broker, for
//! tests (and for any embedding that wants the records rather than Kafka).

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{OutRecord, Sink, Totals};
use crate::event::{Event, Fate, Rejection};

/// A record the sink holds, with the partition it was sent to.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The record.
    pub record: OutRecord,
    /// The partition named by the caller, if any.
    pub partition: Option<i32>,
}

/// Keeps every record and rejection; acks records as delivered at their index (topic offsets
/// count per topic) and rejections as dead-lettered at theirs. With a `capacity`, records past
/// it are answered [`Fate::Dropped`], as Kafka's sink does with `on_full: drop_newest`.
#[derive(Debug, Default)]
pub struct MemorySink {
    records: Mutex<Vec<Stored>>,
    rejected: Mutex<Vec<(Event, Rejection)>>,
    capacity: Option<usize>,
    totals: Totals,
}

impl MemorySink {
    /// An unbounded sink.
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// A sink that holds at most `n` records and drops the rest.
    pub fn with_capacity(n: usize) -> MemorySink {
        MemorySink {
            capacity: Some(n),
            ..MemorySink::default()
        }
    }

    /// The records delivered so far, in order.
    pub fn records(&self) -> Vec<Stored> {
        self.records.lock().expect("records lock").clone()
    }

    /// The rejections dead-lettered so far: the reason and the original bytes.
    pub fn rejections(&self) -> Vec<(Rejection, bytes::Bytes)> {
        self.rejected
            .lock()
            .expect("rejected lock")
            .iter()
            .map(|(ev, r)| (r.clone(), ev.raw.clone()))
            .collect()
    }
}

impl Sink for MemorySink {
    fn send(&self, rec: OutRecord, partition: Option<i32>, mut ev: Event) -> BoxFuture<'_, ()> {
        self.totals.accepted.fetch_add(1, Ordering::Relaxed);
        let mut records = self.records.lock().expect("records lock");
        if self.capacity.is_some_and(|c| records.len() >= c) {
            self.totals.dropped.fetch_add(1, Ordering::Relaxed);
            ev.ack.resolve(Fate::Dropped);
        } else {
            let offset = records
                .iter()
                .filter(|s| s.record.topic == rec.topic)
                .count() as i64;
            self.totals.delivered.fetch_add(1, Ordering::Relaxed);
            ev.ack.resolve(Fate::Delivered {
                topic: rec.topic.to_string(),
                partition: partition.unwrap_or(0),
                offset,
            });
            records.push(Stored {
                record: rec,
                partition,
            });
        }
        Box::pin(std::future::ready(()))
    }

    fn dead_letter(&self, mut ev: Event, r: Rejection) -> BoxFuture<'_, ()> {
        self.totals.accepted.fetch_add(1, Ordering::Relaxed);
        self.totals.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let mut rejected = self.rejected.lock().expect("rejected lock");
        ev.ack.resolve(Fate::DeadLettered {
            error_type: r.error_type,
            message: r.message.clone(),
            partition: 0,
            offset: rejected.len() as i64,
        });
        rejected.push((ev, r));
        Box::pin(std::future::ready(()))
    }

    fn drain(&self, _timeout: Duration) -> BoxFuture<'_, i64> {
        Box::pin(std::future::ready(0))
    }

    fn totals(&self) -> &Totals {
        &self.totals
    }

    fn inflight(&self) -> i64 {
        0
    }

    fn dlq_topic(&self) -> &str {
        "memory.dlq"
    }
}

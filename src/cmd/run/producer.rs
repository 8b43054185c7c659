//! The shared producer of `kgate run`, behind a lock so that a reload can swap it
//! (`Producer`), and a pipeline's handle on it (`OnProducer`), which counts what the pipeline
//! handed over until settled.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::event::{Event, Rejection, Unsettled};
use crate::sink::{KafkaSink, OutRecord, Sink, Totals};

/// The shared producer, swappable: a send holds its read lock while the producer takes the
/// record; a swap takes the write lock (new sends wait), drains and flushes the old producer,
/// and puts the new one in — so that records of one partition never overtake each other across
/// the swap and no pipeline restarts.
pub(super) struct Producer {
    pub(super) current: tokio::sync::RwLock<Arc<KafkaSink>>,
}

/// A pipeline's handle on the shared producer (with its own DLQ topic, if it has one): counts
/// what the pipeline handed over until each event's ack is settled ([`Ack::count_in`]), so
/// that a reload can wait for one pipeline's events to settle while the others keep producing.
pub(super) struct OnProducer {
    producer: Arc<Producer>,
    dlq: Option<Arc<str>>,
    dlq_topic: String,
    unsettled: Arc<Unsettled>,
    /// Only `accepted` (what it handed over): the fates are counted by the producer.
    totals: Totals,
}

impl OnProducer {
    pub(super) fn new(producer: Arc<Producer>, dlq: Option<&str>, root_dlq: &str) -> OnProducer {
        OnProducer {
            producer,
            dlq: dlq.map(Arc::from),
            dlq_topic: dlq.unwrap_or(root_dlq).to_string(),
            unsettled: Arc::default(),
            totals: Totals::default(),
        }
    }

    fn track(&self, ev: &mut Event) {
        ev.ack.count_in(&self.unsettled);
        self.totals.accepted.fetch_add(1, Ordering::Relaxed);
    }
}

impl Sink for OnProducer {
    fn send(&self, rec: OutRecord, partition: Option<i32>, mut ev: Event) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.track(&mut ev);
            let sink = self.producer.current.read().await;
            match &self.dlq {
                Some(t) => sink.send_to(rec, partition, ev, t).await,
                None => sink.send(rec, partition, ev).await,
            }
        })
    }
    fn dead_letter(&self, mut ev: Event, r: Rejection) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.track(&mut ev);
            let sink = self.producer.current.read().await;
            match &self.dlq {
                Some(t) => sink.reject(ev, r, t).await,
                None => sink.dead_letter(ev, r).await,
            }
        })
    }
    /// Waits until everything this pipeline handed over is settled (the producer itself is
    /// shared: it is flushed by whoever owns it).
    fn drain(&self, timeout: Duration) -> BoxFuture<'_, i64> {
        Box::pin(
            self.unsettled
                .settle_by(tokio::time::Instant::now() + timeout),
        )
    }
    fn totals(&self) -> &Totals {
        &self.totals
    }
    fn inflight(&self) -> i64 {
        self.unsettled.get()
    }
    fn dlq_topic(&self) -> &str {
        &self.dlq_topic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ack_counts_until_answered_or_let_go() {
        let c = Arc::new(Unsettled::default());
        let (mut a, rx) = crate::event::Ack::channel();
        let mut b = crate::event::Ack::none();
        a.count_in(&c);
        b.count_in(&c);
        b.count_in(&c);
        assert_eq!(c.get(), 2, "counted once each");
        a.resolve(crate::event::Fate::Dropped);
        assert_eq!(c.get(), 1);
        assert!(matches!(rx.await, Ok(crate::event::Fate::Dropped)));
        drop(b);
        assert_eq!(c.get(), 0);
        let left = c
            .settle_by(tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
        assert_eq!(left, 0);
    }
}

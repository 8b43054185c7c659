//! Consumer group lag over time, sampled while the UI runs (the group page's chart,
//! `GET /api/groups/{group}/history`).
//!
//! Only groups someone looked at are sampled: a group's page (or its API) marks it watched,
//! and a background task reads the lag of every group watched within [`WATCH_FOR`] once per
//! `ui.lag_sample_interval`. Memory is bounded: at most [`MAX_SAMPLES`] samples per group (a
//! ring: the oldest goes), at most [`MAX_GROUPS`] groups (the one looked at longest ago goes),
//! and at most [`MAX_TOPICS`] topics per sample (the ones with the most lag; the total counts
//! them all).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, ErrorKind, GroupDetail};

/// Samples kept per group (an hour at the default interval of 10 s).
pub const MAX_SAMPLES: usize = 360;
/// Groups kept.
pub const MAX_GROUPS: usize = 200;
/// Topics kept per sample (the chart draws the first few; with every bound reached, 720,000
/// topic entries at most).
pub const MAX_TOPICS: usize = 10;
/// How long after the last look a group is still sampled.
pub const WATCH_FOR: Duration = Duration::from_secs(3600);
/// Groups read at once by the sampler.
const AT_ONCE: usize = 8;

/// One reading of a group's lag.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Sample {
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Σ lag over every partition with a committed offset.
    pub total_lag: i64,
    /// Lag by topic (the [`MAX_TOPICS`] with the most lag).
    pub topics: BTreeMap<String, i64>,
}

impl Sample {
    /// The lag `d` shows, now.
    pub fn of(d: &GroupDetail) -> Sample {
        let mut by: HashMap<&str, i64> = HashMap::new();
        for p in &d.partitions {
            *by.entry(p.topic.as_str()).or_default() += p.lag.unwrap_or(0);
        }
        let mut by: Vec<(&str, i64)> = by.into_iter().collect();
        by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Sample {
            time_ms,
            total_lag: d.total_lag,
            topics: by
                .into_iter()
                .take(MAX_TOPICS)
                .map(|(t, l)| (t.to_string(), l))
                .collect(),
        }
    }
}

struct Watched {
    /// The last look (page or API).
    viewed: Instant,
    /// When the newest sample was taken.
    sampled: Option<Instant>,
    samples: VecDeque<Sample>,
}

/// The samples of every watched group.
pub struct LagHistory {
    interval: Duration,
    groups: Mutex<HashMap<String, Watched>>,
}

impl LagHistory {
    /// An empty history sampled every `interval`.
    pub fn new(interval: Duration) -> LagHistory {
        LagHistory {
            interval,
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `group` watched (someone looks at it); makes room by dropping the group looked
    /// at longest ago.
    pub fn watch(&self, group: &str) {
        let mut g = self.lock();
        if let Some(w) = g.get_mut(group) {
            w.viewed = Instant::now();
            return;
        }
        if g.len() >= MAX_GROUPS {
            if let Some(oldest) = g
                .iter()
                .min_by_key(|(_, w)| w.viewed)
                .map(|(k, _)| k.clone())
            {
                g.remove(&oldest);
            }
        }
        g.insert(
            group.to_string(),
            Watched {
                viewed: Instant::now(),
                sampled: None,
                samples: VecDeque::new(),
            },
        );
    }

    /// Whether a sample taken now would come too soon after the newest (less than 90 % of
    /// the interval; a page polling faster than the interval adds no samples).
    fn fresh(&self, w: &Watched) -> bool {
        w.sampled
            .is_some_and(|t| t.elapsed() < self.interval.mul_f64(0.9))
    }

    /// Adds `d`'s lag to `group`'s samples (if the group is watched and its newest sample is
    /// not fresh); true if added.
    pub fn record(&self, group: &str, d: &GroupDetail) -> bool {
        let mut g = self.lock();
        let Some(w) = g.get_mut(group) else {
            return false;
        };
        if self.fresh(w) {
            return false;
        }
        if w.samples.len() >= MAX_SAMPLES {
            w.samples.pop_front();
        }
        w.samples.push_back(Sample::of(d));
        w.sampled = Some(Instant::now());
        true
    }

    /// `group`'s samples, oldest first (empty if it is not watched).
    pub fn samples(&self, group: &str) -> Vec<Sample> {
        self.lock()
            .get(group)
            .map(|w| w.samples.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Stops watching `group` and drops its samples (it was deleted).
    pub fn forget(&self, group: &str) {
        self.lock().remove(group);
    }

    /// The groups to sample now: watched within [`WATCH_FOR`], newest sample not fresh.
    fn due(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, w)| w.viewed.elapsed() < WATCH_FOR && !self.fresh(w))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Samples the watched groups every interval until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        kafka: crate::kafka::KafkaConfig,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let due = self.due();
            let kafka = &kafka;
            let read = futures_util::stream::iter(due)
                .map(|g| async move {
                    let d = admin::describe_group(kafka, &g).await;
                    (g, d)
                })
                .buffer_unordered(AT_ONCE);
            tokio::pin!(read);
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = read.next() => n,
                };
                let Some((g, d)) = next else { break };
                match d {
                    Ok(d) => {
                        self.record(&g, &d);
                    }
                    // Deleted: nothing more to sample. Other errors (a broker away) leave a
                    // gap in the chart, and the next tick tries again.
                    Err(e) if e.kind() == ErrorKind::NotFound => self.forget(&g),
                    Err(_) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::PartitionLag;

    fn detail(lags: &[(&str, Option<i64>)]) -> GroupDetail {
        GroupDetail {
            group: "g".into(),
            state: "Empty".into(),
            protocol_type: String::new(),
            protocol: String::new(),
            members: vec![],
            partitions: lags
                .iter()
                .enumerate()
                .map(|(i, (t, l))| PartitionLag {
                    topic: t.to_string(),
                    partition: i as i32,
                    committed: l.map(|_| 0),
                    end: 0,
                    lag: *l,
                    member: None,
                })
                .collect(),
            total_lag: lags.iter().filter_map(|(_, l)| *l).sum(),
        }
    }

    #[test]
    fn a_sample_sums_lag_by_topic() {
        let s = Sample::of(&detail(&[
            ("a", Some(2)),
            ("a", Some(3)),
            ("b", None),
            ("c", Some(0)),
        ]));
        assert_eq!(s.total_lag, 5);
        assert_eq!(s.topics.len(), 3);
        assert_eq!(s.topics["a"], 5);
        assert_eq!(s.topics["b"], 0);
    }

    #[test]
    fn samples_are_a_ring_and_groups_are_capped() {
        let h = LagHistory::new(Duration::ZERO);
        let d = detail(&[("a", Some(1))]);
        assert!(!h.record("g", &d), "an unwatched group is not sampled");
        h.watch("g");
        for _ in 0..MAX_SAMPLES + 5 {
            assert!(h.record("g", &d));
        }
        assert_eq!(h.samples("g").len(), MAX_SAMPLES);
        for i in 0..MAX_GROUPS + 3 {
            h.watch(&format!("x{i}"));
        }
        assert_eq!(h.lock().len(), MAX_GROUPS);
        assert!(
            h.samples("g").is_empty(),
            "the group looked at longest ago went"
        );
        h.forget("x5");
        assert_eq!(h.lock().len(), MAX_GROUPS - 1);
    }

    #[test]
    fn a_fresh_sample_is_not_doubled() {
        let h = LagHistory::new(Duration::from_secs(3600));
        h.watch("g");
        let d = detail(&[("a", Some(1))]);
        assert!(h.record("g", &d));
        assert!(!h.record("g", &d));
        assert_eq!(h.samples("g").len(), 1);
        assert!(h.due().is_empty());
    }
}

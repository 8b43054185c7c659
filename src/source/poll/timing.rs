//! When to poll next: `Retry-After`, backoff after failures, wall-clock alignment, and the
//! pipeline's shared `max_rate`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

/// The longest `Retry-After` honoured: a day (an API asking for more is taken at a day).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(86_400);

/// A `Retry-After` value (`120`, or an HTTP date) as a wait from `now`; `None` when it is
/// neither. A date in the past is no wait.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    let wait = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

/// The wait after `failures` failed polls in a row: `interval` doubled per failure, capped at
/// `max`, with equal jitter (drawn from the upper half), and never less than `interval`.
pub fn backoff(failures: u32, interval: Duration, max: Duration) -> Duration {
    let exp = interval.saturating_mul(1u32 << failures.min(20));
    let d = exp.min(max);
    let ms = d.as_millis() as u64;
    let drawn = Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)));
    drawn.max(interval)
}

/// The first wall-clock multiple of `interval` (since the Unix epoch) strictly after `from`,
/// as a tokio instant.
pub fn next_aligned(from: SystemTime, interval: Duration) -> tokio::time::Instant {
    let wait = until_aligned(from, interval);
    let now = SystemTime::now();
    let target = from + wait;
    tokio::time::Instant::now() + target.duration_since(now).unwrap_or(Duration::ZERO)
}

/// From `from` to the next multiple of `interval` strictly after it.
fn until_aligned(from: SystemTime, interval: Duration) -> Duration {
    let since = from
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let step = interval.as_nanos().max(1);
    let rest = step - since % step;
    Duration::from_nanos(rest as u64)
}

/// `max_rate`: the pipeline's requests take turns, `spacing` apart.
#[derive(Debug)]
pub struct RateLimit {
    spacing: Duration,
    next: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl RateLimit {
    /// Requests at most one per `spacing`.
    pub fn new(spacing: Duration) -> RateLimit {
        RateLimit {
            spacing,
            next: std::sync::Mutex::new(None),
        }
    }

    /// The turn of a request asking at `now`: `now`, or `spacing` after the previous turn.
    fn slot(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        let mut next = self.next.lock().expect("rate lock");
        let at = next.map_or(now, |n| n.max(now));
        *next = Some(at + self.spacing);
        at
    }

    /// Waits for this request's turn.
    pub async fn acquire(&self) {
        let at = self.slot(tokio::time::Instant::now());
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = httpdate::parse_http_date("Mon, 07 Dec 2026 18:00:00 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Mon, 07 Dec 2026 18:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Mon, 07 Dec 2026 17:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date past is no wait"
        );
        assert_eq!(
            retry_after("99999999", now),
            Some(RETRY_AFTER_MAX),
            "capped at a day"
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_within_interval_and_max() {
        let i = Duration::from_secs(10);
        let max = Duration::from_secs(300);
        for _ in 0..200 {
            let one = backoff(1, i, max);
            assert!(one >= i && one <= 2 * i, "{one:?}");
            let three = backoff(3, i, max);
            assert!(three >= 40 * i / 10 && three <= 8 * i, "{three:?}");
            let many = backoff(30, i, max);
            assert!(many >= max / 2 && many <= max, "{many:?}");
        }
        // Jitter: not all the same.
        let draws: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff(4, i, max)).collect();
        assert!(draws.len() > 1);
        // Never below `interval`, even with a cap below it.
        assert_eq!(backoff(5, i, Duration::from_secs(1)), i);
    }

    #[test]
    fn aligned_polls_fall_on_multiples_of_the_interval() {
        // 1_000_005 = 66_667 × 15.
        let t = UNIX_EPOCH + Duration::from_secs(1_000_007);
        assert_eq!(
            until_aligned(t, Duration::from_secs(15)),
            Duration::from_secs(13)
        );
        let on = UNIX_EPOCH + Duration::from_secs(1_000_005);
        assert_eq!(
            until_aligned(on, Duration::from_secs(15)),
            Duration::from_secs(15),
            "strictly after"
        );
    }

    #[test]
    fn the_rate_limit_spaces_turns() {
        let r = RateLimit::new(Duration::from_millis(200));
        let t0 = tokio::time::Instant::now();
        // Six requests at once: turns 200 ms apart.
        let turns: Vec<Duration> = (0..6).map(|_| r.slot(t0) - t0).collect();
        let want: Vec<Duration> = (0..6).map(|i| Duration::from_millis(200 * i)).collect();
        assert_eq!(turns, want);
        // A request long after the last turn goes at once.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(r.slot(later), later);
        assert_eq!(r.slot(later) - later, Duration::from_millis(200));
    }
}

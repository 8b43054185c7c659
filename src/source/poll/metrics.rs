//! The `http_poll` series, per pipeline and request URL template (redacted): polls, errors by
//! status, events, duplicates skipped, response time.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

/// Response-time buckets from 10 ms to 60 s.
const RESPONSE_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The families, registered once per registry.
pub struct PollFamilies {
    polls: IntCounterVec,
    errors: IntCounterVec,
    events: IntCounterVec,
    duplicates: IntCounterVec,
    response: HistogramVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl PollFamilies {
    /// Registers the families in `r`.
    pub fn register(r: &Registry) -> PollFamilies {
        let l = &["pipeline", "url"];
        let response = HistogramVec::new(
            HistogramOpts::new(
                "kgate_http_poll_response_seconds",
                "Time from a poll's request to its whole response (or failure)",
            )
            .buckets(RESPONSE_BUCKETS.to_vec()),
            l,
        )
        .expect("valid metric");
        r.register(Box::new(response.clone()))
            .expect("registered once");
        PollFamilies {
            polls: counter(r, "kgate_http_poll_requests_total", "Polls sent", l),
            errors: counter(
                r,
                "kgate_http_poll_errors_total",
                "Failed polls by status: the HTTP status, timeout, connect, body, invalid_json, no_split_array",
                &["pipeline", "url", "status"],
            ),
            events: counter(
                r,
                "kgate_http_poll_events_total",
                "Events handed to the pipeline",
                l,
            ),
            duplicates: counter(
                r,
                "kgate_http_poll_duplicates_total",
                "Events skipped by dedupe (their key was already published or in flight)",
                l,
            ),
            response,
        }
    }

    /// The series of one request (its URL template, redacted).
    pub fn series(&self, pipeline: &str, url: &str) -> PollMetrics {
        let l = [pipeline, url];
        PollMetrics {
            polls: self.polls.with_label_values(&l),
            events: self.events.with_label_values(&l),
            duplicates: self.duplicates.with_label_values(&l),
            response_seconds: self.response.with_label_values(&l),
            errors: self.errors.clone(),
            pipeline: pipeline.to_string(),
            url: url.to_string(),
        }
    }
}

/// One request's series.
pub struct PollMetrics {
    /// Polls sent.
    pub polls: IntCounter,
    /// Events handed to the pipeline.
    pub events: IntCounter,
    /// Events skipped by dedupe.
    pub duplicates: IntCounter,
    /// Request → response (or failure).
    pub response_seconds: Histogram,
    errors: IntCounterVec,
    pipeline: String,
    url: String,
}

impl PollMetrics {
    /// Counts a failed poll by its status label.
    pub fn error(&self, status: &str) {
        self.errors
            .with_label_values(&[self.pipeline.as_str(), self.url.as_str(), status])
            .inc();
    }
}

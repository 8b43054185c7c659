//! Polling HTTP APIs: one task per request (and `for_each` item), each `GET`ting its URL every
//! `interval`, turning the response into events (one, or one per element of `split`), and
//! waiting for their fates before the next poll, so that a slow Kafka slows the polling instead
//! of piling responses up. Failures back off (honouring `Retry-After` on 429 and 503); the
//! pipeline's requests share one `max_rate`; `dedupe` skips what was already published.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Probe, ProbeCtx, Source, SourceCtx, SourceKind};
use crate::config::{At, ConfigError};
use crate::event::{ErrorType, Event, Fate, Origin, Rejection};
use crate::pipeline::Pipeline;
use crate::transform::{Doc, Meta, Template};

mod config;
mod dedupe;
mod metrics;
mod redact;
mod timing;

use config::{Checked, Target};
pub use config::{DedupeConfig, HttpPollSourceConfig, PollRequestConfig};
use dedupe::Window;
use metrics::{PollFamilies, PollMetrics};
pub use redact::redact_secrets;
use timing::{backoff, next_aligned, retry_after, RateLimit};

impl SourceKind for HttpPollSourceConfig {
    fn name(&self) -> &'static str {
        "http_poll"
    }
    fn resolve(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<Box<dyn Source>> {
        let checked = self.check(at, errors)?;
        Some(Box::new(HttpPollSource {
            checked,
            config: self.clone(),
        }))
    }
}

/// Resolved `source.http_poll`: the targets' URLs parsed, headers, dedupe key and rate.
#[derive(Debug)]
pub struct HttpPollSource {
    checked: Checked,
    config: HttpPollSourceConfig,
}

impl HttpPollSource {
    fn client(&self) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .timeout(self.config.timeout)
            .default_headers(self.checked.headers.clone())
            .user_agent(concat!("kgate/", env!("CARGO_PKG_VERSION")))
            .build()
    }
}

impl Source for HttpPollSource {
    /// One `GET` per request (its first item): the status and the time it took.
    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> BoxFuture<'a, Vec<Probe>> {
        Box::pin(async move {
            let p = ctx.pipeline;
            let client = match self.client() {
                Ok(c) => c,
                Err(e) => {
                    return vec![Probe::fail(format!(
                        "http_poll (pipeline {p}): cannot build the HTTP client: {e}"
                    ))]
                }
            };
            let mut out = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for t in &self.checked.targets {
                if !seen.insert(&t.template) {
                    continue;
                }
                let started = Instant::now();
                let r = tokio::time::timeout(ctx.timeout, client.get(t.url.clone()).send()).await;
                let url = &t.shown;
                out.push(match r {
                    Ok(Ok(resp)) if resp.status().is_success() => Probe::ok(format!(
                        "http_poll {url} (pipeline {p}): {} in {} ms",
                        resp.status(),
                        started.elapsed().as_millis()
                    )),
                    Ok(Ok(resp)) => Probe::fail(format!(
                        "http_poll {url} (pipeline {p}): answered {}; check the URL, its parameters and the API key",
                        resp.status()
                    )),
                    Ok(Err(e)) => Probe::fail(format!(
                        "http_poll {url} (pipeline {p}): {}; is the API reachable from here?",
                        fetch_error_text(&e)
                    )),
                    Err(_) => Probe::fail(format!(
                        "http_poll {url} (pipeline {p}): no answer within {:?}",
                        ctx.timeout
                    )),
                });
            }
            out
        })
    }

    /// One task per target, and one writing the dedupe file when there is one.
    fn spawn(self: Box<Self>, ctx: SourceCtx, tasks: &mut JoinSet<()>) {
        let pipeline_name = ctx.pipeline.name().clone();
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(pipeline = %pipeline_name, error = %e, "http_poll source not started: cannot build the HTTP client");
                return;
            }
        };
        let dedupe = self.checked.dedupe.as_ref().map(|(key, max, file)| {
            let window = match file {
                Some(f) => match Window::load(f, *max) {
                    Ok(w) => {
                        if !w.is_empty() {
                            tracing::info!(pipeline = %pipeline_name, keys = w.len(), file = %f.display(), "dedupe keys loaded");
                        }
                        w
                    }
                    Err(e) => {
                        tracing::warn!(pipeline = %pipeline_name, "{e}; starting with no remembered keys");
                        Window::new(*max)
                    }
                },
                None => Window::new(*max),
            };
            Arc::new(Dedupe {
                key: key.clone(),
                window: Mutex::new(window),
                file: file.clone(),
                changed: tokio::sync::Notify::new(),
            })
        });
        // Each poller holds a sender: the file's last write waits for all of them to end.
        let (done_tx, done_rx) = tokio::sync::mpsc::channel::<()>(1);
        if let Some(d) = dedupe.clone().filter(|d| d.file.is_some()) {
            tasks.spawn(write_dedupe_file(
                d,
                ctx.stop.clone(),
                done_rx,
                pipeline_name.clone(),
            ));
        }
        let families = ctx.metrics.families(PollFamilies::register);
        let shared = Arc::new(Shared {
            client,
            pipeline: ctx.pipeline.clone(),
            rate: self.checked.spacing.map(RateLimit::new),
            split: self.checked.split.clone(),
            dedupe,
            interval: self.config.interval,
            align: self.config.align,
            backoff_max: self.config.backoff_max,
            max_body: self.config.max_body.0,
            raw_on_error: self.config.raw_on_error,
        });
        for t in self.checked.targets {
            let m = families.series(&pipeline_name, &t.template);
            let poller = Poller {
                shared: shared.clone(),
                target: t,
                m,
                stop: ctx.stop.clone(),
                _running: done_tx.clone(),
            };
            tasks.spawn(tracing::Instrument::in_current_span(poller.run()));
        }
    }
}

/// The pipeline's dedupe state.
#[derive(Debug)]
struct Dedupe {
    key: Template,
    window: Mutex<Window>,
    file: Option<std::path::PathBuf>,
    /// Keys were remembered (the file writer wakes).
    changed: tokio::sync::Notify,
}

/// Writes the dedupe file at most once a second while keys are added, and once more when the
/// pollers have ended (`running` closed) after the stop, with the fates they settled last.
async fn write_dedupe_file(
    d: Arc<Dedupe>,
    stop: CancellationToken,
    mut running: tokio::sync::mpsc::Receiver<()>,
    pipeline: Arc<str>,
) {
    let Some(path) = d.file.clone() else { return };
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = d.changed.notified() => false,
        };
        if stopping {
            // The pollers settle their last events' fates while the sink drains.
            while running.recv().await.is_some() {}
        }
        let keys = d.window.lock().expect("dedupe lock").snapshot();
        if let Some(keys) = keys {
            let p = path.clone();
            match tokio::task::spawn_blocking(move || dedupe::write_file(&p, keys)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(pipeline = %pipeline, "{e}"),
                Err(e) => {
                    tracing::warn!(pipeline = %pipeline, error = %e, "writing the dedupe file failed")
                }
            }
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// What the pipeline's pollers share.
struct Shared {
    client: reqwest::Client,
    pipeline: Arc<Pipeline>,
    rate: Option<RateLimit>,
    split: Option<String>,
    dedupe: Option<Arc<Dedupe>>,
    interval: Duration,
    align: bool,
    backoff_max: Duration,
    raw_on_error: bool,
    /// `max_body` in bytes.
    max_body: u64,
}

/// One target's loop.
struct Poller {
    shared: Arc<Shared>,
    target: Target,
    m: PollMetrics,
    stop: CancellationToken,
    /// Dropped when the poller ends.
    _running: tokio::sync::mpsc::Sender<()>,
}

/// A failed poll.
#[derive(Debug)]
struct Failure {
    /// The metrics' `status` label: the HTTP status, `timeout`, `connect`, `invalid_json`,
    /// `no_split_array`, `body`.
    label: String,
    /// What happened, for the log and the DLQ.
    message: String,
    /// The response, when there was one: status and body (for `raw_on_error`).
    response: Option<(u16, Bytes)>,
    /// How long the API asked us to wait (429/503 with `Retry-After`).
    retry_after: Option<Duration>,
}

/// A good response.
struct Fetched {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    value: serde_json::Value,
}

/// A reqwest error in words: timeout, connect, or its chain.
fn fetch_error_text(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A UUID (version 4, random) as text: each response's `${@response_id}`.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Poller {
    async fn run(self) {
        let interval = self.shared.interval;
        // The first poll: at the first aligned instant, or soon, spread over a second so that
        // many requests do not start in one burst.
        let mut next = if self.shared.align {
            next_aligned(SystemTime::now(), interval)
        } else {
            let spread = interval.min(Duration::from_secs(1)).as_millis() as u64;
            tokio::time::Instant::now()
                + Duration::from_millis(rand::rng().random_range(0..=spread))
        };
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            if let Some(rate) = &self.shared.rate {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = rate.acquire() => {}
                }
            }
            let polled = tokio::time::Instant::now();
            let polled_at = SystemTime::now();
            self.m.polls.inc();
            let result = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = self.fetch() => r,
            };
            self.m
                .response_seconds
                .observe(polled.elapsed().as_secs_f64());
            // Never more often than `interval`; aligned polls keep to the wall clock.
            let earliest = polled + interval;
            match result {
                Ok(f) => {
                    failures = 0;
                    self.publish(f).await;
                    next = if self.shared.align {
                        // The boundary after this poll's (which a rate limit may have delayed).
                        let half = polled_at + interval / 2;
                        next_aligned(half.max(SystemTime::now()), interval)
                    } else {
                        // A little jitter, so that requests started together drift apart.
                        let extra = (interval / 10).min(Duration::from_secs(1)).as_millis() as u64;
                        earliest + Duration::from_millis(rand::rng().random_range(0..=extra))
                    };
                }
                Err(fail) => {
                    failures = failures.saturating_add(1);
                    self.m.error(&fail.label);
                    let wait = match fail.retry_after {
                        Some(d) => d,
                        None => backoff(failures, interval, self.shared.backoff_max),
                    };
                    tracing::warn!(
                        pipeline = %self.shared.pipeline.name(),
                        url = %self.target.shown,
                        status = %fail.label,
                        retry_in = ?wait,
                        "poll failed: {}", fail.message
                    );
                    if self.shared.raw_on_error {
                        self.dead_letter(&fail).await;
                    }
                    next = earliest.max(tokio::time::Instant::now() + wait);
                }
            }
        }
    }

    /// `GET`s the target; a 2xx JSON answer, or why not.
    async fn fetch(&self) -> Result<Fetched, Failure> {
        let fail = |label: &str, message: String, response, retry_after| Failure {
            label: label.to_string(),
            message,
            response,
            retry_after,
        };
        let resp = self
            .shared
            .client
            .get(self.target.url.clone())
            .send()
            .await
            .map_err(|e| {
                let label = if e.is_timeout() { "timeout" } else { "connect" };
                fail(label, fetch_error_text(&e), None, None)
            })?;
        let status = resp.status();
        let retry = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now()));
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let max = self.shared.max_body;
        let too_large = |size: String| {
            fail(
                "too_large",
                format!(
                    "answered {status} with a body of {size} bytes, more than max_body ({max}); raise source.http_poll.max_body if the API's answers are that large"
                ),
                None,
                None,
            )
        };
        if let Some(len) = resp.content_length().filter(|&l| l > max) {
            return Err(too_large(len.to_string()));
        }
        let mut resp = resp;
        let mut read: Vec<u8> = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if (read.len() + c.len()) as u64 > max {
                        return Err(too_large(format!("over {max}")));
                    }
                    read.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => {
                    let label = if e.is_timeout() { "timeout" } else { "body" };
                    return Err(fail(
                        label,
                        format!("reading the body: {}", fetch_error_text(&e)),
                        None,
                        None,
                    ));
                }
            }
        }
        let body = bytes::Bytes::from(read);
        let code = status.as_u16();
        if !status.is_success() {
            let honoured = matches!(code, 429 | 503).then_some(retry).flatten();
            return Err(fail(
                &code.to_string(),
                format!("answered {status}"),
                Some((code, body)),
                honoured,
            ));
        }
        let value: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return Err(fail(
                    "invalid_json",
                    format!("answered {status} with a body that is not JSON: {e}"),
                    Some((code, body)),
                    None,
                ))
            }
        };
        if let Some(ptr) = &self.shared.split {
            if !value.pointer(ptr).is_some_and(serde_json::Value::is_array) {
                return Err(fail(
                    "no_split_array",
                    format!("answered {status} without an array at split `{ptr}`"),
                    Some((code, body)),
                    None,
                ));
            }
        }
        Ok(Fetched {
            status: code,
            headers,
            body,
            value,
        })
    }

    /// The source values of a response.
    fn meta(&self, status: u16, headers: &[(String, String)], response_id: &str) -> Meta {
        let mut meta = Meta::empty()
            .with("http.url", self.target.shown.clone())
            .with("http.status", status.to_string())
            .with(
                "fetched_at",
                humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            )
            .with("response_id", response_id.to_string());
        if let Some(item) = &self.target.item {
            meta.insert("item", item.clone());
        }
        for (n, v) in headers {
            meta.insert(format!("http.header.{n}"), v.clone());
        }
        meta
    }

    /// Hands a response's events to the pipeline and waits for their fates.
    async fn publish(&self, f: Fetched) {
        let response_id = uuid_v4();
        let meta = self.meta(f.status, &f.headers, &response_id);
        // `fetch` checked that `split` points at an array.
        let bodies: Vec<(Bytes, &serde_json::Value)> =
            match self.shared.split.as_ref().and_then(|p| f.value.pointer(p)) {
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .map(|v| (Bytes::from(serde_json::to_vec(v).expect("JSON")), v))
                    .collect(),
                _ => vec![(f.body.clone(), &f.value)],
            };
        let mut waiting = Vec::with_capacity(bodies.len());
        for (raw, value) in bodies {
            let key = match &self.shared.dedupe {
                Some(d) => match d.key.render(Doc::Value(value), &meta) {
                    Ok(k) => {
                        if !d.window.lock().expect("dedupe lock").claim(&k) {
                            self.m.duplicates.inc();
                            continue;
                        }
                        Some(k)
                    }
                    Err(e) => {
                        // Published without dedupe; the pipeline decides about the rest.
                        tracing::debug!(pipeline = %self.shared.pipeline.name(), field = %e.field, "dedupe key not rendered: field {}", e.found);
                        None
                    }
                },
                None => None,
            };
            let origin = Origin::now(
                self.shared.pipeline.name().clone(),
                Arc::from(self.target.shown.as_str()),
            );
            let (mut ev, rx) = Event::with_ack(raw, origin);
            ev.meta = meta.clone();
            self.m.events.inc();
            self.shared.pipeline.handle(ev).await;
            waiting.push((key, rx));
        }
        // The next poll waits for these fates: no pile-up when Kafka is slow.
        let mut not_persisted = 0usize;
        for (key, rx) in waiting {
            let persisted = rx.await.map(|f| f.is_persisted()).unwrap_or(false);
            if !persisted {
                not_persisted += 1;
            }
            if let (Some(d), Some(k)) = (&self.shared.dedupe, key) {
                d.window.lock().expect("dedupe lock").settle(&k, persisted);
                if persisted {
                    d.changed.notify_one();
                }
            }
        }
        if not_persisted > 0 {
            tracing::warn!(pipeline = %self.shared.pipeline.name(), url = %self.target.shown, events = not_persisted, "events of a response not written to Kafka (see the sink's log); the next poll fetches again");
        }
    }

    /// `raw_on_error`: the failed response to the DLQ as `http_error`.
    async fn dead_letter(&self, fail: &Failure) {
        let Some((status, body)) = &fail.response else {
            return;
        };
        let p = &self.shared.pipeline;
        let origin = Origin::now(p.name().clone(), Arc::from(self.target.shown.as_str()));
        let (mut ev, rx) = Event::with_ack(body.clone(), origin);
        ev.headers
            .push(("http_status".into(), status.to_string().into_bytes()));
        ev.meta = self.meta(*status, &[], &uuid_v4());
        let topic = p
            .processor()
            .fixed_topic()
            .unwrap_or(p.processor().topic_template())
            .to_string();
        let rejection = Rejection {
            error_type: ErrorType::HttpError,
            message: format!("GET {}: {}", self.target.shown, fail.message),
            source_topic: topic,
        };
        p.reject(ev, rejection).await;
        if !matches!(rx.await, Ok(Fate::DeadLettered { .. })) {
            tracing::warn!(pipeline = %p.name(), url = %self.target.shown, "the failed response could not be written to the DLQ");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_keeps_item_and_the_dedupe_key_and_fills_the_environment() {
        let text = "
kafka: {brokers: ['127.0.0.1:9092']}
pipelines:
  - name: prices
    source:
      http_poll:
        requests:
          - url: 'https://provider.example/query?symbol=${item}&apikey=${PROVIDER_KEY}'
            for_each: [AAPL, MSFT]
        interval: 15s
        dedupe: {key: '${symbol}|${timestamp}', window: 100}
    topic: price-events
    key: '${symbol}'
";
        let c = crate::gateway::Config::from_yaml_str(text, "kgate.yaml", &|k| {
            (k == "PROVIDER_KEY").then(|| "k3y".to_string())
        })
        .unwrap();
        let crate::source::SourceConfig::HttpPoll(p) = &c.pipelines[0].source else {
            panic!("http_poll");
        };
        assert_eq!(
            p.requests[0].url,
            "https://provider.example/query?symbol=${item}&apikey=k3y"
        );
        assert_eq!(p.dedupe.as_ref().unwrap().key, "${symbol}|${timestamp}");
        let mut errors = Vec::new();
        let checked = p.check(At("p"), &mut errors).unwrap();
        assert_eq!(
            checked.targets[1].url.as_str(),
            "https://provider.example/query?symbol=MSFT&apikey=k3y"
        );
        assert_eq!(
            checked.targets[1].shown,
            "https://provider.example/query?symbol=MSFT&apikey=***"
        );
        // `${item}` is kept in request URLs only; elsewhere it is an environment variable.
        let e = crate::gateway::Config::from_yaml_str(
            &text
                .replace("topic: price-events", "topic: 'p-${item}'")
                .replace("interval: 15s", "interval: '${item}'"),
            "kgate.yaml",
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("environment variable item is not set"), "{e}");
        assert!(
            e.contains("environment variable PROVIDER_KEY is not set"),
            "{e}"
        );
    }

    use crate::sink::{OutRecord, Sink, Totals};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A sink that holds each event, its ack unanswered, until the test answers it.
    #[derive(Debug, Default)]
    struct HoldSink {
        held: Mutex<Vec<Event>>,
        rejected: Mutex<Vec<Rejection>>,
        totals: Totals,
    }

    impl Sink for HoldSink {
        fn send(&self, _rec: OutRecord, _p: Option<i32>, ev: Event) -> BoxFuture<'_, ()> {
            self.held.lock().unwrap().push(ev);
            Box::pin(std::future::ready(()))
        }
        fn dead_letter(&self, ev: Event, r: Rejection) -> BoxFuture<'_, ()> {
            self.rejected.lock().unwrap().push(r);
            self.held.lock().unwrap().push(ev);
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
            "hold.dlq"
        }
    }

    impl HoldSink {
        fn len(&self) -> usize {
            self.held.lock().unwrap().len()
        }
        fn answer(&self, i: usize, fate: Fate) {
            self.held.lock().unwrap()[i].ack.resolve(fate);
        }
    }

    /// An API answering the same quote every time; counts its requests.
    async fn same_quote() -> (String, Arc<AtomicU64>) {
        serve_json(serde_json::json!({"symbol": "A", "ts": 1})).await
    }

    /// An API answering `body` every time; counts its requests.
    async fn serve_json(body: serde_json::Value) -> (String, Arc<AtomicU64>) {
        let n = Arc::new(AtomicU64::new(0));
        let counter = n.clone();
        let app = axum::Router::new().route(
            "/q",
            axum::routing::get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                async move { axum::Json(body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/q"), n)
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..1000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Starts `c`'s source into a pipeline (topic `t`) feeding a [`HoldSink`].
    fn start(
        c: &HttpPollSourceConfig,
    ) -> (
        Arc<HoldSink>,
        Arc<crate::metrics::Metrics>,
        CancellationToken,
        JoinSet<()>,
    ) {
        let source = c.resolve(At("p"), &mut Vec::new()).unwrap();
        let sink = Arc::new(HoldSink::default());
        let pc: crate::pipeline::PipelineConfig<serde_json::Value> =
            crate::config::from_yaml("name: p\nsource: {}\ntopic: t\n").unwrap();
        let pipeline = Arc::new(Pipeline::new(&pc, sink.clone()).unwrap());
        let metrics = crate::metrics::Metrics::new(&Default::default());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        source.spawn(
            SourceCtx {
                pipeline,
                metrics: metrics.clone(),
                stop: stop.clone(),
                http_routes: Default::default(),
                kafka: Default::default(),
                schemas: None,
            },
            &mut tasks,
        );
        (sink, metrics, stop, tasks)
    }

    /// A JSON answer without the `split` array is a failure: counted, backed off, and with
    /// `raw_on_error` dead-lettered as `http_error` with its status and body.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_without_the_split_array_is_a_failure() {
        let (url, requests) = serve_json(serde_json::json!({"error": "quota"})).await;
        let c: HttpPollSourceConfig = serde_yaml::from_str(&format!(
            "requests: [{{url: '{url}'}}]\ninterval: 20ms\nsplit: /data\nraw_on_error: true"
        ))
        .unwrap();
        let (sink, metrics, stop, mut tasks) = start(&c);
        until("a dead letter", || sink.len() == 1).await;
        // The poller waits for the DLQ record's fate too.
        let dead = |offset| Fate::DeadLettered {
            error_type: ErrorType::HttpError,
            message: String::new(),
            partition: 0,
            offset,
        };
        sink.answer(0, dead(0));
        until("another", || sink.len() == 2).await;
        sink.answer(1, dead(1));
        until("a third", || sink.len() == 3).await;
        stop.cancel();
        // A stopping poller still waits for the fate of what it handed over (the sink drains).
        sink.answer(2, dead(2));
        while tasks.join_next().await.is_some() {}
        let held = sink.held.lock().unwrap();
        assert_eq!(held[0].raw.as_ref(), br#"{"error":"quota"}"#);
        assert_eq!(
            held[0].headers,
            [("http_status".to_string(), b"200".to_vec())]
        );
        let r = sink.rejected.lock().unwrap()[0].clone();
        assert_eq!(r.error_type, ErrorType::HttpError);
        assert_eq!(
            r.message,
            format!("GET {url}: answered 200 OK without an array at split `/data`")
        );
        let errors = errors_counted(&metrics, "no_split_array");
        // Three answers, each counted; no fourth request while the third's letter is pending.
        assert_eq!((errors, requests.load(Ordering::SeqCst)), (3, 3));
    }

    /// `kgate_http_poll_errors_total{status}` as rendered (0 when not counted yet).
    fn errors_counted(metrics: &crate::metrics::Metrics, status: &str) -> u64 {
        metrics
            .render()
            .lines()
            .find(|l| {
                l.starts_with("kgate_http_poll_errors_total{")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    }

    /// An answer longer than `max_body` is a failure, counted as `too_large`, and makes no
    /// event (nor a DLQ record: its body was not read).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_longer_than_max_body_is_refused() {
        let big: Vec<u64> = (0..2_000).collect();
        let (url, requests) = serve_json(serde_json::json!({ "data": big })).await;
        let c: HttpPollSourceConfig = serde_yaml::from_str(&format!(
            "requests: [{{url: '{url}'}}]\ninterval: 20ms\nmax_body: 1KB\nraw_on_error: true"
        ))
        .unwrap();
        let (sink, metrics, stop, mut tasks) = start(&c);
        until("two refused answers", || {
            errors_counted(&metrics, "too_large") >= 2
        })
        .await;
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        assert_eq!(sink.len(), 0);
        assert!(requests.load(Ordering::SeqCst) >= 2);
    }

    /// The next poll waits for the previous response's fates; a dropped event's key is not
    /// remembered (the quote is sent again), a delivered one's is (later answers are skipped).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn polls_wait_for_fates_and_remember_only_persisted_keys() {
        let (url, requests) = same_quote().await;
        let c: HttpPollSourceConfig = serde_yaml::from_str(&format!(
            "requests: [{{url: '{url}'}}]\ninterval: 20ms\ndedupe: {{key: '${{symbol}}|${{ts}}'}}"
        ))
        .unwrap();
        let (sink, metrics, stop, mut tasks) = start(&c);
        until("the first event", || sink.len() == 1).await;
        // 25 intervals with the fate unanswered: no second request.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(sink.len(), 1);

        sink.answer(0, Fate::Dropped);
        until("the quote sent again", || sink.len() == 2).await;
        assert_eq!(requests.load(Ordering::SeqCst), 2);
        sink.answer(
            1,
            Fate::Delivered {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
        );
        until("three more polls", || requests.load(Ordering::SeqCst) >= 5).await;
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        assert_eq!(sink.len(), 2, "a delivered quote is not sent again");
        let text = metrics.render();
        let dups = text
            .lines()
            .find(|l| l.starts_with("kgate_http_poll_duplicates_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap();
        let polls = requests.load(Ordering::SeqCst);
        // Every answer after the delivered one was skipped (the last may have been cut by
        // the stop before it was read).
        assert!(dups + 2 == polls || dups + 3 == polls, "{dups} of {polls}");
        assert!(dups >= 2);
    }

    #[test]
    fn uuids_are_version_4_and_differ() {
        let a = uuid_v4();
        let b = uuid_v4();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
    }
}

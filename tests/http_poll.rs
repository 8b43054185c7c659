//! The `http_poll` source against a real HTTP server started here (axum on 127.0.0.1:0, serving
//! changing quotes, a 429 and a 503 with `Retry-After`, 500s, a response slower than `timeout`,
//! a body that is not JSON) and the real Kafka. Run through `scripts/test http_poll`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use common::*;

/// Each symbol's quotes: the timestamp moves every second answer, up to `LAST`, then stays.
const LAST: u64 = 4;
const KEY: &str = "s3cret-provider-key";

#[derive(Default)]
struct Served {
    /// Good answers per symbol.
    ok: HashMap<String, u64>,
    /// The distinct quotes served: (symbol, timestamp).
    quotes: BTreeSet<(String, u64)>,
    /// Requests per symbol, good or not.
    requests: HashMap<String, u64>,
    /// Per symbol: when the API said to come back (from its 429/503), and the requests that
    /// came earlier than that.
    not_before: HashMap<String, SystemTime>,
    too_early: u64,
    /// Requests without the API key.
    unauthorized: u64,
}

type Shared = Arc<Mutex<Served>>;

async fn quote(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let symbol = q.get("symbol").cloned().unwrap_or_default();
    let now = SystemTime::now();
    let nth = {
        let mut s = s.lock().unwrap();
        if q.get("apikey").map(String::as_str) != Some(KEY) {
            s.unauthorized += 1;
            return (StatusCode::UNAUTHORIZED, "no key").into_response();
        }
        if s.not_before.get(&symbol).is_some_and(|t| now < *t) {
            s.too_early += 1;
        }
        let n = s.requests.entry(symbol.clone()).or_default();
        *n += 1;
        *n
    };
    match (symbol.as_str(), nth) {
        ("LIMIT", 1) => {
            let back = now + Duration::from_secs(2);
            s.lock().unwrap().not_before.insert(symbol, back);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "2")],
                "slow down",
            )
                .into_response();
        }
        ("BUSY", 1) => {
            // An HTTP date, whole seconds: at least 2 s from now.
            let back =
                httpdate::parse_http_date(&httpdate::fmt_http_date(now + Duration::from_secs(3)))
                    .unwrap();
            s.lock().unwrap().not_before.insert(symbol, back);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, httpdate::fmt_http_date(back))],
                "maintenance",
            )
                .into_response();
        }
        ("BAD", 1 | 2) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response()
        }
        ("HTML", 1) => {
            return (
                [(header::CONTENT_TYPE, "text/html")],
                "<html>maintenance</html>",
            )
                .into_response()
        }
        ("SLOW", 1) => {
            // Past the source's 1 s timeout; had kgate read it, an unserved quote would show.
            tokio::time::sleep(Duration::from_secs(4)).await;
            return axum::Json(
                serde_json::json!({"data": [{"symbol": "SLOW", "price": 1, "timestamp": 999}]}),
            )
            .into_response();
        }
        _ => {}
    }
    let ts = {
        let mut s = s.lock().unwrap();
        let ok = s.ok.entry(symbol.clone()).or_default();
        let ts = (*ok / 2).min(LAST);
        *ok += 1;
        s.quotes.insert((symbol.clone(), ts));
        ts
    };
    axum::Json(serde_json::json!({
        "meta": {"provider": "test"},
        "data": [{"symbol": symbol, "price": 100 + ts, "timestamp": ts}]
    }))
    .into_response()
}

async fn serve() -> (String, Shared) {
    let served: Shared = Arc::default();
    let app = Router::new()
        .route("/query", get(quote))
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), served)
}

const SYMBOLS: [&str; 7] = ["AAPL", "MSFT", "LIMIT", "BUSY", "BAD", "HTML", "SLOW"];

fn config(api: &str, topic: &str, dlq: &str, mport: u16, keys: &std::path::Path) -> String {
    format!(
        r#"kafka:
  brokers: ['{b}']
metrics:
  listen: '127.0.0.1:{mport}'
dlq: {{topic: '{dlq}'}}
shutdown_timeout: 20s
pipelines:
  - name: prices
    source:
      http_poll:
        requests:
          - url: '{api}/query?function=GLOBAL_QUOTE&symbol=${{item}}&apikey=${{PROVIDER_KEY}}'
            for_each: [{symbols}]
        interval: 300ms
        timeout: 1s
        headers: {{Accept: application/json}}
        split: /data
        dedupe: {{key: '${{symbol}}|${{timestamp}}', window: 1000, file: '{keys}'}}
        max_rate: 100/s
        raw_on_error: true
    transforms:
      - set: {{path: /source, value: '${{@http.url}}'}}
      - set: {{path: /raw_response_id, value: '${{@response_id}}'}}
      - set: {{path: /item, value: '${{@item}}'}}
      - set: {{path: /status, value: '${{@http.status}}'}}
      - set: {{path: /content_type, value: '${{@http.header.content-type}}'}}
      - set: {{path: /fetched_at, value: '${{@fetched_at}}'}}
    topic: {topic}
    key: '${{symbol}}'
"#,
        b = brokers(),
        symbols = SYMBOLS.join(", "),
        keys = keys.display(),
    )
}

/// `kgate run` on `cfg`, with the API key in the environment (as `${PROVIDER_KEY}`).
fn run(dir: &std::path::Path, cfg: &str) -> Proc {
    // Inherited by the child; this file's one test is the only one setting it.
    std::env::set_var("PROVIDER_KEY", KEY);
    let path = write_config(dir, cfg);
    spawn_kgate(&["run", "--config", path.to_str().unwrap()])
}

/// Waits (up to `secs`) for `served_last_quote`; on timeout panics with the server's counts and
/// kgate's log.
async fn wait_served(s: &Shared, after: &HashMap<String, u64>, times: u64, secs: u64, gw: &Proc) {
    for _ in 0..secs * 10 {
        if served_last_quote(s, after, times) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, req) = {
        let s = s.lock().unwrap();
        (s.ok.clone(), s.requests.clone())
    };
    panic!(
        "not every symbol served its last quote {times} more times within {secs}s: ok {ok:?}, requests {req:?}; log:\n{}",
        gw.log_text()
    );
}

/// Every symbol answered its last quote at least `times` more times than `after[symbol]`.
fn served_last_quote(s: &Shared, after: &HashMap<String, u64>, times: u64) -> bool {
    let s = s.lock().unwrap();
    SYMBOLS.iter().all(|sym| {
        let ok = s.ok.get(*sym).copied().unwrap_or(0);
        ok >= (2 * LAST + 1).max(after.get(*sym).copied().unwrap_or(0)) + times
    })
}

/// Seven symbols polled every 300 ms: each serves 5 distinct quotes, each twice or more. Kafka
/// gets each quote once (dedupe), with its source values; the failures are counted by status
/// and the failed responses are in the DLQ as `http_error`; no request came before a
/// `Retry-After`; a restart re-publishes nothing (the dedupe file).
#[tokio::test(flavor = "multi_thread")]
async fn polls_quotes_once_each_honours_retry_after_and_dead_letters_failures() {
    let (api, served) = serve().await;
    let topic = unique("poll.prices");
    let dlq = unique("poll.dlq");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("dedupe-keys.json");
    let mport = free_port();
    let cfg = config(&api, &topic, &dlq, mport, &keys);
    let mut gw = run(dir.path(), &cfg);

    wait_served(&served, &HashMap::new(), 3, 120, &gw).await;
    // Every request the server saw was counted as a poll before it was sent.
    let requests_seen: u64 = served.lock().unwrap().requests.values().sum();
    let m = tokio::task::spawn_blocking(move || {
        http_get(&format!("127.0.0.1:{mport}"), "/metrics")
            .unwrap()
            .1
    })
    .await
    .unwrap();
    let url = format!("url=\"{api}/query?function=GLOBAL_QUOTE&symbol=${{item}}&apikey=***\"");
    let errors = |status: &str| {
        metric(
            &m,
            "kgate_http_poll_errors_total",
            &[&url, &format!("status=\"{status}\"")],
        )
    };
    assert_eq!(
        [
            errors("429"),
            errors("503"),
            errors("500"),
            errors("invalid_json"),
            errors("timeout")
        ],
        [1.0, 1.0, 2.0, 1.0, 1.0],
        "{m}"
    );
    let expected = SYMBOLS.len() * (LAST as usize + 1);
    assert_eq!(
        metric(&m, "kgate_http_poll_events_total", &[&url]),
        expected as f64,
        "{m}"
    );
    // Each symbol served 12 good answers or more, 5 of them new quotes: at least 7 duplicates
    // each, 6 counted by now (the last answer may still be on its way).
    assert!(
        metric(&m, "kgate_http_poll_duplicates_total", &[&url]) >= 6.0 * SYMBOLS.len() as f64,
        "{m}"
    );
    assert!(
        metric(&m, "kgate_http_poll_requests_total", &[&url]) >= requests_seen as f64,
        "{m}"
    );
    assert!(
        !m.contains(KEY) && !gw.log_text().contains(KEY),
        "the API key leaked"
    );

    let s = stop(&mut gw, 30);
    assert_eq!(
        (s["delivered"], s["dead-lettered"]),
        (expected as u64, 5),
        "{}",
        gw.log_text()
    );
    let log = gw.log_text();
    assert!(
        log.contains("poll failed") && log.contains("apikey=***"),
        "failures are logged with the URL redacted:\n{log}"
    );

    let (b, t, d) = (brokers(), topic.clone(), dlq.clone());
    let (recs, dead) = tokio::task::spawn_blocking(move || {
        (
            consume(&b, &t, expected + 1, Duration::from_secs(20)),
            consume(&b, &d, 6, Duration::from_secs(20)),
        )
    })
    .await
    .unwrap();
    let got: Vec<(String, u64)> = recs
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["symbol"].as_str().unwrap().to_string(),
                v["timestamp"].as_u64().unwrap(),
            )
        })
        .collect();
    let distinct: BTreeSet<(String, u64)> = got.iter().cloned().collect();
    assert_eq!(
        got.len(),
        distinct.len(),
        "a quote published twice: {got:?}"
    );
    {
        let srv = served.lock().unwrap();
        assert_eq!(distinct, srv.quotes, "records = distinct quotes served");
        assert_eq!(srv.too_early, 0, "a request came before its Retry-After");
        assert_eq!(srv.unauthorized, 0);
    }
    assert_eq!(recs.len(), expected);
    let mut response_ids = BTreeSet::new();
    for r in &recs {
        let v = r.json();
        let sym = v["symbol"].as_str().unwrap();
        assert_eq!(r.key_str(), sym);
        assert_eq!(v["item"], sym);
        assert_eq!(v["status"], "200");
        assert_eq!(v["content_type"], "application/json");
        assert_eq!(
            v["source"],
            format!("{api}/query?function=GLOBAL_QUOTE&symbol={sym}&apikey=***")
        );
        assert!(v["fetched_at"].as_str().unwrap().ends_with('Z'), "{v}");
        let id = v["raw_response_id"].as_str().unwrap();
        assert_eq!(id.len(), 36, "{id}");
        response_ids.insert(id.to_string());
    }
    assert_eq!(response_ids.len(), expected, "a response id per response");

    // The failed responses, with their status and body.
    assert_eq!(dead.len(), 5, "{dead:?}");
    let mut by_status: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            assert_eq!(r.headers["error_type"], "http_error");
            assert!(r.headers["error_message"].contains("apikey=***"), "{r:?}");
            (
                r.headers["http_status"].clone(),
                String::from_utf8_lossy(&r.value).into_owned(),
            )
        })
        .collect();
    by_status.sort();
    assert_eq!(
        by_status,
        [
            ("200", "<html>maintenance</html>"),
            ("429", "slow down"),
            ("500", "upstream exploded"),
            ("500", "upstream exploded"),
            ("503", "maintenance"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );

    // A restart reads the dedupe file: the last quotes, served again, are not re-published.
    let before: HashMap<String, u64> = served.lock().unwrap().ok.clone();
    let mut gw = run(dir.path(), &cfg);
    wait_served(&served, &before, 3, 60, &gw).await;
    let s = stop(&mut gw, 30);
    assert_eq!(
        (s["delivered"], s["dead-lettered"]),
        (0, 0),
        "{}",
        gw.log_text()
    );
    let (b, t) = (brokers(), topic.clone());
    let recs =
        tokio::task::spawn_blocking(move || consume(&b, &t, expected + 1, Duration::from_secs(10)))
            .await
            .unwrap();
    assert_eq!(recs.len(), expected);
}

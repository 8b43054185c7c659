//! WebSocket client fan-in: one task per URL, each reconnecting with jittered exponential
//! backoff, resending its subscribe messages, pinging, and reconnecting when the feed stalls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use futures_util::future::BoxFuture;
use tokio_tungstenite::tungstenite::http::Uri;

use super::{Probe, ProbeCtx, Source, SourceCtx, SourceKind};
use crate::config::{redact_url, At, ConfigError};
use crate::event::{Event, Origin};
use crate::metrics::WsMetrics;
use crate::pipeline::Pipeline;

mod config;
/// The integration tests' throw-away PKI, for the unit tests here and in `cmd::synth`.
#[cfg(test)]
#[path = "../../../tests/common/pki.rs"]
pub(crate) mod test_pki;
mod tls;

pub use config::{WebsocketSourceConfig, WebsocketTlsConfig};
use tls::FeedTls;

impl SourceKind for WebsocketSourceConfig {
    fn name(&self) -> &'static str {
        "websocket"
    }
    fn resolve(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<Box<dyn Source>> {
        let urls = self.check(at, errors)?;
        // Built once: runtime code never reads the files again.
        let tls = if self.urls.iter().any(|u| u.starts_with("wss://")) {
            Some(FeedTls::new(self.tls.as_ref(), at, errors)?)
        } else {
            None
        };
        let subscribe = self
            .subscribe
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        Some(Box::new(WebsocketSource {
            // The real URL connects; the redacted one is what logs, metrics, `check` and the
            // DLQ's `source` header show (`?apikey=***`).
            urls: urls
                .into_iter()
                .zip(self.urls.iter().map(|u| redact_url(u)))
                .collect(),
            subscribe: Arc::new(subscribe),
            tls,
            config: self.clone(),
        }))
    }
}

/// Resolved `source.websocket`: the feeds' URLs parsed, the subscribe messages rendered, the
/// TLS client built (when there is a `wss://` URL).
#[derive(Debug)]
pub struct WebsocketSource {
    /// Each feed's URL, parsed (to connect) and redacted (for logs, metrics, `check` and the DLQ's
    /// `source`: user info and query values are `***`).
    urls: Vec<(Uri, String)>,
    subscribe: Arc<Vec<String>>,
    tls: Option<FeedTls>,
    config: WebsocketSourceConfig,
}

/// Connects to one feed (TCP, TLS for `wss://`, the WebSocket handshake).
async fn connect(
    uri: &Uri,
    tls: Option<&FeedTls>,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, WsError> {
    let connector = tls.map(FeedTls::connector);
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(uri.clone(), None, false, connector)
            .await?;
    Ok(ws)
}

/// A failed connect in one line, after the feed's URL.
fn connect_error(e: &WsError, tls: Option<&FeedTls>) -> String {
    tls.and_then(|t| t.explain(e))
        .unwrap_or_else(|| format!("cannot connect: {e}"))
}

impl Source for WebsocketSource {
    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> BoxFuture<'a, Vec<Probe>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for (uri, url) in &self.urls {
                let started = Instant::now();
                let r = tokio::time::timeout(ctx.timeout, connect(uri, self.tls.as_ref())).await;
                let p = ctx.pipeline;
                out.push(match r {
                    Ok(Ok(mut s)) => {
                        let _ = s.close(None).await;
                        let unverified = if self.tls.as_ref().is_some_and(|t| t.insecure) {
                            " (certificate NOT verified: tls.insecure_skip_verify)"
                        } else {
                            ""
                        };
                        Probe::ok(format!(
                            "websocket {url} (pipeline {p}): connected in {} ms{unverified}",
                            started.elapsed().as_millis()
                        ))
                    }
                    Ok(Err(e)) => match self.tls.as_ref().and_then(|t| t.explain(&e)) {
                        Some(tls) => Probe::fail(format!("websocket {url} (pipeline {p}): {tls}")),
                        None => Probe::fail(format!(
                            "websocket {url} (pipeline {p}): cannot connect: {e}; is the feed running at that address?"
                        )),
                    },
                    Err(_) => Probe::fail(format!(
                        "websocket {url} (pipeline {p}): no answer within {:?}",
                        ctx.timeout
                    )),
                });
            }
            out
        })
    }

    /// One task per URL; with `coordination:`, one task per URL this instance is assigned.
    fn spawn(self: Box<Self>, ctx: SourceCtx, tasks: &mut JoinSet<()>) {
        for (_, url) in &self.urls {
            if self.tls.as_ref().is_some_and(|t| t.insecure) {
                tracing::warn!(
                    url = %url,
                    pipeline = %ctx.pipeline.name(),
                    "tls.insecure_skip_verify: the feed's certificate and host name are NOT verified; anyone on the network path can read and change this feed"
                );
            }
        }
        let feeds = Arc::new(FeedPlans {
            urls: self
                .urls
                .into_iter()
                .map(|(uri, url)| (uri, Arc::from(url.as_str())))
                .collect(),
            subscribe: self.subscribe,
            tls: self.tls,
            config: self.config,
            pipeline: ctx.pipeline.clone(),
            metrics: ctx.metrics.clone(),
        });
        if let Some(spec) = ctx.pipeline.coordination() {
            let plans = feeds.clone();
            let coordinated = crate::coord::Coordinated {
                spec: spec.clone(),
                pipeline: ctx.pipeline.name().clone(),
                names: feeds.urls.iter().map(|(_, url)| url.clone()).collect(),
                kafka: ctx.kafka,
                metrics: ctx.metrics,
                stop: ctx.stop,
                start: Arc::new(move |i, stop| Box::pin(plans.feed(i, stop, true).run())),
            };
            tasks.spawn(tracing::Instrument::in_current_span(crate::coord::run(
                coordinated,
            )));
            return;
        }
        for i in 0..feeds.urls.len() {
            let feed = feeds.feed(i, ctx.stop.clone(), false);
            tasks.spawn(tracing::Instrument::in_current_span(feed.run()));
        }
    }
}

/// What each feed of the source is made from.
struct FeedPlans {
    urls: Vec<(Uri, Arc<str>)>,
    subscribe: Arc<Vec<String>>,
    tls: Option<FeedTls>,
    config: WebsocketSourceConfig,
    pipeline: Arc<Pipeline>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl FeedPlans {
    /// The feed of URL `i`, reading until `stop`: a stopped feed closes the connection and
    /// reads on until the server's Close (see [`STOP_DRAIN`]); with `handover`, a handshake
    /// under way when it stops is finished first.
    fn feed(&self, i: usize, stop: CancellationToken, handover: bool) -> Feed {
        let (uri, url) = &self.urls[i];
        Feed {
            m: self.metrics.websocket(url),
            uri: uri.clone(),
            url: url.clone(),
            subscribe: self.subscribe.clone(),
            tls: self.tls.clone(),
            config: self.config.clone(),
            pipeline: self.pipeline.clone(),
            stop,
            handover,
            failures: FailureLog::default(),
        }
    }
}

struct Feed {
    uri: Uri,
    /// The URL redacted ([`redact_url`]), for logs, metrics and the DLQ's `source`.
    url: Arc<str>,
    subscribe: Arc<Vec<String>>,
    tls: Option<FeedTls>,
    config: WebsocketSourceConfig,
    pipeline: Arc<Pipeline>,
    m: WsMetrics,
    stop: CancellationToken,
    /// Stopped for a handover (`coordination:`): a handshake under way is finished (and the
    /// connection then closed and read out), not dropped.
    handover: bool,
    failures: FailureLog,
}

enum End {
    Stopped,
    Reconnect { got_messages: bool },
}

/// How often a connect failure that keeps repeating is logged: a feed that is down (or whose
/// certificate is refused) for hours would otherwise write a line per backoff step.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// A feed's connect failures, logged rate-limited: the first at once, the same again at most
/// once per [`REPEAT_LOG_EVERY`] (with how often it happened meanwhile), a different one at once.
#[derive(Default)]
struct FailureLog {
    /// The failure last logged, and when.
    last: Option<(String, Instant)>,
    /// Failures since then that were not logged.
    unlogged: u64,
}

impl FailureLog {
    fn failed(&mut self, url: &str, why: String) {
        let now = Instant::now();
        match &self.last {
            Some((last, at)) if *last == why => {
                if now.duration_since(*at) < REPEAT_LOG_EVERY {
                    self.unlogged += 1;
                    tracing::debug!(url, error = %why, "cannot connect (again); retrying");
                    return;
                }
                tracing::warn!(url, error = %why, repeats = self.unlogged + 1, "still cannot connect; retrying");
            }
            _ => tracing::warn!(url, error = %why, "cannot connect; retrying"),
        }
        self.last = Some((why, now));
        self.unlogged = 0;
    }

    /// Connected: how many failures went unlogged since the last logged one.
    fn connected(&mut self) -> u64 {
        std::mem::take(self).unlogged
    }
}

impl Feed {
    async fn run(mut self) {
        let mut backoff = self.config.backoff_initial;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            match self.connect_once().await {
                End::Stopped => return,
                End::Reconnect { got_messages } => {
                    if got_messages {
                        backoff = self.config.backoff_initial;
                    }
                }
            }
            let wait = super::jittered(backoff);
            tracing::debug!(url = %self.url, wait_ms = wait.as_millis() as u64, "reconnecting");
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    async fn connect_once(&mut self) -> End {
        let connect = tokio::time::timeout(
            self.config.connect_timeout,
            connect(&self.uri, self.tls.as_ref()),
        );
        let ws = if self.handover {
            // A handshake the feed may have completed already is not dropped half-way (the
            // feed would be sending into a socket nobody reads): it finishes (within
            // `connect_timeout`), and the stop below closes it cleanly and reads it out.
            connect.await
        } else {
            tokio::select! {
                _ = self.stop.cancelled() => return End::Stopped,
                r = connect => r,
            }
        };
        let ws = match ws {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                self.m.connection_errors.inc();
                let why = connect_error(&e, self.tls.as_ref());
                self.failures.failed(&self.url, why);
                return End::Reconnect {
                    got_messages: false,
                };
            }
            Err(_) => {
                self.m.connection_errors.inc();
                let why = format!(
                    "connect timed out after {:?} (connect_timeout)",
                    self.config.connect_timeout
                );
                self.failures.failed(&self.url, why);
                return End::Reconnect {
                    got_messages: false,
                };
            }
        };
        self.m.connections.inc();
        let started = Instant::now();
        match self.failures.connected() {
            0 => tracing::info!(url = %self.url, "connected"),
            n => tracing::info!(url = %self.url, unlogged_failures = n, "connected"),
        }
        let mut got_messages = false;
        let (mut tx, mut rx) = ws.split();
        let end = 'conn: {
            for s in self.subscribe.iter() {
                if let Err(e) = tx.send(Message::text(s.clone())).await {
                    self.m.connection_errors.inc();
                    tracing::warn!(url = %self.url, error = %e, "cannot send subscribe message");
                    break 'conn End::Reconnect { got_messages };
                }
            }
            let ping_every = if self.config.ping_interval.is_zero() {
                Duration::from_secs(86400 * 365)
            } else {
                self.config.ping_interval
            };
            let mut ping =
                tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
            // One timer and one cancellation waiter for the whole connection: re-arming them
            // per message cost more than the rest of the read path.
            let stopped = self.stop.cancelled();
            tokio::pin!(stopped);
            let idle = tokio::time::sleep(self.config.timeout);
            tokio::pin!(idle);
            let mut last_message = tokio::time::Instant::now();
            // After kgate paused reading (its buffer was full), the feed's TCP may sit in
            // zero-window probing, backing off towards two minutes, although kgate reads again:
            // once the queued-up data is read (no message for NUDGE_AFTER), a Ping from us
            // carries the open window to the feed at once.
            let nudge = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(nudge);
            let mut nudging = false;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => {
                        let _ = tx.close().await;
                        self.drain(&mut rx).await;
                        break 'conn End::Stopped;
                    }
                    _ = &mut nudge, if nudging => {
                        nudging = false;
                        if let Err(e) = tx.send(Message::Ping(Bytes::new())).await {
                            self.m.connection_errors.inc();
                            tracing::warn!(url = %self.url, error = %e, "ping failed");
                            break 'conn End::Reconnect { got_messages };
                        }
                    }
                    _ = &mut idle => {
                        let deadline = last_message + self.config.timeout;
                        if deadline > tokio::time::Instant::now() {
                            idle.as_mut().reset(deadline);
                            continue;
                        }
                        self.m.messages_timeout.inc();
                        tracing::warn!(url = %self.url, timeout = ?self.config.timeout, "no message within the read timeout; reconnecting");
                        break 'conn End::Reconnect { got_messages };
                    }
                    _ = ping.tick() => {
                        if let Err(e) = tx.send(Message::Ping(Bytes::new())).await {
                            self.m.connection_errors.inc();
                            tracing::warn!(url = %self.url, error = %e, "ping failed");
                            break 'conn End::Reconnect { got_messages };
                        }
                    }
                    r = rx.next() => match r {
                        None => break 'conn End::Reconnect { got_messages },
                        Some(Err(e)) => {
                            self.m.connection_errors.inc();
                            tracing::warn!(url = %self.url, error = %e, "read failed");
                            break 'conn End::Reconnect { got_messages };
                        }
                        Some(Ok(msg)) => {
                            let raw = match msg {
                                Message::Text(t) => Bytes::from(t),
                                Message::Binary(b) => b,
                                Message::Close(frame) => {
                                    tracing::info!(url = %self.url, ?frame, "server closed the connection");
                                    break 'conn End::Reconnect { got_messages };
                                }
                                _ => continue,
                            };
                            got_messages = true;
                            self.m.messages_received.inc();
                            let origin = Origin::now(self.pipeline.name().clone(), self.url.clone());
                            let accepted = origin.accepted;
                            // Awaits while the producer buffer is full: backpressure reaches the socket.
                            self.pipeline.handle(Event::new(raw, origin)).await;
                            // The read timeout counts the feed's silence, not the time kgate spent
                            // waiting for room (a broker outage under `on_full: block`): a feed
                            // dropped for our own backpressure loses what it had sent us.
                            let now = tokio::time::Instant::now();
                            last_message = now;
                            if nudging || now.into_std().duration_since(accepted) > Duration::from_secs(1) {
                                // After a pause, nudge the feed once what had queued up is read.
                                nudging = true;
                                nudge.as_mut().reset(now + NUDGE_AFTER);
                            }
                        }
                    }
                }
            }
        };
        self.m.disconnections.inc();
        self.m
            .connection_duration
            .observe(started.elapsed().as_secs_f64());
        end
    }
}

impl Feed {
    /// After our Close: reads on until the server's Close (at most [`STOP_DRAIN`]), handing
    /// every message to the pipeline. A feed that answers Close after its last message (as
    /// `kgate synth` does) thus loses nothing at a stop, a reload or a handover: what it sent
    /// before its Close is read, and what follows goes to the next connection (or owner).
    async fn drain<S>(&self, rx: &mut S)
    where
        S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let deadline = tokio::time::Instant::now() + STOP_DRAIN;
        let mut drained = 0u64;
        let closed = loop {
            let next = tokio::time::timeout_at(deadline, rx.next()).await;
            let raw = match next {
                Err(_) => break false,
                Ok(None | Some(Err(_))) => break true,
                Ok(Some(Ok(Message::Text(t)))) => Bytes::from(t),
                Ok(Some(Ok(Message::Binary(b)))) => b,
                Ok(Some(Ok(Message::Close(_)))) => break true,
                Ok(Some(Ok(_))) => continue,
            };
            drained += 1;
            self.m.messages_received.inc();
            let origin = Origin::now(self.pipeline.name().clone(), self.url.clone());
            self.pipeline.handle(Event::new(raw, origin)).await;
        };
        if closed {
            tracing::debug!(url = %self.url, drained, "stopped: read until the feed's Close");
        } else if self.handover {
            tracing::warn!(url = %self.url, drained, wait = ?STOP_DRAIN, "handover: the feed did not answer our Close in time; what it sends now is for the next owner or lost");
        } else {
            tracing::info!(url = %self.url, drained, wait = ?STOP_DRAIN, "stopped: the feed did not answer our Close in time; what it sends after this is not read");
        }
    }
}

/// How long a stopped feed waits for the server's Close, reading on.
const STOP_DRAIN: Duration = Duration::from_secs(2);

/// How long the read side stays quiet after a backpressure pause before kgate nudges the feed.
const NUDGE_AFTER: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
    use tokio::net::TcpListener;

    use super::test_pki::{generate, Pki};
    use super::*;

    /// A `wss://` server on `ip` with `pki`'s server certificate (asking for a client certificate
    /// signed by its CA with `mutual`) that accepts the WebSocket handshake and closes.
    async fn wss_server(pki: &Pki, ip: &str, mutual: bool) -> String {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        b.set_certificate_chain_file(&pki.server_cert).unwrap();
        b.set_private_key_file(&pki.server_key, SslFiletype::PEM)
            .unwrap();
        if mutual {
            b.set_ca_file(&pki.ca).unwrap();
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        let acceptor = b.build();
        let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let ssl = Ssl::new(acceptor.context()).unwrap();
                tokio::spawn(async move {
                    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    if Pin::new(&mut s).accept().await.is_ok() {
                        if let Ok(mut ws) = tokio_tungstenite::accept_async(s).await {
                            let _ = ws.close(None).await;
                        }
                    } else {
                        // Let the client read the alert: FIN, and its request read, not a reset.
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let tcp = s.get_mut();
                        let _ = tcp.shutdown().await;
                        let mut buf = [0u8; 4096];
                        while let Ok(1..) = tcp.read(&mut buf).await {}
                    }
                });
            }
        });
        format!("wss://{addr}/ws")
    }

    fn resolve(yaml: &str) -> Result<Box<dyn Source>, Vec<ConfigError>> {
        let c: WebsocketSourceConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        c.resolve(At("ws"), &mut errors).ok_or(errors)
    }

    async fn probe(yaml: &str) -> Probe {
        let source = resolve(yaml).unwrap();
        let ctx = ProbeCtx {
            pipeline: "p",
            timeout: Duration::from_secs(5),
            http_base: None,
        };
        let mut probes = source.probe(ctx).await;
        assert_eq!(probes.len(), 1);
        probes.remove(0)
    }

    fn path(p: &std::path::Path) -> &str {
        p.to_str().unwrap()
    }

    #[tokio::test]
    async fn wss_verifies_against_the_configured_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), "a");
        let other = generate(dir.path(), "b");
        let url = wss_server(&pki, "127.0.0.1", false).await;

        let p = probe(&format!(
            "urls: ['{url}']\ntls: {{ca: '{}'}}",
            path(&pki.ca)
        ))
        .await;
        assert!(p.ok, "{}", p.text);
        // The host name is checked too: `localhost` is in the certificate.
        let by_name = url.replace("127.0.0.1", "localhost");
        let p = probe(&format!(
            "urls: ['{by_name}']\ntls: {{ca: '{}'}}",
            path(&pki.ca)
        ))
        .await;
        assert!(p.ok, "{}", p.text);

        let p = probe(&format!(
            "urls: ['{url}']\ntls: {{ca: '{}'}}",
            path(&other.ca)
        ))
        .await;
        assert!(!p.ok);
        assert_eq!(
            p.text,
            format!(
                "websocket {url} (pipeline p): TLS handshake failed: certificate verify failed: \
                 unable to get local issuer certificate (the feed's certificate was checked \
                 against the CA in tls.ca `{}`)",
                path(&other.ca)
            )
        );

        // No `tls:`: the system's roots, which do not know the test CA.
        let p = probe(&format!("urls: ['{url}']")).await;
        assert!(!p.ok);
        assert!(
            p.text.contains("certificate verify failed")
                && p.text.contains("checked against the system's roots"),
            "{}",
            p.text
        );
    }

    #[tokio::test]
    async fn wss_checks_the_host_name() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), "a");
        // Loopback, but not an address the certificate names.
        let url = wss_server(&pki, "127.0.0.2", false).await;
        let p = probe(&format!(
            "urls: ['{url}']\ntls: {{ca: '{}'}}",
            path(&pki.ca)
        ))
        .await;
        assert!(!p.ok);
        assert!(p.text.contains("mismatch"), "{}", p.text);
    }

    #[tokio::test]
    async fn insecure_skip_verify_accepts_any_certificate_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), "a");
        let url = wss_server(&pki, "127.0.0.2", false).await;
        let p = probe(&format!(
            "urls: ['{url}']\ntls: {{insecure_skip_verify: true}}"
        ))
        .await;
        assert!(p.ok, "{}", p.text);
        assert!(p.text.contains("certificate NOT verified"), "{}", p.text);
    }

    #[tokio::test]
    async fn mutual_tls_presents_the_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), "a");
        let url = wss_server(&pki, "127.0.0.1", true).await;
        // The client key is in the traditional EC form; it is converted for native-tls.
        let p = probe(&format!(
            "urls: ['{url}']\ntls: {{ca: '{}', cert: '{}', key: '{}'}}",
            path(&pki.ca),
            path(&pki.client_cert),
            path(&pki.client_key)
        ))
        .await;
        assert!(p.ok, "{}", p.text);
        let p = probe(&format!(
            "urls: ['{url}']\ntls: {{ca: '{}'}}",
            path(&pki.ca)
        ))
        .await;
        assert!(!p.ok);
        assert_eq!(
            p.text,
            format!(
                "websocket {url} (pipeline p): TLS handshake failed: tlsv13 alert certificate \
                 required (the feed wants a client certificate: set tls.cert and tls.key)"
            )
        );
        // A client certificate from another CA.
        let other = generate(dir.path(), "b");
        let p = probe(&format!(
            "urls: ['{url}']\ntls: {{ca: '{}', cert: '{}', key: '{}'}}",
            path(&pki.ca),
            path(&other.client_cert),
            path(&other.client_key)
        ))
        .await;
        assert!(!p.ok);
        assert!(
            p.text
                .contains("(the feed refused the client certificate in tls.cert"),
            "{}",
            p.text
        );
    }

    #[tokio::test]
    async fn wss_to_a_plain_feed_says_so() {
        let url = plain_server().await;
        let p = probe(&format!("urls: ['{url}']")).await;
        assert!(!p.ok);
        assert!(p.text.contains("a plain feed's URL is ws://"), "{}", p.text);
    }

    /// A plain `ws://` server, addressed as `wss://`.
    async fn plain_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(tokio_tungstenite::accept_async(tcp));
            }
        });
        format!("wss://{addr}/ws")
    }

    #[test]
    fn unusable_tls_files_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), "a");
        let other = generate(dir.path(), "b");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = resolve(&format!(
            "urls: ['wss://h/ws']\ntls: {{ca: '{}', cert: '{}', key: '{}'}}",
            path(&junk),
            path(&pki.client_cert),
            path(&other.client_key)
        ))
        .unwrap_err();
        let text: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert_eq!(
            text[0],
            format!(
                "ws.tls.ca: `{}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
                path(&junk)
            )
        );
        assert_eq!(
            text[1],
            format!(
                "ws.tls.key: the key in `{}` does not belong to the certificate in `{}`",
                path(&other.client_key),
                path(&pki.client_cert)
            )
        );
        let e = resolve(&format!(
            "urls: ['wss://h/ws']\ntls: {{cert: '{}', key: '{}'}}",
            path(&pki.client_cert),
            path(&junk)
        ))
        .unwrap_err();
        assert!(
            e[0].to_string().starts_with("ws.tls.key: cannot read `")
                && e[0]
                    .to_string()
                    .contains("as an unencrypted PEM private key"),
            "{e:?}"
        );
        // Only plain feeds: nothing is read, no connector is built.
        assert!(resolve("urls: ['ws://h/ws']").is_ok());
    }
}

//! WebSocket client fan-in: one task per URL, each reconnecting with jittered exponential
//! backoff, resending its subscribe messages, pinging, and reconnecting when the feed stalls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use futures_util::future::BoxFuture;
use tokio_tungstenite::tungstenite::http::Uri;

use super::{Probe, ProbeCtx, Source, SourceCtx, SourceKind};
use crate::config::{At, ConfigError};
use crate::event::{Event, Origin};
use crate::metrics::WsMetrics;
use crate::pipeline::Pipeline;

mod config;

pub use config::WebsocketSourceConfig;

impl SourceKind for WebsocketSourceConfig {
    fn name(&self) -> &'static str {
        "websocket"
    }
    fn resolve(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<Box<dyn Source>> {
        let urls = self.check(at, errors)?;
        let subscribe = self
            .subscribe
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        Some(Box::new(WebsocketSource {
            urls: urls.into_iter().zip(self.urls.iter().cloned()).collect(),
            subscribe: Arc::new(subscribe),
            config: self.clone(),
        }))
    }
}

/// Resolved `source.websocket`: the feeds' URLs parsed, the subscribe messages rendered.
#[derive(Debug)]
pub struct WebsocketSource {
    /// Each feed's URL, parsed and as written (for logs, metrics and the DLQ's `source`).
    urls: Vec<(Uri, String)>,
    subscribe: Arc<Vec<String>>,
    config: WebsocketSourceConfig,
}

impl Source for WebsocketSource {
    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> BoxFuture<'a, Vec<Probe>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for (uri, url) in &self.urls {
                let started = Instant::now();
                let r = tokio::time::timeout(
                    ctx.timeout,
                    tokio_tungstenite::connect_async(uri.clone()),
                )
                .await;
                let p = ctx.pipeline;
                out.push(match r {
                    Ok(Ok((mut s, _))) => {
                        let _ = s.close(None).await;
                        Probe::ok(format!(
                            "websocket {url} (pipeline {p}): connected in {} ms",
                            started.elapsed().as_millis()
                        ))
                    }
                    Ok(Err(e)) => Probe::fail(format!(
                        "websocket {url} (pipeline {p}): cannot connect: {e}; is the feed running at that address?"
                    )),
                    Err(_) => Probe::fail(format!(
                        "websocket {url} (pipeline {p}): no answer within {:?}",
                        ctx.timeout
                    )),
                });
            }
            out
        })
    }

    /// One task per URL.
    fn spawn(self: Box<Self>, ctx: SourceCtx, tasks: &mut JoinSet<()>) {
        for (uri, url) in &self.urls {
            let feed = Feed {
                m: ctx.metrics.websocket(url),
                uri: uri.clone(),
                url: Arc::from(url.as_str()),
                subscribe: self.subscribe.clone(),
                config: self.config.clone(),
                pipeline: ctx.pipeline.clone(),
                stop: ctx.stop.clone(),
            };
            tasks.spawn(feed.run());
        }
    }
}

struct Feed {
    uri: Uri,
    /// The URL as written, for logs, metrics and the DLQ's `source`.
    url: Arc<str>,
    subscribe: Arc<Vec<String>>,
    config: WebsocketSourceConfig,
    pipeline: Arc<Pipeline>,
    m: WsMetrics,
    stop: CancellationToken,
}

enum End {
    Stopped,
    Reconnect { got_messages: bool },
}

impl Feed {
    async fn run(self) {
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

    async fn connect_once(&self) -> End {
        let connect = tokio::time::timeout(
            self.config.connect_timeout,
            tokio_tungstenite::connect_async(self.uri.clone()),
        );
        let ws = tokio::select! {
            _ = self.stop.cancelled() => return End::Stopped,
            r = connect => r,
        };
        let ws = match ws {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                self.m.connection_errors.inc();
                tracing::warn!(url = %self.url, error = %e, "cannot connect");
                return End::Reconnect {
                    got_messages: false,
                };
            }
            Err(_) => {
                self.m.connection_errors.inc();
                tracing::warn!(url = %self.url, timeout = ?self.config.connect_timeout, "connect timed out");
                return End::Reconnect {
                    got_messages: false,
                };
            }
        };
        self.m.connections.inc();
        let started = Instant::now();
        tracing::info!(url = %self.url, "connected");
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
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => {
                        let _ = tx.close().await;
                        break 'conn End::Stopped;
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
                            last_message = tokio::time::Instant::from_std(origin.accepted);
                            // Awaits while the producer buffer is full: backpressure reaches the socket.
                            self.pipeline.handle(Event::new(raw, origin)).await;
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

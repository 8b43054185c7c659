//! The device WebSocket server: devices connect to `listen` + `path`, each is known by an id
//! taken from a header, a query parameter or a path segment, and every text or binary frame
//! becomes one event (optionally decoded as a WRP message, see [`wrp`]). `connect` and
//! `disconnect` events go through the same pipeline.
//!
//! Built on tokio-tungstenite's `accept_hdr_async`: the crate is already here for the client
//! source, its callback sees the upgrade request before the handshake completes (so a device
//! without an id gets a 400 with the reason, never a half-open socket), and a connection is one
//! task reading one socket, which is what backpressure needs: while the pipeline cannot take a
//! frame, that device's socket is simply not read.

mod auth;
mod tls;
pub mod wrp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use futures_util::future::BoxFuture;

use super::{Probe, ProbeCtx, Source, SourceCtx, SourceKind};
use crate::config::{At, ConfigError};
use crate::event::{ErrorType, Event, Origin, Rejection};
use crate::metrics::DeviceMetrics;
use crate::pipeline::Pipeline;

mod config;

use crate::transform::Meta;
pub use auth::PeerCert;
use auth::{Auth, Presented};
#[cfg(test)]
use config::parse_path;
use config::Seg;
pub use config::{
    BearerAuthConfig, BearerTokenConfig, CertId, DeviceAuthConfig, DeviceIdFrom,
    DeviceSourceConfig, DeviceTlsConfig, JwtAuthConfig, MtlsAuthConfig, WrpConfig, WrpValue,
};
use tls::{Acceptor, Stream};

/// Longest device id accepted (bytes).
const MAX_DEVICE_ID: usize = 256;

/// Connections past `max_connections` being answered 503 at once; more are closed unanswered
/// (each answer costs a request read, and over TLS a handshake).
const MAX_REFUSING: usize = 64;

impl SourceKind for DeviceSourceConfig {
    fn name(&self) -> &'static str {
        "device_websocket"
    }
    fn resolve(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<Box<dyn Source>> {
        let before = errors.len();
        let checked = self.check(at, errors);
        let tls = self.tls.as_ref().map(|t| Acceptor::build(t, at, errors));
        let client_ca = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        // An address that does not parse is reported by `check`; it is not a loopback one.
        let loopback = self
            .listen
            .parse::<std::net::SocketAddr>()
            .map_or(true, |l| l.ip().is_loopback());
        let auth = Auth::build(self.auth.as_ref(), loopback, client_ca, at, errors);
        let ((listen, path), auth) = (checked?, auth?);
        let tls = match tls {
            Some(t) => Some(t?),
            None => None,
        };
        if errors.len() != before {
            return None;
        }
        Some(Box::new(DeviceSource {
            config: self.clone(),
            listen,
            path,
            auth,
            tls,
        }))
    }
}

/// Resolved `source.device_websocket`: the address and the path pattern parsed, `auth` and
/// `tls` loaded.
#[derive(Debug)]
pub struct DeviceSource {
    config: DeviceSourceConfig,
    listen: SocketAddr,
    path: Vec<Seg>,
    auth: Auth,
    tls: Option<Acceptor>,
}

impl Source for DeviceSource {
    /// Binding tells whether `kgate run` could listen there (and frees it at once).
    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> BoxFuture<'a, Vec<Probe>> {
        Box::pin(async move {
            let (listen, path, p) = (self.listen, &self.config.path, ctx.pipeline);
            let scheme = if self.tls.is_some() { "wss" } else { "ws" };
            vec![match TcpListener::bind(listen).await {
                Ok(_) => Probe::ok(format!(
                    "device websocket {listen} (pipeline {p}): address is free; devices connect to {scheme}://{listen}{path}"
                )),
                Err(e) => Probe::fail(format!(
                    "device websocket {listen} (pipeline {p}): cannot listen: {e}; is kgate (or something else) already on that address?"
                )),
            }]
        })
    }

    /// The server task; it retries binding `listen` until it can (logging why not).
    fn spawn(self: Box<Self>, ctx: SourceCtx, tasks: &mut JoinSet<()>) {
        let server = Arc::new(Server {
            path: self.path,
            listen: self.listen,
            config: self.config,
            m: ctx.metrics.device(ctx.pipeline.name()),
            pipeline: ctx.pipeline,
            stop: ctx.stop,
            devices: Mutex::new(HashMap::new()),
            active: AtomicU64::new(0),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            next_conn: AtomicU64::new(1),
            auth: self.auth,
            tls: self.tls,
        });
        tasks.spawn(tracing::Instrument::in_current_span(server.run()));
    }
}

struct Server {
    config: DeviceSourceConfig,
    listen: SocketAddr,
    path: Vec<Seg>,
    pipeline: Arc<Pipeline>,
    m: DeviceMetrics,
    stop: CancellationToken,
    /// Device id → the connection that holds it (a newer connection of the same id replaces it).
    devices: Mutex<HashMap<String, Holder>>,
    /// Connections holding a [`Slot`]: from accept (TLS and upgrade included) to their end.
    active: AtomicU64,
    /// Permits for answering connections past `max_connections` with 503.
    refusing: Arc<Semaphore>,
    next_conn: AtomicU64,
    auth: Auth,
    tls: Option<Acceptor>,
}

/// One of the `max_connections` places, taken when a TCP connection is accepted and given back
/// exactly once, when it is dropped.
struct Slot(Arc<Server>);

impl Slot {
    /// A place, if fewer than `max_connections` connections hold one.
    fn take(server: &Arc<Server>) -> Option<Slot> {
        let max = server.config.max_connections;
        server
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(server.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a connection holds a place or is only to be told there is none (each held for its
/// `Drop`: the place or the permit is given back when the connection's task ends).
#[allow(dead_code)]
enum Admission {
    Slot(Slot),
    Full(OwnedSemaphorePermit),
}

/// The connection that holds a device id.
struct Holder {
    conn: u64,
    /// Cancelled to close it.
    replace: CancellationToken,
    /// Cancelled once it has handed its disconnect event over (or its task ended).
    finished: CancellationToken,
}

/// How long a replacing connection waits for the replaced one's disconnect before its connect.
const REPLACE_WAIT: Duration = Duration::from_secs(10);

/// Why an upgrade was refused: the HTTP status, the metric reason, the words for the client.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl From<auth::Denied> for Refusal {
    fn from(d: auth::Denied) -> Refusal {
        Refusal::new(d.status, d.reason, d.message)
    }
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str, message: String) -> Refusal {
        Refusal {
            status,
            reason,
            message,
        }
    }

    fn bad_request(reason: &'static str, message: String) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, reason, message)
    }
}

/// Why a connection ended (the `reason` label and the disconnect event's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    Closed,
    IdleTimeout,
    Shutdown,
    Replaced,
    FrameTooLarge,
    Error,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::Replaced => "replaced",
            EndReason::FrameTooLarge => "frame_too_large",
            EndReason::Error => "error",
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

impl Server {
    async fn run(self: Arc<Self>) {
        let listener = match self.bind().await {
            Some(l) => l,
            None => return,
        };
        tracing::info!(pipeline = %self.pipeline.name(), listen = %self.config.listen, path = %self.config.path, "device WebSocket server listening");
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                r = listener.accept() => match r {
                    Ok((tcp, addr)) => {
                        // The place is taken here, before TLS and the upgrade, so that
                        // concurrent upgrades cannot exceed max_connections.
                        let admission = match Slot::take(&self) {
                            Some(slot) => Admission::Slot(slot),
                            None => match self.refusing.clone().try_acquire_owned() {
                                Ok(p) => Admission::Full(p),
                                Err(_) => {
                                    self.m.rejected("too_many_connections");
                                    continue;
                                }
                            },
                        };
                        conns.spawn(tracing::Instrument::in_current_span(
                            self.clone().serve(tcp, addr, admission),
                        ));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(listen = %self.config.listen, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        // Every connection sees the same token: each closes its device, publishes its
        // disconnect and returns after handing over every frame it read.
        while conns.join_next().await.is_some() {}
    }

    async fn bind(&self) -> Option<TcpListener> {
        let mut wait = Duration::from_millis(500);
        loop {
            match TcpListener::bind(self.listen).await {
                Ok(l) => return Some(l),
                Err(e) => {
                    tracing::error!(pipeline = %self.pipeline.name(), listen = %self.config.listen, error = %e, retry_in = ?wait, "cannot listen for devices; is another process on that address? retrying");
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    /// Checks an upgrade request: the path, the device id, the connection limit, the
    /// credentials (`cert`: the client certificate over mutual TLS).
    fn admit(
        &self,
        req: &Request,
        has_slot: bool,
        cert: Option<&PeerCert>,
    ) -> Result<String, Refusal> {
        let segs = self.match_path(req.uri().path())?;
        let (mut found, what) = self.find_device_id(req, &segs);
        if found.is_none() {
            // With `auth: mtls` the certificate names the device.
            found = self.auth.id_from_cert(cert).map(Ok);
        }
        let id = checked_device_id(found, &what)?;
        self.check_room(has_slot)?;
        let presented = Presented::from_request(
            req.headers()
                .get("authorization")
                .map(HeaderValue::as_bytes),
            req.uri().query(),
            cert,
        );
        self.auth.check(&id, &presented)?;
        Ok(id)
    }

    /// The segments of `path` when it matches the configured pattern.
    fn match_path<'p>(&self, path: &'p str) -> Result<Vec<&'p str>, Refusal> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let matches = segs.len() == self.path.len()
            && self.path.iter().zip(&segs).all(|(p, s)| match p {
                Seg::Lit(l) => l == s,
                Seg::Param(_) => !s.is_empty(),
            });
        if !matches {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "unknown_path",
                format!(
                    "no device endpoint at {path}; connect to {}",
                    self.config.path
                ),
            ));
        }
        Ok(segs)
    }

    /// The device id where `device_id` says it is (none when absent; an error when it is not
    /// text), and how to name that place to the client.
    fn find_device_id(
        &self,
        req: &Request,
        segs: &[&str],
    ) -> (Option<Result<String, &'static str>>, String) {
        match &self.config.device_id {
            DeviceIdFrom::Header(h) => (
                req.headers().get(h.as_str()).map(|v| {
                    v.to_str()
                        .map(str::to_string)
                        .map_err(|_| "not visible ASCII")
                }),
                format!("header {h}"),
            ),
            DeviceIdFrom::Query(q) => (
                req.uri().query().and_then(|qs| {
                    form_urlencoded::parse(qs.as_bytes())
                        .find(|(k, _)| k == q)
                        .map(|(_, v)| Ok(v.into_owned()))
                }),
                format!("query parameter `{q}`"),
            ),
            DeviceIdFrom::PathParam(name) => (
                self.path
                    .iter()
                    .position(|p| *p == Seg::Param(name.clone()))
                    .map(|i| percent_decode(segs[i]).ok_or("not UTF-8 once percent-decoded")),
                format!("path segment `{{{name}}}` of {}", self.config.path),
            ),
        }
    }

    /// Refuses a device beyond `max_connections` (one that got no [`Slot`]).
    fn check_room(&self, has_slot: bool) -> Result<(), Refusal> {
        if !has_slot {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "{} devices are connected, the most this gateway takes (max_connections); retry later",
                    self.config.max_connections
                ),
            ));
        }
        Ok(())
    }

    /// Upgrades one TCP connection (or refuses it) and serves the device on it. The TLS
    /// handshake and the upgrade together have `handshake_timeout`.
    async fn serve(self: Arc<Self>, tcp: TcpStream, addr: SocketAddr, admission: Admission) {
        let _ = tcp.set_nodelay(true);
        let deadline = tokio::time::Instant::now() + self.config.handshake_timeout;
        let (stream, cert) = match &self.tls {
            None => (Stream::Plain(tcp), None),
            Some(acceptor) => {
                let hs = tokio::time::timeout_at(deadline, acceptor.accept(tcp));
                let r = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    r = hs => r,
                };
                match r {
                    Ok(Ok(s)) => {
                        let cert = tls::peer_cert(&s);
                        (Stream::Tls(Box::new(s)), cert)
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(remote_addr = %addr, error = %e, "device TLS handshake failed");
                        self.m.rejected("tls_handshake");
                        return;
                    }
                    Err(_) => {
                        self.m.rejected("handshake_timeout");
                        return;
                    }
                }
            }
        };
        let has_slot = matches!(admission, Admission::Slot(_));
        let mut admitted: Option<String> = None;
        let mut refused = false;
        // The result type is the one tungstenite's handshake callback has.
        #[allow(clippy::result_large_err)]
        let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            match self.admit(req, has_slot, cert.as_ref()) {
                Ok(id) => {
                    admitted = Some(id);
                    Ok(resp)
                }
                Err(r) => {
                    refused = true;
                    Err(self.refuse(r, req, addr))
                }
            }
        };
        let handshake = tokio::time::timeout_at(
            deadline,
            tokio_tungstenite::accept_hdr_async_with_config(
                stream,
                callback,
                Some(self.ws_config()),
            ),
        );
        let result = tokio::select! {
            _ = self.stop.cancelled() => return,
            r = handshake => r,
        };
        let Some(ws) = self.upgraded(result, refused, addr) else {
            return;
        };
        let Some(device_id) = admitted else {
            return;
        };
        Conn {
            server: &self,
            device_id,
            addr,
        }
        .run(ws)
        .await;
        // The slot (in `admission`) is given back only now, after the disconnect event.
        drop(admission);
    }

    /// Counts and logs a refused upgrade, and the HTTP answer that tells the client why.
    fn refuse(&self, r: Refusal, req: &Request, addr: SocketAddr) -> ErrorResponse {
        // Counted before the answer is written, so that a client that saw its
        // refusal also sees it counted.
        self.m.rejected(r.reason);
        tracing::info!(remote_addr = %addr, path = %req.uri().path(), reason = r.reason, "device upgrade refused: {}", r.message);
        let body = format!("{}\n", r.message);
        let mut e = ErrorResponse::new(Some(body.clone()));
        *e.status_mut() = r.status;
        let h = e.headers_mut();
        if r.status == StatusCode::UNAUTHORIZED
            && matches!(self.auth, Auth::Bearer(_) | Auth::Jwt(_))
        {
            h.insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        h.insert(
            "content-type",
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert("content-length", body.len().into());
        h.insert("connection", HeaderValue::from_static("close"));
        e
    }

    /// Frames and messages up to `max_frame`.
    fn ws_config(&self) -> WebSocketConfig {
        let max = self.config.max_frame.0 as usize;
        WebSocketConfig::default()
            .max_frame_size(Some(max))
            .max_message_size(Some(max))
    }

    /// The socket of a completed upgrade; a failed or timed-out one is counted (a refusal
    /// was counted already).
    fn upgraded(
        &self,
        result: Result<Result<Ws, WsError>, tokio::time::error::Elapsed>,
        refused: bool,
        addr: SocketAddr,
    ) -> Option<Ws> {
        match result {
            Ok(Ok(ws)) => Some(ws),
            Ok(Err(e)) => {
                if !refused {
                    tracing::debug!(remote_addr = %addr, error = %e, "not a WebSocket upgrade");
                    self.m.rejected("bad_handshake");
                }
                None
            }
            Err(_) => {
                self.m.rejected("handshake_timeout");
                None
            }
        }
    }
}

/// The device id found by [`Server::find_device_id`], if it is one (`what` names where it
/// was looked for).
fn checked_device_id(
    found: Option<Result<String, &'static str>>,
    what: &str,
) -> Result<String, Refusal> {
    let id = match found {
        None => {
            return Err(Refusal::bad_request(
                "missing_device_id",
                format!("missing device id: send it in the {what}"),
            ))
        }
        Some(Ok(id)) if id.trim().is_empty() => {
            return Err(Refusal::bad_request(
                "missing_device_id",
                format!("missing device id: the {what} is empty"),
            ))
        }
        Some(Ok(id)) => id,
        Some(Err(why)) => {
            return Err(Refusal::bad_request(
                "invalid_device_id",
                format!("invalid device id in the {what}: {why}"),
            ))
        }
    };
    if id.len() > MAX_DEVICE_ID || id.chars().any(char::is_control) {
        return Err(Refusal::bad_request(
            "invalid_device_id",
            format!(
                "invalid device id in the {what}: at most {MAX_DEVICE_ID} bytes and no control characters"
            ),
        ));
    }
    Ok(id)
}

type Ws = tokio_tungstenite::WebSocketStream<Stream>;
type WsTx = futures_util::stream::SplitSink<Ws, Message>;
type WsRx = futures_util::stream::SplitStream<Ws>;

/// One device connection.
struct Conn<'a> {
    server: &'a Server,
    device_id: String,
    addr: SocketAddr,
}

/// A connection that holds its device id: what its events and its end report.
struct Live {
    conn_id: u64,
    /// Cancelled when a newer connection of the same device replaces this one, or on shutdown.
    replaced: CancellationToken,
    started: Instant,
    connected_at: SystemTime,
    remote: String,
    /// `device_id@remote_addr`: the origin of its events.
    source: Arc<str>,
    /// The template values every event of this connection carries.
    base: Meta,
    frames: u64,
    bytes: u64,
    /// The code of the device's close frame.
    close_code: Option<u16>,
}

/// What one wait of a connection came to.
enum Step {
    /// Keep reading.
    Next,
    /// The connection ended; nothing more to send.
    End(EndReason, String),
    /// End it with a close frame of ours.
    Close(EndReason, CloseCode, String),
}

/// `d`, or in effect never when it is zero (the setting is off).
fn or_never(d: Duration) -> Duration {
    if d.is_zero() {
        Duration::from_secs(86400 * 365)
    } else {
        d
    }
}

impl Conn<'_> {
    /// Serves the device until it closes, idles out, fails, is replaced or kgate stops, with
    /// its `connect` and `disconnect` events around that.
    async fn run(self, ws: Ws) {
        let finished = CancellationToken::new();
        // Dropped last: whoever replaces this connection waits for its disconnect event.
        let _finished = finished.clone().drop_guard();
        let mut live = self.open(finished).await;
        let (mut tx, mut rx) = ws.split();
        let (reason, detail) = self.read_frames(&mut live, &mut tx, &mut rx).await;
        if reason == EndReason::Closed {
            // Flushes the close reply tungstenite queued when the device's close frame arrived.
            let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
        }
        self.close(&live, reason, detail).await;
    }

    /// Takes the device id over, counts the connection and publishes its `connect` event.
    async fn open(&self, finished: CancellationToken) -> Live {
        let s = self.server;
        let (conn_id, replaced) = self.take_over(finished).await;
        s.m.active.inc();
        s.m.connections.inc();
        let remote = self.addr.to_string();
        let mut base = Meta::empty();
        base.insert("device_id", self.device_id.clone());
        base.insert("remote_addr", remote.clone());
        let live = Live {
            conn_id,
            replaced,
            started: Instant::now(),
            connected_at: SystemTime::now(),
            source: Arc::from(format!("{}@{remote}", self.device_id)),
            remote,
            base,
            frames: 0,
            bytes: 0,
            close_code: None,
        };
        tracing::debug!(device_id = %self.device_id, remote_addr = %live.remote, "device connected");
        if s.config.lifecycle_events {
            let body = serde_json::json!({
                "event": "connect",
                "device_id": self.device_id,
                "remote_addr": live.remote,
                "time": rfc3339(live.connected_at),
            });
            self.lifecycle(&live.base, &live.source, "connect", body)
                .await;
        }
        live
    }

    /// Registers this connection as the holder of its device id; the id's older connection
    /// is closed, and awaited for a while. Returns the connection's number and the token that
    /// closes it.
    async fn take_over(&self, finished: CancellationToken) -> (u64, CancellationToken) {
        let s = self.server;
        let conn_id = s.next_conn.fetch_add(1, Ordering::Relaxed);
        let replaced = s.stop.child_token();
        let older = s.devices.lock().expect("device registry").insert(
            self.device_id.clone(),
            Holder {
                conn: conn_id,
                replace: replaced.clone(),
                finished,
            },
        );
        if let Some(older) = older {
            tracing::info!(device_id = %self.device_id, "a newer connection replaces the device's open one");
            older.replace.cancel();
            // So that consumers see the old connection's disconnect before the new connect.
            let _ = tokio::time::timeout(REPLACE_WAIT, older.finished.cancelled()).await;
        }
        (conn_id, replaced)
    }

    /// Reads frames into the pipeline, pings, and watches for idleness and replacement until
    /// the connection ends; says why it ended.
    async fn read_frames(
        &self,
        live: &mut Live,
        tx: &mut WsTx,
        rx: &mut WsRx,
    ) -> (EndReason, String) {
        let s = self.server;
        let ping_every = or_never(s.config.ping_interval);
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let idle_for = or_never(s.config.idle_timeout);
        let idle = tokio::time::sleep(idle_for);
        tokio::pin!(idle);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let step = tokio::select! {
                biased;
                _ = live.replaced.cancelled() => self.replaced_step(),
                _ = &mut idle => {
                    let deadline = last_heard + idle_for;
                    if deadline > tokio::time::Instant::now() {
                        idle.as_mut().reset(deadline);
                        Step::Next
                    } else {
                        Step::Close(EndReason::IdleTimeout, CloseCode::Normal, format!("nothing received for {idle_for:?}"))
                    }
                }
                _ = ping.tick() => send_ping(tx, ping_every).await,
                r = rx.next() => {
                    if let Some(Ok(_)) = r {
                        last_heard = tokio::time::Instant::now();
                    }
                    self.on_read(live, r).await
                }
            };
            match step {
                Step::Next => {}
                Step::End(why, text) => return (why, text),
                Step::Close(why, code, text) => {
                    send_close(tx, code, &text).await;
                    return (why, text);
                }
            }
        }
    }

    /// How a connection closed by its token ends: kgate stops, or a newer one replaced it.
    fn replaced_step(&self) -> Step {
        if self.server.stop.is_cancelled() {
            Step::Close(
                EndReason::Shutdown,
                CloseCode::Away,
                "kgate is shutting down".into(),
            )
        } else {
            Step::Close(
                EndReason::Replaced,
                CloseCode::Policy,
                "replaced by a newer connection of the same device".into(),
            )
        }
    }

    /// Hands a text or binary frame to the pipeline; a close, the end of the stream or a read
    /// error ends the connection.
    async fn on_read(&self, live: &mut Live, r: Option<Result<Message, WsError>>) -> Step {
        let s = self.server;
        let msg = match r {
            None => return Step::End(EndReason::Closed, "connection closed".into()),
            Some(Err(WsError::Capacity(e))) => {
                return Step::Close(
                    EndReason::FrameTooLarge,
                    CloseCode::Size,
                    format!("{e} (max_frame {} bytes)", s.config.max_frame.0),
                )
            }
            Some(Err(e)) => return Step::End(EndReason::Error, format!("read failed: {e}")),
            Some(Ok(msg)) => msg,
        };
        let raw = match msg {
            Message::Text(t) => Bytes::from(t),
            Message::Binary(b) => b,
            Message::Close(frame) => {
                live.close_code = frame.as_ref().map(|f| u16::from(f.code));
                let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                return Step::End(EndReason::Closed, reason);
            }
            _ => return Step::Next,
        };
        live.frames += 1;
        live.bytes += raw.len() as u64;
        s.m.frames.inc();
        let origin = Origin::now(s.pipeline.name().clone(), live.source.clone());
        // Awaits while the producer buffer is full: this device is not read meanwhile.
        self.frame(raw, origin, &live.base, s.config.wrp).await;
        Step::Next
    }

    /// Gives the device id up (unless a newer connection holds it), counts the end and
    /// publishes the `disconnect` event.
    async fn close(&self, live: &Live, reason: EndReason, detail: String) {
        let s = self.server;
        {
            let mut devices = s.devices.lock().expect("device registry");
            if devices
                .get(&self.device_id)
                .is_some_and(|h| h.conn == live.conn_id)
            {
                devices.remove(&self.device_id);
            }
        }
        s.m.active.dec();
        s.m.disconnected(reason.as_str());
        let elapsed = live.started.elapsed();
        s.m.connection_duration.observe(elapsed.as_secs_f64());
        tracing::debug!(device_id = %self.device_id, reason = reason.as_str(), %detail, frames = live.frames, "device disconnected");
        if s.config.lifecycle_events {
            let body = self.disconnect_body(live, reason, detail, elapsed);
            self.lifecycle(&live.base, &live.source, "disconnect", body)
                .await;
        }
    }

    /// The body of the `disconnect` event.
    fn disconnect_body(
        &self,
        live: &Live,
        reason: EndReason,
        detail: String,
        elapsed: Duration,
    ) -> serde_json::Value {
        let mut body = serde_json::json!({
            "event": "disconnect",
            "device_id": self.device_id,
            "remote_addr": live.remote,
            "time": rfc3339(SystemTime::now()),
            "connected_at": rfc3339(live.connected_at),
            "duration_ms": elapsed.as_millis() as u64,
            "frames": live.frames,
            "bytes": live.bytes,
            "reason": reason.as_str(),
        });
        if !detail.is_empty() {
            body["detail"] = detail.into();
        }
        if let Some(c) = live.close_code {
            body["close_code"] = c.into();
        }
        body
    }

    /// Publishes a `connect` or `disconnect` event through the pipeline.
    async fn lifecycle(
        &self,
        base: &Meta,
        source: &Arc<str>,
        event: &str,
        body: serde_json::Value,
    ) {
        let s = self.server;
        let mut ev = Event::new(
            Bytes::from(body.to_string()),
            Origin::now(s.pipeline.name().clone(), source.clone()),
        );
        ev.meta = base.clone();
        ev.meta.insert("event", event);
        if s.config.wrp.enabled {
            // As the Xmidt gateway announces devices: an event of type `device-status`.
            let status = if event == "connect" {
                "online"
            } else {
                "offline"
            };
            ev.meta.insert("wrp.event_type", "device-status");
            ev.meta.insert(
                "wrp.dest",
                format!("event:device-status/{}/{status}", self.device_id),
            );
        }
        s.pipeline.handle(ev).await;
    }

    /// Hands one frame to the pipeline (or, when it is not WRP in WRP mode, to the DLQ).
    async fn frame(&self, raw: Bytes, origin: Origin, base: &Meta, wrp: WrpConfig) {
        let s = self.server;
        if !wrp.enabled {
            let mut ev = Event::new(raw, origin);
            ev.meta = base.clone();
            ev.meta.insert("event", "message");
            return s.pipeline.handle(ev).await;
        }
        match wrp::decode(&raw) {
            Ok(d) => {
                let value = match wrp.value {
                    WrpValue::Payload => d.payload,
                    WrpValue::Message => raw,
                };
                let mut ev = Event::new(value, origin);
                ev.headers = d.headers;
                ev.meta = base.clone();
                ev.meta.insert("event", "message");
                for (k, v) in d.meta.iter() {
                    ev.meta.insert(k.to_string(), v);
                }
                s.pipeline.handle(ev).await
            }
            Err(wrp::Invalid(why)) => {
                let mut ev = Event::new(raw, origin);
                ev.meta = base.clone();
                ev.headers
                    .push(("device_id".into(), self.device_id.clone().into_bytes()));
                let r = Rejection {
                    error_type: ErrorType::InvalidWrp,
                    message: format!("not a WRP message: {why}"),
                    source_topic: s.pipeline.processor().topic_template().to_string(),
                };
                s.pipeline.reject(ev, r).await
            }
        }
    }
}

/// Pings the device, giving the write `ping_every` at most.
async fn send_ping(tx: &mut WsTx, ping_every: Duration) -> Step {
    // A device that reads nothing would block the write (and this task) for good.
    match tokio::time::timeout(ping_every, tx.send(Message::Ping(Bytes::new()))).await {
        Ok(Ok(())) => Step::Next,
        Ok(Err(e)) => Step::End(EndReason::Error, format!("ping failed: {e}")),
        Err(_) => Step::End(
            EndReason::Error,
            format!("ping not written within {ping_every:?}: the device reads nothing"),
        ),
    }
}

/// Sends our close frame, giving the write a second at most.
async fn send_close(tx: &mut WsTx, code: CloseCode, text: &str) {
    let frame = CloseFrame {
        code,
        reason: text.to_string().into(),
    };
    let _ =
        tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Close(Some(frame)))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> DeviceSourceConfig {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        serde_json::from_value(serde_json::to_value(v).unwrap()).unwrap()
    }

    fn errors(c: &DeviceSourceConfig) -> Vec<String> {
        let mut e = Vec::new();
        c.check(At("s"), &mut e);
        e.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn config_errors_name_their_paths() {
        let text = "pipelines:\n  - name: d\n    source: {device_websocket: {listen: 'x', device_id: {query: ''}, wrp: {valeu: message}, pingg: 1s}}\n    topic: 'devices.${@wrp.event_type:-other}'\n    key: '${@device_id}'\n    format: raw\n";
        let e = crate::gateway::Config::from_yaml_str(text, "k.yaml", &|_| None).unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"pipelines[0].source.device_websocket.pingg"),
            "{e}"
        );
        assert!(
            paths
                .iter()
                .any(|p| p.starts_with("pipelines[0].source.device_websocket.wrp")),
            "{e}"
        );
        let text = "pipelines:\n  - name: d\n    source: {device_websocket: {listen: 'x', device_id: {query: ''}}}\n    topic: 'devices.${@wrp.event_type:-other}'\n    key: '${@device_id}'\n    format: raw\n";
        let e = crate::gateway::Config::from_yaml_str(text, "k.yaml", &|_| None).unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        // Source values in templates are fine with `format: raw`.
        assert_eq!(
            paths,
            [
                "pipelines[0].source.device_websocket.listen",
                "pipelines[0].source.device_websocket.device_id.query"
            ],
            "{e}"
        );
    }

    #[test]
    fn paths_and_ids_are_checked() {
        assert_eq!(
            parse_path("/devices/{id}").unwrap(),
            vec![Seg::Lit("devices".into()), Seg::Param("id".into())]
        );
        assert!(parse_path("devices").is_err());
        assert!(parse_path("/d/x{id}").is_err());
        assert!(parse_path("/{id}/{id}").is_err());
        let c = cfg("listen: 127.0.0.1:8090\npath: /devices/{id}\ndevice_id: {path_param: id}\n");
        assert!(errors(&c).is_empty(), "{:?}", errors(&c));
        assert_eq!(c.wrp, WrpConfig::default());
        let c = cfg("listen: nowhere\npath: /ws\ndevice_id: {path_param: id}\nidle_timeout: 10s\nping_interval: 30s\n");
        let e = errors(&c).join("\n");
        for want in ["s.listen:", "s.device_id.path_param:", "s.idle_timeout:"] {
            assert!(e.contains(want), "{want} in {e}");
        }
        let c =
            cfg("listen: 127.0.0.1:1\ndevice_id: {header: 'bad header'}\nwrp: {value: message}\n");
        assert!(errors(&c).join("").contains("s.device_id.header"));
        assert_eq!(
            c.wrp,
            WrpConfig {
                enabled: true,
                value: WrpValue::Message
            }
        );
    }
}

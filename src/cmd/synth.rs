//! `kgate synth`: synthetic WebSocket feeds for demos, tests and benchmarks.
//!
//! One server serves one feed (`trades`, `iot`, `ticker` or `orderbook`) at `ws://ADDR/ws`, or
//! at `wss://ADDR/ws` with `--tls-cert`/`--tls-key` (OpenSSL through `tokio-openssl`, as the HTTP
//! server's TLS; `--tls-client-ca` asks every client for a certificate, for mutual TLS tests).
//! Every message carries `feed`, `source`, `seq` and `timestamp`. The sequence number is
//! server-wide: every message sent on any connection takes the next number, so the union of
//! everything the server ever handed to a socket is exactly `1..=count`, with no duplicates, even
//! when clients reconnect. A message whose send fails (the client went away) keeps its number and
//! is re-sent to the next connection.
//!
//! Each connection is driven by one task that polls the read side (client messages, pings, close)
//! and the write side (rate limit, batching, flushing) of the same socket, without a split, so that
//! a failed `start_send` is known to be this message's failure and its seq can be re-queued.
//!
//! What "sent" can promise: a client that leaves cleanly (sends Close, then reads until the
//! server's Close) receives every message counted on its connection, so the next connection
//! continues without a gap. A client that vanishes abruptly (reset, killed process) loses what was
//! already in the TCP buffers, as with any WebSocket feed that has no acknowledgements; those
//! seqs are not re-sent.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures_util::sink::Sink;
use futures_util::stream::Stream;
use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod, SslVerifyMode};
use openssl::x509::X509Name;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_openssl::SslStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Serve a synthetic WebSocket feed at ws://ADDR/ws (wss:// with --tls-cert and --tls-key), for
/// demos, tests and benchmarks.
///
/// Every message is a JSON object with "feed", "source", "seq" and "timestamp" plus the feed's
/// own fields. Sequence numbers are server-wide and never repeat, so a consumer can check that
/// it got exactly 1..=COUNT.
#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    /// Address to listen on; feeds are served at ws://ADDR/ws (other paths get 404).
    /// Port 0 picks a free port (the log line shows the real address)
    #[arg(long, default_value = "127.0.0.1:4200")]
    pub listen: String,

    /// Which feed to serve: trades (W3C Verifiable Credentials of trades), iot (health-sensor
    /// readings), ticker (~200-byte quotes, the benchmark payload) or orderbook (5 levels a side)
    #[arg(long, value_enum, default_value = "ticker")]
    pub feed: Feed,

    /// Messages per second per server, shared by all connections (a token bucket, sent in
    /// batches, so high rates such as 50000 are really reached). 0 = as fast as the client reads
    /// (TCP backpressure is the only limit)
    #[arg(long, default_value_t = 10)]
    pub rate: u64,

    /// Total messages to send, shared by all connections (0 = unlimited). Sequence numbers are
    /// server-wide: the server sends exactly seq 1..=COUNT once each, across reconnects; a message
    /// whose send failed because the client went away is re-sent to the next connection. After
    /// COUNT, connections stay open but idle and "synth: sent COUNT messages" goes to stderr
    #[arg(long, default_value_t = 0)]
    pub count: u64,

    /// Seed of the message contents: the same seed gives the same content for the same seq
    /// (prices, devices, ids...), whatever the connection; only timestamps come from the clock
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Feed id put in every message's "source" field (default "synth-<port>")
    #[arg(long)]
    pub id: Option<String>,

    /// For fault tests: after sending N messages on a connection, stop sending but keep the
    /// connection open, still answering pings (a stalled feed that only a read timeout detects).
    /// Each new connection again sends up to N messages, continuing the sequence, then stalls
    #[arg(long, value_name = "N")]
    pub stall_after: Option<u64>,

    /// For validator demos and tests (iot feed only): every Nth message (seq N, 2N, 3N, ...) is
    /// invalid, rotating through three kinds: malformed JSON (seq N: the message cut short, its
    /// closing brace missing), a required field missing (seq 2N: no "device_id"), and a value
    /// out of range (seq 3N: "heart_rate" 300, where real readings are 58-94); then again from
    /// the first kind. Sequence numbers and counts are unchanged: the invalid messages are sent in
    /// place of valid ones. Off by default
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub invalid_every: Option<u64>,

    /// Exit once --count messages were sent and the last client has disconnected (for scripts
    /// and tests; ignored when --count is 0)
    #[arg(long)]
    pub exit_when_done: bool,

    /// Serve wss:// (TLS) with this certificate, then any intermediates (PEM); needs --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<String>,

    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<String>,

    /// Mutual TLS: refuse clients without a certificate signed by this CA (PEM); needs --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<String>,
}

/// The kind of synthetic feed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Trades wrapped in W3C Verifiable Credentials (`tradeCredential` with `@context`)
    Trades,
    /// Health-sensor readings (heart rate, SpO2, temperature, battery)
    Iot,
    /// Market ticker quotes (bid, ask, last, volume); about 200 bytes
    Ticker,
    /// Order-book snapshots: 5 bid and 5 ask levels of [price, quantity]
    Orderbook,
}

impl Feed {
    /// The name used on the command line and in the "feed" field.
    pub fn as_str(self) -> &'static str {
        match self {
            Feed::Trades => "trades",
            Feed::Iot => "iot",
            Feed::Ticker => "ticker",
            Feed::Orderbook => "orderbook",
        }
    }
}

impl std::fmt::Display for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serve `args.feed` at `ws://<args.listen>/ws` (`wss://` with `--tls-cert`) until `shutdown` is
/// cancelled (or, with `--exit-when-done`, until `--count` messages were sent and the last client
/// disconnected).
pub async fn serve(args: SynthArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("synth: cannot listen on {}", args.listen))?;
    serve_listener(listener, args, shutdown).await
}

/// Like [`serve`], on an already bound listener (`args.listen` is ignored), e.g. port 0 in tests.
pub async fn serve_listener(
    listener: TcpListener,
    args: SynthArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("synth: cannot read the listener's address")?;
    let source = args
        .id
        .clone()
        .unwrap_or_else(|| format!("synth-{}", addr.port()));
    let tls = tls_acceptor(&args)?.map(Arc::new);
    tracing::info!(
        "synth: serving {} feed at {}://{}/ws (rate {}/s, count {}{})",
        args.feed,
        if tls.is_some() { "wss" } else { "ws" },
        addr,
        args.rate,
        args.count,
        if args.tls_client_ca.is_some() {
            ", client certificates required"
        } else {
            ""
        }
    );
    if args.invalid_every.is_some() && args.feed != Feed::Iot {
        anyhow::bail!(
            "synth: --invalid-every is for --feed iot only (its invalid kinds are iot fields), not --feed {}",
            args.feed
        );
    }
    if args.exit_when_done && args.count == 0 {
        tracing::warn!("synth: --exit-when-done has no effect without --count");
    }
    let shared = Arc::new(Shared::new(&args, &source));
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    let exit_when_done = args.exit_when_done && args.count > 0;

    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = shared.changed.notified(), if exit_when_done => {
                if shared.done() {
                    tracing::info!("synth: all {} messages sent and all clients gone; exiting", args.count);
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tasks.spawn(handle_connection(stream, peer, tls.clone(), shared.clone(), stop.clone()));
                }
                Err(e) => {
                    // E.g. too many open files: do not spin, do not give up.
                    tracing::warn!("synth: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }

    // Tell every connection to send its Close frame, give them a moment, then abort stragglers.
    stop.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
    tracing::debug!(
        "synth: stopped after sending {} messages ({} messages received from clients)",
        shared.delivered.load(Ordering::Relaxed),
        shared.client_messages.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One message of a feed as JSON text (used by the bench harness to make identical payloads).
///
/// The content comes from `rng` (and `seq`, for slow price trends); `timestamp` is the real
/// clock. `serve` uses a `StdRng` seeded from `(--seed, seq)` for every message.
pub fn message(feed: Feed, seq: u64, source: &str, rng: &mut impl Rng) -> String {
    let mut out = String::with_capacity(if feed == Feed::Trades { 1400 } else { 256 });
    write_message(
        &mut out,
        feed,
        seq,
        &json_string(source),
        &now_rfc3339(),
        rng,
    );
    out
}

/// What makes a message of `--invalid-every` invalid; the kinds take turns (see [`Invalid::for_seq`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Not JSON: the message is cut short (its closing brace is missing).
    MalformedJson,
    /// The required field `device_id` is missing.
    MissingField,
    /// `heart_rate` is 300, out of any plausible range (real readings are 58-94).
    OutOfRange,
}

impl Invalid {
    /// The kind of message `seq` with `--invalid-every every`: none unless `seq` is a multiple of
    /// `every`; then malformed JSON, missing field, out of range, malformed JSON, ... for seq
    /// `every`, `2 * every`, `3 * every`, ...
    pub fn for_seq(seq: u64, every: Option<u64>) -> Option<Invalid> {
        let every = every.filter(|&n| n > 0)?;
        if seq == 0 || !seq.is_multiple_of(every) {
            return None;
        }
        Some(match (seq / every - 1) % 3 {
            0 => Invalid::MalformedJson,
            1 => Invalid::MissingField,
            _ => Invalid::OutOfRange,
        })
    }

    /// Turns a valid iot message (as [`message`] writes it) into an invalid one of this kind.
    pub fn apply(self, msg: &mut String) {
        match self {
            Invalid::MalformedJson => {
                msg.pop();
            }
            Invalid::MissingField => {
                // `"device_id":"sensor-0007",` (a string value without commas, then a comma).
                if let Some(start) = msg.find(r#""device_id":"#) {
                    if let Some(len) = msg[start..].find(',') {
                        msg.replace_range(start..=start + len, "");
                    }
                }
            }
            Invalid::OutOfRange => {
                const FIELD: &str = r#""heart_rate":"#;
                if let Some(at) = msg.find(FIELD) {
                    let start = at + FIELD.len();
                    let len = msg[start..]
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(msg.len() - start);
                    msg.replace_range(start..start + len, "300");
                }
            }
        }
    }
}

/// [`message`] with `--invalid-every`: message `seq` as the server sends it.
pub fn message_with_invalid(
    feed: Feed,
    seq: u64,
    source: &str,
    rng: &mut impl Rng,
    invalid_every: Option<u64>,
) -> String {
    let mut out = message(feed, seq, source, rng);
    if feed == Feed::Iot {
        if let Some(kind) = Invalid::for_seq(seq, invalid_every) {
            kind.apply(&mut out);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Server-wide state: sequence numbers, unsent queue, rate limit.

struct Shared {
    feed: Feed,
    seed: u64,
    count: u64,
    stall_after: Option<u64>,
    /// `--invalid-every`: every Nth message is made invalid (see [`Invalid`]).
    invalid_every: Option<u64>,
    /// `source` already encoded as a JSON string (with quotes).
    source_json: String,
    /// The next never-used sequence number.
    next_seq: AtomicU64,
    /// Sequence numbers whose send failed; they go first to whichever connection sends next.
    unsent: Mutex<BTreeSet<u64>>,
    unsent_len: AtomicUsize,
    /// Messages handed to a socket (each seq counts once).
    delivered: AtomicU64,
    reported: AtomicBool,
    /// Open WebSocket connections (after the handshake).
    active: AtomicUsize,
    client_messages: AtomicU64,
    bucket: Option<Mutex<Bucket>>,
    /// Poked when a connection ends or the count is reached (for --exit-when-done).
    changed: tokio::sync::Notify,
}

impl Shared {
    fn new(args: &SynthArgs, source: &str) -> Shared {
        Shared {
            feed: args.feed,
            seed: args.seed,
            count: args.count,
            stall_after: args.stall_after,
            invalid_every: args.invalid_every,
            source_json: json_string(source),
            next_seq: AtomicU64::new(1),
            unsent: Mutex::new(BTreeSet::new()),
            unsent_len: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            reported: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            client_messages: AtomicU64::new(0),
            bucket: (args.rate > 0).then(|| Mutex::new(Bucket::new(args.rate, Instant::now()))),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn unsent(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        self.unsent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next sequence number to send: a previously failed one first, then a fresh one.
    /// `None` once `count` numbers were handed out (and none came back).
    fn take_seq(&self) -> Option<u64> {
        if self.unsent_len.load(Ordering::Acquire) > 0 {
            let mut unsent = self.unsent();
            if let Some(seq) = unsent.pop_first() {
                self.unsent_len.store(unsent.len(), Ordering::Release);
                return Some(seq);
            }
        }
        if self.count == 0 {
            return Some(self.next_seq.fetch_add(1, Ordering::Relaxed));
        }
        let count = self.count;
        self.next_seq
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n <= count).then_some(n + 1)
            })
            .ok()
    }

    /// Give back a sequence number whose message did not reach a socket.
    fn requeue(&self, seq: u64) {
        let mut unsent = self.unsent();
        unsent.insert(seq);
        self.unsent_len.store(unsent.len(), Ordering::Release);
    }

    /// A message was handed to a socket.
    fn mark_sent(&self) {
        let delivered = self.delivered.fetch_add(1, Ordering::AcqRel) + 1;
        if self.count > 0 && delivered >= self.count && !self.reported.swap(true, Ordering::AcqRel)
        {
            eprintln!("synth: sent {} messages", self.count);
            self.changed.notify_one();
        }
    }

    fn done(&self) -> bool {
        self.count > 0
            && self.delivered.load(Ordering::Acquire) >= self.count
            && self.active.load(Ordering::Acquire) == 0
    }
}

/// Server-wide token bucket. Tokens are taken in batches so that high rates do not need one
/// timer wake-up per message (the timer has a 1 ms granularity).
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate as f64;
        Bucket {
            rate,
            // 50 ms worth of burst absorbs timer lag without sending visible bursts.
            capacity: (rate * 0.05).max(1.0),
            tokens: 1.0,
            last: now,
        }
    }

    /// Take up to `want` tokens (at least one), or say how long to wait for one.
    fn take(&mut self, want: u64, now: Instant) -> Result<u64, Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            let n = (self.tokens.floor() as u64).min(want.max(1));
            self.tokens -= n as f64;
            Ok(n)
        } else {
            let wait = (1.0 - self.tokens) / self.rate;
            Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }

    fn give_back(&mut self, n: u64) {
        self.tokens = (self.tokens + n as f64).min(self.capacity);
    }
}

// ---------------------------------------------------------------------------------------------
// Connections.

/// Flush after this many messages (and whenever the writer goes idle).
const FLUSH_EVERY: usize = 64;
/// Messages written per poll before yielding to other tasks.
const WRITE_BUDGET: usize = 1024;
/// Client messages read per poll before giving the writer a turn.
const READ_BUDGET: usize = 64;
/// When the count is reached, look this often for messages that another connection failed to send.
const IDLE_RECHECK: Duration = Duration::from_millis(100);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The TLS context of `--tls-cert`/`--tls-key` (and `--tls-client-ca`); none = plain `ws://`.
fn tls_acceptor(args: &SynthArgs) -> anyhow::Result<Option<SslAcceptor>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .context("synth: cannot set up TLS")?;
    b.set_certificate_chain_file(cert)
        .with_context(|| format!("synth: --tls-cert: cannot load `{cert}` as PEM certificates"))?;
    let pkey = std::fs::read(key)
        .map_err(anyhow::Error::from)
        .and_then(|pem| Ok(PKey::private_key_from_pem(&pem)?))
        .with_context(|| format!("synth: --tls-key: cannot load `{key}` as a PEM private key"))?;
    b.set_private_key(&pkey)
        .and_then(|()| b.check_private_key())
        .with_context(|| {
            format!("synth: the key in `{key}` does not belong to the certificate in `{cert}`")
        })?;
    if let Some(ca) = &args.tls_client_ca {
        let load = || format!("synth: --tls-client-ca: cannot load `{ca}` as PEM certificates");
        b.set_ca_file(ca).with_context(load)?;
        b.set_client_ca_list(X509Name::load_client_ca_file(ca).with_context(load)?);
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(Some(b.build()))
}

/// One accepted connection: the TLS handshake when serving `wss://`, then the feed.
async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<SslAcceptor>>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        return serve_connection(stream, peer, shared, stop).await;
    };
    let handshake = async {
        let ssl = Ssl::new(acceptor.context()).map_err(|e| (e.to_string(), None))?;
        let mut s = SslStream::new(ssl, stream).map_err(|e| (e.to_string(), None))?;
        match Pin::new(&mut s).accept().await {
            Ok(()) => Ok(s),
            Err(e) => Err((e.to_string(), Some(s))),
        }
    };
    let stream = tokio::select! {
        _ = stop.cancelled() => return,
        res = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match res {
            Ok(Ok(s)) => s,
            Ok(Err((e, s))) => {
                tracing::info!("synth: TLS handshake with {peer} failed: {e}");
                if let Some(mut s) = s {
                    hang_up(s.get_mut()).await;
                }
                return;
            }
            Err(_) => {
                tracing::debug!("synth: TLS handshake with {peer} timed out");
                return;
            }
        },
    };
    serve_connection(stream, peer, shared, stop).await
}

/// Closes a connection whose TLS handshake failed so that the client reads the alert (e.g. a
/// missing client certificate): a TLS 1.3 client has already sent its HTTP upgrade request,
/// and closing with it unread would answer with a reset instead.
async fn hang_up(tcp: &mut TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Ok(1..) = tcp.read(&mut buf).await {}
    })
    .await;
}

/// The WebSocket handshake, then the feed until the client leaves or `stop`.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config));
    let ws = tokio::select! {
        _ = stop.cancelled() => return,
        res = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match res {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                tracing::debug!("synth: handshake with {peer} failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("synth: handshake with {peer} timed out");
                return;
            }
        },
    };
    shared.active.fetch_add(1, Ordering::AcqRel);
    tracing::debug!("synth: client {peer} connected");

    let mut conn = Conn::new(ws, peer, shared.clone());
    let end = {
        let cancelled = stop.cancelled();
        tokio::pin!(cancelled);
        poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Shutdown);
            }
            conn.poll(cx)
        })
        .await
    };
    let sent = conn.sent;
    match end {
        End::Shutdown => {
            // Flushes what is buffered, then the Close frame; wait briefly for the client's reply.
            let mut ws = conn.ws;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                if ws.close(None).await.is_ok() {
                    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
                }
            })
            .await;
            tracing::debug!("synth: closed connection of {peer} after {sent} messages (shutdown)");
        }
        End::Closed => tracing::debug!("synth: client {peer} disconnected after {sent} messages"),
        End::Error(e) => {
            tracing::debug!("synth: client {peer} disconnected after {sent} messages: {e}")
        }
    }
    shared.active.fetch_sub(1, Ordering::AcqRel);
    shared.changed.notify_one();
}

/// Handshake callback: feeds live at `/ws` only.
#[allow(clippy::result_large_err)] // the signature is tungstenite's
fn check_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == "/ws" {
        return Ok(resp);
    }
    let mut err = ErrorResponse::new(Some(format!(
        "not found: {} (synth feeds are served at /ws)\n",
        req.uri().path()
    )));
    *err.status_mut() = StatusCode::NOT_FOUND;
    Err(err)
}

enum End {
    Shutdown,
    Closed,
    Error(WsError),
}

impl From<WsError> for End {
    fn from(e: WsError) -> End {
        match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed => End::Closed,
            e => End::Error(e),
        }
    }
}

struct Conn<S> {
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    /// Messages handed to this socket.
    sent: u64,
    /// Rate-limit tokens already taken from the bucket.
    permits: u64,
    /// Messages written since the last completed flush.
    unflushed: usize,
    /// The client sent a Close: send nothing more, finish the close handshake.
    closing: bool,
    timer: Pin<Box<Sleep>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(ws: WebSocketStream<S>, peer: SocketAddr, shared: Arc<Shared>) -> Conn<S> {
        Conn {
            ws,
            peer,
            shared,
            sent: 0,
            permits: 0,
            unflushed: 0,
            closing: false,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        // Read side: client messages, pings (tungstenite queues the pong and flushes it while
        // reading), Close.
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                cx.waker().wake_by_ref();
                break;
            }
            budget -= 1;
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(msg))) => self.on_client_message(msg),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(e.into()),
                Poll::Ready(None) => return Poll::Ready(End::Closed),
                Poll::Pending => break,
            }
        }
        if self.closing {
            // The close reply goes out with the next read/flush; reading then returns None.
            return match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(e.into()),
                _ => Poll::Pending,
            };
        }
        self.poll_write(cx)
    }

    fn on_client_message(&mut self, msg: Message) {
        match msg {
            Message::Text(text) => {
                self.shared.client_messages.fetch_add(1, Ordering::Relaxed);
                let shown: String = text.as_str().chars().take(200).collect();
                tracing::debug!("synth: client {} sent: {shown}", self.peer);
            }
            Message::Binary(data) => {
                self.shared.client_messages.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "synth: client {} sent {} binary bytes",
                    self.peer,
                    data.len()
                );
            }
            Message::Close(frame) => {
                tracing::debug!("synth: client {} sent Close {frame:?}", self.peer);
                self.closing = true;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    /// Send as much as the rate, the count, the stall and the socket allow. Ready only when the
    /// connection failed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let shared = self.shared.clone();
        let mut budget = WRITE_BUDGET;
        loop {
            if shared.stall_after.is_some_and(|n| self.sent >= n) {
                // Stalled: never send again on this connection, but keep flushing pongs.
                return self.idle(cx, None);
            }
            if budget == 0 {
                cx.waker().wake_by_ref();
                return self.idle(cx, None);
            }
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(e.into()),
                // Backpressure: the socket wakes us when it drains.
                Poll::Pending => return Poll::Pending,
            }
            if self.permits == 0 {
                if let Some(bucket) = &shared.bucket {
                    let want =
                        (budget as u64).min(shared.stall_after.map_or(u64::MAX, |n| n - self.sent));
                    let taken = bucket
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take(want, Instant::now());
                    match taken {
                        Ok(n) => self.permits = n,
                        Err(wait) => {
                            self.timer.as_mut().reset(Instant::now() + wait);
                            if self.timer.as_mut().poll(cx).is_ready() {
                                continue;
                            }
                            return self.idle(cx, None);
                        }
                    }
                } else {
                    self.permits = u64::MAX;
                }
            }
            let Some(seq) = shared.take_seq() else {
                // Count reached: idle, but look again later for messages another connection
                // failed to send.
                if let Some(bucket) = &shared.bucket {
                    bucket
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .give_back(self.permits);
                    self.permits = 0;
                }
                return self.idle(cx, Some(IDLE_RECHECK));
            };
            let mut text = String::with_capacity(if shared.feed == Feed::Trades {
                1400
            } else {
                256
            });
            let mut rng = StdRng::seed_from_u64(mix(shared.seed, seq));
            write_message(
                &mut text,
                shared.feed,
                seq,
                &shared.source_json,
                &now_rfc3339(),
                &mut rng,
            );
            if let Some(kind) = Invalid::for_seq(seq, shared.invalid_every) {
                kind.apply(&mut text);
            }
            // Ok means tungstenite has the frame in its buffer (a WouldBlock while writing it out
            // is reported as Ok). An error means the frame did not make it: keep its seq.
            if let Err(e) = Pin::new(&mut self.ws).start_send(Message::text(text)) {
                shared.requeue(seq);
                tracing::warn!(
                    "synth: could not send seq {seq} to {}: {e}; it goes to the next connection",
                    self.peer
                );
                return Poll::Ready(e.into());
            }
            shared.mark_sent();
            self.sent += 1;
            self.permits -= 1;
            self.unflushed += 1;
            budget -= 1;
            if self.unflushed >= FLUSH_EVERY {
                if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                    return Poll::Ready(e.into());
                }
            }
        }
    }

    /// Nothing to send right now: flush what was written (and any queued pong), optionally arm
    /// the timer to look again later.
    fn idle(&mut self, cx: &mut Context<'_>, recheck: Option<Duration>) -> Poll<End> {
        if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
            return Poll::Ready(e.into());
        }
        if let Some(after) = recheck {
            self.timer.as_mut().reset(Instant::now() + after);
            if self.timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let res = Pin::new(&mut self.ws).poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            self.unflushed = 0;
        }
        res
    }
}

/// The content seed of message `seq`: the same for every connection that sends it.
fn mix(seed: u64, seq: u64) -> u64 {
    splitmix(seed ^ splitmix(seq))
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// Message contents.

const EXCHANGES: [&str; 3] = ["binance", "coinbase", "kraken"];

struct Symbol {
    name: &'static str,
    base: f64,
    decimals: usize,
    /// A typical trade size.
    qty: f64,
}

const SYMBOLS: [Symbol; 6] = [
    Symbol {
        name: "BTC-USD",
        base: 65_000.0,
        decimals: 2,
        qty: 0.25,
    },
    Symbol {
        name: "ETH-USD",
        base: 3_200.0,
        decimals: 2,
        qty: 3.0,
    },
    Symbol {
        name: "SOL-USD",
        base: 150.0,
        decimals: 3,
        qty: 40.0,
    },
    Symbol {
        name: "XRP-USD",
        base: 0.60,
        decimals: 5,
        qty: 8_000.0,
    },
    Symbol {
        name: "ADA-USD",
        base: 0.45,
        decimals: 5,
        qty: 10_000.0,
    },
    Symbol {
        name: "DOGE-USD",
        base: 0.15,
        decimals: 6,
        qty: 30_000.0,
    },
];

const DEVICES: u64 = 16;

const BASE58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

fn write_message(
    out: &mut String,
    feed: Feed,
    seq: u64,
    source_json: &str,
    ts: &str,
    rng: &mut impl Rng,
) {
    // Hand-written rather than write!(): formatting machinery would dominate the cost at rate 0.
    out.push_str(r#"{"feed":""#);
    out.push_str(feed.as_str());
    out.push_str(r#"","source":"#);
    out.push_str(source_json);
    out.push_str(r#","seq":"#);
    push_u64(out, seq);
    out.push_str(r#","timestamp":""#);
    out.push_str(ts);
    out.push_str(r#"","#);
    match feed {
        Feed::Trades => write_trade(out, seq, ts, rng),
        Feed::Iot => write_iot(out, seq, rng),
        Feed::Ticker => write_ticker(out, seq, rng),
        Feed::Orderbook => write_orderbook(out, seq, rng),
    }
    out.push('}');
}

/// A mid price that drifts slowly with `seq` plus a little noise.
fn mid_price(sym_idx: usize, seq: u64, rng: &mut impl Rng) -> f64 {
    let s = seq as f64;
    let phase = sym_idx as f64 * 1.7;
    let trend = 1.0 + 0.03 * (s / 1500.0 + phase).sin() + 0.01 * (s / 137.0 + phase).sin();
    SYMBOLS[sym_idx].base * trend * (1.0 + rng.random_range(-0.0005..0.0005))
}

fn pick_market(rng: &mut impl Rng) -> (&'static str, usize) {
    let exchange = EXCHANGES[rng.random_range(0..EXCHANGES.len())];
    (exchange, rng.random_range(0..SYMBOLS.len()))
}

fn write_ticker(out: &mut String, seq: u64, rng: &mut impl Rng) {
    let (exchange, i) = pick_market(rng);
    let sym = &SYMBOLS[i];
    let mid = mid_price(i, seq, rng);
    let half_spread = mid * rng.random_range(0.00002..0.0002);
    let bid = mid - half_spread;
    let ask = mid + half_spread;
    let last = rng.random_range(bid..=ask);
    let volume = sym.qty * 20_000.0 * rng.random_range(0.5..1.5);
    let d = sym.decimals;
    push_market(out, exchange, sym.name);
    out.push_str(r#","bid":"#);
    push_fixed(out, bid, d);
    out.push_str(r#","ask":"#);
    push_fixed(out, ask, d);
    out.push_str(r#","last":"#);
    push_fixed(out, last, d);
    out.push_str(r#","volume":"#);
    push_fixed(out, volume, 4);
}

/// `"exchange":"..","symbol":".."`
fn push_market(out: &mut String, exchange: &str, symbol: &str) {
    out.push_str(r#""exchange":""#);
    out.push_str(exchange);
    out.push_str(r#"","symbol":""#);
    out.push_str(symbol);
    out.push('"');
}

/// `[price,qty]`
fn push_level(out: &mut String, first: bool, price: f64, d: usize, qty: f64) {
    if !first {
        out.push(',');
    }
    out.push('[');
    push_fixed(out, price, d);
    out.push(',');
    push_fixed(out, qty, 4);
    out.push(']');
}

fn write_orderbook(out: &mut String, seq: u64, rng: &mut impl Rng) {
    let (exchange, i) = pick_market(rng);
    let sym = &SYMBOLS[i];
    let mid = mid_price(i, seq, rng);
    let tick = mid * 0.0001;
    let d = sym.decimals;
    push_market(out, exchange, sym.name);
    out.push_str(r#","bids":["#);
    let mut price = mid - tick * rng.random_range(0.5..1.5);
    for level in 0..5 {
        let qty = sym.qty * rng.random_range(0.1..5.0);
        push_level(out, level == 0, price, d, qty);
        price -= tick * rng.random_range(1.0..3.0);
    }
    out.push_str(r#"],"asks":["#);
    let mut price = mid + tick * rng.random_range(0.5..1.5);
    for level in 0..5 {
        let qty = sym.qty * rng.random_range(0.1..5.0);
        push_level(out, level == 0, price, d, qty);
        price += tick * rng.random_range(1.0..3.0);
    }
    out.push(']');
}

fn write_iot(out: &mut String, seq: u64, rng: &mut impl Rng) {
    let device = rng.random_range(0..DEVICES);
    let heart_rate = 58 + (device * 3) % 25 + rng.random_range(0..12);
    let spo2 = rng.random_range(94.0..99.9);
    let temperature = rng.random_range(36.1..37.6);
    // Batteries drain slowly as the feed goes on, each device at its own phase.
    let battery = 1.0 - (((seq / DEVICES) + device * 61) % 950) as f64 / 1000.0;
    out.push_str(r#""device_id":"sensor-"#);
    push_padded(out, device + 1, 4);
    out.push_str(r#"","patient_id":"patient-"#);
    push_padded(out, 1000 + device * 7 + 3, 4);
    out.push_str(r#"","heart_rate":"#);
    push_u64(out, heart_rate);
    out.push_str(r#","spo2":"#);
    push_fixed(out, spo2, 1);
    out.push_str(r#","temperature":"#);
    push_fixed(out, temperature, 2);
    out.push_str(r#","battery":"#);
    push_fixed(out, battery, 3);
}

fn write_trade(out: &mut String, seq: u64, ts: &str, rng: &mut impl Rng) {
    let (exchange, i) = pick_market(rng);
    let ex_idx = EXCHANGES.iter().position(|e| *e == exchange).unwrap_or(0) as u64;
    let sym = &SYMBOLS[i];
    let price = mid_price(i, seq, rng);
    let quantity = sym.qty * rng.random_range(0.01..4.0);
    let side = if rng.random_bool(0.5) { "buy" } else { "sell" };
    let issuer = did_key(0x1551_0000 + ex_idx);
    let issuer_key = &issuer["did:key:".len()..];
    let holder = did_key(0x7ADE_0000 + rng.random_range(0..64u64));
    let trade_id = format!(
        "{}-{:012}",
        &exchange[..2].to_ascii_uppercase(),
        rng.random_range(0..1_000_000_000_000u64)
    );
    let price = Fixed(price, sym.decimals);
    let quantity = Fixed(quantity, 6);
    let _ = write!(
        out,
        r#""exchange":"{exchange}","symbol":"{}","tradeCredential":{{"@context":["https://www.w3.org/2018/credentials/v1","https://w3id.org/security/suites/ed25519-2020/v1"],"id":"urn:uuid:"#,
        sym.name
    );
    write_uuid(out, rng);
    let _ = write!(
        out,
        r#"","type":["VerifiableCredential","TradeCredential"],"issuer":"{issuer}","issuanceDate":"{ts}","credentialSubject":{{"id":"{holder}","tradeId":"{trade_id}","exchange":"{exchange}","symbol":"{}","side":"{side}","price":"{price}","quantity":"{quantity}","executedAt":"{ts}"}},"proof":{{"type":"Ed25519Signature2020","created":"{ts}","verificationMethod":"{issuer}#{issuer_key}","proofPurpose":"assertionMethod","proofValue":"z"#,
        sym.name
    );
    for _ in 0..87 {
        out.push(BASE58[rng.random_range(0..BASE58.len())] as char);
    }
    out.push_str(r#""}}"#);
}

/// `x` with `d` decimals (at most 9), as JSON allows it: a much faster `{:.d$}`, which
/// matters at hundreds of thousands of messages per second.
fn push_fixed(out: &mut String, x: f64, d: usize) {
    let d = d.min(9);
    if !x.is_finite() || x.abs() >= 1e9 {
        // Never produced by the feeds; stay correct (and valid JSON) anyway.
        if x.is_finite() {
            let _ = write!(out, "{x:.d$}");
        } else {
            out.push('0');
        }
        return;
    }
    let p = 10u64.pow(d as u32);
    // Round half away from zero, like `{:.d$}` does for all but exact binary halves.
    let scaled = (x.abs() * p as f64 + 0.5) as u64;
    if x < 0.0 && scaled != 0 {
        out.push('-');
    }
    push_u64(out, scaled / p);
    if d > 0 {
        out.push('.');
        push_padded(out, scaled % p, d);
    }
}

fn push_u64(out: &mut String, n: u64) {
    push_padded(out, n, 1);
}

/// `n` in decimal, left-padded with zeros to `width` digits (at most 20).
fn push_padded(out: &mut String, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while n > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    i = i.min(buf.len().saturating_sub(width.max(1)));
    // Only ASCII digits: from_utf8 cannot fail.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// [`push_fixed`] for `format!`.
struct Fixed(f64, usize);

impl std::fmt::Display for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::with_capacity(24);
        push_fixed(&mut s, self.0, self.1);
        f.write_str(&s)
    }
}

/// A did:key of an Ed25519 key ("did:key:z6Mk" + 44 base58 characters), stable for `id`.
fn did_key(id: u64) -> String {
    let mut s = String::with_capacity(56);
    s.push_str("did:key:z6Mk");
    let mut state = splitmix(id);
    for _ in 0..44 {
        state = splitmix(state);
        s.push(BASE58[(state % BASE58.len() as u64) as usize] as char);
    }
    s
}

/// A version-4-shaped UUID from `rng`.
fn write_uuid(out: &mut String, rng: &mut impl Rng) {
    let hi: u64 = rng.random();
    let lo: u64 = rng.random();
    let _ = write!(
        out,
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0x0fff,
        0x8000 | (lo >> 48) & 0x3fff,
        lo & 0xffff_ffff_ffff
    );
}

/// The current time as RFC 3339 UTC with milliseconds, e.g. `2025-06-01T12:34:56.789Z`.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use serde_json::Value;
    use tokio_tungstenite::tungstenite::Bytes;

    use crate::source::websocket::test_pki::{generate, Pki};

    type Client = WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

    fn args(feed: Feed, rate: u64, count: u64) -> SynthArgs {
        SynthArgs {
            listen: "127.0.0.1:0".into(),
            feed,
            rate,
            count,
            seed: 1,
            id: Some("test-feed".into()),
            stall_after: None,
            invalid_every: None,
            exit_when_done: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }

    struct Server {
        addr: SocketAddr,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl Server {
        async fn start(args: SynthArgs) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = CancellationToken::new();
            let task = tokio::spawn(serve_listener(listener, args, stop.clone()));
            Server { addr, stop, task }
        }

        fn url(&self) -> String {
            format!("ws://{}/ws", self.addr)
        }

        async fn connect(&self) -> Client {
            tokio_tungstenite::connect_async(self.url())
                .await
                .unwrap()
                .0
        }

        async fn stop(self) {
            self.stop.cancel();
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("serve returns after cancel")
                .unwrap()
                .unwrap();
        }
    }

    /// The next data message's seq, or None if the connection ended.
    async fn next_seq(ws: &mut Client) -> Option<u64> {
        loop {
            match ws.next().await? {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    return Some(v["seq"].as_u64().unwrap());
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn read_seqs(ws: &mut Client, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let seq = tokio::time::timeout(Duration::from_secs(3), next_seq(ws))
                .await
                .expect("message in time")
                .expect("connection open");
            out.push(seq);
        }
        out
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn is_rfc3339_millis(s: &str) -> bool {
        let b = s.as_bytes();
        s.len() == 24
            && b[4] == b'-'
            && b[10] == b'T'
            && b[19] == b'.'
            && s.ends_with('Z')
            && humantime::parse_rfc3339(s).is_ok()
    }

    fn parse(feed: Feed, seq: u64) -> Value {
        let text = message(feed, seq, "src \"1\"", &mut rng());
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["feed"], feed.as_str());
        assert_eq!(v["source"], "src \"1\"");
        assert_eq!(v["seq"], seq);
        assert!(
            is_rfc3339_millis(v["timestamp"].as_str().unwrap()),
            "{text}"
        );
        v
    }

    #[test]
    fn every_feed_is_json_with_its_fields() {
        for seq in [1, 2, 99, 123_456_789] {
            let t = parse(Feed::Ticker, seq);
            assert!(EXCHANGES.contains(&t["exchange"].as_str().unwrap()));
            assert!(t["symbol"].as_str().unwrap().ends_with("-USD"));
            let (bid, ask, last) = (
                t["bid"].as_f64().unwrap(),
                t["ask"].as_f64().unwrap(),
                t["last"].as_f64().unwrap(),
            );
            assert!(bid > 0.0 && bid <= last && last <= ask, "{t}");
            assert!(t["volume"].as_f64().unwrap() > 0.0);

            let o = parse(Feed::Orderbook, seq);
            assert!(o["exchange"].is_string() && o["symbol"].is_string());
            for side in ["bids", "asks"] {
                let levels = o[side].as_array().unwrap();
                assert_eq!(levels.len(), 5);
                for l in levels {
                    let l = l.as_array().unwrap();
                    assert_eq!(l.len(), 2);
                    assert!(l[0].as_f64().unwrap() > 0.0 && l[1].as_f64().unwrap() > 0.0);
                }
            }
            let best_bid = o["bids"][0][0].as_f64().unwrap();
            let best_ask = o["asks"][0][0].as_f64().unwrap();
            assert!(best_bid < best_ask, "{o}");

            let i = parse(Feed::Iot, seq);
            let device = i["device_id"].as_str().unwrap();
            assert!(
                device.starts_with("sensor-") && device.len() == 11,
                "{device}"
            );
            assert!(i["patient_id"].as_str().unwrap().starts_with("patient-"));
            let hr = i["heart_rate"].as_u64().unwrap();
            assert!((40..=200).contains(&hr));
            assert!(i["spo2"].is_f64() && i["temperature"].is_f64());
            let battery = i["battery"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&battery));

            let tr = parse(Feed::Trades, seq);
            assert!(tr["exchange"].is_string() && tr["symbol"].is_string());
            let vc = &tr["tradeCredential"];
            assert_eq!(vc["@context"][0], "https://www.w3.org/2018/credentials/v1");
            assert_eq!(vc["@context"].as_array().unwrap().len(), 2);
            assert_eq!(vc["type"][1], "TradeCredential");
            let id = vc["id"].as_str().unwrap();
            assert!(id.starts_with("urn:uuid:") && id.len() == 9 + 36, "{id}");
            let issuer = vc["issuer"].as_str().unwrap();
            assert!(issuer.starts_with("did:key:z6Mk") && issuer.len() == 56);
            assert!(is_rfc3339_millis(vc["issuanceDate"].as_str().unwrap()));
            let cs = &vc["credentialSubject"];
            assert!(cs["id"].as_str().unwrap().starts_with("did:key:z6Mk"));
            assert!(cs["tradeId"].is_string());
            assert_eq!(cs["exchange"], tr["exchange"]);
            assert_eq!(cs["symbol"], tr["symbol"]);
            assert!(cs["side"] == "buy" || cs["side"] == "sell");
            assert!(cs["price"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
            assert!(cs["quantity"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
            assert!(is_rfc3339_millis(cs["executedAt"].as_str().unwrap()));
            let proof = &vc["proof"];
            assert_eq!(proof["type"], "Ed25519Signature2020");
            assert_eq!(proof["proofPurpose"], "assertionMethod");
            assert!(is_rfc3339_millis(proof["created"].as_str().unwrap()));
            let vm = proof["verificationMethod"].as_str().unwrap();
            assert!(vm.starts_with(issuer) && vm.contains("#z6Mk"), "{vm}");
            assert!(proof["proofValue"].as_str().unwrap().starts_with('z'));
        }
    }

    #[test]
    fn integers_are_written_right() {
        for (n, w, want) in [
            (0, 1, "0"),
            (7, 4, "0007"),
            (12345, 4, "12345"),
            (u64::MAX, 1, "18446744073709551615"),
            (0, 3, "000"),
        ] {
            let mut s = String::new();
            push_padded(&mut s, n, w);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn fixed_matches_std_formatting() {
        for x in [
            0.0, 1.0, 0.5, 0.15, 64123.455, 64123.4549, -3.25, -0.0001, 0.999_99, 123.0,
        ] {
            for d in 0..=6 {
                let ours = Fixed(x, d).to_string();
                let std = format!("{x:.d$}");
                // Rounding of exact halves may differ; the value must match to the last digit.
                let diff = (ours.parse::<f64>().unwrap() - std.parse::<f64>().unwrap()).abs();
                assert!(
                    diff <= 1.01 / 10f64.powi(d as i32),
                    "{x} {d}: {ours} vs {std}"
                );
                assert_eq!(ours.split('.').nth(1).map_or(0, str::len), d, "{ours}");
            }
        }
        assert_eq!(Fixed(1.23456, 2).to_string(), "1.23");
        assert_eq!(Fixed(0.05, 3).to_string(), "0.050");
        assert_eq!(Fixed(-1.5, 0).to_string(), "-2");
        assert_eq!(Fixed(f64::NAN, 2).to_string(), "0");
    }

    #[test]
    fn ticker_is_about_200_bytes() {
        let mut r = rng();
        for seq in [1, 1000, 9_999_999_999] {
            for _ in 0..50 {
                let len = message(Feed::Ticker, seq, "synth-4200", &mut r).len();
                assert!((150..=260).contains(&len), "{len}");
            }
        }
    }

    #[test]
    fn content_is_deterministic_except_timestamps() {
        fn strip(v: &mut Value) {
            match v {
                Value::Object(m) => {
                    for k in ["timestamp", "issuanceDate", "executedAt", "created"] {
                        m.remove(k);
                    }
                    m.values_mut().for_each(strip);
                }
                Value::Array(a) => a.iter_mut().for_each(strip),
                _ => {}
            }
        }
        for feed in [Feed::Trades, Feed::Iot, Feed::Ticker, Feed::Orderbook] {
            let gen = |seed| {
                let mut rng = StdRng::seed_from_u64(mix(seed, 42));
                let mut v: Value = serde_json::from_str(&message(feed, 42, "s", &mut rng)).unwrap();
                strip(&mut v);
                v
            };
            assert_eq!(gen(1), gen(1));
            assert_ne!(gen(1), gen(2));
        }
    }

    #[test]
    fn invalid_every_rotates_three_kinds_and_is_off_by_default() {
        use Invalid::*;
        assert_eq!(Invalid::for_seq(5, None), None);
        assert_eq!(Invalid::for_seq(5, Some(0)), None);
        let kinds: Vec<_> = (1..=40).map(|s| Invalid::for_seq(s, Some(5))).collect();
        let want: Vec<_> = (1..=40u64)
            .map(|s| match s {
                5 | 20 | 35 => Some(MalformedJson),
                10 | 25 | 40 => Some(MissingField),
                15 | 30 => Some(OutOfRange),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, want);
        assert_eq!(Invalid::for_seq(1, Some(1)), Some(MalformedJson));

        // Off: exactly `message`'s content (timestamps aside), the rng used the same way.
        for seq in 1..=50 {
            let mut plain: Value =
                serde_json::from_str(&message(Feed::Iot, seq, "s", &mut rng())).unwrap();
            let off = message_with_invalid(Feed::Iot, seq, "s", &mut rng(), None);
            let mut off: Value = serde_json::from_str(&off).unwrap();
            plain.as_object_mut().unwrap().remove("timestamp");
            off.as_object_mut().unwrap().remove("timestamp");
            assert_eq!(plain, off);
        }

        // On, every 4th of 1..=120: 30 invalid (10 of each kind), 90 valid; counted by content.
        let (mut valid, mut malformed, mut missing, mut out_of_range) = (0, 0, 0, 0);
        for seq in 1..=120u64 {
            let text = message_with_invalid(Feed::Iot, seq, "s", &mut rng(), Some(4));
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                assert_eq!(seq % 12, 4, "seq {seq} malformed: {text}");
                assert!(text.starts_with('{') && !text.ends_with('}'), "{text}");
                malformed += 1;
                continue;
            };
            assert_eq!(v["seq"], seq, "{text}");
            assert!(v["patient_id"].is_string() && v["spo2"].is_f64(), "{text}");
            let hr = v["heart_rate"].as_u64().unwrap();
            if v.get("device_id").is_none() {
                assert_eq!(seq % 12, 8, "{text}");
                assert!((40..=200).contains(&hr));
                missing += 1;
            } else if hr == 300 {
                assert_eq!(seq % 12, 0, "{text}");
                assert!(v["device_id"].as_str().unwrap().starts_with("sensor-"));
                out_of_range += 1;
            } else {
                assert_ne!(seq % 4, 0, "seq {seq} should be invalid: {text}");
                assert!((40..=200).contains(&hr));
                valid += 1;
            }
        }
        assert_eq!((valid, malformed, missing, out_of_range), (90, 10, 10, 10));
    }

    #[tokio::test]
    async fn server_sends_invalid_every_nth_message() {
        let mut a = args(Feed::Iot, 0, 30);
        a.invalid_every = Some(3);
        let server = Server::start(a).await;
        let mut ws = server.connect().await;
        let mut texts = Vec::new();
        while texts.len() < 30 {
            let msg = tokio::time::timeout(Duration::from_secs(3), ws.next())
                .await
                .expect("message in time")
                .expect("connection open")
                .unwrap();
            if let Message::Text(t) = msg {
                texts.push(t.as_str().to_owned());
            }
        }
        let parsed: Vec<Option<Value>> =
            texts.iter().map(|t| serde_json::from_str(t).ok()).collect();
        // seq 3, 12, 21, 30 are malformed; the others parse, in order.
        let unparsed: Vec<usize> = (0..30).filter(|&i| parsed[i].is_none()).collect();
        assert_eq!(unparsed, [2, 11, 20, 29]);
        let no_device = parsed
            .iter()
            .flatten()
            .filter(|v| v.get("device_id").is_none())
            .count();
        let hr_300 = parsed
            .iter()
            .flatten()
            .filter(|v| v["heart_rate"] == 300)
            .count();
        assert_eq!((no_device, hr_300), (3, 3));
        drop(ws);
        server.stop().await;

        // Only the iot feed has these kinds.
        let mut a = args(Feed::Ticker, 0, 1);
        a.invalid_every = Some(3);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = serve_listener(listener, a, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("--feed iot only"), "{e:#}");
    }

    #[test]
    fn sequence_accounting_is_exact() {
        let shared = Shared::new(&args(Feed::Ticker, 0, 5), "s");
        assert_eq!(shared.take_seq(), Some(1));
        assert_eq!(shared.take_seq(), Some(2));
        shared.requeue(2);
        shared.requeue(1);
        let mut got = Vec::new();
        while let Some(s) = shared.take_seq() {
            got.push(s);
        }
        assert_eq!(got, [1, 2, 3, 4, 5]);
        shared.requeue(4);
        assert_eq!(shared.take_seq(), Some(4));
        assert_eq!(shared.take_seq(), None);
    }

    #[test]
    fn bucket_batches_tokens() {
        let t0 = Instant::now();
        let mut b = Bucket::new(50_000, t0);
        assert_eq!(b.take(1000, t0), Ok(1));
        assert!(b.take(1000, t0).is_err());
        // 10 ms at 50,000/s = 500 tokens, handed out in one batch.
        assert_eq!(b.take(1000, t0 + Duration::from_millis(10)), Ok(500));
        // Never more than 50 ms worth of burst.
        assert_eq!(b.take(100_000, t0 + Duration::from_secs(10)), Ok(2500));
        let mut slow = Bucket::new(10, t0);
        assert_eq!(slow.take(5, t0), Ok(1));
        let wait = slow.take(5, t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
    }

    #[test]
    fn cli_parses() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            synth: SynthArgs,
        }
        Cli::command().debug_assert();
        let d = Cli::try_parse_from(["kgate"]).unwrap().synth;
        assert_eq!(
            (d.listen.as_str(), d.feed, d.rate, d.count, d.seed),
            ("127.0.0.1:4200", Feed::Ticker, 10, 0, 1)
        );
        assert_eq!((d.id, d.stall_after, d.exit_when_done), (None, None, false));
        let a = Cli::try_parse_from([
            "kgate",
            "--feed",
            "orderbook",
            "--rate",
            "0",
            "--stall-after",
            "5",
            "--id",
            "x",
            "--exit-when-done",
        ])
        .unwrap()
        .synth;
        assert_eq!(a.feed, Feed::Orderbook);
        assert_eq!(
            (a.rate, a.stall_after, a.id.as_deref()),
            (0, Some(5), Some("x"))
        );
        assert!(a.exit_when_done);
        assert_eq!(d.invalid_every, None);
        let i = Cli::try_parse_from(["kgate", "--feed", "iot", "--invalid-every", "100"])
            .unwrap()
            .synth;
        assert_eq!(i.invalid_every, Some(100));
        assert!(Cli::try_parse_from(["kgate", "--invalid-every", "0"]).is_err());
        let t = Cli::try_parse_from(["kgate", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
            .unwrap()
            .synth;
        assert_eq!(
            (t.tls_cert.as_deref(), t.tls_key.as_deref(), t.tls_client_ca),
            (Some("c.pem"), Some("k.pem"), None)
        );
        for half in [
            &["kgate", "--tls-cert", "c.pem"][..],
            &["kgate", "--tls-key", "k.pem"],
            &["kgate", "--tls-client-ca", "ca.pem"],
        ] {
            assert!(Cli::try_parse_from(half).is_err(), "{half:?}");
        }
    }

    #[tokio::test]
    async fn rate_zero_sends_exactly_count() {
        let server = Server::start(args(Feed::Trades, 0, 100)).await;
        let mut ws = server.connect().await;
        let seqs = read_seqs(&mut ws, 100).await;
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
        // Nothing more, but the connection stays open.
        assert!(
            tokio::time::timeout(Duration::from_millis(150), next_seq(&mut ws))
                .await
                .is_err()
        );
        ws.send(Message::text(r#"{"op":"subscribe"}"#))
            .await
            .unwrap();
        ws.send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .unwrap();
        assert!(matches!(pong, Some(Ok(Message::Pong(p))) if &p[..] == b"hi"));
        drop(ws);
        server.stop().await;
    }

    #[tokio::test]
    async fn reconnect_continues_the_sequence() {
        // 2,000/s so that the client leaves in the middle of the stream.
        let server = Server::start(args(Feed::Ticker, 2000, 200)).await;
        let mut all = Vec::new();
        let mut ws = server.connect().await;
        all.extend(read_seqs(&mut ws, 30).await);
        // A clean goodbye: Close, then read what was already on the way until the server's Close.
        ws.send(Message::Close(None)).await.unwrap();
        while let Ok(Some(seq)) =
            tokio::time::timeout(Duration::from_secs(2), next_seq(&mut ws)).await
        {
            all.push(seq);
        }
        let first = all.len();
        assert!(first < 200, "the first connection got everything");
        let mut ws = server.connect().await;
        all.extend(read_seqs(&mut ws, 200 - first).await);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), next_seq(&mut ws))
                .await
                .is_err()
        );
        assert_eq!(all, (1..=200).collect::<Vec<_>>());
        drop(ws);
        server.stop().await;
    }

    #[tokio::test]
    async fn abrupt_disconnect_requeues_unsent_messages() {
        // A client that vanishes: what the server could not hand to the socket is sent to the
        // next client; the union has no duplicates.
        let server = Server::start(args(Feed::Ticker, 0, 0)).await;
        let ws = server.connect().await;
        drop(ws);
        let mut ws = server.connect().await;
        let mut seqs = read_seqs(&mut ws, 50).await;
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), seqs.len());
        seqs.sort_unstable();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "gaps on one connection"
        );
        drop(ws);
        server.stop().await;
    }

    #[tokio::test]
    async fn stall_after_keeps_the_connection_open() {
        let mut a = args(Feed::Iot, 0, 0);
        a.stall_after = Some(10);
        let server = Server::start(a).await;
        let mut ws = server.connect().await;
        assert_eq!(read_seqs(&mut ws, 10).await, (1..=10).collect::<Vec<_>>());
        assert!(
            tokio::time::timeout(Duration::from_millis(500), next_seq(&mut ws))
                .await
                .is_err()
        );
        ws.send(Message::Ping(Bytes::from_static(b"alive")))
            .await
            .unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .unwrap();
        assert!(matches!(pong, Some(Ok(Message::Pong(p))) if &p[..] == b"alive"));
        drop(ws);
        let mut ws = server.connect().await;
        assert_eq!(read_seqs(&mut ws, 10).await, (11..=20).collect::<Vec<_>>());
        assert!(
            tokio::time::timeout(Duration::from_millis(100), next_seq(&mut ws))
                .await
                .is_err()
        );
        drop(ws);
        server.stop().await;
    }

    #[tokio::test]
    async fn rate_limits_the_server() {
        let server = Server::start(args(Feed::Ticker, 100, 20)).await;
        let mut ws = server.connect().await;
        let t0 = std::time::Instant::now();
        read_seqs(&mut ws, 20).await;
        let took = t0.elapsed();
        // 20 messages at 100/s: about 190 ms (one token to start with).
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
        drop(ws);
        server.stop().await;
    }

    #[tokio::test]
    async fn other_paths_are_refused() {
        let server = Server::start(args(Feed::Ticker, 10, 0)).await;
        let url = format!("ws://{}/other", server.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), StatusCode::NOT_FOUND),
            other => panic!("expected a 404, got {other:?}"),
        }
        // Garbage instead of a handshake does not hurt the server.
        let mut raw = TcpStream::connect(server.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut raw, b"\x00\x01garbage\r\n\r\n")
            .await
            .unwrap();
        drop(raw);
        let mut ws = server.connect().await;
        assert_eq!(read_seqs(&mut ws, 1).await, [1]);
        drop(ws);
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_sends_close() {
        let server = Server::start(args(Feed::Ticker, 1000, 0)).await;
        let mut ws = server.connect().await;
        read_seqs(&mut ws, 3).await;
        server.stop.cancel();
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) => {
                        // Reading on flushes our Close reply and ends the handshake.
                        while ws.next().await.is_some() {}
                        return true;
                    }
                    Some(Ok(_)) => {}
                    _ => return false,
                }
            }
        })
        .await
        .unwrap();
        assert!(closed, "no Close frame");
        server.task.await.unwrap().unwrap();
    }

    fn tls_args(pki: &Pki, client_ca: bool) -> SynthArgs {
        let file = |p: &std::path::Path| Some(p.to_str().unwrap().to_string());
        SynthArgs {
            tls_cert: file(&pki.server_cert),
            tls_key: file(&pki.server_key),
            tls_client_ca: if client_ca { file(&pki.ca) } else { None },
            ..args(Feed::Ticker, 0, 10)
        }
    }

    /// A `wss://` client trusting `pki`'s CA only, with its client certificate if `identity`.
    async fn wss_connect(url: &str, pki: &Pki, identity: bool) -> Result<Client, WsError> {
        let ca = std::fs::read(&pki.ca).unwrap();
        let mut b = native_tls::TlsConnector::builder();
        b.disable_built_in_roots(true)
            .add_root_certificate(native_tls::Certificate::from_pem(&ca).unwrap());
        if identity {
            // The test PKI writes the client key in the traditional EC form; native-tls wants
            // PKCS#8.
            let key = std::fs::read(&pki.client_key).unwrap();
            let key = openssl::pkey::PKey::private_key_from_pem(&key).unwrap();
            let cert = std::fs::read(&pki.client_cert).unwrap();
            let pkcs8 = key.private_key_to_pem_pkcs8().unwrap();
            b.identity(native_tls::Identity::from_pkcs8(&cert, &pkcs8).unwrap());
        }
        let connector = tokio_tungstenite::Connector::NativeTls(b.build().unwrap());
        let (mut ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
                .await?;
        // With TLS 1.3 a refused client certificate shows on the first read.
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["seq"], 1);
                Ok(ws)
            }
            Some(Err(e)) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn tls_cert_serves_wss() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), "synth");
        let server = Server::start(tls_args(&pki, false)).await;
        let url = format!("wss://localhost:{}/ws", server.addr.port());
        let mut ws = wss_connect(&url, &pki, false).await.unwrap();
        assert_eq!(read_seqs(&mut ws, 9).await, (2..=10).collect::<Vec<_>>());
        ws.close(None).await.unwrap();
        // Plain WebSocket to the TLS port is refused (the handshake is not HTTP).
        assert!(tokio_tungstenite::connect_async(server.url())
            .await
            .is_err());
        server.stop().await;
    }

    #[tokio::test]
    async fn tls_client_ca_requires_a_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), "synth");
        let server = Server::start(tls_args(&pki, true)).await;
        let url = format!("wss://127.0.0.1:{}/ws", server.addr.port());
        let e = wss_connect(&url, &pki, false)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("certificate required"), "{e}");
        let mut ws = wss_connect(&url, &pki, true).await.unwrap();
        assert_eq!(read_seqs(&mut ws, 1).await, [2]);
        server.stop().await;
    }

    #[tokio::test]
    async fn unusable_tls_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), "synth");
        let other = generate(dir.path(), "other");
        let mut a = tls_args(&pki, false);
        a.tls_key = Some(other.server_key.to_str().unwrap().into());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = serve_listener(listener, a, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("does not belong to the certificate"),
            "{e:#}"
        );
        let mut a = tls_args(&pki, false);
        a.tls_cert = Some(dir.path().join("missing.pem").to_str().unwrap().into());
        let e = tls_acceptor(&a).map(|_| ()).unwrap_err();
        assert!(
            format!("{e:#}").contains("--tls-cert: cannot load"),
            "{e:#}"
        );
    }

    #[tokio::test]
    async fn exit_when_done_returns_after_the_last_client() {
        let mut a = args(Feed::Orderbook, 0, 5);
        a.exit_when_done = true;
        let server = Server::start(a).await;
        let mut ws = server.connect().await;
        assert_eq!(read_seqs(&mut ws, 5).await, [1, 2, 3, 4, 5]);
        assert!(!server.task.is_finished());
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
        tokio::time::timeout(Duration::from_secs(2), server.task)
            .await
            .expect("serve exits")
            .unwrap()
            .unwrap();
    }

    /// `cargo test --release synth::tests::throughput -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn throughput() {
        for (rate, n) in [(0, 1_000_000u64), (50_000, 150_000)] {
            let server = Server::start(args(Feed::Ticker, rate, n)).await;
            let mut ws = server.connect().await;
            let t0 = std::time::Instant::now();
            let mut got = 0;
            let mut bytes = 0;
            while got < n {
                if let Some(Ok(Message::Text(t))) = ws.next().await {
                    got += 1;
                    bytes += t.len();
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "rate {rate}: {n} messages in {secs:.2}s = {:.0} msgs/s ({:.1} MB/s)",
                n as f64 / secs,
                bytes as f64 / secs / 1e6
            );
            drop(ws);
            server.stop().await;
        }
    }
}

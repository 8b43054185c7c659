//! Serving HTTP on a listener that strangers can reach: every connection is counted against a
//! cap kept below the process's open-file limit, must send its request headers within a
//! deadline (which also ends idle keep-alive connections), and is drained on shutdown.
//!
//! `axum::serve` has none of these: 520 slow clients sending a header line every 5 s once
//! exhausted kgate's file descriptors. Past the cap, a connection is answered `503` with
//! `Retry-After` at once and closed (a few at a time, themselves capped), so a client learns to
//! come back instead of hanging in the accept queue, and the other listeners (metrics,
//! `/readyz`) keep their own room.

pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are answered 503.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (and an idle keep-alive connection to
    /// start its next request).
    pub header_timeout: Duration,
}

/// Files kept free for everything that is not a served connection: Kafka's sockets, the other
/// listeners, the registry client, log files.
const FD_HEADROOM: u64 = 256;

/// Connections being answered 503 at once; past these a connection is closed unanswered.
const MAX_REFUSING: usize = 128;

/// How long a connection past the cap may take to send its request headers before its 503.
const REFUSE_READ: Duration = Duration::from_millis(200);

/// How long the 503 answer to a connection past the cap may take to write.
const REFUSE_WRITE: Duration = Duration::from_millis(500);

/// The open-file limit of this process (`RLIMIT_NOFILE`, soft), when it can be read.
pub fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// `wanted` connections, or fewer when the open-file limit (less headroom for Kafka and the
/// other listeners, shared between `listeners`) would not hold them. At least 16.
pub fn connection_cap(wanted: usize, listeners: u64) -> usize {
    match open_file_limit() {
        Some(n) => {
            let room = n.saturating_sub(FD_HEADROOM) / listeners.max(1);
            wanted.min(room as usize).max(16)
        }
        None => wanted,
    }
}

/// Something that accepts connections (a TCP listener, the TLS listener).
pub type Accept<Io> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = (Io, SocketAddr)> + Send + 'static>>;

/// Serves `app` on the connections of `accept` until `stop`, then waits for the connections
/// in progress to finish. Each request carries `ConnectInfo(info(peer))`.
pub async fn serve<Io, C>(
    mut accept: Accept<Io>,
    app: Router,
    limits: Limits,
    info: fn(SocketAddr) -> C,
    stop: CancellationToken,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Clone + Send + Sync + 'static,
{
    use futures_util::StreamExt;
    let serving = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let (io, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            c = accept.next() => match c {
                Some(c) => c,
                None => break,
            },
        };
        let Ok(permit) = serving.clone().try_acquire_owned() else {
            refuse(io, &refusing, limits.max_connections).await;
            continue;
        };
        let svc = app.clone();
        let c = info(peer);
        let hyper_svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(c.clone()));
            let svc = svc.clone();
            async move { svc.oneshot(req).await }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_svc);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    // Stop listening before the wait: new connections are refused by the OS while the
    // requests in progress get their answers.
    drop(accept);
    graceful.shutdown().await;
}

/// Answers a connection past the cap with 503 and closes it; when even the refusals are at
/// their cap, closes it at once without an answer (the accept loop never waits, so a client
/// that comes after a flood is still answered promptly).
async fn refuse<Io>(mut io: Io, refusing: &Arc<Semaphore>, cap: usize)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        tracing::debug!(cap, "connection closed unanswered: the listener is at its connection cap and refusing as many as it can");
        return;
    };
    tracing::debug!(
        cap,
        "connection refused: the listener is at its connection cap"
    );
    tokio::spawn(async move {
        let body = "too many connections to kgate; retry in a second\n";
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        // Clients write their request before they read: answering first makes some of them
        // report a broken connection instead of the 503. So read (and drop) up to the end of
        // the headers first, briefly.
        let _ = tokio::time::timeout(REFUSE_READ, read_head(&mut io)).await;
        let _ = tokio::time::timeout(REFUSE_WRITE, async {
            io.write_all(answer.as_bytes()).await?;
            io.shutdown().await
        })
        .await;
        drop(permit);
    });
}

/// Reads until the end of a request's headers (a blank line), at most 16 KiB.
async fn read_head<Io: AsyncRead + Unpin>(io: &mut Io) {
    let mut buf = [0u8; 4096];
    let mut seen = Vec::with_capacity(4096);
    while seen.len() < 16 * 1024 {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    return;
                }
            }
        }
    }
}

/// The connections of a TCP listener, as an [`Accept`] stream; accept errors (out of files,
/// reset before accept) are logged and retried after a short pause.
pub fn tcp(listener: tokio::net::TcpListener) -> Accept<tokio::net::TcpStream> {
    Box::pin(futures_util::stream::unfold(listener, |l| async move {
        loop {
            match l.accept().await {
                Ok((s, peer)) => return Some(((s, peer), l)),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }))
}

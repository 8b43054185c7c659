//! HTTPS for the ingest server with OpenSSL (through `tokio-openssl`): the binary already links
//! OpenSSL for librdkafka's TLS, so this adds no second TLS stack and no extra crypto build.
//!
//! Handshakes run in their own tasks (with a timeout), so that a slow or silent client cannot
//! hold up accepting others; finished connections are handed to axum through a channel.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openssl::error::ErrorStack;
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_openssl::SslStream;
use tokio_util::sync::CancellationToken;

use crate::config::ServerTlsFiles;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server's TLS context could not be built; each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// OpenSSL could not start a context.
    #[error("cannot set up TLS: {0}")]
    Setup(#[source] ErrorStack),
    /// The certificate chain file.
    #[error("{section}.tls.cert_file: cannot load `{file}` as a PEM certificate chain: {source}")]
    Cert {
        /// The config section (`http`, `metrics`).
        section: &'static str,
        /// The file.
        file: String,
        /// OpenSSL's reason.
        source: ErrorStack,
    },
    /// The private key file.
    #[error("{section}.tls.key_file: cannot load `{file}` as a PEM private key: {source}")]
    Key {
        /// The config section.
        section: &'static str,
        /// The file.
        file: String,
        /// OpenSSL's reason.
        source: ErrorStack,
    },
    /// Key and certificate are not a pair.
    #[error(
        "{section}.tls: the key in `{key}` does not match the certificate in `{cert}`: {source}"
    )]
    Mismatch {
        /// The config section.
        section: &'static str,
        /// The key file.
        key: String,
        /// The certificate file.
        cert: String,
        /// OpenSSL's reason.
        source: ErrorStack,
    },
}

/// Builds the server TLS context from PEM files; errors name the file and the fix.
/// `section` names the config section in the messages (`http`, `metrics`).
pub fn acceptor(c: &ServerTlsFiles, section: &'static str) -> Result<SslAcceptor, TlsError> {
    let mut b =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(TlsError::Setup)?;
    b.set_certificate_chain_file(&c.cert_file)
        .map_err(|source| TlsError::Cert {
            section,
            file: c.cert_file.clone(),
            source,
        })?;
    b.set_private_key_file(&c.key_file, SslFiletype::PEM)
        .map_err(|source| TlsError::Key {
            section,
            file: c.key_file.clone(),
            source,
        })?;
    b.check_private_key().map_err(|source| TlsError::Mismatch {
        section,
        key: c.key_file.clone(),
        cert: c.cert_file.clone(),
        source,
    })?;
    Ok(b.build())
}

/// TLS connections, handshaken, for `axum::serve`.
pub struct TlsListener {
    rx: mpsc::Receiver<(SslStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Accepts on `tcp` until `stop`, with at most `max_handshakes` TLS handshakes in
    /// progress (a client that connects and says nothing holds one for [`HANDSHAKE_TIMEOUT`]).
    pub fn new(
        tcp: TcpListener,
        acceptor: SslAcceptor,
        max_handshakes: usize,
        stop: CancellationToken,
    ) -> TlsListener {
        let (tx, rx) = mpsc::channel(128);
        let handshakes = Arc::new(Semaphore::new(max_handshakes.max(1)));
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = stop.cancelled() => return,
                    p = handshakes.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let (stream, addr) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = tcp.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "HTTPS accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let ctx = acceptor.context().to_owned();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let hs = async {
                        let ssl = Ssl::new(&ctx).map_err(|e| e.to_string())?;
                        let mut s = SslStream::new(ssl, stream).map_err(|e| e.to_string())?;
                        Pin::new(&mut s).accept().await.map_err(|e| e.to_string())?;
                        Ok::<_, String>(s)
                    };
                    let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, hs).await;
                    drop(permit);
                    match done {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { rx }
    }
}

impl TlsListener {
    /// The handshaken connections, as the stream `serve::serve` takes.
    pub fn into_accept(self) -> crate::serve::Accept<SslStream<TcpStream>> {
        Box::pin(futures_util::stream::unfold(self.rx, |mut rx| async move {
            rx.recv().await.map(|c| (c, rx))
        }))
    }
}

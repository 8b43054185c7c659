//! `wss://` on the device listener with OpenSSL (through `tokio-openssl`, as the HTTP server's
//! HTTPS): the acceptor built once from `tls:` (errors are config errors, with the file), the
//! stream a device connection runs on (plain or TLS), and the client certificate's names.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use openssl::nid::Nid;
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use super::auth::PeerCert;
use super::config::DeviceTlsConfig;
use crate::config::{At, ConfigError};

/// The TLS context of the device listener.
#[derive(Clone)]
pub(super) struct Acceptor(SslAcceptor);

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor")
    }
}

impl Acceptor {
    /// Builds the context from `tls:`; problems (each with the file) pushed at `at.tls.*`.
    pub(super) fn build(
        c: &DeviceTlsConfig,
        at: At<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Acceptor> {
        let mut err = |field: &str, message: String| {
            errors.push(ConfigError {
                path: at.field(&format!("tls.{field}")),
                message,
            })
        };
        let mut b = match SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()) {
            Ok(b) => b,
            Err(e) => {
                err("cert", format!("cannot set up TLS: {e}"));
                return None;
            }
        };
        let mut ok = true;
        if let Err(e) = b.set_certificate_chain_file(&c.cert) {
            err(
                "cert",
                format!("cannot load `{}` as a PEM certificate chain: {e}", c.cert),
            );
            ok = false;
        }
        if let Err(e) = b.set_private_key_file(&c.key, SslFiletype::PEM) {
            err(
                "key",
                format!("cannot load `{}` as a PEM private key: {e}", c.key),
            );
            ok = false;
        }
        if ok {
            if let Err(e) = b.check_private_key() {
                err(
                    "key",
                    format!(
                        "the key in `{}` does not match the certificate in `{}`: {e}",
                        c.key, c.cert
                    ),
                );
                ok = false;
            }
        }
        if let Some(ca) = &c.client_ca {
            match b.set_ca_file(ca) {
                Ok(()) => {
                    // Every device shows a certificate that chains to `client_ca`.
                    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
                    if let Ok(pem) = std::fs::read(ca) {
                        // Tells clients which CAs to pick a certificate for.
                        if let Ok(certs) = X509::stack_from_pem(&pem) {
                            let mut names = openssl::stack::Stack::new().ok();
                            for c in certs {
                                if let (Some(n), Ok(name)) =
                                    (names.as_mut(), c.subject_name().to_owned())
                                {
                                    let _ = n.push(name);
                                }
                            }
                            if let Some(n) = names {
                                b.set_client_ca_list(n);
                            }
                        }
                    }
                }
                Err(e) => {
                    err(
                        "client_ca",
                        format!("cannot load `{ca}` as PEM CA certificates: {e}"),
                    );
                    ok = false;
                }
            }
        }
        ok.then(|| Acceptor(b.build()))
    }

    /// The TLS handshake on an accepted connection (the caller bounds it in time).
    pub(super) async fn accept(&self, tcp: TcpStream) -> Result<SslStream<TcpStream>, String> {
        let ssl = Ssl::new(self.0.context()).map_err(|e| e.to_string())?;
        let mut s = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
        Pin::new(&mut s).accept().await.map_err(|e| e.to_string())?;
        Ok(s)
    }
}

/// The verified client certificate's names (none without one).
pub(super) fn peer_cert(s: &SslStream<TcpStream>) -> Option<PeerCert> {
    let cert = s.ssl().peer_certificate()?;
    let cn = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok());
    let mut sans = Vec::new();
    if let Some(names) = cert.subject_alt_names() {
        for n in &names {
            if let Some(v) = n.uri().or(n.dnsname()).or(n.email()) {
                sans.push(v.to_string());
            }
        }
    }
    Some(PeerCert { cn, sans })
}

/// A device's connection: plain TCP or TLS.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

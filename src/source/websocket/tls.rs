//! TLS for `wss://` feeds: the `tls:` files read once into a native-tls connector (on Linux that
//! is OpenSSL, which librdkafka and the registry client already link: no second TLS stack), and
//! a failed handshake told in one line.

use std::fmt;

use native_tls::{Certificate, Identity, Protocol, TlsConnector};
use openssl::error::ErrorStack;
use openssl::pkey::PKey;
use openssl::x509::X509;
use tokio_tungstenite::tungstenite::error::{Error as WsError, TlsError};
use tokio_tungstenite::Connector;

use super::config::WebsocketTlsConfig;
use crate::config::{At, ConfigError};

/// The TLS client of one source, built once at start and cloned into every connection.
#[derive(Clone)]
pub(super) struct FeedTls {
    connector: Connector,
    /// What verifies the feeds' certificates, for error messages.
    trust: String,
    /// The client certificate's file (mutual TLS), for error messages.
    client_cert: Option<String>,
    /// `insecure_skip_verify: true`: nothing is verified.
    pub(super) insecure: bool,
}

impl fmt::Debug for FeedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedTls")
            .field("trust", &self.trust)
            .field("client_cert", &self.client_cert)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl FeedTls {
    /// Reads the `tls:` files (at `at`, the source's path) into a connector; none = the system's
    /// roots. Every unusable file is pushed to `errors` with its path.
    pub(super) fn new(
        c: Option<&WebsocketTlsConfig>,
        at: At<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<FeedTls> {
        let before = errors.len();
        let mut err = |field: &str, message: String| {
            errors.push(ConfigError::new(at.field(&format!("tls.{field}")), message))
        };
        let mut b = TlsConnector::builder();
        b.min_protocol_version(Some(Protocol::Tlsv12));
        let c = c.cloned().unwrap_or_default();
        let mut trust = "the system's roots".to_string();
        if let Some(ca) = &c.ca {
            match read_certs(ca) {
                Ok(certs) => {
                    b.disable_built_in_roots(true);
                    for cert in certs {
                        match cert.to_der().map(|der| Certificate::from_der(&der)) {
                            Ok(Ok(cert)) => {
                                b.add_root_certificate(cert);
                            }
                            Ok(Err(e)) => err("ca", format!("cannot use `{ca}`: {e}")),
                            Err(e) => err("ca", format!("cannot use `{ca}`: {}", reasons(&e))),
                        }
                    }
                    trust = format!("the CA in tls.ca `{ca}`");
                }
                Err(why) => err("ca", why),
            }
        }
        if let (Some(cert), Some(key)) = (&c.cert, &c.key) {
            match identity(cert, key) {
                Ok(id) => {
                    b.identity(id);
                }
                Err((field, why)) => err(field, why),
            }
        }
        if c.insecure_skip_verify {
            b.danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
            trust = "nothing (insecure_skip_verify)".into();
        }
        let connector = match b.build() {
            Ok(connector) => connector,
            Err(e) => {
                errors.push(ConfigError::new(
                    at.field("tls"),
                    format!("cannot set up TLS: {e}"),
                ));
                return None;
            }
        };
        (errors.len() == before).then(|| FeedTls {
            connector: Connector::NativeTls(connector),
            trust,
            client_cert: c.cert.clone(),
            insecure: c.insecure_skip_verify,
        })
    }

    /// The connector for one connection.
    pub(super) fn connector(&self) -> Connector {
        self.connector.clone()
    }

    /// A failed connect in one line, without the address (the caller names the feed): for a TLS
    /// failure, what went wrong in the handshake (e.g. `certificate verify failed: unable to get
    /// local issuer certificate`) and what to look at; `None` for any other error.
    pub(super) fn explain(&self, e: &WsError) -> Option<String> {
        let reason = match e {
            WsError::Tls(TlsError::Native(n)) => handshake_reason(n),
            WsError::Tls(other) => other.to_string(),
            // A TLS 1.3 client is done with the handshake before the server has checked its
            // certificate: a refusal arrives as an alert on the first read.
            WsError::Io(io) => reasons(
                io.get_ref()?
                    .downcast_ref::<openssl::ssl::Error>()?
                    .ssl_error()?,
            ),
            _ => return None,
        };
        let hint = if reason.contains("certificate verify failed") {
            format!(
                " (the feed's certificate was checked against {})",
                self.trust
            )
        } else if reason.contains("alert")
            && (reason.contains("certificate") || reason.contains("unknown ca"))
        {
            match &self.client_cert {
                None => " (the feed wants a client certificate: set tls.cert and tls.key)".into(),
                Some(cert) => {
                    format!(" (the feed refused the client certificate in tls.cert `{cert}`)")
                }
            }
        } else if reason.contains("wrong version number")
            || reason.to_lowercase().contains("unexpected eof")
        {
            // A plain server answers a ClientHello with HTTP text or by hanging up.
            " (does the feed speak TLS on that port? a plain feed's URL is ws://)".into()
        } else {
            String::new()
        };
        Some(format!("TLS handshake failed: {reason}{hint}"))
    }
}

/// The certificates in a PEM file; an error names the file.
fn read_certs(file: &str) -> Result<Vec<X509>, String> {
    let pem = std::fs::read(file).map_err(|e| format!("cannot read `{file}`: {e}"))?;
    match X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(format!(
            "`{file}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"
        )),
        Err(e) => Err(format!(
            "cannot read `{file}` as PEM certificates: {}",
            reasons(&e)
        )),
    }
}

/// The client certificate and its key, checked to be a pair; an error names the field.
fn identity(cert: &str, key: &str) -> Result<Identity, (&'static str, String)> {
    let certs = read_certs(cert).map_err(|why| ("cert", why))?;
    let pem = std::fs::read(key).map_err(|e| ("key", format!("cannot read `{key}`: {e}")))?;
    let pkey = PKey::private_key_from_pem(&pem).map_err(|e| {
        (
            "key",
            format!(
                "cannot read `{key}` as an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1): {}",
                reasons(&e)
            ),
        )
    })?;
    let pair = certs[0]
        .public_key()
        .map(|public| public.public_eq(&pkey))
        .unwrap_or(false);
    if !pair {
        return Err((
            "key",
            format!("the key in `{key}` does not belong to the certificate in `{cert}`"),
        ));
    }
    let setup = |e: ErrorStack| ("key", format!("cannot use `{key}`: {}", reasons(&e)));
    let pkcs8 = pkey.private_key_to_pem_pkcs8().map_err(setup)?;
    let chain = certs
        .iter()
        .map(|c| c.to_pem())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ("cert", format!("cannot use `{cert}`: {}", reasons(&e))))?
        .concat();
    // native-tls takes PKCS#8 only; the key was read in any PEM form and converted.
    Identity::from_pkcs8(&chain, &pkcs8).map_err(|e| ("key", format!("cannot use `{key}`: {e}")))
}

/// OpenSSL's reasons, without codes, source files and line numbers.
fn reasons(e: &ErrorStack) -> String {
    let rs: Vec<String> = e
        .errors()
        .iter()
        .map(|e| e.reason().unwrap_or("unknown error").to_string())
        .collect();
    if rs.is_empty() {
        "unknown error".into()
    } else {
        rs.join("; ")
    }
}

/// What failed in a handshake: OpenSSL's reasons (`certificate verify failed`, `wrong version
/// number`, `tlsv13 alert certificate required`), then the certificate verification's result
/// when there is one (`unable to get local issuer certificate`, `hostname mismatch`,
/// `certificate has expired`), or the I/O error (the peer closed the connection).
fn handshake_reason(e: &native_tls::Error) -> String {
    let text = e.to_string();
    let Some(source) = std::error::Error::source(e) else {
        return text;
    };
    let Some(stack) = source.downcast_ref::<ErrorStack>() else {
        return source.to_string();
    };
    let reason = reasons(stack);
    // native-tls appends the verification result as ` (reason)` when it is not "ok".
    match text.strip_suffix(')').and_then(|t| t.rsplit_once(" (")) {
        Some((_, verify)) => format!("{reason}: {verify}"),
        None => reason,
    }
}

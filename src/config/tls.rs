//! The shapes of TLS files that several sections share: a client's and a server's.

use serde::Deserialize;

/// PEM files for a TLS client: `{ca_file, cert_file, key_file}` (the schema registry's and an
/// MQTT broker's `tls:`).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA bundle trusted in addition to (registry) or instead of (MQTT) the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Client certificate (mutual TLS).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// Client key (mutual TLS); PKCS#8 (`BEGIN PRIVATE KEY`) for the registry.
    #[serde(default)]
    pub key_file: Option<String>,
}

/// PEM files for a TLS server: `{cert_file, key_file}` (`http.tls`, `metrics.tls`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ServerTlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert_file: String,
    /// Private key (PEM).
    pub key_file: String,
}

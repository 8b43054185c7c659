//! The one shape of TLS client files that several sections share.

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

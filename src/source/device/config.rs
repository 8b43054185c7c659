//! `source.device_websocket:` — the server devices connect to: where, which path, where the
//! device id comes from, the limits, and WRP; with its checks (address and path parsed once).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio_tungstenite::tungstenite::http::HeaderName;

use crate::config::{yes, At, ByteSize, ConfigError};

/// `source.device_websocket:` — a WebSocket server that devices connect to.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DeviceSourceConfig {
    /// Address to listen on, e.g. `0.0.0.0:8090`.
    pub listen: String,
    /// Path devices connect to; a whole segment `{name}` matches any one segment, e.g.
    /// `/devices/{id}`. Other paths are refused with 404.
    #[serde(default = "default_path")]
    pub path: String,
    /// Where the device id comes from: `{header: X-Device-Id}`, `{query: id}` or
    /// `{path_param: id}` (a `{id}` segment of `path`).
    pub device_id: DeviceIdFrom,
    /// Largest frame (and message) a device may send, up to 1GiB; a bigger one closes the
    /// connection (1009, `frame_too_large`).
    #[serde(default = "default_max_frame")]
    pub max_frame: ByteSize,
    /// Nothing from the device (no frame, no pong) for this long → close; `0s` = never. Longer
    /// than `ping_interval`, else a quiet device that answers pings is closed.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Interval of pings to each device (answered pongs keep it alive); `0s` = none.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_ping_interval", with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Time a client has to complete the upgrade after connecting.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Devices connected at once; more are refused with 503.
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    /// Publish `connect` and `disconnect` events through the pipeline.
    #[serde(default = "yes")]
    pub lifecycle_events: bool,
    /// Decode frames as WRP msgpack messages: `true`, `false` or `{value: payload|message}`.
    #[serde(default)]
    pub wrp: WrpConfig,
    /// How a device proves it is the device it says: `none`, `{bearer: …}`, `{jwt: …}` or
    /// `{mtls: …}`. Required when `listen` is not a loopback address (write `auth: none` to
    /// accept anyone); on loopback it defaults to `none`.
    #[serde(default)]
    pub auth: Option<DeviceAuthConfig>,
    /// Serve `wss://`: the server certificate, its key, and a CA for client certificates.
    #[serde(default)]
    pub tls: Option<DeviceTlsConfig>,
}

/// `auth:` — what a device must show, besides its id, for the upgrade to succeed.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceAuthConfig {
    /// No check: whoever reaches the port may connect as any device id.
    None,
    /// Static tokens, each bound to the device ids it may connect as, sent as
    /// `Authorization: Bearer <token>` or the query parameter `access_token`.
    Bearer(BearerAuthConfig),
    /// Signed JWTs (`Authorization: Bearer <jwt>` or `access_token`): the device id must equal a
    /// claim; signature, expiry, issuer and audience are checked.
    Jwt(JwtAuthConfig),
    /// Client certificates (needs `tls.client_ca`): the device id comes from the certificate.
    Mtls(MtlsAuthConfig),
}

// One `auth` section in the reference, a key per scheme (what the externally tagged enum reads).
impl schemars::JsonSchema for DeviceAuthConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DeviceAuthConfig".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut bearer = generator.subschema_for::<BearerAuthConfig>();
        bearer.insert(
            "description".into(),
            "Static tokens, each bound to the device ids it may connect as, sent as `Authorization: Bearer <token>` or the query parameter `access_token`.".into(),
        );
        let mut jwt = generator.subschema_for::<JwtAuthConfig>();
        jwt.insert(
            "description".into(),
            "Signed JWTs (`Authorization: Bearer <jwt>` or `access_token`): the device id must equal a claim; signature, expiry, issuer and audience are checked.".into(),
        );
        let mut mtls = generator.subschema_for::<MtlsAuthConfig>();
        mtls.insert(
            "description".into(),
            "Client certificates (needs `tls.client_ca`): the device id comes from the certificate.".into(),
        );
        schemars::json_schema!({
            "description": "How a device proves its id: `none`, or one of `bearer`, `jwt`, `mtls`.",
            "oneOf": [
                { "type": "string", "enum": ["none"] },
                {
                    "type": "object",
                    "properties": { "bearer": bearer, "jwt": jwt, "mtls": mtls },
                    "additionalProperties": false,
                    "minProperties": 1,
                    "maxProperties": 1,
                }
            ]
        })
    }
}

/// `auth.bearer:` — static device tokens.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BearerAuthConfig {
    /// The accepted tokens, e.g. `[{token: "${DEV_TOKEN}", devices: "mac:*"}]`.
    pub tokens: Vec<BearerTokenConfig>,
}

/// One accepted device token.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BearerTokenConfig {
    /// The token, at least 16 characters, e.g. `${DEV_TOKEN}` (from the environment); or
    /// `token_file`.
    #[serde(default)]
    pub token: Option<crate::config::Secret>,
    /// A file holding the token (surrounding whitespace trimmed), read at start.
    #[serde(default)]
    pub token_file: Option<String>,
    /// The device ids this token may connect as: an exact id, a prefix ending in `*`
    /// (`mac:*`), or `*` for any.
    pub devices: String,
}

/// Shown without the token.
impl std::fmt::Debug for BearerTokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerTokenConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("devices", &self.devices)
            .finish()
    }
}

/// `auth.jwt:` — device JWTs; exactly one of `hs256_secret`, `rs256_public_key_file`,
/// `es256_public_key_file`, `jwks_file`.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct JwtAuthConfig {
    /// Shared secret for HS256 tokens, at least 32 bytes, e.g. `${DEVICE_JWT_SECRET}`.
    #[serde(default)]
    pub hs256_secret: Option<crate::config::Secret>,
    /// PEM RSA public key (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`) for RS256 tokens.
    #[serde(default)]
    pub rs256_public_key_file: Option<String>,
    /// PEM EC P-256 public key for ES256 tokens.
    #[serde(default)]
    pub es256_public_key_file: Option<String>,
    /// A JWKS file (`{"keys": [...]}`, RSA, EC or Ed25519 keys): a token's `kid` picks the key
    /// (a single key needs none); RS*/PS*/ES*/EdDSA tokens.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Required `iss` claim, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud` claim (one of the token's audiences), when set; without it a token with an
    /// `aud` claim is refused.
    #[serde(default)]
    pub audience: Option<String>,
    /// The claim that must equal the device id.
    #[serde(default = "default_claim")]
    pub claim: String,
    /// Clock skew allowed when checking `exp` (required) and `nbf`.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

/// Shown without the secret.
impl std::fmt::Debug for JwtAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("rs256_public_key_file", &self.rs256_public_key_file)
            .field("es256_public_key_file", &self.es256_public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("claim", &self.claim)
            .field("leeway", &self.leeway)
            .finish()
    }
}

fn default_claim() -> String {
    "sub".into()
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

/// `auth.mtls:` — the device id is in the client certificate (verified against
/// `tls.client_ca`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MtlsAuthConfig {
    /// Where the id is: `cn` (the subject's common name) or `san` (a DNS, URI or email subject
    /// alternative name). A device that also sends an id must send this one.
    #[serde(default)]
    pub id_from: CertId,
}

/// The part of a client certificate that is the device id.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CertId {
    /// The subject's common name.
    #[default]
    Cn,
    /// A subject alternative name (DNS, URI or email).
    San,
}

/// `tls:` — `wss://` on the device listener.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DeviceTlsConfig {
    /// Server certificate chain (PEM), leaf first.
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
    /// CA certificates (PEM) that client certificates must chain to; when set, every device
    /// must present one (mutual TLS). Required by `auth: mtls`.
    #[serde(default)]
    pub client_ca: Option<String>,
}

fn default_path() -> String {
    "/ws".into()
}
fn default_max_frame() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_ping_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> u64 {
    10_000
}

/// Where a device's id is read from during the upgrade.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceIdFrom {
    /// A request header, e.g. `X-Webpa-Device-Name`.
    Header(String),
    /// A query parameter, e.g. `id` in `/ws?id=dev-1`.
    Query(String),
    /// A `{name}` segment of `path`.
    PathParam(String),
}

/// `wrp:` — whether frames are WRP messages, and what the record value is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WrpConfig {
    /// Decode frames as WRP.
    pub enabled: bool,
    /// The record value: the WRP `payload` (default) or the whole msgpack `message`.
    pub value: WrpValue,
}

/// The record value of a WRP message.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WrpValue {
    /// The `payload` field.
    #[default]
    Payload,
    /// The frame as received (msgpack).
    Message,
}

impl<'de> Deserialize<'de> for WrpConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Options {
            #[serde(default = "yes")]
            enabled: bool,
            #[serde(default)]
            value: WrpValue,
        }
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(enabled) => Ok(WrpConfig {
                enabled,
                value: WrpValue::Payload,
            }),
            v @ serde_json::Value::Object(_) => {
                let o: Options = serde_json::from_value(v).map_err(serde::de::Error::custom)?;
                Ok(WrpConfig {
                    enabled: o.enabled,
                    value: o.value,
                })
            }
            other => Err(serde::de::Error::custom(format!(
                "wrp must be `true`, `false` or `{{value: payload|message}}`, not {other}"
            ))),
        }
    }
}

// Written back (as the schema's default) in the shortest form the loader reads.
impl serde::Serialize for WrpConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.value == WrpValue::Payload {
            return s.serialize_bool(self.enabled);
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("enabled", &self.enabled)?;
        m.serialize_entry("value", &self.value)?;
        m.end()
    }
}

impl schemars::JsonSchema for WrpConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WrpConfig".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // What the hand-written Deserialize takes: a flag, or the options (unknown keys refused).
        let mut value = generator.subschema_for::<WrpValue>();
        value.insert(
            "description".into(),
            "The record value: the WRP `payload` or the whole msgpack `message`.".into(),
        );
        value.insert("default".into(), "payload".into());
        schemars::json_schema!({
            "description": "Whether frames are WRP messages: `true`, `false`, or `{value: payload|message}` (`enabled` defaults to true in this form).",
            "oneOf": [
                { "type": "boolean" },
                {
                    "type": "object",
                    "properties": {
                        "enabled": {
                            "description": "Decode frames as WRP.",
                            "type": "boolean",
                            "default": true,
                        },
                        "value": value,
                    },
                    "additionalProperties": false,
                }
            ]
        })
    }
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    /// A fixed segment.
    Lit(String),
    /// `{name}`: any one segment.
    Param(String),
}

pub(super) fn parse_path(p: &str) -> Result<Vec<Seg>, String> {
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| format!("`{p}` does not start with `/`; write e.g. `/devices/{{id}}`"))?;
    let mut segs = Vec::new();
    for s in rest.split('/') {
        if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if name.is_empty() || name.contains(['{', '}']) {
                return Err(format!(
                    "`{s}` in `{p}` is not a parameter; write `{{name}}`"
                ));
            }
            if segs.iter().any(|x| *x == Seg::Param(name.to_string())) {
                return Err(format!("parameter `{{{name}}}` appears twice in `{p}`"));
            }
            segs.push(Seg::Param(name.to_string()));
        } else if s.contains(['{', '}']) {
            return Err(format!(
                "`{s}` in `{p}`: a parameter is a whole segment, e.g. `/devices/{{id}}`"
            ));
        } else {
            segs.push(Seg::Lit(s.to_string()));
        }
    }
    Ok(segs)
}

impl DeviceSourceConfig {
    /// Checks what serde cannot (at `at`), but `auth` and `tls` (their files are loaded by
    /// `auth.rs` and `tls.rs`); the listen address and the path's segments once valid.
    pub(super) fn check(
        &self,
        at: At<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<(SocketAddr, Vec<Seg>)> {
        let before = errors.len();
        let mut err = |field: &str, message: String| {
            errors.push(ConfigError {
                path: at.field(field),
                message,
            })
        };
        let listen = self.listen.parse::<SocketAddr>().ok();
        if listen.is_none() {
            err(
                "listen",
                format!(
                    "`{}` is not an address; write e.g. `0.0.0.0:8090`",
                    self.listen
                ),
            );
        }
        let segs = match parse_path(&self.path) {
            Ok(s) => Some(s),
            Err(e) => {
                err("path", e);
                None
            }
        };
        match &self.device_id {
            DeviceIdFrom::Header(h) => {
                if HeaderName::from_bytes(h.as_bytes()).is_err() {
                    err(
                        "device_id.header",
                        format!("`{h}` is not a header name; write e.g. `X-Device-Id`"),
                    );
                }
            }
            DeviceIdFrom::Query(q) => {
                if q.is_empty() {
                    err(
                        "device_id.query",
                        "empty; name the query parameter, e.g. `id`".into(),
                    );
                }
            }
            DeviceIdFrom::PathParam(name) => {
                if let Some(segs) = &segs {
                    if !segs.contains(&Seg::Param(name.clone())) {
                        err(
                            "device_id.path_param",
                            format!(
                                "`path` `{}` has no `{{{name}}}` segment; write e.g. `path: /devices/{{{name}}}`",
                                self.path
                            ),
                        );
                    }
                }
            }
        }
        if self.max_frame.0 == 0 || self.max_frame.0 > 1 << 30 {
            err(
                "max_frame",
                format!(
                    "{} bytes is out of range; use 1 byte to 1GiB, e.g. `1MiB`",
                    self.max_frame.0
                ),
            );
        }
        if !self.idle_timeout.is_zero()
            && !self.ping_interval.is_zero()
            && self.idle_timeout <= self.ping_interval
        {
            err(
                "idle_timeout",
                format!(
                    "{:?} is not longer than ping_interval {:?}, so a quiet device that answers pings is still closed; make it at least twice ping_interval",
                    self.idle_timeout, self.ping_interval
                ),
            );
        }
        if self.handshake_timeout.is_zero() {
            err(
                "handshake_timeout",
                "must be more than 0; e.g. `10s`".into(),
            );
        }
        if self.max_connections == 0 {
            err("max_connections", "must be at least 1".into());
        }
        let (listen, path) = (listen?, segs?);
        (errors.len() == before).then_some((listen, path))
    }
}

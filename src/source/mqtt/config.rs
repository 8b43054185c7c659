//! `source.mqtt:` — the broker, the credentials and the topic filters, with their checks (URLs
//! and filters are parsed here, once).

use std::time::Duration;

use serde::Deserialize;

use crate::config::{redact_url, At, ByteSize, ConfigError, Secret};

/// `source.mqtt:` — an MQTT 5 broker, its credentials and the topic filters to subscribe to.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// `mqtt://host:1883` or `mqtts://host:8883` (TLS).
    pub url: String,
    /// Client id; fixed so that the broker keeps the session across restarts. Default
    /// `kgate-<pipeline>`. Two clients with one id take the session from each other.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (write `${ENV_VAR}`); needs `username`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS files for `mqtts://` (PEM); without `ca_file` the system's roots are used.
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
    /// Topic filters to subscribe to, e.g. `devices/+/telemetry` (a `$share/group/...` filter
    /// shares the load between gateways).
    pub subscriptions: Vec<Subscription>,
    /// Start a new session on every connect: what arrived while kgate was away is not delivered.
    /// Default false (a persistent session: the broker queues and resends unacked messages).
    #[serde(default)]
    pub clean_session: bool,
    /// How long the broker keeps the session after a disconnect (persistent sessions: at least
    /// `1s`).
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_session_expiry", with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Ping interval, `5s` to `65535s`; the broker drops the connection after 1.5 × this
    /// without traffic.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Timeout of the TCP + TLS + MQTT handshake.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First reconnect delay; doubled per failed attempt up to `backoff_max`, with jitter.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Most messages the broker may send before kgate acks them (MQTT 5 Receive Maximum).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Largest message kgate accepts, 64 bytes to 256MiB; the broker does not send bigger ones
    /// (MQTT 5 Maximum Packet Size).
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: ByteSize,
}

/// One topic filter and the QoS to subscribe with.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Subscription {
    /// Topic filter with `+` and `#` wildcards.
    pub topic: String,
    /// 0 (at most once) or 1 (at least once, the default); 2 is refused (delivery into Kafka
    /// is at-least-once whatever the QoS).
    #[serde(default = "default_qos")]
    pub qos: u8,
}

/// `source.mqtt.tls:` — PEM files.
pub type MqttTlsConfig = crate::config::TlsFiles;

fn default_session_expiry() -> Duration {
    Duration::from_secs(7 * 86400)
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_max_inflight() -> u16 {
    1000
}
fn default_max_packet_size() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_qos() -> u8 {
    1
}

/// Host, port and whether TLS is used, from an `mqtt://` / `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (default 1883, or 8883 with TLS).
    pub port: u16,
    /// `mqtts://` (or `ssl://`).
    pub tls: bool,
}

/// Parses `mqtt://host[:port]`, `mqtts://host[:port]` (also `tcp://`, `ssl://`).
pub fn parse_url(url: &str) -> Result<BrokerAddr, String> {
    // Messages show the URL redacted: a refused one may hold credentials or a query.
    let shown = redact_url(url);
    let hint = "write e.g. `mqtt://127.0.0.1:1883` or `mqtts://broker.example:8883`";
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{shown}` is not an MQTT URL; {hint}"))?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(format!(
                "`{shown}`: scheme `{other}` is not MQTT; use `mqtt://` or `mqtts://` ({hint})"
            ))
        }
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') || authority.contains('@') || authority.contains('?') {
        return Err(format!(
            "`{shown}`: only host and port go in the URL (credentials in `username`/`password`, topics in `subscriptions`); {hint}"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{shown}`: unclosed `[` in the host; {hint}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("`{shown}` is not an MQTT URL; {hint}")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{shown}` has no host; {hint}"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{shown}`: `{p}` is not a port; {hint}"))?,
    };
    Ok(BrokerAddr { host, port, tls })
}

/// Checks a topic filter: `+` and `#` take a whole level, `#` only the last.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("empty topic filter; write e.g. `devices/+/telemetry`".into());
    }
    let levels: Vec<&str> = strip_share(filter)?.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "`{filter}`: `#` must be a whole level and the last one, e.g. `devices/#`"
            ));
        }
        if l.contains('+') && *l != "+" {
            return Err(format!(
                "`{filter}`: `+` must be a whole level, e.g. `devices/+/telemetry`"
            ));
        }
    }
    Ok(())
}

/// The filter without a `$share/<group>/` prefix.
fn strip_share(filter: &str) -> Result<&str, String> {
    match filter.strip_prefix("$share/") {
        None => Ok(filter),
        Some(rest) => match rest.split_once('/') {
            Some((group, f)) if !group.is_empty() && !f.is_empty() => Ok(f),
            _ => Err(format!(
                "`{filter}`: a shared subscription is `$share/<group>/<filter>`"
            )),
        },
    }
}

/// Whether `topic` matches `filter` (MQTT wildcards; `$…` topics only match filters that name
/// their first level).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let filter = strip_share(filter).unwrap_or(filter);
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Checks what serde cannot express (at `at`); the broker's address once the section is valid.
pub(super) fn check(
    c: &MqttSourceConfig,
    at: At<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<BrokerAddr> {
    let before = errors.len();
    let at = |f: &str| at.field(f);
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
    let addr = match parse_url(&c.url) {
        Ok(a) => Some(a),
        Err(e) => {
            err(at("url"), e);
            None
        }
    };
    if c.subscriptions.is_empty() {
        err(
            at("subscriptions"),
            "no subscriptions; add at least one, e.g. `[{topic: 'devices/+/telemetry', qos: 1}]`"
                .into(),
        );
    }
    for (i, s) in c.subscriptions.iter().enumerate() {
        if let Err(e) = check_filter(&s.topic) {
            err(at(&format!("subscriptions[{i}].topic")), e);
        }
        match s.qos {
            0 | 1 => {}
            2 => err(
                at(&format!("subscriptions[{i}].qos")),
                "QoS 2 is not supported: delivery into Kafka is at-least-once whatever the QoS, and the MQTT client cannot resume a QoS 2 exchange after a reconnect; use `qos: 1` (publishers may still publish at QoS 2)".into(),
            ),
            q => err(
                at(&format!("subscriptions[{i}].qos")),
                format!("QoS {q} does not exist; use 1 (at least once) or 0 (at most once)"),
            ),
        }
    }
    if let Some(id) = &c.client_id {
        if id.is_empty() || id.len() > 65535 {
            err(
                at("client_id"),
                "must be 1 to 65535 bytes; a fixed id is what lets the broker keep the session"
                    .into(),
            );
        }
    }
    if c.password.is_some() && c.username.is_none() {
        err(at("password"), "a password needs a `username` too".into());
    }
    if let Some(tls) = &c.tls {
        if addr.as_ref().is_some_and(|a| !a.tls) {
            err(
                at("tls"),
                format!(
                    "TLS settings need an `mqtts://` URL, not `{}`",
                    redact_url(&c.url)
                ),
            );
        }
        for (field, file) in [
            ("ca_file", &tls.ca_file),
            ("cert_file", &tls.cert_file),
            ("key_file", &tls.key_file),
        ] {
            if let Some(f) = file {
                if !std::path::Path::new(f).exists() {
                    err(
                        at(&format!("tls.{field}")),
                        format!("file `{f}` does not exist"),
                    );
                }
            }
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            err(
                at("tls"),
                "`cert_file` and `key_file` go together for mutual TLS; set both or neither".into(),
            );
        }
    }
    if c.keep_alive < Duration::from_secs(5) || c.keep_alive > Duration::from_secs(65535) {
        err(
            at("keep_alive"),
            "must be from 5s to 65535s; e.g. `30s`".into(),
        );
    }
    if c.connect_timeout < Duration::from_secs(1) {
        err(at("connect_timeout"), "must be at least 1s".into());
    }
    if c.backoff_initial.is_zero() || c.backoff_initial > c.backoff_max {
        err(
            at("backoff_initial"),
            "must be more than 0 and at most backoff_max".into(),
        );
    }
    if c.max_inflight == 0 {
        err(
            at("max_inflight"),
            "must be from 1 to 65535; e.g. 1000".into(),
        );
    }
    if c.max_packet_size.0 < 64 || c.max_packet_size.0 > 268_435_455 {
        err(
            at("max_packet_size"),
            "must be from 64 bytes to 256MiB".into(),
        );
    }
    if !c.clean_session && c.session_expiry.as_secs() == 0 {
        err(
            at("session_expiry"),
            "a persistent session needs a session expiry of at least 1s (or set `clean_session: true`)".into(),
        );
    }
    addr.filter(|_| errors.len() == before)
}

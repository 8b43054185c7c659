//! Checks that serde cannot express: every problem is collected, none stops the others.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{Config, ConfigError, Format, SourceConfig, TransformConfig};
use crate::transform::{Pointer, Template};

/// librdkafka producer properties that a typed field owns; setting them in `options` is refused.
const TYPED_PRODUCER_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.brokers"),
    ("metadata.broker.list", "kafka.brokers"),
    ("client.id", "kafka.client_id"),
    ("acks", "kafka.producer.acks"),
    ("request.required.acks", "kafka.producer.acks"),
    ("enable.idempotence", "kafka.producer.idempotence"),
    ("compression.type", "kafka.producer.compression"),
    ("compression.codec", "kafka.producer.compression"),
    ("linger.ms", "kafka.producer.linger_ms"),
    ("queue.buffering.max.ms", "kafka.producer.linger_ms"),
    ("batch.size", "kafka.producer.batch_size"),
    ("message.timeout.ms", "kafka.producer.message_timeout"),
    ("delivery.timeout.ms", "kafka.producer.message_timeout"),
    ("request.timeout.ms", "kafka.producer.request_timeout"),
    (
        "queue.buffering.max.messages",
        "kafka.producer.max_buffered_records",
    ),
    (
        "queue.buffering.max.kbytes",
        "kafka.producer.max_buffered_bytes",
    ),
    ("security.protocol", "kafka.security.protocol"),
    ("sasl.mechanism", "kafka.security.sasl.mechanism"),
    ("sasl.mechanisms", "kafka.security.sasl.mechanism"),
    ("sasl.username", "kafka.security.sasl.username"),
    ("sasl.password", "kafka.security.sasl.password"),
    ("ssl.ca.location", "kafka.security.tls.ca"),
    ("ssl.certificate.location", "kafka.security.tls.cert"),
    ("ssl.key.location", "kafka.security.tls.key"),
    ("ssl.key.password", "kafka.security.tls.key_password"),
    ("dr_msg_cb", "kgate's delivery handling"),
    ("dr_cb", "kgate's delivery handling"),
];

/// Whether `name` is a legal Kafka topic name.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

pub(super) fn validate(c: &Config, errors: &mut Vec<ConfigError>) {
    if let Some(r) = &c.schema_registry {
        crate::registry::validate_config(r, "schema_registry", errors);
    }
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });

    if c.kafka.brokers.is_empty() {
        err(
            "kafka.brokers".into(),
            "no brokers; list at least one `host:port`, e.g. [\"127.0.0.1:9092\"]".into(),
        );
    }
    for (i, b) in c.kafka.brokers.iter().enumerate() {
        let ok = b
            .rsplit_once(':')
            .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            .unwrap_or(false);
        if !ok {
            err(
                format!("kafka.brokers[{i}]"),
                format!("`{b}` is not `host:port`; write e.g. `127.0.0.1:9092`"),
            );
        }
    }
    if let Some(sec) = &c.kafka.security {
        if sec.protocol.uses_sasl() && sec.sasl.is_none() {
            err(
                "kafka.security.sasl".into(),
                format!(
                    "protocol {} needs SASL credentials; add `sasl: {{ mechanism: SCRAM-SHA-512, username: ..., password: ${{KAFKA_PASSWORD}} }}`",
                    sec.protocol.as_str().to_uppercase()
                ),
            );
        }
        if !sec.protocol.uses_sasl() && sec.sasl.is_some() {
            err(
                "kafka.security.sasl".into(),
                format!(
                    "SASL credentials are ignored with protocol {}; use SASL_SSL or SASL_PLAINTEXT",
                    sec.protocol.as_str().to_uppercase()
                ),
            );
        }
        if let Some(tls) = &sec.tls {
            for (field, file) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                if let Some(f) = file {
                    if !std::path::Path::new(f).exists() {
                        err(
                            format!("kafka.security.tls.{field}"),
                            format!("file `{f}` does not exist"),
                        );
                    }
                }
            }
            if tls.cert.is_some() != tls.key.is_some() {
                err(
                    "kafka.security.tls".into(),
                    "`cert` and `key` go together for mutual TLS; set both or neither".into(),
                );
            }
        }
    }
    let p = &c.kafka.producer;
    for key in p.options.keys() {
        if let Some((_, owner)) = TYPED_PRODUCER_KEYS.iter().find(|(k, _)| k == key) {
            err(
                format!("kafka.producer.options.{key}"),
                format!("conflicts with {owner}; set it there instead"),
            );
        }
    }
    if p.max_buffered_records == 0 || p.max_buffered_records > 2_147_483_647 {
        err(
            "kafka.producer.max_buffered_records".into(),
            format!(
                "{} is out of range; use 1 to 2147483647",
                p.max_buffered_records
            ),
        );
    }
    if p.max_buffered_bytes.0 < 1024 || p.max_buffered_bytes.0 / 1024 > 2_147_483_647 {
        err(
            "kafka.producer.max_buffered_bytes".into(),
            format!(
                "{} bytes is out of range; use 1KiB to 2TiB",
                p.max_buffered_bytes.0
            ),
        );
    }
    if p.batch_size == 0 || p.batch_size > 2_147_483_647 {
        err(
            "kafka.producer.batch_size".into(),
            format!("{} is out of range; use 1 to 2147483647", p.batch_size),
        );
    }
    if p.linger_ms > 900_000 {
        err(
            "kafka.producer.linger_ms".into(),
            format!("{} is out of range; use 0 to 900000", p.linger_ms),
        );
    }
    if !p.message_timeout.is_zero() && p.message_timeout.as_millis() <= p.linger_ms as u128 {
        err(
            "kafka.producer.message_timeout".into(),
            "must be longer than linger_ms (or 0 for no timeout)".into(),
        );
    }
    if p.idempotence && p.acks != super::Acks::All {
        err(
            "kafka.producer.acks".into(),
            format!(
                "idempotence needs acks=all, not {}; set `idempotence: false` to use acks={}",
                p.acks.as_str(),
                p.acks.as_str()
            ),
        );
    }

    if c.metrics.enabled && c.metrics.listen.parse::<SocketAddr>().is_err() {
        err(
            "metrics.listen".into(),
            format!(
                "`{}` is not an address; write e.g. `0.0.0.0:9000`",
                c.metrics.listen
            ),
        );
    }
    for name in c.metrics.labels.keys() {
        let ok = name
            .chars()
            .next()
            .map(|ch| ch.is_ascii_alphabetic() || ch == '_')
            .unwrap_or(false)
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            && !name.starts_with("__");
        if !ok {
            err(
                format!("metrics.labels.{name}"),
                "not a valid Prometheus label name; use letters, digits and `_`, not starting with a digit".into(),
            );
        }
    }
    if !valid_topic_name(&c.dlq.topic) {
        err(
            "dlq.topic".into(),
            format!(
                "`{}` is not a valid topic name; use letters, digits, `.`, `_` and `-`",
                c.dlq.topic
            ),
        );
    }

    if c.pipelines.is_empty() && c.http.is_none() {
        err(
            "pipelines".into(),
            "no pipelines; add one with a `name`, a `source`, a `topic` (see examples/trades.yaml)"
                .into(),
        );
    }
    let mut names = HashSet::new();
    for (i, pl) in c.pipelines.iter().enumerate() {
        let at = |f: &str| format!("pipelines[{i}].{f}");
        if pl.name.trim().is_empty() {
            err(at("name"), "empty; give the pipeline a name".into());
        } else if !names.insert(pl.name.as_str()) {
            err(
                at("name"),
                format!(
                    "`{}` is used by an earlier pipeline; names must be unique",
                    pl.name
                ),
            );
        }
        match &pl.source {
            SourceConfig::Websocket(ws) => {
                if ws.urls.is_empty() {
                    err(
                        at("source.websocket.urls"),
                        "no URLs; list at least one `ws://host:port/path`".into(),
                    );
                }
                for (j, u) in ws.urls.iter().enumerate() {
                    let ok = (u.starts_with("ws://") || u.starts_with("wss://"))
                        && u.parse::<tokio_tungstenite::tungstenite::http::Uri>()
                            .map(|uri| uri.host().is_some())
                            .unwrap_or(false);
                    if !ok {
                        err(
                            at(&format!("source.websocket.urls[{j}]")),
                            format!("`{u}` is not a WebSocket URL; write e.g. `ws://127.0.0.1:4200/ws` or `wss://…`"),
                        );
                    }
                }
                if ws.timeout.is_zero() {
                    err(
                        at("source.websocket.timeout"),
                        "must be more than 0; e.g. `30s`".into(),
                    );
                }
                if ws.backoff_initial.is_zero() || ws.backoff_initial > ws.backoff_max {
                    err(
                        at("source.websocket.backoff_initial"),
                        "must be more than 0 and at most backoff_max".into(),
                    );
                }
            }
            SourceConfig::DeviceWebsocket(d) => {
                let mut found = Vec::new();
                d.validate(&at("source.device_websocket"), &mut found);
                for e in found {
                    err(e.path, e.message);
                }
            }
            // Checked with the `http:` section, in config/http.rs.
            SourceConfig::Http(_) => {}
            SourceConfig::Mqtt(m) => {
                for e in crate::source::mqtt::validate(m, &|f| at(&format!("source.mqtt.{f}"))) {
                    err(e.path, e.message);
                }
            }
        }
        for (j, t) in pl.transforms.iter().enumerate() {
            let mut check_ptr = |field: &str, p: &str| {
                if let Err(e) = Pointer::parse(p) {
                    err(at(&format!("transforms[{j}].{field}")), e);
                }
            };
            match t {
                TransformConfig::Rename { from, to, .. } => {
                    check_ptr("rename.from", from);
                    check_ptr("rename.to", to);
                }
                TransformConfig::Set { path, .. } => check_ptr("set.path", path),
                TransformConfig::Remove { path } => check_ptr("remove.path", path),
            }
        }
        if pl.key_format == super::KeyFormat::Avro && pl.format != Format::Avro {
            err(
                at("key_format"),
                "`avro` keys go with Avro values; set `format: avro` or use `key_format: string`"
                    .into(),
            );
        }
        if pl.format == Format::Avro && c.schema_registry.is_none() {
            err(
                at("format"),
                "`avro` encodes through a schema registry; add `schema_registry: { url: http://127.0.0.1:8081/apis/ccompat/v7 }`".into(),
            );
        }
        if pl.format == Format::Avro
            && pl.avro.subject_strategy != super::SubjectStrategy::TopicName
            && pl.avro.record.is_none()
            && pl.avro.subject.is_none()
        {
            err(
                at("avro.record"),
                "the record_name strategies need the record's full name, e.g. `record: io.kgate.trades.TradeEvent`".into(),
            );
        }
        if pl.format == Format::Raw && !pl.transforms.is_empty() {
            err(
                at("transforms"),
                "format `raw` passes bytes through unparsed, so transforms cannot apply; use `format: json`".into(),
            );
        }
        match Template::parse(&pl.topic) {
            Ok(t) => {
                if let Some(fixed) = t.fixed() {
                    if !valid_topic_name(fixed) {
                        err(
                            at("topic"),
                            format!("`{fixed}` is not a valid topic name; use letters, digits, `.`, `_` and `-` (at most 249)"),
                        );
                    }
                } else if pl.format == Format::Raw && t.reads_fields() {
                    err(
                        at("topic"),
                        "a topic template over event fields needs the event parsed; use `format: json` (source values `${@name}` work with raw)".into(),
                    );
                }
            }
            Err(e) => err(at("topic"), e),
        }
        if let Some(k) = &pl.key {
            match Template::parse(k) {
                Ok(t) if t.reads_fields() && pl.format == Format::Raw => err(
                    at("key"),
                    "a key template over event fields needs the event parsed; use `format: json` (source values `${@name}` work with raw)".into(),
                ),
                Ok(_) => {}
                Err(e) => err(at("key"), e),
            }
        }
        for (h, v) in &pl.headers {
            match Template::parse(v) {
                Ok(t) if t.reads_fields() && pl.format == Format::Raw => err(
                    at(&format!("headers.{h}")),
                    "a header template over event fields needs the event parsed; use `format: json` (source values `${@name}` work with raw)".into(),
                ),
                Ok(_) => {}
                Err(e) => err(at(&format!("headers.{h}")), e),
            }
        }
    }
    super::http::validate(c, errors);
}

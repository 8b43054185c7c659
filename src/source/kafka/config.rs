//! `source.kafka:` — the topics to read, the consumer group, where a new group starts, and the
//! commit interval, with their checks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{At, ConfigError};

/// `source.kafka:` — a consumer group reading topics of the `kafka:` cluster (brokers and
/// security from there). At-least-once: a record's offset is committed only once Kafka holds
/// its result (the output record or its DLQ record).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Topics to read, e.g. `[telemetry.raw]`.
    pub topics: Vec<String>,
    /// Consumer group id (`group.id`): its committed offsets are where a restart resumes, and
    /// gateways in one group share the partitions.
    pub group: String,
    /// Where a group without a committed offset starts (`auto.offset.reset`): `earliest` or
    /// `latest` (the default).
    #[serde(default)]
    pub start: StartAt,
    /// How often the offsets of settled records are committed (`auto.commit.interval.ms`); a
    /// crash resends at most about this much. Default `5s`.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Extra librdkafka consumer properties, e.g. `{fetch.max.bytes: '10485760'}`; the ones
    /// kgate sets for at-least-once (`group.id`, `enable.auto.commit`,
    /// `enable.auto.offset.store`, `auto.offset.reset`, `auto.commit.interval.ms`) are refused.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Where a new consumer group starts reading.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// The oldest record still in the topic.
    Earliest,
    /// Only records written after the group first joined.
    #[default]
    Latest,
}

impl StartAt {
    /// The `auto.offset.reset` value.
    pub fn as_str(self) -> &'static str {
        match self {
            StartAt::Earliest => "earliest",
            StartAt::Latest => "latest",
        }
    }
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(5)
}

/// Properties kgate sets itself; `options` may not change them.
const RESERVED_OPTIONS: &[&str] = &[
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "auto.commit.interval.ms",
];

/// Checks what serde cannot express (at `at`); true when the section is valid.
pub(super) fn check(c: &KafkaSourceConfig, at: At<'_>, errors: &mut Vec<ConfigError>) -> bool {
    let before = errors.len();
    let at = |f: &str| at.field(f);
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
    if c.topics.is_empty() {
        err(
            at("topics"),
            "no topics; add at least one, e.g. `[telemetry.raw]`".into(),
        );
    }
    for (i, t) in c.topics.iter().enumerate() {
        if !crate::kafka::valid_topic_name(t) {
            err(
                at(&format!("topics[{i}]")),
                format!(
                    "`{t}` is not a Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249)"
                ),
            );
        }
    }
    if c.group.trim().is_empty() {
        err(
            at("group"),
            "empty consumer group; write e.g. `telemetry-validator`".into(),
        );
    }
    if c.commit_interval < Duration::from_millis(100) {
        err(
            at("commit_interval"),
            "must be at least 100ms; e.g. `5s`".into(),
        );
    }
    for k in c.options.keys() {
        if RESERVED_OPTIONS.contains(&k.as_str()) {
            err(
                at(&format!("options.{k}")),
                format!(
                    "`{k}` is set by kgate (at-least-once offsets); use the section's own fields"
                ),
            );
        }
    }
    errors.len() == before
}

//! `pipelines[].coordination:` — which consumer group the instances reading the same feeds
//! share, and how fast a silent one loses its feeds; checked into a [`CoordinationSpec`].

use std::time::Duration;

use serde::Deserialize;

use crate::config::{At, ConfigError};
use crate::kafka::valid_topic_name;

/// `coordination:` — share a `websocket` pipeline's feeds among every kgate instance that runs
/// it: each feed is read by one instance at a time, chosen through a Kafka consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CoordinationConfig {
    /// Consumer group the instances join, the same on every instance that runs this pipeline
    /// (with the same `urls`, in the same order), e.g. `trades-gateways`. Use it for this
    /// pipeline alone: its control topic is `kgate.coord.<pipeline>`.
    pub group: String,
    /// How long the group waits for an instance that went silent (killed, cut off) before its
    /// feeds move to the others; heartbeats go every third of it, at most every second. The
    /// brokers accept 6s to 30m by default (`group.min.session.timeout.ms`,
    /// `group.max.session.timeout.ms`). An instance that stops cleanly hands over at once.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

/// librdkafka's bounds of `session.timeout.ms`.
const SESSION_MIN: Duration = Duration::from_secs(1);
const SESSION_MAX: Duration = Duration::from_secs(3600);

/// The longest pause between heartbeats: a member learns of a rebalance at its next one, so
/// this bounds how long a handover waits for the instances that keep running.
const HEARTBEAT_MAX: Duration = Duration::from_secs(1);

/// `coordination:`, checked: what the coordinator of a pipeline's feeds runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinationSpec {
    /// The consumer group.
    pub group: String,
    /// `session.timeout.ms`.
    pub session_timeout: Duration,
    /// `heartbeat.interval.ms`: a third of the session timeout, at most a second.
    pub heartbeat: Duration,
    /// The control topic, `kgate.coord.<pipeline>`: partition `i` is the pipeline's URL `i`.
    pub topic: String,
}

impl CoordinationConfig {
    /// Checks the section of pipeline `pipeline` (at `at`, e.g. `pipelines[0].coordination`).
    pub fn resolve(
        &self,
        at: At<'_>,
        pipeline: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<CoordinationSpec> {
        let before = errors.len();
        let group = self.group.trim();
        if group.is_empty() {
            errors.push(ConfigError::new(
                at.field("group"),
                "empty; name the consumer group every instance running this pipeline joins, e.g. `trades-gateways`",
            ));
        } else if group != self.group || group.chars().any(char::is_control) {
            errors.push(ConfigError::new(
                at.field("group"),
                format!(
                    "`{}` has spaces at its ends or control characters; write the group name alone, e.g. `trades-gateways`",
                    self.group.escape_debug()
                ),
            ));
        }
        if self.session_timeout < SESSION_MIN || self.session_timeout > SESSION_MAX {
            errors.push(ConfigError::new(
                at.field("session_timeout"),
                format!(
                    "{} is outside 1s..1h (librdkafka's bounds; brokers accept 6s..30m by default); e.g. `10s`",
                    humantime::format_duration(self.session_timeout)
                ),
            ));
        }
        let topic = control_topic(pipeline);
        // An empty name is reported by the pipeline's own check.
        if !pipeline.trim().is_empty() && !valid_topic_name(&topic) {
            errors.push(ConfigError::new(
                at.0,
                format!(
                    "the control topic would be `{topic}`, which is not a Kafka topic name; rename the pipeline with letters, digits, `.`, `_` and `-` only"
                ),
            ));
        }
        if errors.len() != before {
            return None;
        }
        Some(CoordinationSpec {
            group: self.group.clone(),
            session_timeout: self.session_timeout,
            heartbeat: (self.session_timeout / 3).min(HEARTBEAT_MAX),
            topic,
        })
    }
}

/// The control topic of pipeline `pipeline`.
pub fn control_topic(pipeline: &str) -> String {
    format!("kgate.coord.{pipeline}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(yaml: &str, pipeline: &str) -> Result<CoordinationSpec, Vec<String>> {
        let c: CoordinationConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let spec = c.resolve(At("pipelines[0].coordination"), pipeline, &mut errors);
        assert_eq!(spec.is_some(), errors.is_empty(), "{errors:?}");
        spec.ok_or_else(|| errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_and_heartbeat() {
        let s = resolve("group: trades-gateways", "trades").unwrap();
        assert_eq!(s.group, "trades-gateways");
        assert_eq!(s.session_timeout, Duration::from_secs(10));
        assert_eq!(s.heartbeat, Duration::from_secs(1));
        assert_eq!(s.topic, "kgate.coord.trades");
        let s = resolve("{group: g, session_timeout: 1500ms}", "p").unwrap();
        assert_eq!(s.heartbeat, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_name_the_field_and_the_fix() {
        let e = resolve("{group: '', session_timeout: 500ms}", "p").unwrap_err();
        assert_eq!(
            e,
            [
                "pipelines[0].coordination.group: empty; name the consumer group every instance running this pipeline joins, e.g. `trades-gateways`",
                "pipelines[0].coordination.session_timeout: 500ms is outside 1s..1h (librdkafka's bounds; brokers accept 6s..30m by default); e.g. `10s`",
            ]
        );
        let e = resolve("{group: ' g'}", "p").unwrap_err();
        assert!(e[0].contains("spaces at its ends"), "{e:?}");
        let e = resolve("{group: g}", "trades feed").unwrap_err();
        assert_eq!(
            e,
            ["pipelines[0].coordination: the control topic would be `kgate.coord.trades feed`, which is not a Kafka topic name; rename the pipeline with letters, digits, `.`, `_` and `-` only"]
        );
    }
}

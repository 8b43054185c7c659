//! `log:` — the format and level of kgate's own log (stderr). The subscriber itself is set up by
//! the binary (`src/cmd/log.rs`); this is the config section and the filter it stands for.

use serde::Deserialize;

use crate::config::{At, ConfigError};

/// The filter used when neither `KGATE_LOG`, `RUST_LOG` nor `log.level` says otherwise.
pub const DEFAULT_LEVEL: &str = "info";

/// Directives appended to a `log.level` that names neither: librdkafka's own messages are kept
/// at warnings (its info lines are connection chatter that kgate reports itself).
const RDKAFKA_QUIET: &str = "librdkafka=warn,rdkafka=warn";

/// How each log line is written.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields (`message`,
    /// …) and `spans` (`pipeline` and `source` for what a source logs).
    Json,
}

/// `log:` — kgate's log on stderr.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json` (JSON lines); `--log-format` (or `KGATE_LOG_FORMAT`) wins over it.
    #[serde(default)]
    #[schemars(extend("default" = "text"))]
    pub format: LogFormat,
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or tracing filter directives
    /// (`info,kgate::source=debug`); `KGATE_LOG` (then `RUST_LOG`) wins over it. librdkafka's
    /// messages stay at `warn` unless a directive names `rdkafka` or `librdkafka`. Default `info`.
    #[serde(default)]
    pub level: Option<String>,
}

impl LogConfig {
    /// The filter directives `level` stands for (the default when unset).
    pub fn directives(&self) -> String {
        directives(self.level.as_deref().unwrap_or(DEFAULT_LEVEL))
    }

    /// Checks `log:` (at `at`): the level must parse as a filter.
    pub fn validate(&self, at: At<'_>, errors: &mut Vec<ConfigError>) {
        if let Some(level) = &self.level {
            if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(self.directives()) {
                errors.push(ConfigError::new(
                    at.field("level"),
                    format!("`{level}` is not a log filter ({e}); write a level (error, warn, info, debug, trace) or directives such as `info,kgate::source=debug`"),
                ));
            }
        }
    }
}

/// `level` with librdkafka kept at warnings unless it names it.
pub fn directives(level: &str) -> String {
    let level = level.trim();
    if level.contains("rdkafka") {
        level.to_string()
    } else if level.is_empty() {
        format!("{DEFAULT_LEVEL},{RDKAFKA_QUIET}")
    } else {
        format!("{level},{RDKAFKA_QUIET}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_keeps_librdkafka_at_warn_unless_it_names_it() {
        assert_eq!(directives("debug"), "debug,librdkafka=warn,rdkafka=warn");
        assert_eq!(directives(""), "info,librdkafka=warn,rdkafka=warn");
        assert_eq!(directives("info,rdkafka=debug"), "info,rdkafka=debug");
        assert_eq!(
            LogConfig::default().directives(),
            "info,librdkafka=warn,rdkafka=warn"
        );
    }

    #[test]
    fn a_bad_level_is_an_error_naming_the_field_and_value() {
        let mut errors = Vec::new();
        LogConfig {
            level: Some("info,kgate=loud".into()),
            ..Default::default()
        }
        .validate(At("log"), &mut errors);
        assert_eq!(errors.len(), 1);
        let text = errors[0].to_string();
        assert!(text.contains("log.level"), "{text}");
        assert!(
            text.contains("`info,kgate=loud` is not a log filter"),
            "{text}"
        );
        let mut errors = Vec::new();
        LogConfig {
            level: Some("debug".into()),
            format: LogFormat::Json,
        }
        .validate(At("log"), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }
}

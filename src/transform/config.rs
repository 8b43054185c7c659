//! `pipelines[].transforms:` — the transforms a pipeline applies, as written in the config.

use serde::Deserialize;

/// One transform of a parsed event: `rename`, `set` or `remove`, each at a JSON pointer.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
#[serde(rename_all = "snake_case")]
pub enum TransformConfig {
    /// Move a value from one JSON pointer to another.
    Rename {
        /// Source pointer, e.g. `/tradeCredential/@context`.
        from: String,
        /// Target pointer, e.g. `/tradeCredential/context`.
        to: String,
        /// Fail (DLQ, `transform_failed`) when `from` is missing instead of skipping.
        #[serde(default)]
        required: bool,
    },
    /// Set a value at a JSON pointer (intermediate objects are created).
    Set {
        /// Target pointer.
        path: String,
        /// Any JSON value; a string is a template (`${field}`, `${@name}`).
        value: serde_json::Value,
    },
    /// Remove the value at a JSON pointer (missing is fine).
    Remove {
        /// Pointer to remove.
        path: String,
    },
}

//! JSON Schema of the value shapes the loader reads by hand (durations); the config types derive
//! theirs with `schemars` (`kgate config schema`).

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

/// The schema of a `humantime_serde` duration field: `#[schemars(with = "HumanDuration")]`.
pub struct HumanDuration;

/// The units humantime reads, longest first so that a regex alternation takes the whole word.
const DURATION_UNITS: &str = "nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|\
minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|\
years|year|yrs|yr|y";

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // humantime_serde reads strings only: `30` (a YAML number) is refused, `"0"` is not.
        let pattern = format!(r"^(0|\s*([0-9]+(\.[0-9]+)?\s*({DURATION_UNITS})\s*)+)$");
        json_schema!({
            "description": "A duration: a number and a unit, e.g. `500ms`, `30s`, `5m`, `7d`, `1h 30m` (a string; `0s` for none).",
            "type": "string",
            "pattern": pattern,
            // yaml-language-server's message instead of the regex.
            "patternErrorMessage": "not a duration; write e.g. `30s`, `500ms`, `5m` or `1h 30m`",
        })
    }
}

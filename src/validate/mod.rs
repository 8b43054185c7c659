//! `pipelines[].validate:` — a record must fit a schema before the pipeline touches it: a JSON
//! Schema file (draft 2020-12, or draft-07 when its `$schema` says so), or the latest Avro
//! schema of a registry subject. A record that does not fit goes to the pipeline's DLQ as
//! `validation_failed`, its message naming each failing JSON path and rule (at most
//! [`MAX_REPORTED`] of them).
//!
//! Validation is of the input *as received* (after Avro decoding, before transforms): the schema
//! describes what producers send, and transforms then normalize what passed. The schema is
//! compiled once when the config is loaded; each record costs one pass over the parsed tree the
//! pipeline already has (a second pass collects the errors only when it fails). No `$ref` is
//! fetched over the network or read from disk behind the config's back: a schema must be
//! self-contained.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::avro;
use crate::registry::SchemaCache;

/// How many failing rules a `validation_failed` message names at most.
pub const MAX_REPORTED: usize = 3;

/// `validate:` — exactly one of `json_schema` or `avro`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
#[serde(rename_all = "snake_case")]
pub enum ValidateConfig {
    /// A JSON Schema file, relative to the config file's directory (or absolute). Draft 2020-12
    /// unless its `$schema` names another draft (`http://json-schema.org/draft-07/schema#`).
    /// Self-contained: `$ref`s to other files or URLs are not fetched.
    JsonSchema(String),
    /// A schema registry subject: each record must fit the subject's latest Avro schema, as
    /// `format: avro` would encode it (plain JSON). Needs `schema_registry:`.
    Avro(String),
}

/// A compiled `validate:` section, ready for the processor.
#[derive(Clone)]
pub enum Validation {
    /// A compiled JSON Schema.
    JsonSchema(Arc<JsonSchemaCheck>),
    /// The latest schema of this registry subject (loaded into the schema cache at start).
    Avro {
        /// The subject.
        subject: String,
    },
}

impl fmt::Debug for Validation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Validation::JsonSchema(c) => write!(f, "JsonSchema({})", c.file),
            Validation::Avro { subject } => write!(f, "Avro({subject})"),
        }
    }
}

impl ValidateConfig {
    /// Compiles the section; `base` is the config file's directory. The error is the message of
    /// a config error at `validate.json_schema` (it names the file and the fix).
    pub fn compile(&self, base: &Path) -> Result<Validation, String> {
        match self {
            ValidateConfig::JsonSchema(file) => {
                JsonSchemaCheck::load(file, base).map(|c| Validation::JsonSchema(Arc::new(c)))
            }
            ValidateConfig::Avro(subject) => Ok(Validation::Avro {
                subject: subject.clone(),
            }),
        }
    }
}

/// A JSON Schema compiled once, and the file it came from (for messages).
pub struct JsonSchemaCheck {
    file: String,
    validator: jsonschema::Validator,
}

/// The drafts `$schema` may name, and what they are called in messages.
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

impl JsonSchemaCheck {
    /// Reads and compiles `file` (relative to `base` unless absolute).
    pub fn load(file: &str, base: &Path) -> Result<JsonSchemaCheck, String> {
        let path = base.join(file);
        let shown = path.display();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!("cannot read the JSON Schema file `{shown}`: {e}; the path is relative to the config file's directory")
        })?;
        let schema: Value = serde_json::from_str(&text).map_err(|e| {
            format!("`{shown}` is not JSON ({e}); a JSON Schema file holds one JSON object, e.g. {{\"type\": \"object\", \"required\": [\"device_id\"]}}")
        })?;
        JsonSchemaCheck::compile(&schema, &shown.to_string())
    }

    /// Compiles a schema value; `file` names it in messages.
    pub fn compile(schema: &Value, file: &str) -> Result<JsonSchemaCheck, String> {
        if !matches!(schema, Value::Object(_) | Value::Bool(_)) {
            return Err(format!(
                "`{file}` is not a valid JSON Schema: a schema is a JSON object (or true/false), not {}",
                kind_of(schema)
            ));
        }
        let mut options = jsonschema::options();
        // `$schema` picks the draft (draft-07, 2019-09, …); without it, 2020-12.
        let named = schema.get("$schema").and_then(Value::as_str);
        if named.is_none() {
            options = options.with_draft(jsonschema::Draft::Draft202012);
        }
        let validator = options.build(schema).map_err(|e| {
            format!(
                "`{file}` is not a valid JSON Schema ({}): {e} (at {}); fix the schema",
                named.unwrap_or(DRAFT_2020_12),
                or_root(e.instance_path().as_str()),
            )
        })?;
        Ok(JsonSchemaCheck {
            file: file.to_string(),
            validator,
        })
    }

    /// The schema file, as shown in messages.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Checks a value: `Err` names up to [`MAX_REPORTED`] failing paths and rules.
    pub fn check(&self, v: &Value) -> Result<(), String> {
        if self.validator.is_valid(v) {
            return Ok(());
        }
        let mut found = Vec::with_capacity(MAX_REPORTED);
        let mut more = false;
        for e in self.validator.iter_errors(v) {
            if found.len() == MAX_REPORTED {
                more = true;
                break;
            }
            found.push(format!(
                "{}: {}: {e}",
                or_root(e.instance_path().as_str()),
                e.kind().keyword()
            ));
        }
        // The path and rule first: a table column shows the start of the message.
        let name = Path::new(&self.file)
            .file_name()
            .map_or(self.file.as_str(), |n| n.to_str().unwrap_or(&self.file));
        Err(format!(
            "{}{} (JSON Schema {name})",
            found.join("; "),
            if more { "; and more" } else { "" }
        ))
    }
}

/// Checks `v` against the latest schema of `subject` in `cache`. `Ok(false)` when the subject is
/// not loaded (the caller loads it and tries again).
pub fn check_avro(cache: &SchemaCache, subject: &str, v: &Value) -> Result<bool, String> {
    let Some(latest) = cache.get(subject) else {
        return Ok(false);
    };
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let r = BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        latest.schema.encode(v, &mut b)
    });
    r.map(|()| true).map_err(|m: avro::Mismatch| {
        format!(
            "{}: expected {}, found {} (Avro subject {subject} version {}, id {})",
            or_root(&m.path),
            m.expected,
            m.found,
            latest.version,
            latest.id,
        )
    })
}

/// A JSON pointer as shown: the root is `/` (an empty pointer reads as nothing).
fn or_root(p: &str) -> &str {
    if p.is_empty() {
        "/"
    } else {
        p
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn telemetry(draft: Option<&str>) -> JsonSchemaCheck {
        let mut s = json!({
            "type": "object",
            "required": ["device_id", "ts", "temperature"],
            "properties": {
                "device_id": {"type": "string"},
                "ts": {"type": "string"},
                "temperature": {"type": "number", "minimum": -50, "maximum": 150},
                "humidity": {"type": "number", "minimum": 0, "maximum": 100}
            }
        });
        if let Some(d) = draft {
            s["$schema"] = json!(d);
        }
        JsonSchemaCheck::compile(&s, "telemetry.schema.json").unwrap()
    }

    #[test]
    fn names_the_path_and_the_rule() {
        let c = telemetry(None);
        c.check(&json!({"device_id": "d1", "ts": "t", "temperature": 20.5}))
            .unwrap();
        let e = c
            .check(&json!({"device_id": "d1", "ts": "t", "temperature": 180}))
            .unwrap_err();
        assert!(
            e.contains("/temperature: maximum: 180 is greater than the maximum of 150"),
            "{e}"
        );
        assert!(e.contains("telemetry.schema.json"), "{e}");
        let e = c.check(&json!({"ts": "t", "temperature": 1})).unwrap_err();
        assert!(
            e.contains(r#"/: required: "device_id" is a required property"#),
            "{e}"
        );
        let e = c
            .check(&json!({"device_id": 7, "ts": "t", "temperature": 1}))
            .unwrap_err();
        assert!(e.contains("/device_id: type: 7 is not of type"), "{e}");
    }

    #[test]
    fn reports_at_most_three_errors() {
        let c = telemetry(None);
        let e = c
            .check(&json!({"temperature": "hot", "humidity": 200}))
            .unwrap_err();
        // Four rules fail (two required, a type, a maximum): three are named.
        let body = e
            .strip_suffix(" (JSON Schema telemetry.schema.json)")
            .unwrap();
        let parts: Vec<&str> = body.split("; ").collect();
        assert_eq!(parts.len(), MAX_REPORTED + 1, "{e}");
        assert_eq!(parts[MAX_REPORTED], "and more", "{e}");
    }

    #[test]
    fn draft_07_is_picked_by_its_schema_keyword() {
        // Draft-07 has no `prefixItems` (2020-12's tuple keyword; draft-07 wrote `items: [..]`),
        // so this schema rejects `[1]` under 2020-12 and lets it pass under draft-07.
        let s = |draft: Option<&str>| {
            let mut s = json!({"type": "array", "prefixItems": [{"type": "string"}]});
            if let Some(d) = draft {
                s["$schema"] = json!(d);
            }
            JsonSchemaCheck::compile(&s, "s.json").unwrap()
        };
        let v = json!([1]);
        s(Some("http://json-schema.org/draft-07/schema#"))
            .check(&v)
            .unwrap();
        let e = s(None).check(&v).unwrap_err();
        assert!(e.contains("/0: type:"), "{e}");
        s(Some(DRAFT_2020_12)).check(&v).unwrap_err();
        // Draft-07's tuple form is a schema error under 2020-12 and a rule under draft-07.
        let tuple = json!({"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]});
        let e = JsonSchemaCheck::compile(&tuple, "t.json")
            .unwrap()
            .check(&v)
            .unwrap_err();
        assert!(e.contains("/0: type:"), "{e}");
        // …and the draft's own rules apply to the schema itself.
        telemetry(Some("http://json-schema.org/draft-07/schema#"))
            .check(&json!({"device_id": "d", "ts": "t", "temperature": 0}))
            .unwrap();
    }

    #[test]
    fn load_errors_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let e = ValidateConfig::JsonSchema("nope.json".into())
            .compile(dir.path())
            .unwrap_err();
        assert!(
            e.contains("nope.json") && e.contains("relative to the config file's directory"),
            "{e}"
        );
        std::fs::write(dir.path().join("bad.json"), "{not json").unwrap();
        let e = JsonSchemaCheck::load("bad.json", dir.path()).err().unwrap();
        assert!(e.contains("bad.json") && e.contains("is not JSON"), "{e}");
        std::fs::write(dir.path().join("wrong.json"), r#"{"type": "nonsense"}"#).unwrap();
        let e = JsonSchemaCheck::load("wrong.json", dir.path())
            .err()
            .unwrap();
        assert!(
            e.contains("wrong.json") && e.contains("is not a valid JSON Schema"),
            "{e}"
        );
        std::fs::write(dir.path().join("list.json"), "[1]").unwrap();
        let e = JsonSchemaCheck::load("list.json", dir.path())
            .err()
            .unwrap();
        assert!(e.contains("not an array"), "{e}");
        // A remote reference is not fetched: the schema must be self-contained.
        std::fs::write(
            dir.path().join("remote.json"),
            r#"{"$ref": "https://example.com/s.json"}"#,
        )
        .unwrap();
        assert!(JsonSchemaCheck::load("remote.json", dir.path()).is_err());
    }

    /// The example schema takes every record `kgate synth --feed iot` makes.
    #[test]
    fn the_example_schema_fits_the_iot_feed() {
        use rand::SeedableRng;
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let c = JsonSchemaCheck::load("schemas/telemetry.schema.json", &base).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for seq in 0..2000 {
            let m = crate::cmd::synth::message(crate::cmd::synth::Feed::Iot, seq, "s", &mut rng);
            let v: Value = serde_json::from_str(&m).unwrap();
            c.check(&v).unwrap_or_else(|e| panic!("{m}: {e}"));
        }
        let e = c
            .check(
                &json!({"device_id": "sensor-0001", "timestamp": "t", "heart_rate": 70.5,
                "spo2": 97, "temperature": 51}),
            )
            .unwrap_err();
        assert!(
            e.contains("/heart_rate: type:") && e.contains("/temperature: maximum:"),
            "{e}"
        );
    }
}

//! Loading a config file, and nothing else: YAML, `${VAR}` / `${VAR:-default}` from the
//! environment, unknown keys refused with their path, type errors with their path, sizes and
//! durations, secrets ([`Secret`], [`redact_url`]), and the collected [`ConfigErrors`]. This module is a leaf: each component owns the
//! shape and the checks of its own section (`kafka/config.rs`, `source/*/config.rs`, ...), and
//! the file's root (`gateway::Config`) puts them together.

mod interpolate;
mod refs;
mod schema;
mod secret;
mod size;
mod tls;

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

pub use interpolate::interpolate_env;
pub use refs::{split_refs, Piece};
pub use schema::HumanDuration;
pub(crate) use secret::UrlParts;
pub use secret::{redact_url, Secret, REDACTED};
pub(crate) use size::yaml_brief;
pub use size::ByteSize;
pub use tls::{ServerTlsFiles, TlsFiles};

/// One problem in a config file: where it is (a path like `pipelines[0].source.websocket.urls[1]`),
/// what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending value.
    pub path: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file the errors are about.
    pub file: String,
    /// The errors, in the order found.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{} has {} error{}:",
            self.file,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Where a section sits in the file (`pipelines[0].source.mqtt`), to name the paths of its
/// problems.
#[derive(Debug, Clone, Copy)]
pub struct At<'a>(pub &'a str);

impl At<'_> {
    /// The path of `field` inside this section.
    pub fn field(&self, field: &str) -> String {
        if self.0.is_empty() {
            field.to_string()
        } else if field.is_empty() {
            self.0.to_string()
        } else if field.starts_with('[') {
            format!("{}{field}", self.0)
        } else {
            format!("{}.{field}", self.0)
        }
    }
}

/// The serde default of flags that are on unless turned off.
pub fn yes() -> bool {
    true
}

/// Reads a config file's text; a file that cannot be read is one error naming it.
pub fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: path.display().to_string(),
        errors: vec![ConfigError::new("", format!("cannot read the file: {e}"))],
    })
}

/// Parses config text into `T`: YAML, then `${VAR}` from `env`, then serde with unknown keys and
/// type errors collected into `errors` with their paths. `None` when the text could not be read
/// into a `T` at all (the reason is in `errors`); `Some` may still come with errors (unknown keys,
/// unset variables), so that the caller's own checks can report theirs in the same list.
pub fn parse<T: DeserializeOwned>(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut value: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(ConfigError::new("", format!("not valid YAML: {e}")));
            return None;
        }
    };
    if value.is_null() {
        value = serde_yaml::Value::Mapping(Default::default());
    }
    interpolate_env(&mut value, env, errors);

    // serde_yaml's Value only reads enums written as YAML tags; as JSON the usual
    // `websocket: {...}` mapping form works.
    let value: serde_json::Value = match serde_json::to_value(&value) {
        Ok(v) => v,
        Err(e) => {
            errors.push(ConfigError::new(
                "",
                format!("unsupported YAML (keys must be strings): {e}"),
            ));
            return None;
        }
    };
    let original = value.clone();
    let mut unknown = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path| {
        let mut segs = Vec::new();
        ignored_segments(&p, &mut segs);
        unknown.push(segs)
    };
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(de);
    for segs in unknown {
        errors.push(ConfigError::new(
            resolve_path(&segs, &original),
            "unknown key; remove it or check its spelling against the configuration reference in README.md",
        ));
    }
    match parsed {
        Ok(c) => Some(c),
        Err(e) => {
            let path = e.path().to_string();
            errors.push(ConfigError::new(
                if path == "." { String::new() } else { path },
                e.into_inner().to_string(),
            ));
            None
        }
    }
}

enum IgnoredSeg {
    Key(String),
    Index(usize),
    Variant,
}

fn ignored_segments(p: &serde_ignored::Path, out: &mut Vec<IgnoredSeg>) {
    use serde_ignored::Path;
    match p {
        Path::Root => {}
        Path::Seq { parent, index } => {
            ignored_segments(parent, out);
            out.push(IgnoredSeg::Index(*index));
        }
        Path::Map { parent, key } => {
            ignored_segments(parent, out);
            out.push(IgnoredSeg::Key(key.clone()));
        }
        Path::NewtypeVariant { parent } => {
            ignored_segments(parent, out);
            out.push(IgnoredSeg::Variant);
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } => ignored_segments(parent, out),
    }
}

/// `pipelines[0].source.websocket.foo`, the shape serde_path_to_error prints. serde_ignored
/// does not name enum variants, so they are read back from the document itself.
fn resolve_path(segs: &[IgnoredSeg], doc: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut cur = Some(doc);
    let push_key = |out: &mut String, k: &str| {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(k);
    };
    for seg in segs {
        match seg {
            IgnoredSeg::Key(k) => {
                push_key(&mut out, k);
                cur = cur.and_then(|v| v.get(k.as_str()));
            }
            IgnoredSeg::Index(i) => {
                out.push_str(&format!("[{i}]"));
                cur = cur.and_then(|v| v.get(*i));
            }
            IgnoredSeg::Variant => {
                if let Some((name, inner)) = cur
                    .and_then(|v| v.as_object())
                    .and_then(|m| m.iter().next())
                {
                    push_key(&mut out, name);
                    cur = Some(inner);
                }
            }
        }
    }
    out
}

/// The config text as [`parse`] reads it before serde: YAML with `${VAR}` from `env` filled
/// in, as JSON (`None` when it is not YAML with string keys). `kgate run` compares a reloaded
/// file with the running one section by section in this form, so that a changed environment
/// variable counts as a change and a reformatted file does not.
pub fn interpolated(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<serde_json::Value> {
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    if value.is_null() {
        value = serde_yaml::Value::Mapping(Default::default());
    }
    let mut errors = Vec::new();
    interpolate_env(&mut value, env, &mut errors);
    serde_json::to_value(&value).ok()
}

/// Parses YAML into any config type via JSON, so that enums read in the `kind: {...}` form.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let v = serde_json::to_value(v).map_err(|e| e.to_string())?;
    serde_json::from_value(v).map_err(|e| e.to_string())
}

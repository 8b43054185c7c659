//! `kgate config ...`: the config file's JSON Schema and its Markdown reference, both generated
//! from the config types, so that their `///` docs are the one text users read (in README.md, in
//! an editor's hover, and here).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use schemars::generate::SchemaSettings;
use schemars::transform::{RecursiveTransform, RemoveRefSiblings};
use schemars::Schema;
use serde_json::{Map, Value};

use crate::config::{self, redact_url, ConfigError, ConfigErrors};
use crate::gateway::Config;

const EXAMPLES: &str = "\
Examples:
  kgate config schema > kgate.schema.json
      then make this the first line of kgate.yaml, for completion, hover docs and checks in
      editors that use yaml-language-server (VS Code's YAML extension, Neovim, Helix, ...):
      # yaml-language-server: $schema=kgate.schema.json
  kgate config reference > CONFIGURATION.md
      every key of every section with its type, default and description, as in README.md

The schema knows the shape of the file (keys, types, allowed values, defaults); `kgate check
--config kgate.yaml` also checks what it cannot: addresses, files, templates, brokers, sources.
An editor checks the text as written: `${VAR}` is expanded only when kgate reads the file.";

/// The first line of README.md's generated block: the text up to the next marker is
/// [`reference`]'s output.
pub const BEGIN_MARKER: &str = "<!-- BEGIN GENERATED: kgate config reference -->";
/// The line that ends README.md's generated block.
pub const END_MARKER: &str = "<!-- END GENERATED -->";

/// `kgate config`: arguments.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct ConfigArgs {
    /// What to print.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// `kgate config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the JSON Schema (draft 07) of the config file, for editors.
    ///
    /// Every key with its type, allowed values, default and description; unknown keys are
    /// refused, as `kgate run` refuses them.
    #[command(
        after_long_help = "Example:\n  kgate config schema > kgate.schema.json\n  # first line of kgate.yaml:\n  # yaml-language-server: $schema=kgate.schema.json"
    )]
    Schema,
    /// Print the Markdown configuration reference: a table of keys per section.
    ///
    /// Every key of every section with its type, default and description: the text of
    /// README.md's "Configuration reference" (scripts/config-reference rewrites it there).
    #[command(after_long_help = "Example:\n  kgate config reference > CONFIGURATION.md")]
    Reference,
    /// Print a config file as kgate reads it: `${VAR}` expanded, defaults filled in, every
    /// secret `***`.
    ///
    /// Passwords, tokens and key passwords print as `***`; URLs lose their user info and query
    /// values (`wss://host/path?apikey=***`). A config with errors prints them instead (exit 2).
    #[command(after_long_help = "Example:\n  kgate config show --config kgate.yaml")]
    Show {
        /// The YAML config file.
        #[arg(short, long, env = "KGATE_CONFIG")]
        config: PathBuf,
    },
}

/// Runs `kgate config ...`.
pub fn main(args: ConfigArgs) -> ExitCode {
    let text = match args.command {
        ConfigCommand::Schema => schema_json(),
        ConfigCommand::Reference => reference(),
        ConfigCommand::Show { config } => match show(&config) {
            Ok(text) => text,
            Err(e) => {
                eprint!("{e}");
                return ExitCode::from(2);
            }
        },
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `kgate config schema | head` is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("kgate config: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// `kgate config show`: the file checked as `kgate run` checks it, then printed as YAML with
/// `${VAR}` expanded from the environment, every default filled in (from the schema, which
/// holds the loader's defaults), every secret (a `writeOnly` value in the schema: passwords,
/// tokens) as `***` and every URL through [`redact_url`].
pub fn show(path: &Path) -> Result<String, ConfigErrors> {
    crate::gateway::Gateway::load(path)?;
    let text = config::read(path)?;
    show_text(&text, &path.display().to_string(), &|k| {
        std::env::var(k).ok()
    })
}

/// [`show`] of config text; `env` looks up environment variables.
pub fn show_text(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigErrors> {
    let errors_of = |errors| ConfigErrors {
        file: file.to_string(),
        errors,
    };
    let mut errors = Vec::new();
    let mut value: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| errors_of(vec![ConfigError::new("", format!("not valid YAML: {e}"))]))?;
    if value.is_null() {
        value = serde_yaml::Value::Mapping(Default::default());
    }
    config::interpolate_env(&mut value, env, &mut errors);
    if !errors.is_empty() {
        return Err(errors_of(errors));
    }
    let schema = schema();
    let empty = Map::new();
    let defs = schema
        .get("definitions")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    Shown { defs }.fill(&mut value, &schema);
    Ok(serde_yaml::to_string(&value).expect("a YAML value serializes"))
}

/// Walks a config value along its schema.
struct Shown<'a> {
    defs: &'a Map<String, Value>,
}

impl Shown<'_> {
    /// The schema a `$ref` points at (the schema itself when it is none).
    fn target<'s>(&'s self, schema: &'s Value) -> &'s Value {
        match ref_name(schema).and_then(|r| self.defs.get(r)) {
            Some(t) => self.target(t),
            None => schema,
        }
    }

    /// The alternatives of an `anyOf`/`oneOf`/`allOf` (an `Option`, an enum), resolved.
    fn alternatives<'s>(&'s self, schema: &'s Value) -> Vec<&'s Value> {
        ["anyOf", "oneOf", "allOf"]
            .iter()
            .filter_map(|k| schema.get(*k).and_then(Value::as_array))
            .flatten()
            .map(|s| self.target(s))
            .collect()
    }

    /// The object schema (with `properties`) that describes `map`: the schema itself, or the
    /// alternative whose properties hold every key of `map`.
    fn object_schema<'s>(
        &'s self,
        schema: &'s Value,
        map: &serde_yaml::Mapping,
    ) -> Option<&'s Value> {
        let schema = self.target(schema);
        if schema.get("properties").is_some() {
            return Some(schema);
        }
        self.alternatives(schema).into_iter().find_map(|alt| {
            let obj = self.object_schema(alt, map)?;
            let props = obj.get("properties")?.as_object()?;
            map.keys()
                .all(|k| k.as_str().is_some_and(|k| props.contains_key(k)))
                .then_some(obj)
        })
    }

    fn is_secret(&self, schema: &Value) -> bool {
        schema.get("writeOnly") == Some(&Value::Bool(true))
            || self.target(schema).get("writeOnly") == Some(&Value::Bool(true))
    }

    fn fill(&self, value: &mut serde_yaml::Value, schema: &Value) {
        use serde_yaml::Value as Y;
        if self.is_secret(schema) && !value.is_null() {
            *value = Y::String(config::REDACTED.into());
            return;
        }
        match value {
            Y::String(s) => *s = redact_url(s),
            Y::Sequence(items) => {
                let target = self.target(schema);
                let item_schema = target.get("items").or_else(|| {
                    self.alternatives(target)
                        .into_iter()
                        .find_map(|a| a.get("items"))
                });
                for item in items {
                    match item_schema {
                        Some(s) => self.fill(item, s),
                        None => self.fill(item, &Value::Null),
                    }
                }
            }
            Y::Mapping(map) => {
                let Some(obj) = self.object_schema(schema, map) else {
                    // A free-form map (`options`, `headers`, a `set` value): URLs redacted.
                    for (_, v) in map.iter_mut() {
                        self.fill(v, &Value::Null);
                    }
                    return;
                };
                let Some(props) = obj.get("properties").and_then(Value::as_object) else {
                    return;
                };
                for (key, prop) in props {
                    let k = Y::String(key.clone());
                    if !map.contains_key(&k) {
                        if let Some(default) = prop.get("default") {
                            let v = serde_yaml::to_value(default).expect("a JSON value is YAML");
                            map.insert(k.clone(), v);
                        } else if self.target(prop).get("properties").is_some() {
                            // A section left out reads as its defaults.
                            map.insert(k.clone(), Y::Mapping(Default::default()));
                        } else {
                            continue;
                        }
                    }
                    if let Some(v) = map.get_mut(&k) {
                        self.fill(v, prop);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The JSON Schema (draft 07, which every yaml-language-server reads) of the config file.
pub fn schema() -> Value {
    let mut settings = SchemaSettings::draft07();
    // Draft 07 ignores the siblings of a `$ref`, so schemars moves a field's `$ref` into an
    // `allOf` to keep its description and default; yaml-language-server then shows the
    // referenced type's doc on hover instead of the field's. It reads `$ref` siblings as they
    // are (and they are only annotations), so they stay.
    settings.transforms.retain(|t| !t.is::<RemoveRefSiblings>());
    let settings = settings.with_transform(RecursiveTransform(markdown_docs));
    let mut root = settings.into_generator().into_root_schema_for::<Config>();
    // schemars titles the root after the type; yaml-language-server would head every hover
    // with it.
    root.remove("title");
    root.to_value()
}

/// Editors render `markdownDescription` as Markdown (the docs are full of `code`) and fall back
/// to `description`.
fn markdown_docs(s: &mut Schema) {
    if let Some(d) = s.get("description").cloned() {
        s.insert("markdownDescription".into(), d);
    }
}

/// [`schema`], pretty-printed, with a final newline.
pub fn schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).expect("a JSON value serializes");
    text.push('\n');
    text
}

/// The Markdown configuration reference: one section per config section (`kafka`,
/// `kafka.producer`, `pipelines[]`, each source kind, ...), each a table of its keys with
/// type, default and description.
pub fn reference() -> String {
    let schema = schema();
    let empty = Map::new();
    let defs = schema
        .get("definitions")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut r = Reference {
        defs,
        sections: Vec::new(),
    };
    r.section(String::new(), &schema, "");
    let mut out = String::new();
    for s in &r.sections {
        out.push_str(&s.markdown());
    }
    out
}

/// The order of the top-level sections: the file's usual order rather than the alphabet.
const TOP_LEVEL_ORDER: &[&str] = &[
    "kafka",
    "metrics",
    "dlq",
    "http",
    "schema_registry",
    "shutdown_timeout",
    "pipelines",
];

struct Reference<'a> {
    defs: &'a Map<String, Value>,
    sections: Vec<Section>,
}

struct Section {
    /// `kafka.producer`, `pipelines[].source.mqtt`; empty for the top level.
    path: String,
    description: String,
    rows: Vec<[String; 4]>,
}

/// An object met while describing a section's keys: it gets its own section after this one.
struct Pending<'a> {
    path: String,
    schema: &'a Value,
    description: String,
}

impl<'a> Reference<'a> {
    fn section(&mut self, path: String, schema: &'a Value, description: &str) {
        let (schema, type_doc) = self.resolve(schema);
        let description = if type_doc.is_empty() {
            description.to_string()
        } else {
            type_doc
        };
        let mut props: Vec<(&'a String, &'a Value)> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        props.sort_by_key(|(k, _)| {
            let rank = if path.is_empty() {
                TOP_LEVEL_ORDER
                    .iter()
                    .position(|t| t == k)
                    .unwrap_or(TOP_LEVEL_ORDER.len())
            } else {
                usize::from(!required.contains(&k.as_str()))
            };
            (rank, k.as_str())
        });
        let mut pending = Vec::new();
        let mut rows = Vec::new();
        for (key, prop) in props {
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let ty = self.type_text(prop, &child, &mut pending);
            let default = if required.contains(&key.as_str()) {
                "**required**".to_string()
            } else {
                match prop.get("default") {
                    None | Some(Value::Null) => "—".to_string(),
                    Some(v) => format!("`{}`", inline_json(v)),
                }
            };
            let doc = match doc_of(prop) {
                d if d.is_empty() => self.resolve(prop).1,
                d => d,
            };
            rows.push([format!("`{key}`"), ty, default, doc]);
        }
        self.sections.push(Section {
            path,
            description,
            rows,
        });
        for p in pending {
            self.section(p.path, p.schema, &p.description);
        }
    }

    /// Follows `$ref` and single-`allOf` wrappers to the schema that says what the value is; with
    /// the innermost description found on the way (the type's own doc, else the field's).
    fn resolve(&self, mut schema: &'a Value) -> (&'a Value, String) {
        let mut doc = String::new();
        loop {
            let d = doc_of(schema);
            if !d.is_empty() {
                doc = d;
            }
            if let Some(name) = ref_name(schema) {
                match self.defs.get(name) {
                    Some(def) => schema = def,
                    None => return (schema, doc),
                }
            } else if let Some([one]) = schema
                .get("allOf")
                .and_then(Value::as_array)
                .map(|v| &v[..])
            {
                schema = one;
            } else {
                return (schema, doc);
            }
        }
    }

    /// How a value's type reads in a table; objects with keys of their own are queued as
    /// sections at `path`.
    fn type_text(&self, schema: &'a Value, path: &str, pending: &mut Vec<Pending<'a>>) -> String {
        let mut named = schema;
        while let Some([one]) = named.get("allOf").and_then(Value::as_array).map(|v| &v[..]) {
            named = one;
        }
        match ref_name(named) {
            Some("Duration") => return "duration".into(),
            Some("ByteSize") => return "size".into(),
            _ => {}
        }
        let (schema, doc) = self.resolve(schema);
        if schema.as_bool() == Some(true) || schema.as_object().is_some_and(|o| o.is_empty()) {
            return "any".into();
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return enum_text(values.iter());
        }
        if let Some(v) = schema.get("const") {
            return format!("`{}`", inline_json(v));
        }
        for key in ["oneOf", "anyOf"] {
            let Some(alts) = schema.get(key).and_then(Value::as_array) else {
                continue;
            };
            let alts: Vec<&Value> = alts.iter().filter(|a| !is_null(a)).collect();
            if let [one] = alts[..] {
                return self.type_text(one, path, pending);
            }
            // A unit variant is a `const`, or an `enum` whose first value is its spelling and the
            // rest aliases.
            let spelling = |a: &&'a Value| {
                a.get("const")
                    .or_else(|| a.get("enum").and_then(|e| e.as_array()?.first()))
            };
            if alts.iter().all(|a| spelling(a).is_some()) {
                return enum_text(alts.iter().filter_map(spelling));
            }
            if let Some(tags) = alts.iter().map(|a| tag_of(a)).collect::<Option<Vec<_>>>() {
                let mut names = Vec::new();
                for (tag, inner, variant) in tags {
                    let (resolved, _) = self.resolve(inner);
                    if resolved.get("properties").is_some() {
                        let child = format!("{path}.{tag}");
                        names.push(format!("[`{tag}`](#{})", anchor(&child)));
                        pending.push(Pending {
                            path: child,
                            schema: inner,
                            description: doc_of(variant),
                        });
                    } else {
                        let mut scratch = Vec::new();
                        let ty = self.type_text(inner, path, &mut scratch);
                        names.push(format!("`{{{tag}: {}}}`", ty.replace('`', "")));
                    }
                }
                return format!("one of {}", names.join(", "));
            }
            let texts: Vec<String> = alts
                .iter()
                .map(|a| self.type_text(a, path, pending))
                .collect();
            return texts.join(" or ");
        }
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect(),
            _ => Vec::new(),
        };
        match types[..] {
            ["array"] => {
                let items = schema.get("items").unwrap_or(&Value::Bool(true));
                format!(
                    "list of {}",
                    self.type_text(items, &format!("{path}[]"), pending)
                )
            }
            ["object"] if schema.get("properties").is_some() => {
                pending.push(Pending {
                    path: path.to_string(),
                    schema,
                    description: doc,
                });
                format!("[object](#{})", anchor(path))
            }
            ["object"] => match schema.get("additionalProperties") {
                Some(v) if v.is_object() => {
                    format!("map of string to {}", self.type_text(v, path, pending))
                }
                _ => "object".into(),
            },
            [] => "any".into(),
            _ => types.join(" or "),
        }
    }
}

impl Section {
    fn markdown(&self) -> String {
        let title = if self.path.is_empty() {
            "Top level".to_string()
        } else {
            format!("`{}` section", self.path)
        };
        let mut out = format!("#### {title}\n\n");
        let intro = strip_section_prefix(&self.description);
        let mut chars = intro.chars();
        if let Some(first) = chars.next() {
            out.push_str(&cell(&format!(
                "{}{}",
                first.to_uppercase(),
                chars.as_str()
            )));
            out.push_str("\n\n");
        }
        out.push_str("| key | type | default | description |\n|---|---|---|---|\n");
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        out.push('\n');
        out
    }
}

fn doc_of(schema: &Value) -> String {
    schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn ref_name(schema: &Value) -> Option<&str> {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
}

fn is_null(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

/// An externally tagged enum variant (`{websocket: {...}}`): its key, its value's schema and
/// the variant's own schema (for its doc).
fn tag_of(variant: &Value) -> Option<(&str, &Value, &Value)> {
    let props = variant.get("properties")?.as_object()?;
    let required = variant.get("required")?.as_array()?;
    match (props.iter().next(), props.len(), required.len()) {
        (Some((k, v)), 1, 1) => Some((k.as_str(), v, variant)),
        _ => None,
    }
}

fn enum_text<'v>(values: impl Iterator<Item = &'v Value>) -> String {
    let mut seen = Vec::new();
    for v in values {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    seen.iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A default as it would be written in the YAML: strings bare, the rest as compact JSON.
fn inline_json(v: &Value) -> String {
    match v {
        Value::String(s) if s.is_empty() => "\"\"".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// GitHub's anchor of a heading `` `path` section``.
fn anchor(path: &str) -> String {
    format!("{path} section")
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// A type's doc without its `` `kafka:` — `` lead, which the heading already says.
fn strip_section_prefix(doc: &str) -> &str {
    let doc = doc.trim();
    if let Some(rest) = doc.strip_prefix('`') {
        if let Some((head, tail)) = rest.split_once('`') {
            if head.ends_with(':') {
                if let Some(tail) = tail.trim_start().strip_prefix('—') {
                    return tail.trim_start();
                }
            }
        }
    }
    doc
}

/// Text fit for a table cell: one line, `|` escaped, and `<` outside code spans written as an
/// entity so that `<topic>` is not taken for HTML.
fn cell(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(one_line.len());
    let mut in_code = false;
    for c in one_line.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&schema()).expect("the schema is a valid JSON Schema")
    }

    fn yaml(text: &str) -> Value {
        let v: serde_yaml::Value = serde_yaml::from_str(text).expect("test YAML");
        serde_json::to_value(v).expect("test YAML has string keys")
    }

    /// The schema's errors for `text`, one line each (empty: valid).
    fn schema_errors(v: &jsonschema::Validator, text: &str) -> Vec<String> {
        let doc = yaml(text);
        v.iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    /// The loader's parse errors for `text` (unknown keys, types; not the semantic checks).
    fn loader_errors(text: &str) -> Vec<String> {
        let mut errors = Vec::new();
        crate::config::parse::<Config>(text, &|_| None, &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn readme_reference_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let begin = readme
            .find(&format!("{BEGIN_MARKER}\n"))
            .map(|i| i + BEGIN_MARKER.len() + 1)
            .unwrap_or_else(|| panic!("README.md has no `{BEGIN_MARKER}` line"));
        let end = readme[begin..]
            .find(&format!("\n{END_MARKER}\n"))
            .map(|i| begin + i + 1)
            .unwrap_or_else(|| {
                panic!("README.md has no `{END_MARKER}` line after the begin marker")
            });
        let (written, generated) = (&readme[begin..end], reference());
        if written != generated {
            let first = written
                .lines()
                .zip(generated.lines())
                .find(|(w, g)| w != g)
                .map(|(w, g)| format!("\n  README.md: {w}\n  generated: {g}"))
                .unwrap_or_default();
            panic!(
                "README.md's configuration reference differs from `kgate config reference`; \
                 regenerate it with scripts/config-reference{first}"
            );
        }
    }

    #[test]
    fn show_fills_defaults_and_prints_no_secret() {
        let text = "kafka:\n  security: {protocol: SASL_SSL, sasl: {mechanism: PLAIN, username: u, password: '${PW}'}, tls: {key_password: kp-SECRET-1}}\n\
            schema_registry: {url: 'http://127.0.0.1:8081', username: u, password: reg-SECRET-2}\n\
            http: {listen: '127.0.0.1:1', auth: [{token: tok-SECRET-3-0123456789, topics: ['*']}]}\n\
            pipelines:\n\
            - {name: w, topic: t, source: {websocket: {urls: ['wss://u:ws-SECRET-4@feed.example/ws?apikey=ws-SECRET-5']}}}\n\
            - {name: m, topic: t, source: {mqtt: {url: 'mqtt://h', username: u, password: mq-SECRET-6, subscriptions: [{topic: a}]}}}\n";
        let env = |k: &str| (k == "PW").then(|| "0099-SECRET-0".to_string());
        let shown = show_text(text, "k.yaml", &env).expect("shows");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert_eq!(shown.matches("'***'").count(), 5, "{shown}");
        assert!(
            shown.contains("wss://***@feed.example/ws?apikey=***"),
            "{shown}"
        );
        // Defaults are filled in, sections left out too.
        assert!(shown.contains("client_id: kgate"), "{shown}");
        assert!(shown.contains("shutdown_timeout: 30s"), "{shown}");
        assert!(shown.contains("topic: events.v1.dlq"), "{shown}");
        assert!(shown.contains("qos: 1"), "{shown}");
        // What it prints reads back as the same config.
        let back: Config = crate::config::from_yaml(&shown).expect("reads back");
        assert_eq!(back.pipelines.len(), 2);
    }

    #[test]
    fn examples_fit_the_schema() {
        let v = validator();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("examples/") {
            let path = entry.expect("examples/ entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("example");
            let errors = schema_errors(&v, &text);
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            seen += 1;
        }
        assert!(seen >= 5, "only {seen} examples found in {dir}");
    }

    #[test]
    fn unknown_keys_are_refused_as_the_loader_refuses_them() {
        let v = validator();
        let pipeline = "pipelines: [{name: a, topic: t, source: {websocket: {urls: ['ws://h:1/']}}";
        for text in [
            "kafka: {producr: {}}".to_string(),
            "kafka: {producer: {ack: all}}".to_string(),
            "kafka: {security: {protocol: SSL, tls: {ca_file: x}}}".to_string(),
            "metrics: {listen: '0.0.0.0:9000', port: 1}".to_string(),
            "schema_registry: {url: 'http://r', tls: {ca: x}}".to_string(),
            "http: {listen: '0.0.0.0:8082', auth: [{token: x, topic: ['*']}]}".to_string(),
            "pipeliness: []".to_string(),
            format!("{pipeline}, formatt: json}}]"),
            format!("{pipeline}, avro: {{strategy: x}}}}]"),
            "pipelines: [{name: a, topic: t, source: {websocket: {urls: ['ws://h:1/'], pings: 1s}}}]"
                .to_string(),
            "pipelines: [{name: a, topic: t, source: {websocket: {urls: ['ws://h:1/']}, mqtt: {url: 'mqtt://h', subscriptions: []}}}]"
                .to_string(),
            "pipelines: [{name: a, topic: t, source: {websocket: {urls: ['ws://h:1/']}}, transforms: [{rename: {from: /a, to: /b, if: x}}]}]"
                .to_string(),
            "pipelines: [{name: a, topic: t, source: {mqtt: {url: 'mqtt://h', subscriptions: [{topic: a, qoss: 1}]}}}]"
                .to_string(),
            "pipelines: [{name: a, topic: t, source: {device_websocket: {listen: '0.0.0.0:1', device_id: {header: X}, wrp: {valu: message}}}}]"
                .to_string(),
        ] {
            assert!(
                !schema_errors(&v, &text).is_empty(),
                "the schema takes {text}"
            );
            assert!(
                !loader_errors(&text).is_empty(),
                "the loader takes {text} (so the schema should too)"
            );
        }
    }

    #[test]
    fn schema_and_loader_agree_on_values() {
        let v = validator();
        let source = |s: &str| format!("pipelines: [{{name: a, topic: t, source: {s}}}]");
        let ws = "{websocket: {urls: ['ws://h:1/']}}";
        let device = |wrp: &str| {
            source(&format!(
                "{{device_websocket: {{listen: '0.0.0.0:1', device_id: {{query: id}}, wrp: {wrp}}}}}"
            ))
        };
        let cases = [
            "{}".into(),
            "kafka: {producer: {acks: all}}".into(),
            "kafka: {producer: {acks: -1}}".into(),
            "kafka: {producer: {acks: '1'}}".into(),
            "kafka: {producer: {acks: 0}}".into(),
            "kafka: {producer: {acks: 2}}".into(),
            "kafka: {producer: {acks: ALL}}".into(),
            "kafka: {producer: {acks: [all]}}".into(),
            "kafka: {producer: {compression: brotli}}".into(),
            "kafka: {producer: {on_full: drop_newest}}".into(),
            "kafka: {producer: {linger_ms: -1}}".into(),
            "kafka: {producer: {linger_ms: '10'}}".into(),
            "kafka: {producer: {message_timeout: 0}}".into(),
            "kafka: {producer: {message_timeout: '0'}}".into(),
            "kafka: {producer: {message_timeout: 0s}}".into(),
            "kafka: {producer: {max_buffered_bytes: 64MiB}}".into(),
            "kafka: {producer: {max_buffered_bytes: 1048576}}".into(),
            "kafka: {producer: {max_buffered_bytes: 10TB}}".into(),
            "kafka: {producer: {max_buffered_bytes: -5}}".into(),
            "kafka: {producer: {options: {a.b: x}}}".into(),
            "kafka: {security: {protocol: SASL_SSL}}".into(),
            "kafka: {security: {protocol: sasl_ssl}}".into(),
            "kafka: {security: {protocol: Sasl_Ssl}}".into(),
            "kafka: {security: {sasl: {mechanism: PLAIN, username: u}}}".into(),
            "kafka: {brokers: 'h:9092'}".into(),
            "shutdown_timeout: 1m 30s".into(),
            "shutdown_timeout: 30".into(),
            "shutdown_timeout: 30 parsecs".into(),
            "http: ~".into(),
            "http: {max_body: 1MB}".into(),
            "schema_registry: {url: 'http://r', timeout: 5s}".into(),
            source(ws),
            source("{}"),
            source("{kafka: {}}"),
            source(&format!("{ws}, format: avro, key_format: json")),
            source(&format!("{ws}, format: yaml")),
            source(&format!(
                "{ws}, transforms: [{{set: {{path: /a, value: {{x: [1]}}}}}}]"
            )),
            source(&format!("{ws}, transforms: [{{set: {{path: /a}}}}]")),
            source(&format!(
                "{ws}, transforms: [{{remove: {{path: /a}}, set: {{path: /b, value: 1}}}}]"
            )),
            source(&format!("{ws}, transforms: [drop]")),
            source("{mqtt: {url: 'mqtt://h', subscriptions: [{topic: a, qos: 0}]}}"),
            source("{mqtt: {url: 'mqtt://h', subscriptions: [{topic: a, qos: 300}]}}"),
            source("{mqtt: {url: 'mqtt://h', subscriptions: [{topic: a}], max_inflight: 70000}}"),
            source("{mqtt: {url: 'mqtt://h'}}"),
            source("{http: {}}"),
            source("{http: {max_body: 2KiB}}"),
            device("true"),
            device("false"),
            device("{value: message}"),
            device("{enabled: false}"),
            device("{value: body}"),
            device("yes please"),
            source("{device_websocket: {listen: '0.0.0.0:1', device_id: {cookie: id}}}"),
            source("{device_websocket: {listen: '0.0.0.0:1', device_id: {query: id, header: X}}}"),
            source("{device_websocket: {listen: '0.0.0.0:1'}}"),
        ];
        for text in cases {
            let by_schema = schema_errors(&v, &text);
            let by_loader = loader_errors(&text);
            assert_eq!(
                by_schema.is_empty(),
                by_loader.is_empty(),
                "schema and loader disagree on `{text}`:\n  schema: {by_schema:?}\n  loader: {by_loader:?}"
            );
        }
    }

    #[test]
    fn every_default_is_a_value_the_loader_reads() {
        let schema = schema();
        let defs = schema["definitions"].as_object().expect("definitions");
        // Each default, written back into the file at its key, must load (and fit its schema).
        let mut checked = 0;
        for (name, def) in defs {
            let Some(props) = def.get("properties").and_then(Value::as_object) else {
                continue;
            };
            for (key, prop) in props {
                let Some(default) = prop.get("default") else {
                    continue;
                };
                let mut sub = prop.clone();
                sub.as_object_mut()
                    .expect("a property schema is an object")
                    .insert("definitions".into(), schema["definitions"].clone());
                let v = jsonschema::validator_for(&sub).expect("property schema");
                assert!(
                    v.is_valid(default),
                    "{name}.{key}: default {default} does not fit its own schema"
                );
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} defaults found");

        // An optional key without a default is an Option or a section of its own; any other
        // (a new field whose type is not Serialize) needs `#[schemars(extend("default" = ..))]`.
        let mut objects = vec![("Config".to_string(), &schema)];
        objects.extend(defs.iter().map(|(n, d)| (n.clone(), d)));
        for (name, def) in objects {
            let Some(props) = def.get("properties").and_then(Value::as_object) else {
                continue;
            };
            let required = def["required"].as_array().cloned().unwrap_or_default();
            for (key, prop) in props {
                if prop.get("default").is_some() || required.contains(&Value::from(key.as_str())) {
                    continue;
                }
                let nullable = prop["anyOf"]
                    .as_array()
                    .is_some_and(|alts| alts.iter().any(|a| a["type"] == "null"))
                    || prop["type"]
                        .as_array()
                        .is_some_and(|t| t.contains(&"null".into()));
                let section = ref_name(prop)
                    .and_then(|r| defs.get(r))
                    .is_some_and(|d| d.get("properties").is_some());
                assert!(
                    nullable || section,
                    "{name}.{key} is optional but its default is not in the schema"
                );
            }
        }

        let ws = "source: {websocket: {urls: ['ws://h:1/']}}";
        let text = format!(
            "shutdown_timeout: '30s'\nkafka: {{producer: {{acks: all, max_buffered_bytes: 100MiB, message_timeout: 0s}}}}\n\
             pipelines: [{{name: a, topic: t, {ws}}},\n  {{name: d, topic: t, source: {{device_websocket: {{listen: '0.0.0.0:1', device_id: {{query: id}}, idle_timeout: 1m 30s, wrp: false}}}}}},\n\
               {{name: m, topic: t, source: {{mqtt: {{url: 'mqtt://h', subscriptions: [{{topic: a}}], session_expiry: 7days, max_packet_size: 1MiB}}}}}}]\n"
        );
        let c: Config = crate::config::from_yaml(&text).expect("defaults as written load");
        assert_eq!(
            c.kafka.producer.max_buffered_bytes,
            crate::kafka::KafkaConfig::default()
                .producer
                .max_buffered_bytes
        );
    }

    #[test]
    fn durations_and_sizes_match_their_parsers() {
        let v = validator();
        for text in [
            "30s",
            "500ms",
            "5m",
            "7d",
            "7days",
            "1h 30m",
            "1h30m",
            "1m 30s",
            "0",
            "0s",
            "1.5s",
            " 2s",
            "10 min",
            "2w",
            "1y",
            "30",
            "",
            " ",
            "s",
            "30 parsecs",
            "-1s",
            "1e3s",
            "0 ",
            "1h,",
        ] {
            let doc = json!({ "shutdown_timeout": text });
            assert_eq!(
                v.is_valid(&doc),
                humantime::parse_duration(text).is_ok(),
                "duration `{text}`"
            );
        }
        for text in [
            "100MB", "64KiB", "1GB", "1.5MiB", "10 mb", "100", "1b", "2k", "3 G", " 4KB ", ".5GB",
            "1.", "MB", "1.2.3MB", "10TB", "1e3", "", "5 KiBs", "0x10",
        ] {
            let doc = json!({ "http": { "listen": "x", "max_body": text } });
            assert_eq!(
                v.is_valid(&doc),
                crate::config::ByteSize::parse(text).is_ok(),
                "size `{text}`"
            );
        }
        for n in [
            0,
            1,
            999,
            1000,
            1024,
            10_000_000,
            104_857_600,
            3 << 30,
            5_000_000_000,
        ] {
            let size = crate::config::ByteSize(n);
            let written = serde_json::to_value(size).expect("serializes");
            let read = match &written {
                Value::String(s) => crate::config::ByteSize::parse(s).expect("parses back"),
                other => crate::config::ByteSize(other.as_u64().expect("a number")),
            };
            assert_eq!(read, size, "{written}");
        }
    }

    #[test]
    fn reference_has_a_section_per_config_section() {
        let r = reference();
        for path in [
            "kafka",
            "kafka.producer",
            "kafka.security",
            "kafka.security.sasl",
            "kafka.security.tls",
            "metrics",
            "dlq",
            "http",
            "http.auth[]",
            "http.tls",
            "schema_registry",
            "schema_registry.tls",
            "pipelines[]",
            "pipelines[].avro",
            "pipelines[].source.websocket",
            "pipelines[].source.device_websocket",
            "pipelines[].source.device_websocket.wrp",
            "pipelines[].source.http",
            "pipelines[].source.mqtt",
            "pipelines[].source.mqtt.subscriptions[]",
            "pipelines[].source.mqtt.tls",
            "pipelines[].transforms[].rename",
            "pipelines[].transforms[].set",
            "pipelines[].transforms[].remove",
        ] {
            let heading = format!("\n#### `{path}` section\n");
            assert!(r.contains(&heading), "no section for {path}");
            assert!(
                r.contains(&format!("(#{})", anchor(path))),
                "nothing links to {path}"
            );
        }
        // Every key has a description: the doc comment is what users read.
        for line in r.lines().filter(|l| l.starts_with("| `")) {
            let description = line
                .trim_end_matches(" |")
                .rsplit(" | ")
                .next()
                .unwrap_or("");
            assert!(description.len() > 8, "a key without a doc comment: {line}");
        }
        assert!(
            r.contains("| `shutdown_timeout` | duration | `30s` |"),
            "{r}"
        );
        assert!(
            r.contains("| `max_buffered_bytes` | size | `100MiB` |"),
            "{r}"
        );
    }
}

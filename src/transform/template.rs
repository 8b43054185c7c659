//! Templates over an event for topics, keys and headers: `${exchange}|${symbol}`.
//!
//! A field is a top-level name (`${symbol}`), a dotted path (`${credentialSubject.id}`) or a JSON
//! pointer (`${/tradeCredential/issuer}`). `${@name}` is a value the source attached to the event
//! (the MQTT topic and its segments, a device id: see [`Meta`]); a field that starts with `@`
//! is read with a pointer (`${/@context}`). `${field:-text}` uses `text` when the field is
//! missing or null. `$${` writes a literal `${`.

use super::{Doc, Pointer};
use crate::config::{split_refs, Piece};
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Field {
        name: String,
        ptr: Pointer,
        default: Option<String>,
    },
    Meta {
        name: String,
        default: Option<String>,
    },
}

/// Values a source attaches to an event for templates (`${@name}`), e.g. `topic` and
/// `topic.1` for MQTT or `device_id` for a device connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta(Vec<(Cow<'static, str>, String)>);

impl Meta {
    /// No values.
    pub const fn empty() -> Meta {
        Meta(Vec::new())
    }

    /// Adds a value (a later value of the same name wins).
    /// Names are mostly fixed (`kafka.topic`): a `&'static str` costs no allocation.
    pub fn insert(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Builder form of [`Meta::insert`].
    pub fn with(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Meta {
        self.insert(name, value);
        self
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_str()))
    }
}

/// An empty [`Meta`] for sources that attach nothing.
pub static NO_META: Meta = Meta::empty();

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template could not be rendered: the field that is missing (or not a scalar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingField {
    /// The field as written in the template.
    pub field: String,
    /// What was found instead (`missing`, `null`, `an object`, ...).
    pub found: &'static str,
}

impl Template {
    /// Parses a template; a string without `${` is a fixed value.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        for piece in split_refs(s)? {
            match piece {
                Piece::Lit(l) => parts.push(Part::Lit(l)),
                Piece::Ref(r) => {
                    let (name, default) = match r.split_once(":-") {
                        Some((n, d)) => (n.trim(), Some(d.to_string())),
                        None => (r.trim(), None),
                    };
                    if let Some(meta) = name.strip_prefix('@') {
                        if meta.is_empty() {
                            return Err(format!(
                                "empty `${{@}}` in `{s}`; name a source value, e.g. `${{@topic.1}}`"
                            ));
                        }
                        parts.push(Part::Meta {
                            name: meta.to_string(),
                            default,
                        });
                        continue;
                    }
                    if name.is_empty() {
                        return Err(format!(
                            "empty `${{}}` in `{s}`; name a field, e.g. `${{symbol}}`"
                        ));
                    }
                    let ptr = if name.starts_with('/') {
                        Pointer::parse(name)?
                    } else {
                        Pointer::from_segments(name.split('.'))
                    };
                    parts.push(Part::Field {
                        name: name.to_string(),
                        ptr,
                        default,
                    });
                }
            }
        }
        if parts.is_empty() {
            parts.push(Part::Lit(String::new()));
        }
        Ok(Template { parts })
    }

    /// The template of one source value, `${@name}`.
    pub fn meta(name: &str) -> Template {
        Template {
            parts: vec![Part::Meta {
                name: name.to_string(),
                default: None,
            }],
        }
    }

    /// The value when the template has no fields.
    pub fn fixed(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Whether the template reads event fields (not only source values).
    pub fn reads_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field { .. }))
    }

    /// Renders the template over an event and its source values into `out` (cleared first).
    pub fn render_into(
        &self,
        doc: Doc<'_>,
        meta: &Meta,
        out: &mut String,
    ) -> Result<(), MissingField> {
        out.clear();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Field { name, ptr, default } => {
                    let len = out.len();
                    if let Err(found) = doc.write_scalar(ptr, out) {
                        out.truncate(len);
                        match default {
                            Some(d) if found == "missing" || found == "null" => out.push_str(d),
                            _ => {
                                return Err(MissingField {
                                    field: name.clone(),
                                    found,
                                })
                            }
                        }
                    }
                }
                Part::Meta { name, default } => match (meta.get(name), default) {
                    (Some(v), _) => out.push_str(v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {
                        return Err(MissingField {
                            field: format!("@{name}"),
                            found: "not set by this source",
                        })
                    }
                },
            }
        }
        Ok(())
    }

    /// Renders the template into a new string.
    pub fn render(&self, doc: Doc<'_>, meta: &Meta) -> Result<String, MissingField> {
        let mut s = String::new();
        self.render_into(doc, meta, &mut s)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::Doc;
    use serde_json::json;

    #[test]
    fn renders_fields_paths_and_pointers() {
        let v = json!({"exchange": "kraken", "symbol": "BTC-USD", "n": 7, "a": {"b": true}, "vc": {"@id": "x"}});
        let t = Template::parse("${exchange}|${symbol}").unwrap();
        assert_eq!(
            t.render(Doc::Value(&v), &NO_META).unwrap(),
            "kraken|BTC-USD"
        );
        assert_eq!(t.fixed(), None);
        let t = Template::parse("n=${n} b=${a.b} id=${/vc/@id} $${lit}").unwrap();
        assert_eq!(
            t.render(Doc::Value(&v), &NO_META).unwrap(),
            "n=7 b=true id=x ${lit}"
        );
        let t = Template::parse("ticks.v1.raw").unwrap();
        assert_eq!(t.fixed(), Some("ticks.v1.raw"));
        assert_eq!(Template::parse("").unwrap().fixed(), Some(""));
    }

    #[test]
    fn missing_null_or_object_fields_are_errors() {
        let v = json!({"exchange": null, "obj": {}});
        let t = Template::parse("${exchange}").unwrap();
        assert_eq!(
            t.render(Doc::Value(&v), &NO_META).unwrap_err().found,
            "null"
        );
        let t = Template::parse("${symbol}").unwrap();
        assert_eq!(
            t.render(Doc::Value(&v), &NO_META).unwrap_err(),
            MissingField {
                field: "symbol".into(),
                found: "missing"
            }
        );
        assert_eq!(
            Template::parse("${obj}")
                .unwrap()
                .render(Doc::Value(&v), &NO_META)
                .unwrap_err()
                .found,
            "an object"
        );
        assert!(Template::parse("${x").is_err());
        assert!(Template::parse("${}").is_err());
        assert!(Template::parse("${@}").is_err());
    }

    #[test]
    fn source_values_and_defaults() {
        let v = json!({"id": "d1", "nul": null, "o": {}});
        let meta = Meta::empty()
            .with("topic", "devices/d7/telemetry")
            .with("topic.1", "d7");
        let t = Template::parse("${@topic.1}:${id}").unwrap();
        assert!(t.reads_fields());
        assert_eq!(t.render(Doc::Value(&v), &meta).unwrap(), "d7:d1");
        let e = Template::parse("${@device_id}")
            .unwrap()
            .render(Doc::Value(&v), &meta)
            .unwrap_err();
        assert_eq!(e.field, "@device_id");
        let t = Template::parse("a.${@event_type:-other}.${x:-none}.${nul:-n}").unwrap();
        assert!(t.reads_fields());
        assert_eq!(t.render(Doc::Value(&v), &meta).unwrap(), "a.other.none.n");
        // a default does not hide a field of the wrong kind
        assert_eq!(
            Template::parse("${o:-x}")
                .unwrap()
                .render(Doc::Value(&v), &meta)
                .unwrap_err()
                .found,
            "an object"
        );
        assert!(!Template::parse("k-${@topic}").unwrap().reads_fields());
    }
}

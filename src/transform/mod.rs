//! Transforms: small pure functions over an event's JSON value.

mod config;
mod doc;
mod pointer;
mod template;

pub use doc::{Doc, TopLevel};
pub use pointer::{kind, Pointer};
pub use template::{Meta, MissingField, Template, NO_META};

use serde_json::Value;

pub use config::TransformConfig;

/// A compiled transform.
#[derive(Debug, Clone)]
pub enum Transform {
    /// Move a value.
    Rename {
        /// From here.
        from: Pointer,
        /// To here.
        to: Pointer,
        /// Missing `from` is an error rather than a no-op.
        required: bool,
    },
    /// Set a value.
    Set {
        /// Where.
        path: Pointer,
        /// What.
        value: SetValue,
    },
    /// Remove a value.
    Remove {
        /// Where.
        path: Pointer,
    },
}

/// What a `set` writes: a fixed JSON value, or a string rendered from a template
/// (`${field}`, `${@source_value}`).
#[derive(Debug, Clone)]
pub enum SetValue {
    /// Any JSON value.
    Fixed(Value),
    /// A string template.
    Template(Template),
}

impl Transform {
    /// Compiles a configured transform (pointers were checked by config validation).
    pub fn from_config(c: &TransformConfig) -> Result<Transform, String> {
        Ok(match c {
            TransformConfig::Rename { from, to, required } => Transform::Rename {
                from: Pointer::parse(from)?,
                to: Pointer::parse(to)?,
                required: *required,
            },
            TransformConfig::Set { path, value } => Transform::Set {
                path: Pointer::parse(path)?,
                value: match value {
                    Value::String(s) if s.contains('$') => match Template::parse(s)? {
                        t if t.fixed().is_some() => {
                            SetValue::Fixed(Value::String(t.fixed().unwrap_or_default().into()))
                        }
                        t => SetValue::Template(t),
                    },
                    v => SetValue::Fixed(v.clone()),
                },
            },
            TransformConfig::Remove { path } => Transform::Remove {
                path: Pointer::parse(path)?,
            },
        })
    }

    /// Applies the transform (`meta`: the source's values for `set` templates); an error
    /// message says what did not fit.
    pub fn apply(&self, v: &mut Value, meta: &Meta) -> Result<(), String> {
        match self {
            Transform::Rename { from, to, required } => match from.take(v) {
                Some(x) => to
                    .insert(v, x)
                    .map_err(|e| format!("rename {from} -> {to}: {e}")),
                None if *required => Err(format!("rename {from} -> {to}: {from} is missing")),
                None => Ok(()),
            },
            Transform::Set { path, value } => {
                let x = match value {
                    SetValue::Fixed(x) => x.clone(),
                    SetValue::Template(t) => {
                        Value::String(t.render(Doc::Value(v), meta).map_err(|m| {
                            format!("set {path}: field `{}` is {}", m.field, m.found)
                        })?)
                    }
                };
                path.insert(v, x).map_err(|e| format!("set {path}: {e}"))
            }
            Transform::Remove { path } => {
                path.take(v);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(yaml: &str) -> Transform {
        let c: TransformConfig = crate::config::from_yaml(yaml).unwrap();
        Transform::from_config(&c).unwrap()
    }

    #[test]
    fn rename_set_remove() {
        let mut v = json!({"tradeCredential": {"@context": ["a"], "id": 1}, "drop": 1});
        t("rename: {from: /tradeCredential/@context, to: /tradeCredential/context}")
            .apply(&mut v, &NO_META)
            .unwrap();
        t("set: {path: /meta/origin, value: {a: 1}}")
            .apply(&mut v, &NO_META)
            .unwrap();
        t("remove: {path: /drop}").apply(&mut v, &NO_META).unwrap();
        assert_eq!(
            v,
            json!({"tradeCredential": {"context": ["a"], "id": 1}, "meta": {"origin": {"a": 1}}})
        );
        // a missing source is skipped unless required
        t("rename: {from: /nope, to: /x}")
            .apply(&mut v, &NO_META)
            .unwrap();
        assert!(t("rename: {from: /nope, to: /x, required: true}")
            .apply(&mut v, &NO_META)
            .unwrap_err()
            .contains("/nope is missing"));
        let mut s = json!("scalar");
        assert!(t("set: {path: /a, value: 1}")
            .apply(&mut s, &NO_META)
            .is_err());
    }

    #[test]
    fn set_renders_templates() {
        let meta = Meta::empty().with("topic.1", "d7");
        let mut v = json!({"id": 3});
        t("set: {path: /device, value: '${@topic.1}'}")
            .apply(&mut v, &meta)
            .unwrap();
        t("set: {path: /label, value: 'n${id}-$${x}'}")
            .apply(&mut v, &meta)
            .unwrap();
        assert_eq!(v, json!({"id": 3, "device": "d7", "label": "n3-${x}"}));
        assert!(t("set: {path: /x, value: '${@nope}'}")
            .apply(&mut v, &meta)
            .unwrap_err()
            .contains("@nope"));
    }
}

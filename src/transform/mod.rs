//! Transforms: small pure functions over an event's JSON value.

mod doc;
mod pointer;
mod template;

pub use doc::{Doc, TopLevel};
pub use pointer::{kind, Pointer};
pub use template::{split_refs, MissingField, Piece, Template};

use serde_json::Value;

use crate::config::TransformConfig;

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
        value: Value,
    },
    /// Remove a value.
    Remove {
        /// Where.
        path: Pointer,
    },
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
                value: value.clone(),
            },
            TransformConfig::Remove { path } => Transform::Remove {
                path: Pointer::parse(path)?,
            },
        })
    }

    /// Applies the transform; an error message says what did not fit.
    pub fn apply(&self, v: &mut Value) -> Result<(), String> {
        match self {
            Transform::Rename { from, to, required } => match from.take(v) {
                Some(x) => to
                    .insert(v, x)
                    .map_err(|e| format!("rename {from} -> {to}: {e}")),
                None if *required => Err(format!("rename {from} -> {to}: {from} is missing")),
                None => Ok(()),
            },
            Transform::Set { path, value } => path
                .insert(v, value.clone())
                .map_err(|e| format!("set {path}: {e}")),
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
            .apply(&mut v)
            .unwrap();
        t("set: {path: /meta/origin, value: {a: 1}}")
            .apply(&mut v)
            .unwrap();
        t("remove: {path: /drop}").apply(&mut v).unwrap();
        assert_eq!(
            v,
            json!({"tradeCredential": {"context": ["a"], "id": 1}, "meta": {"origin": {"a": 1}}})
        );
        // a missing source is skipped unless required
        t("rename: {from: /nope, to: /x}").apply(&mut v).unwrap();
        assert!(t("rename: {from: /nope, to: /x, required: true}")
            .apply(&mut v)
            .unwrap_err()
            .contains("/nope is missing"));
        let mut s = json!("scalar");
        assert!(t("set: {path: /a, value: 1}").apply(&mut s).is_err());
    }
}

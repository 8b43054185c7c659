//! Templates over an event for topics, keys and headers: `${exchange}|${symbol}`.
//!
//! A field is a top-level name (`${symbol}`), a dotted path (`${credentialSubject.id}`) or a JSON
//! pointer (`${/tradeCredential/issuer}`). `$${` writes a literal `${`.

use super::{Doc, Pointer};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Field { name: String, ptr: Pointer },
}

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

/// A piece of a string with `${...}` references: literal text or the text inside a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text as is (`$${` already turned into `${`).
    Lit(String),
    /// What stands between `${` and `}`.
    Ref(&'a str),
}

/// Splits `s` at `${...}` references; `$${` is a literal `${`. Shared by templates and the
/// config's environment interpolation, so that both read `${` the same way.
pub fn split_refs(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        lit.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix("${") {
            lit.push_str("${");
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').ok_or_else(|| {
                format!("unclosed `${{` in `{s}`; close it with `}}` or write `$${{` for a literal")
            })?;
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Ref(&inner[..end]));
            rest = &inner[end + 1..];
        } else {
            lit.push('$');
            rest = after;
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

impl Template {
    /// Parses a template; a string without `${` is a fixed value.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        for piece in split_refs(s)? {
            match piece {
                Piece::Lit(l) => parts.push(Part::Lit(l)),
                Piece::Ref(r) => {
                    let name = r.trim();
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
                    });
                }
            }
        }
        if parts.is_empty() {
            parts.push(Part::Lit(String::new()));
        }
        Ok(Template { parts })
    }

    /// The value when the template has no fields.
    pub fn fixed(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Renders the template over an event into `out` (cleared first).
    pub fn render_into(&self, doc: Doc<'_>, out: &mut String) -> Result<(), MissingField> {
        out.clear();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Field { name, ptr } => {
                    doc.write_scalar(ptr, out).map_err(|found| MissingField {
                        field: name.clone(),
                        found,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Renders the template into a new string.
    pub fn render(&self, doc: Doc<'_>) -> Result<String, MissingField> {
        let mut s = String::new();
        self.render_into(doc, &mut s)?;
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
        assert_eq!(t.render(Doc::Value(&v)).unwrap(), "kraken|BTC-USD");
        assert_eq!(t.fixed(), None);
        let t = Template::parse("n=${n} b=${a.b} id=${/vc/@id} $${lit}").unwrap();
        assert_eq!(t.render(Doc::Value(&v)).unwrap(), "n=7 b=true id=x ${lit}");
        let t = Template::parse("ticks.v1.raw").unwrap();
        assert_eq!(t.fixed(), Some("ticks.v1.raw"));
        assert_eq!(Template::parse("").unwrap().fixed(), Some(""));
    }

    #[test]
    fn missing_null_or_object_fields_are_errors() {
        let v = json!({"exchange": null, "obj": {}});
        let t = Template::parse("${exchange}").unwrap();
        assert_eq!(t.render(Doc::Value(&v)).unwrap_err().found, "null");
        let t = Template::parse("${symbol}").unwrap();
        assert_eq!(
            t.render(Doc::Value(&v)).unwrap_err(),
            MissingField {
                field: "symbol".into(),
                found: "missing"
            }
        );
        assert_eq!(
            Template::parse("${obj}")
                .unwrap()
                .render(Doc::Value(&v))
                .unwrap_err()
                .found,
            "an object"
        );
        assert!(Template::parse("${x").is_err());
        assert!(Template::parse("${}").is_err());
    }
}

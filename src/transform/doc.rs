//! The parsed view of an event that templates read. A pipeline that does not change the event
//! only needs its top-level fields: [`TopLevel`] validates the whole document but keeps every
//! value as borrowed raw JSON, so no tree is built (the cost that dominated the JSON path).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::Pointer;

/// A JSON object's top-level fields, values left as raw JSON text (syntax-checked).
#[derive(Debug)]
pub struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(k) = map.next_key::<Key<'de>>()? {
                    fields.push((k.0, map.next_value::<&'de RawValue>()?));
                }
                Ok(TopLevel(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// A key borrowed from the input unless it has escapes (serde's own `Cow<str>` always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'a> TopLevel<'a> {
    /// Parses and validates `bytes` when they hold a JSON object.
    pub fn parse(bytes: &'a [u8]) -> Option<TopLevel<'a>> {
        serde_json::from_slice(bytes).ok()
    }

    fn get(&self, name: &str) -> Option<&'a RawValue> {
        // Like serde_json's maps, the last of duplicate keys wins.
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }
}

/// What a template reads fields from.
#[derive(Debug, Clone, Copy)]
pub enum Doc<'a> {
    /// Nothing parsed (raw format).
    None,
    /// A full JSON tree.
    Value(&'a Value),
    /// Top-level fields only.
    Top(&'a TopLevel<'a>),
}

impl Doc<'_> {
    /// Appends the scalar at `ptr` to `out`, or says what was found instead.
    pub fn write_scalar(&self, ptr: &Pointer, out: &mut String) -> Result<(), &'static str> {
        match self {
            Doc::None => Err("missing"),
            Doc::Value(v) => write_value(ptr.get(v), out),
            Doc::Top(top) => {
                let tokens = ptr.tokens();
                let Some(raw) = tokens.first().and_then(|t| top.get(t)) else {
                    return Err("missing");
                };
                if tokens.len() > 1 {
                    let v: Value = serde_json::from_str(raw.get()).map_err(|_| "missing")?;
                    return write_value(
                        Pointer::from_segments(tokens[1..].iter().cloned()).get(&v),
                        out,
                    );
                }
                let text = raw.get();
                match text.as_bytes().first() {
                    Some(b'"') if !text.contains('\\') => {
                        // Already validated: the text between the quotes is the string.
                        out.push_str(&text[1..text.len() - 1]);
                        Ok(())
                    }
                    Some(b'"') => {
                        let s: String = serde_json::from_str(text).map_err(|_| "missing")?;
                        out.push_str(&s);
                        Ok(())
                    }
                    Some(b'-' | b'0'..=b'9' | b't' | b'f') => {
                        out.push_str(text);
                        Ok(())
                    }
                    Some(b'n') => Err("null"),
                    Some(b'{') => Err("an object"),
                    Some(b'[') => Err("an array"),
                    _ => Err("missing"),
                }
            }
        }
    }
}

fn write_value(v: Option<&Value>, out: &mut String) -> Result<(), &'static str> {
    match v {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Number(n)) => {
            use std::fmt::Write;
            let _ = write!(out, "{n}");
        }
        Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        None => return Err("missing"),
        Some(other) => return Err(super::pointer::kind(other)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_reads_like_the_full_tree() {
        let raw = br#"{"exchange":"kra\u006ben","n":12.5,"b":true,"nul":null,"o":{"x":"y"},"a":[1],"dup":1,"dup":2,"k\u0065y":"v"}"#;
        let top = TopLevel::parse(raw).unwrap();
        let full: Value = serde_json::from_slice(raw).unwrap();
        for f in [
            "/exchange",
            "/n",
            "/b",
            "/nul",
            "/o",
            "/a",
            "/o/x",
            "/missing",
            "/dup",
        ] {
            let p = Pointer::parse(f).unwrap();
            let (mut a, mut b) = (String::new(), String::new());
            let ra = Doc::Top(&top).write_scalar(&p, &mut a);
            let rb = Doc::Value(&full).write_scalar(&p, &mut b);
            assert_eq!((ra, a), (rb, b), "field {f}");
        }
    }

    #[test]
    fn top_level_refuses_what_is_not_a_valid_object() {
        assert!(TopLevel::parse(b"[1,2]").is_none());
        assert!(TopLevel::parse(br#"{"a": [1, }"#).is_none());
        assert!(TopLevel::parse(br#"{"a": 1} trailing"#).is_none());
        // RFC 8259's grammar allows a lone surrogate escape; nested values are checked for
        // syntax, and such an escape passes (serde_json's tree parser alone would refuse it).
        assert!(TopLevel::parse(br#"{"a": {"b": "\ud800"}}"#).is_some());
    }
}

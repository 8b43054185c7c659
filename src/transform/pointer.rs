//! JSON pointers (RFC 6901) that can take, insert and remove values.

use serde_json::{Map, Value};

/// A parsed JSON pointer such as `/tradeCredential/@context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses `/a/b~1c` (RFC 6901); the empty pointer (the whole document) is refused.
    pub fn parse(s: &str) -> Result<Pointer, String> {
        if !s.starts_with('/') {
            return Err(format!(
                "`{s}` is not a JSON pointer; it starts with `/`, e.g. `/tradeCredential/@context`"
            ));
        }
        let mut tokens = Vec::new();
        for raw in s[1..].split('/') {
            if raw.contains('~') {
                let mut out = String::with_capacity(raw.len());
                let mut chars = raw.chars();
                while let Some(c) = chars.next() {
                    if c == '~' {
                        match chars.next() {
                            Some('0') => out.push('~'),
                            Some('1') => out.push('/'),
                            _ => {
                                return Err(format!(
                                    "`{s}`: `~` must be followed by 0 (for `~`) or 1 (for `/`)"
                                ))
                            }
                        }
                    } else {
                        out.push(c);
                    }
                }
                tokens.push(out);
            } else {
                tokens.push(raw.to_string());
            }
        }
        Ok(Pointer { tokens })
    }

    /// A pointer from plain path segments (no escaping).
    pub fn from_segments<I: IntoIterator<Item = S>, S: Into<String>>(segs: I) -> Pointer {
        Pointer {
            tokens: segs.into_iter().map(Into::into).collect(),
        }
    }

    /// The unescaped reference tokens.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The value at the pointer, if any.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        let mut cur = root;
        for t in &self.tokens {
            cur = match cur {
                Value::Object(m) => m.get(t)?,
                Value::Array(a) => a.get(index(t)?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// Removes and returns the value at the pointer.
    pub fn take(&self, root: &mut Value) -> Option<Value> {
        let (last, parents) = self.tokens.split_last()?;
        let mut cur = root;
        for t in parents {
            cur = match cur {
                Value::Object(m) => m.get_mut(t)?,
                Value::Array(a) => a.get_mut(index(t)?)?,
                _ => return None,
            };
        }
        match cur {
            Value::Object(m) => m.remove(last),
            Value::Array(a) => {
                let i = index(last)?;
                (i < a.len()).then(|| a.remove(i))
            }
            _ => None,
        }
    }

    /// Puts `v` at the pointer, creating missing objects on the way.
    pub fn insert(&self, root: &mut Value, v: Value) -> Result<(), String> {
        let Some((last, parents)) = self.tokens.split_last() else {
            *root = v;
            return Ok(());
        };
        let mut cur = root;
        for t in parents {
            if cur.is_null() {
                *cur = Value::Object(Map::new());
            }
            cur = match cur {
                Value::Object(m) => m.entry(t.clone()).or_insert(Value::Null),
                Value::Array(a) => {
                    let i = index(t).ok_or_else(|| format!("`{t}` is not an array index"))?;
                    a.get_mut(i)
                        .ok_or_else(|| format!("array index {i} is out of range"))?
                }
                other => return Err(format!("cannot descend into {} at `{t}`", kind(other))),
            };
        }
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
        match cur {
            Value::Object(m) => {
                m.insert(last.clone(), v);
                Ok(())
            }
            Value::Array(a) if last == "-" => {
                a.push(v);
                Ok(())
            }
            Value::Array(a) => {
                let i = index(last).ok_or_else(|| format!("`{last}` is not an array index"))?;
                if i < a.len() {
                    a[i] = v;
                    Ok(())
                } else {
                    Err(format!("array index {i} is out of range"))
                }
            }
            other => Err(format!("cannot set a field inside {}", kind(other))),
        }
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for t in &self.tokens {
            write!(f, "/{}", t.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

fn index(t: &str) -> Option<usize> {
    if t.len() > 1 && t.starts_with('0') {
        return None;
    }
    t.parse().ok()
}

/// A short name of a JSON value's type, for messages.
pub fn kind(v: &Value) -> &'static str {
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

    #[test]
    fn parse_unescapes_and_refuses_bad_pointers() {
        let p = Pointer::parse("/a~1b/c~0d/@context").unwrap();
        assert_eq!(p.tokens, vec!["a/b", "c~d", "@context"]);
        assert_eq!(p.to_string(), "/a~1b/c~0d/@context");
        assert!(Pointer::parse("a/b").is_err());
        assert!(Pointer::parse("/a~2").is_err());
    }

    #[test]
    fn take_insert_get() {
        let mut v = json!({"vc": {"@context": [1, 2]}, "arr": [10, 20]});
        let from = Pointer::parse("/vc/@context").unwrap();
        let moved = from.take(&mut v).unwrap();
        Pointer::parse("/vc/context")
            .unwrap()
            .insert(&mut v, moved)
            .unwrap();
        assert_eq!(v, json!({"vc": {"context": [1, 2]}, "arr": [10, 20]}));
        assert_eq!(Pointer::parse("/arr/1").unwrap().get(&v), Some(&json!(20)));
        assert_eq!(Pointer::parse("/arr/01").unwrap().get(&v), None);
        Pointer::parse("/new/deep/x")
            .unwrap()
            .insert(&mut v, json!(1))
            .unwrap();
        assert_eq!(v["new"]["deep"]["x"], json!(1));
        assert!(Pointer::parse("/arr/0/x")
            .unwrap()
            .insert(&mut v, json!(1))
            .is_err());
        assert_eq!(Pointer::parse("/missing/x").unwrap().take(&mut v), None);
    }
}

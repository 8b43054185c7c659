//! `${VAR}` and `${VAR:-default}` from the environment, applied to YAML string values.
//!
//! In a pipeline's `topic`, `key`, `headers` and `set` values, `${field}` names a field of the event instead
//! (templates, see `transform::template`), so those values are left alone. `$${` writes a literal `${`.

use super::refs::{split_refs, Piece};
use super::ConfigError;
use serde_yaml::Value;

/// Replaces environment references in every string of `value`, except in template fields.
pub fn interpolate_env(
    value: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    walk(value, &mut Vec::new(), env, errors);
}

#[derive(Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn is_template_field(path: &[Seg]) -> bool {
    match path {
        [Seg::Key(p), Seg::Index(_), Seg::Key(f)] if p == "pipelines" => {
            matches!(f.as_str(), "topic" | "key" | "qos" | "topics_match")
        }
        [Seg::Key(p), Seg::Index(_), Seg::Key(f), Seg::Key(_)] if p == "pipelines" => {
            f == "headers"
        }
        [Seg::Key(p), Seg::Index(_), Seg::Key(t), Seg::Index(_), Seg::Key(s), Seg::Key(v)]
            if p == "pipelines" =>
        {
            t == "transforms" && s == "set" && v == "value"
        }
        // `http_poll`'s dedupe key is a template over the response.
        [Seg::Key(p), Seg::Index(_), Seg::Key(s), Seg::Key(k), Seg::Key(d), Seg::Key(f)]
            if p == "pipelines" =>
        {
            s == "source" && k == "http_poll" && d == "dedupe" && f == "key"
        }
        _ => false,
    }
}

/// `http_poll`'s request URLs keep `${item}` (one request per `for_each` item); their other
/// references are the environment's.
fn keeps_item(path: &[Seg]) -> bool {
    matches!(path, [Seg::Key(p), Seg::Index(_), Seg::Key(s), Seg::Key(k), Seg::Key(r), Seg::Index(_), Seg::Key(u)]
        if p == "pipelines" && s == "source" && k == "http_poll" && r == "requests" && u == "url")
}

/// Keys whose values stay strings after `${VAR}` expansion, whatever they look like: an
/// all-digit password or token from the environment is a secret, not a number (and a number
/// would be refused as a `Secret`).
fn is_secret_field(path: &[Seg]) -> bool {
    matches!(path.last(), Some(Seg::Key(k)) if k == "password" || k == "key_password" || k == "token" || k == "reload_token" || k == "hs256_secret")
}

fn walk(
    value: &mut Value,
    path: &mut Vec<Seg>,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        Value::String(s) => {
            if is_template_field(path) || !s.contains('$') {
                return;
            }
            let keep_item = keeps_item(path);
            let env_or_item = |name: &str| match name {
                "item" if keep_item => Some("${item}".to_string()),
                _ => env(name),
            };
            match expand(s, &env_or_item) {
                Ok((out, whole)) => {
                    // A value that is one reference alone (`${PORT}`) takes the type the
                    // expansion has in YAML, so numbers and booleans work from the environment.
                    *value = if whole && !is_secret_field(path) {
                        match serde_yaml::from_str::<Value>(&out) {
                            Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
                            _ => Value::String(out),
                        }
                    } else {
                        Value::String(out)
                    };
                }
                Err(msg) => errors.push(ConfigError {
                    path: path_string(path),
                    message: msg,
                }),
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                walk(item, path, env, errors);
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                path.push(Seg::Key(key));
                walk(v, path, env, errors);
                path.pop();
            }
        }
        Value::Tagged(t) => walk(&mut t.value, path, env, errors),
        _ => {}
    }
}

/// Expands references in `s`; returns the text and whether `s` was a single reference alone.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(String, bool), String> {
    let pieces = split_refs(s)?;
    let whole = matches!(pieces.as_slice(), [Piece::Ref(_)]);
    let mut out = String::with_capacity(s.len());
    for piece in pieces {
        let inner = match piece {
            Piece::Lit(l) => {
                out.push_str(&l);
                continue;
            }
            Piece::Ref(r) => r,
        };
        let (name, default) = match inner.find(":-") {
            Some(i) => (&inner[..i], Some(&inner[i + 2..])),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{inner}}}` is not a valid environment reference; use `${{NAME}}` or `${{NAME:-default}}`"
            ));
        }
        match (env(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                "environment variable {name} is not set; export it or write `${{{name}:-default}}`"
            ))
            }
        }
    }
    Ok((out, whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "HOST" => Some("kafka.example".into()),
            "PORT" => Some("9093".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_plain_default_and_escape() {
        assert_eq!(
            expand("${HOST}:${PORT}", &env).unwrap().0,
            "kafka.example:9093"
        );
        assert_eq!(expand("${NOPE:-x}", &env).unwrap().0, "x");
        assert_eq!(expand("${EMPTY:-y}", &env).unwrap().0, "y");
        assert_eq!(expand("$${HOST}", &env).unwrap().0, "${HOST}");
        assert_eq!(expand("cost $5", &env).unwrap().0, "cost $5");
        assert!(expand("${NOPE}", &env)
            .unwrap_err()
            .contains("NOPE is not set"));
        assert!(expand("${HOST", &env).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn whole_reference_takes_yaml_type_and_templates_are_left_alone() {
        let mut v: Value = serde_yaml::from_str(
            "a: ${PORT}\nb: 'p${PORT}'\npipelines:\n  - topic: '${exchange}'\n    key: '${exchange}|${symbol}'\n    headers: {h: '${x}'}\n    other: '${HOST}'\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        interpolate_env(&mut v, &env, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(v["a"], Value::Number(9093.into()));
        assert_eq!(v["b"], Value::String("p9093".into()));
        assert_eq!(
            v["pipelines"][0]["topic"],
            Value::String("${exchange}".into())
        );
        assert_eq!(
            v["pipelines"][0]["key"],
            Value::String("${exchange}|${symbol}".into())
        );
        assert_eq!(
            v["pipelines"][0]["headers"]["h"],
            Value::String("${x}".into())
        );
        assert_eq!(
            v["pipelines"][0]["other"],
            Value::String("kafka.example".into())
        );
    }

    #[test]
    fn missing_variable_names_its_path() {
        let mut v: Value = serde_yaml::from_str("kafka:\n  brokers: ['${BROKER}']\n").unwrap();
        let mut errors = Vec::new();
        interpolate_env(&mut v, &env, &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "kafka.brokers[0]");
    }
}

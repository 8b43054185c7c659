//! Secrets in a config (passwords, tokens) and URLs that may carry one: neither is ever printed
//! as written. A [`Secret`] shows as `***` in `Debug` and `Display` (a log line, an error, a test
//! failure, `kgate config show`); [`redact_url`] is the form of a URL that logs, metric labels
//! and DLQ headers show.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret or a redacted part of a URL shows as.
pub const REDACTED: &str = "***";

/// A password, token or key password. `Debug`, `Display` and `Serialize` show `***`;
/// [`Secret::expose`] gives the value to the one place that sends it.
///
/// Read from a YAML string. A value written as a number or a boolean is refused, with an error
/// that names its type and never the value (a YAML number would have lost its leading zeros or
/// its spelling): quote it. A `${VAR}` under a `password`, `key_password` or `token` key stays a
/// string whatever it looks like, so an all-digit secret from the environment works.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it (a client's credentials). Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty (an unset environment variable).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The value, for code that takes a `&str` (as [`Secret::expose`]); formatting the `Secret`
/// itself still shows `***`.
impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// The value, for clients that take an `Into<String>` (librdkafka's settings).
impl From<&Secret> for String {
    fn from(s: &Secret) -> String {
        s.0.clone()
    }
}

impl PartialEq<str> for Secret {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Secret {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) => Ok(Secret(s)),
            other => Err(serde::de::Error::custom(format!(
                "a secret must be a string, not {} (value not shown); quote it: '...'",
                match other {
                    serde_yaml::Value::Number(_) => "a number",
                    serde_yaml::Value::Bool(_) => "a boolean",
                    serde_yaml::Value::Null => "empty",
                    serde_yaml::Value::Sequence(_) => "a list",
                    serde_yaml::Value::Mapping(_) => "a map",
                    _ => "a tagged value",
                }
            ))),
        }
    }
}

impl JsonSchema for Secret {
    fn schema_name() -> Cow<'static, str> {
        "Secret".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // `writeOnly`: a value that is written, never shown back (`kgate config show` prints
        // `***` for every value whose schema says so).
        json_schema!({
            "type": "string",
            "writeOnly": true,
        })
    }
}

/// A URL as logs, metric labels, DLQ headers and `kgate check` show it: the user info and every
/// query and fragment value replaced by `***` (`wss://host/path?apikey=***`,
/// `https://***@host/`). Scheme, host, port and path stay, to say which feed it is. A string that
/// is not `scheme://...` is returned as it is.
pub fn redact_url(url: &str) -> String {
    if !url.contains("://") {
        return url.to_string();
    }
    let p = UrlParts::of(url);
    let mut out = p.head_redacted();
    out.push_str(p.path);
    if let Some(q) = p.query {
        out.push('?');
        out.push_str(&redact_pairs(q));
    }
    if let Some(f) = p.fragment {
        out.push('#');
        out.push_str(&redact_pairs(f));
    }
    out
}

/// A URL cut where the redactors need it; text, not parsed, so templates (`${item}`) pass.
pub(crate) struct UrlParts<'a> {
    /// `https://`, or empty when there is none.
    pub scheme: &'a str,
    /// `user:pw@host:port`.
    pub authority: &'a str,
    pub path: &'a str,
    /// After `?`, before `#`.
    pub query: Option<&'a str>,
    /// After `#`.
    pub fragment: Option<&'a str>,
}

impl<'a> UrlParts<'a> {
    pub fn of(url: &'a str) -> UrlParts<'a> {
        let (scheme, rest) = match url.find("://") {
            Some(i) => url.split_at(i + 3),
            None => ("", url),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(authority_end);
        let (before_fragment, fragment) = match rest.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (rest, None),
        };
        let (path, query) = match before_fragment.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (before_fragment, None),
        };
        UrlParts {
            scheme,
            authority,
            path,
            query,
            fragment,
        }
    }

    /// Scheme and authority, the user info (before `@`) replaced by `***`.
    pub fn head_redacted(&self) -> String {
        let mut out = String::with_capacity(self.scheme.len() + self.authority.len() + 64);
        out.push_str(self.scheme);
        match self.authority.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&self.authority[at..]);
            }
            None => out.push_str(self.authority),
        }
        out
    }
}

/// `a=1&b=2` → `a=***&b=***`; a part without `=` may be a key itself and becomes `***`.
fn redact_pairs(s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    s.split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) => format!("{k}={REDACTED}"),
            None if pair.is_empty() => String::new(),
            None => REDACTED.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows() {
        let s = Secret::new("hunter2-distinctive");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2-distinctive");
    }

    #[test]
    fn a_secret_reads_from_a_string_and_never_quotes_another_type() {
        let s: Secret = serde_json::from_str("\"0012345\"").unwrap();
        assert_eq!(s.expose(), "0012345");
        let s: Secret = serde_yaml::from_str("'0012345'").unwrap();
        assert_eq!(s.expose(), "0012345");
        for (text, kind) in [
            ("987654321", "a number"),
            ("98765.4321", "a number"),
            ("true", "a boolean"),
            ("[987654321]", "a list"),
            ("{a: 987654321}", "a map"),
        ] {
            let e = serde_yaml::from_str::<Secret>(text)
                .unwrap_err()
                .to_string();
            assert!(!e.contains("987654321") && !e.contains("4321"), "{e}");
            assert!(e.contains(kind), "{e}");
        }
        let e = serde_json::from_str::<Secret>("987654321")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("987654321"), "{e}");
    }

    #[test]
    fn a_secret_schema_is_a_write_only_string() {
        let s = schemars::schema_for!(Option<Secret>);
        let v = s.to_value();
        assert_eq!(v["writeOnly"], true, "{v}");
        assert!(
            v["type"]
                .as_array()
                .is_some_and(|t| t.contains(&"string".into())),
            "{v}"
        );
    }

    #[test]
    fn urls_lose_their_user_info_and_query_values() {
        for (url, shown) in [
            (
                "wss://feed.example/path?apikey=s3cret",
                "wss://feed.example/path?apikey=***",
            ),
            ("https://user:pw@host/", "https://***@host/"),
            ("https://user@host:8081/x", "https://***@host:8081/x"),
            (
                "ws://127.0.0.1:4200/ws?a=1&token=abc&flag",
                "ws://127.0.0.1:4200/ws?a=***&token=***&***",
            ),
            ("http://u:p@h?k=v#frag", "http://***@h?k=***#***"),
            (
                "https://h/p#access_token=x&s=y",
                "https://h/p#access_token=***&s=***",
            ),
            ("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
            ("ws://h:1/ws", "ws://h:1/ws"),
            ("ws://h:1/ws?", "ws://h:1/ws?"),
            ("not a url", "not a url"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        // An '@' in the path or query is not user info.
        assert_eq!(
            redact_url("https://h/a@b?mail=x@y"),
            "https://h/a@b?mail=***"
        );
    }
}

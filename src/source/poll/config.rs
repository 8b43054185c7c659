//! `source.http_poll:` — the HTTP APIs a pipeline polls, and their checks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{At, ByteSize, ConfigError};
use crate::transform::Template;

use super::redact::redact_secrets;

/// `source.http_poll:` — HTTP APIs that kgate polls: each response becomes an event (or one per
/// element of `split`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HttpPollSourceConfig {
    /// The requests to poll (`GET`), one task each (and one per `for_each` item).
    pub requests: Vec<PollRequestConfig>,
    /// Time between two polls of a request (a little jitter is added; a failed poll waits
    /// longer, never less).
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Poll at wall-clock multiples of `interval` (`15s` → :00, :15, :30, :45) instead of
    /// `interval` after the previous poll.
    #[serde(default)]
    pub align: bool,
    /// Longest wait for a whole response (connect, headers and body); past it the poll fails
    /// with status `timeout`.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Headers sent with every request (e.g. `Accept: application/json`, an API key header).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON pointer to an array in the response (e.g. `/data`): one event per element instead
    /// of one per response.
    #[serde(default)]
    pub split: Option<String>,
    /// Skip events already published (by a key over the response).
    #[serde(default)]
    pub dedupe: Option<DedupeConfig>,
    /// At most this many requests across the pipeline's requests, as `N/s`, `N/m` or `N/h`
    /// (a provider's quota); none = no limit.
    #[serde(default)]
    pub max_rate: Option<String>,
    /// Send failed responses (non-2xx, not JSON, no `split` array) to the DLQ as `http_error`
    /// with their status and body.
    #[serde(default)]
    pub raw_on_error: bool,
    /// Longest wait after failed polls (the wait doubles per failure from `interval`, with
    /// jitter); a `Retry-After` from a 429 or 503 is honoured instead.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Largest response body read, e.g. `16MB`: a longer answer is a failure (`too_large`,
    /// counted and backed off) and is not read further, so a broken or hostile API cannot
    /// fill kgate's memory.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
}

/// One request of `source.http_poll.requests`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PollRequestConfig {
    /// `http://` or `https://` URL; `${item}` is each `for_each` item (URL-encoded), other
    /// `${NAME}` are environment variables (e.g. `apikey=${PROVIDER_KEY}`).
    pub url: String,
    /// One request per item, the item in `${item}` of `url` and in the `${@item}` source value.
    #[serde(default)]
    pub for_each: Vec<String>,
}

/// `source.http_poll.dedupe:` — which events were already published.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct DedupeConfig {
    /// A template over the response (or `split` element) as received and its source values,
    /// e.g. `${symbol}|${timestamp}`: an event whose key was published before is skipped.
    pub key: String,
    /// How many recent keys are remembered (per pipeline).
    #[serde(default = "default_window")]
    pub window: usize,
    /// A file keeping the remembered keys across restarts (written atomically, about once a
    /// second while keys are added, and at stop); none = memory only.
    #[serde(default)]
    pub file: Option<String>,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(300)
}
fn default_max_body() -> ByteSize {
    ByteSize(16 * 1000 * 1000)
}
fn default_window() -> usize {
    10_000
}

/// One thing to poll: a request with its item filled in.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The URL requested.
    pub url: reqwest::Url,
    /// The same with secrets redacted: logs, `${@http.url}`, the DLQ.
    pub shown: String,
    /// The request's URL template, redacted: the metrics' `url` label.
    pub template: String,
    /// The `for_each` item.
    pub item: Option<String>,
}

/// The section checked: everything runtime code needs, parsed.
#[derive(Debug, Clone)]
pub(super) struct Checked {
    pub targets: Vec<Target>,
    pub headers: reqwest::header::HeaderMap,
    pub split: Option<String>,
    pub dedupe: Option<(Template, usize, Option<std::path::PathBuf>)>,
    /// Time between two requests of the pipeline (from `max_rate`).
    pub spacing: Option<Duration>,
}

/// `N/s`, `N/m`, `N/min`, `N/h` → the time between two requests.
pub(super) fn parse_rate(s: &str) -> Result<Duration, String> {
    let fix = "write e.g. `5/s`, `100/m` or `500/h`";
    let (n, unit) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not a rate; {fix}"))?;
    let n: f64 = n
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("`{s}`: the count must be a number above 0; {fix}"))?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => return Err(format!("`{s}`: unknown unit `{other}`; {fix}")),
    };
    Ok(Duration::from_secs_f64(per / n))
}

/// `url` with `${item}` replaced by `item`, URL-encoded.
fn fill(url: &str, item: Option<&str>) -> String {
    match item {
        Some(item) => {
            let enc: String =
                percent_encoding::utf8_percent_encode(item, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            url.replace("${item}", &enc)
        }
        None => url.to_string(),
    }
}

impl HttpPollSourceConfig {
    /// Checks the section, collecting every problem; the parsed values when there is none.
    pub(super) fn check(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<Checked> {
        let before = errors.len();
        if self.requests.is_empty() {
            errors.push(ConfigError::new(
                at.field("requests"),
                "no requests; list at least one `- url: https://api.example/quote?symbol=AAPL`",
            ));
        }
        let mut targets = Vec::new();
        for (j, r) in self.requests.iter().enumerate() {
            let field = format!("requests[{j}].url");
            let shown = redact_secrets(&r.url);
            let has_item = r.url.contains("${item}");
            if has_item && r.for_each.is_empty() {
                errors.push(ConfigError::new(
                    at.field(&field),
                    format!("`{shown}` has `${{item}}` but the request has no `for_each`; list the items (`for_each: [AAPL, MSFT]`) or remove `${{item}}`"),
                ));
                continue;
            }
            if !has_item && !r.for_each.is_empty() {
                errors.push(ConfigError::new(
                    at.field(&field),
                    format!("`{shown}` has no `${{item}}`, so every `for_each` item would fetch the same URL; put `${{item}}` where the item goes"),
                ));
                continue;
            }
            if let Some(dup) = first_duplicate(&r.for_each) {
                errors.push(ConfigError::new(
                    at.field(&format!("requests[{j}].for_each")),
                    format!("`{dup}` is listed twice; list each item once"),
                ));
            }
            let items: Vec<Option<&str>> = if r.for_each.is_empty() {
                vec![None]
            } else {
                r.for_each.iter().map(|i| Some(i.as_str())).collect()
            };
            for item in items {
                let filled = fill(&r.url, item);
                match reqwest::Url::parse(&filled) {
                    Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.has_host() => {
                        if filled.contains("${") {
                            errors.push(ConfigError::new(
                                at.field(&field),
                                format!("`{shown}` has a `${{…}}` other than `${{item}}` left; environment variables are filled in at load, write `$${{` for a literal `${{`"),
                            ));
                            break;
                        }
                        targets.push(Target {
                            shown: redact_secrets(u.as_str()),
                            url: u,
                            template: shown.clone(),
                            item: item.map(str::to_string),
                        });
                    }
                    _ => {
                        errors.push(ConfigError::new(
                            at.field(&field),
                            format!("`{shown}` is not an http(s) URL; write e.g. `https://api.example/quote?symbol=${{item}}`"),
                        ));
                        break;
                    }
                }
            }
        }
        if self.interval.is_zero() {
            errors.push(ConfigError::new(
                at.field("interval"),
                "must be more than 0; e.g. `15s`",
            ));
        }
        if self.timeout.is_zero() {
            errors.push(ConfigError::new(
                at.field("timeout"),
                "must be more than 0; e.g. `10s`",
            ));
        }
        if self.backoff_max < self.interval {
            errors.push(ConfigError::new(
                at.field("backoff_max"),
                format!(
                    "`{}` is shorter than `interval` ({}), and a failed poll never waits less than `interval`; make it at least `interval`",
                    humantime::format_duration(self.backoff_max),
                    humantime::format_duration(self.interval)
                ),
            ));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &self.headers {
            let n = reqwest::header::HeaderName::from_bytes(name.as_bytes());
            let v = reqwest::header::HeaderValue::from_str(value);
            match (n, v) {
                (Ok(n), Ok(v)) => {
                    headers.insert(n, v);
                }
                (Err(_), _) => errors.push(ConfigError::new(
                    at.field(&format!("headers.{name}")),
                    format!("`{name}` is not a valid HTTP header name; use letters, digits and `-`"),
                )),
                (_, Err(_)) => errors.push(ConfigError::new(
                    at.field(&format!("headers.{name}")),
                    "the value is not a valid HTTP header value (no line breaks or control characters)",
                )),
            }
        }
        if let Some(split) = &self.split {
            if !split.starts_with('/') {
                errors.push(ConfigError::new(
                    at.field("split"),
                    format!("`{split}` is not a JSON pointer to an array; write e.g. `/data` (`/` then the field names, `/` between)"),
                ));
            }
        }
        let mut dedupe = None;
        if let Some(d) = &self.dedupe {
            let key = Template::parse(&d.key)
                .map_err(|e| errors.push(ConfigError::new(at.field("dedupe.key"), e)))
                .ok();
            if key.as_ref().and_then(Template::fixed).is_some() {
                errors.push(ConfigError::new(
                    at.field("dedupe.key"),
                    format!("`{}` is the same for every event, so all but the first would be skipped; use fields, e.g. `${{symbol}}|${{timestamp}}`", d.key),
                ));
            }
            if d.window == 0 {
                errors.push(ConfigError::new(
                    at.field("dedupe.window"),
                    "must be at least 1; e.g. `10000` (the last keys remembered)",
                ));
            }
            let file = d.file.as_ref().map(std::path::PathBuf::from);
            if let Some(f) = &file {
                let dir = match f.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => std::path::PathBuf::from("."),
                };
                if f.is_dir() {
                    errors.push(ConfigError::new(
                        at.field("dedupe.file"),
                        format!("`{}` is a directory; name a file in it", f.display()),
                    ));
                } else if !dir.is_dir() {
                    errors.push(ConfigError::new(
                        at.field("dedupe.file"),
                        format!(
                            "directory `{}` does not exist; create it or name a file elsewhere",
                            dir.display()
                        ),
                    ));
                }
            }
            if let Some(key) = key {
                dedupe = Some((key, d.window, file));
            }
        }
        let spacing = match &self.max_rate {
            None => None,
            Some(r) => match parse_rate(r) {
                Ok(d) => Some(d),
                Err(e) => {
                    errors.push(ConfigError::new(at.field("max_rate"), e));
                    None
                }
            },
        };
        (errors.len() == before).then_some(Checked {
            targets,
            headers,
            split: self.split.clone(),
            dedupe,
            spacing,
        })
    }
}

fn first_duplicate(items: &[String]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    items
        .iter()
        .find(|i| !seen.insert(i.as_str()))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Checked, Vec<String>> {
        let c: HttpPollSourceConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let ok = c.check(At("p"), &mut errors);
        assert_eq!(ok.is_some(), errors.is_empty(), "{errors:?}");
        ok.ok_or_else(|| errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn for_each_makes_one_target_per_item_with_secrets_redacted() {
        let c = check(
            "requests:\n  - url: 'https://api.example/q?function=GLOBAL_QUOTE&symbol=${item}&apikey=s3cret'\n    for_each: [AAPL, 'BRK B']\n  - url: 'http://u:pw@h:8080/x'\ninterval: 15s\nmax_rate: 5/s\nheaders: {Accept: application/json}\nsplit: /data\ndedupe: {key: '${symbol}|${timestamp}'}",
        )
        .unwrap();
        assert_eq!(c.targets.len(), 3);
        assert_eq!(
            c.targets[0].url.as_str(),
            "https://api.example/q?function=GLOBAL_QUOTE&symbol=AAPL&apikey=s3cret"
        );
        assert_eq!(
            c.targets[0].shown,
            "https://api.example/q?function=GLOBAL_QUOTE&symbol=AAPL&apikey=***"
        );
        assert_eq!(
            c.targets[1].url.as_str(),
            "https://api.example/q?function=GLOBAL_QUOTE&symbol=BRK%20B&apikey=s3cret"
        );
        assert_eq!(
            c.targets[1].template,
            "https://api.example/q?function=GLOBAL_QUOTE&symbol=${item}&apikey=***"
        );
        assert_eq!(c.targets[1].item.as_deref(), Some("BRK B"));
        assert_eq!(c.targets[2].shown, "http://***@h:8080/x");
        assert_eq!(c.targets[2].item, None);
        assert_eq!(c.spacing, Some(Duration::from_millis(200)));
        assert_eq!(c.headers.len(), 1);
        let (_, window, file) = c.dedupe.unwrap();
        assert_eq!((window, file), (10_000, None));
    }

    #[test]
    fn every_problem_is_named_with_its_field_and_fix() {
        let e = check(
            "requests:\n  - url: 'https://h/q?s=${item}'\n  - url: 'https://h/q'\n    for_each: [A]\n  - url: 'ftp://h/q'\n  - url: 'https://h/${item}'\n    for_each: [A, A]\ninterval: 0s\ntimeout: 0s\nheaders: {'bad name': x}\nsplit: data\ndedupe: {key: fixed, window: 0, file: /nonexistent/dir/keys}\nmax_rate: 5/day",
        )
        .unwrap_err();
        let want = [
            "p.requests[0].url: `https://h/q?s=${item}` has `${item}` but the request has no `for_each`",
            "p.requests[1].url: `https://h/q` has no `${item}`",
            "p.requests[2].url: `ftp://h/q` is not an http(s) URL",
            "p.requests[3].for_each: `A` is listed twice",
            "p.interval: must be more than 0",
            "p.timeout: must be more than 0",
            "p.headers.bad name: `bad name` is not a valid HTTP header name",
            "p.split: `data` is not a JSON pointer",
            "p.dedupe.key: `fixed` is the same for every event",
            "p.dedupe.window: must be at least 1",
            "p.dedupe.file: directory `/nonexistent/dir` does not exist",
            "p.max_rate: `5/day`: unknown unit `day`",
        ];
        for w in want {
            assert!(e.iter().any(|e| e.starts_with(w)), "{w}\n{e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
        let e = check("requests: []\ninterval: 10m").unwrap_err();
        assert!(e[0].starts_with("p.requests: no requests"), "{e:?}");
        assert!(
            e[1].starts_with("p.backoff_max: `5m` is shorter than `interval` (10m)"),
            "{e:?}"
        );
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("5/s").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_rate("60/m").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_rate("0.5/s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_rate("3600/h").unwrap(), Duration::from_secs(1));
        assert!(parse_rate("5").unwrap_err().contains("is not a rate"));
        assert!(parse_rate("0/s").unwrap_err().contains("above 0"));
        assert!(parse_rate("x/s").unwrap_err().contains("above 0"));
    }
}

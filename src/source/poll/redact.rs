//! API keys out of polled URLs: what logs, metrics, `${@http.url}` and the DLQ show.
//!
//! Unlike [`crate::config::redact_url`] (every query value hidden), this keeps the values that
//! say what was asked (`symbol=AAPL`) and hides only those whose names look like secrets, so
//! that a record's `${@http.url}` still tells which request it came from.

use crate::config::UrlParts;
use crate::config::REDACTED;

/// Whether a query parameter's name looks like it carries a secret.
fn is_secret_name(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    [
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "auth",
        "signature",
        "sig",
        "credential",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// `url` with its user info and secret-named query values (`apikey`, `api_key`, `token`,
/// `secret`, `password`, …) replaced by `***`. Works on text, so templates (`${item}`) too.
pub fn redact_secrets(url: &str) -> String {
    let p = UrlParts::of(url);
    let mut out = p.head_redacted();
    out.push_str(p.path);
    if let Some(query) = p.query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if is_secret_name(name) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
    }
    if let Some(f) = p.fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_keys_and_user_info_keeps_the_rest() {
        assert_eq!(
            redact_secrets(
                "https://www.alphavantage.co/query?function=GLOBAL_QUOTE&symbol=AAPL&apikey=ABC123"
            ),
            "https://www.alphavantage.co/query?function=GLOBAL_QUOTE&symbol=AAPL&apikey=***"
        );
        assert_eq!(
            redact_secrets("http://user:pw@h:1/p?api_key=1&Token=2&client_secret=3&password=4&x-api-key=5&access_token=6&n=7"),
            "http://***@h:1/p?api_key=***&Token=***&client_secret=***&password=***&x-api-key=***&access_token=***&n=7"
        );
        assert_eq!(
            redact_secrets("https://h/q?symbol=${item}&apikey=${item}#frag"),
            "https://h/q?symbol=${item}&apikey=***#frag"
        );
        assert_eq!(redact_secrets("https://h/q"), "https://h/q");
        assert_eq!(redact_secrets("https://h/q?flag"), "https://h/q?flag");
    }
}

//! `ui:` — the web UI (`kgate ui`, or beside the pipelines in `kgate run`): where it listens,
//! whether it may change anything, who may log in.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{At, ConfigError, Secret, ServerTlsFiles};

/// `ui:` — the web UI: topics, messages, consumer groups, schemas, the DLQ and kgate's own
/// pipelines, in the browser.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// Address the UI listens on. On an address that is not loopback, `users` or `tokens` are
    /// required (everyone must log in).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Allow write actions (create and delete topics, produce, replay the DLQ). Even then only
    /// users and tokens with `role: write` may use them; without it the UI is read-only and
    /// every write endpoint answers 403.
    #[serde(default)]
    pub write: bool,
    /// Users who log in with a password on the login page. With any user or token configured,
    /// every page and API call needs a session (or a bearer token), on loopback too.
    #[schemars(extend("default" = []))]
    #[serde(default)]
    pub users: Vec<UiUser>,
    /// Bearer tokens for scripts: `Authorization: Bearer TOKEN` on `/api/…` calls.
    #[schemars(extend("default" = []))]
    #[serde(default)]
    pub tokens: Vec<UiToken>,
    /// How long a login lasts.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Serve the UI over HTTPS with these PEM files (the session cookie is then `Secure`);
    /// none = plain HTTP.
    #[serde(default)]
    pub tls: Option<ServerTlsFiles>,
    /// Connections served at once; past it a connection is answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: u64,
    /// How often the lag of the consumer groups someone looked at (in the last hour) is
    /// sampled for the group page's lag-over-time chart. Kept in memory only: at most 360
    /// samples per group and 200 groups.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_lag_sample_interval", with = "humantime_serde")]
    pub lag_sample_interval: Duration,
}

/// A user of the UI.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UiUser {
    /// The login name.
    pub name: String,
    /// The password's argon2 hash (PHC string `$argon2id$…`), as `kgate ui hash-password`
    /// prints it. Never the password itself.
    #[schemars(extend("writeOnly" = true))]
    pub password_hash: String,
    /// `read` (the default) or `write` (write actions, when `ui.write` is on).
    #[schemars(extend("default" = "read"))]
    #[serde(default)]
    pub role: Role,
}

/// A bearer token for the UI's API.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UiToken {
    /// Who uses it (shown as the user, logged).
    pub name: String,
    /// The token (at least 16 characters); write it as `${ENV_VAR}`.
    pub token: Secret,
    /// `read` (the default) or `write`.
    #[schemars(extend("default" = "read"))]
    #[serde(default)]
    pub role: Role,
}

/// What a user may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Look only.
    #[default]
    Read,
    /// Look, and use the write actions when `ui.write` is on.
    Write,
}

/// Shortest UI bearer token accepted.
pub const MIN_TOKEN: usize = 16;

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_max_connections() -> u64 {
    64
}

fn default_lag_sample_interval() -> Duration {
    Duration::from_secs(10)
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            listen: default_listen(),
            write: false,
            users: Vec::new(),
            tokens: Vec::new(),
            session_ttl: default_session_ttl(),
            tls: None,
            max_connections: default_max_connections(),
            lag_sample_interval: default_lag_sample_interval(),
        }
    }
}

impl UiConfig {
    /// Whether every request needs a session or a token: when users or tokens are configured.
    pub fn auth_enabled(&self) -> bool {
        !self.users.is_empty() || !self.tokens.is_empty()
    }

    /// Checks `ui:` (at `at`) with `listen` as the address to serve on; that address once
    /// valid. A non-loopback address without users or tokens is refused, naming the fix.
    pub fn resolve_listen(
        &self,
        listen: &str,
        at: At<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<SocketAddr> {
        let addr = match listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(ConfigError::new(
                    at.field("listen"),
                    format!("`{listen}` is not an address; write e.g. `127.0.0.1:8080`"),
                ));
                None
            }
        };
        if let Some(a) = addr {
            if !a.ip().is_loopback() && !self.auth_enabled() {
                errors.push(ConfigError::new(
                    at.field("listen"),
                    format!("`{a}` is not a loopback address, so anyone who reaches it could use the UI; add `users: [{{name: admin, password_hash: '…'}}]` (hash a password with `kgate ui hash-password`) or `tokens: [{{name: ci, token: \"${{UI_TOKEN}}\"}}]`, or listen on 127.0.0.1"),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let at_u = format!("{}.users[{i}]", at.0);
            if u.name.trim().is_empty() {
                errors.push(ConfigError::new(
                    format!("{at_u}.name"),
                    "empty; give the user a name",
                ));
            } else if !names.insert(u.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("{at_u}.name"),
                    format!("`{}` is listed twice; names must be unique", u.name),
                ));
            }
            if let Err(e) = argon2::PasswordHash::new(&u.password_hash) {
                errors.push(ConfigError::new(
                    format!("{at_u}.password_hash"),
                    format!("not an argon2 hash ({e}); write the line `kgate ui hash-password` prints for the password (it reads it from stdin)"),
                ));
            }
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.len() < MIN_TOKEN {
                errors.push(ConfigError::new(
                    format!("{}.tokens[{i}].token", at.0),
                    format!("shorter than {MIN_TOKEN} characters (or its variable is not set); use a long random token, e.g. `openssl rand -hex 24`"),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            for (field, f) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !std::path::Path::new(f).is_file() {
                    errors.push(ConfigError::new(
                        at.field(&format!("tls.{field}")),
                        format!("file `{f}` does not exist"),
                    ));
                }
            }
        }
        if self.max_connections == 0 {
            errors.push(ConfigError::new(
                at.field("max_connections"),
                "0 would serve nobody; give 1 or more (64 by default)",
            ));
        }
        if self.lag_sample_interval < Duration::from_secs(1) {
            errors.push(ConfigError::new(
                at.field("lag_sample_interval"),
                format!(
                    "`{}` is shorter than 1s; sample the groups' lag every 1s or more (10s by default)",
                    humantime::format_duration(self.lag_sample_interval)
                ),
            ));
        }
        addr
    }

    /// [`UiConfig::resolve_listen`] with the configured `listen`.
    pub fn resolve(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<SocketAddr> {
        self.resolve_listen(&self.listen, at, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Vec<String> {
        let c: UiConfig = serde_yaml::from_str(yaml).unwrap();
        let mut e = Vec::new();
        c.resolve(At("ui"), &mut e);
        e.into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn loopback_needs_no_users_and_other_addresses_do() {
        assert!(check("{}").is_empty());
        let e = check("listen: 0.0.0.0:8080");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("ui.listen: `0.0.0.0:8080` is not a loopback"),
            "{e:?}"
        );
        assert!(e[0].contains("kgate ui hash-password"), "{e:?}");
        let hash = crate::ui::auth::hash_password("pw").unwrap();
        assert!(check(&format!(
            "listen: 0.0.0.0:8080\nusers: [{{name: a, password_hash: '{hash}'}}]"
        ))
        .is_empty());
    }

    #[test]
    fn bad_hashes_short_tokens_and_twice_named_users_are_refused() {
        let e = check("users: [{name: a, password_hash: secret}, {name: a, password_hash: x}]\ntokens: [{name: t, token: short}]");
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e
            .iter()
            .any(|m| m.starts_with("ui.users[0].password_hash: not an argon2 hash")));
        assert!(e
            .iter()
            .any(|m| m.starts_with("ui.users[1].name: `a` is listed twice")));
        assert!(e
            .iter()
            .any(|m| m.starts_with("ui.tokens[0].token: shorter than 16")));
    }

    #[test]
    fn a_lag_sample_interval_under_a_second_is_refused() {
        assert!(check("lag_sample_interval: 1s").is_empty());
        let e = check("lag_sample_interval: 100ms");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("ui.lag_sample_interval: `100ms` is shorter than 1s"),
            "{e:?}"
        );
    }
}

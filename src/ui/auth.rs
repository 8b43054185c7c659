//! Who is asking: sessions from the login page (argon2 password hashes), bearer tokens for
//! scripts, or nobody when no user is configured (loopback only, read-only). Writes need
//! `ui.write`, an authenticated identity with the `write` role and, for a session, its CSRF
//! token in the `X-CSRF-Token` header.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{Role, UiConfig};
use super::Ui;

/// The session cookie's name.
pub const COOKIE: &str = "kgate_session";
/// The header that carries a session's CSRF token on every write.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions kept at once; the oldest goes first past it.
const MAX_SESSIONS: usize = 10_000;
/// Failed logins of one user name after which its logins are refused for [`LOCKOUT`].
const MAX_FAILURES: u32 = 10;
/// How long a user name stays locked after [`MAX_FAILURES`] failed logins.
const LOCKOUT: Duration = Duration::from_secs(60);

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// The argon2id hash (PHC string) of `password`, with a random salt: what `ui.users[].password_hash`
/// holds.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut salt[..]);
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// No users configured (loopback): anyone, read-only.
    Anonymous,
    /// A session cookie.
    Session,
    /// `Authorization: Bearer`.
    Token,
}

/// Who is asking; put into each request's extensions.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user or token name (`anonymous` without auth).
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// How they were recognised.
    pub via: Via,
    /// The session's CSRF token (sessions only).
    pub csrf: Option<String>,
}

impl Identity {
    /// Whether this identity may use the write actions under `config`.
    pub fn can_write(&self, config: &UiConfig) -> bool {
        config.write && self.via != Via::Anonymous && self.role == Role::Write
    }
}

#[derive(Debug)]
struct Session {
    user: String,
    role: Role,
    csrf: String,
    expires: Instant,
}

/// The logged-in sessions (in memory: a restart logs everyone out), and the tokens' digests.
pub struct Auth {
    sessions: Mutex<HashMap<String, Session>>,
    /// Failed logins by user name: how many in a row, and the last one's time.
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    tokens: Vec<([u8; 32], String, Role)>,
    ttl: Duration,
    /// A hash to check unknown user names against, so that they take as long as known ones.
    dummy_hash: String,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), &mut b[..]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Auth {
    /// From `ui:`.
    pub fn new(config: &UiConfig) -> Auth {
        Auth {
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            tokens: config
                .tokens
                .iter()
                .map(|t| {
                    (
                        Sha256::digest(t.token.expose().as_bytes()).into(),
                        t.name.clone(),
                        t.role,
                    )
                })
                .collect(),
            ttl: config.session_ttl,
            dummy_hash: hash_password("not a password anyone has").unwrap_or_default(),
        }
    }

    /// The user and role of a bearer token, comparing every token in constant time.
    fn token(&self, token: &str) -> Option<(String, Role)> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (d, name, role) in &self.tokens {
            if bool::from(d.ct_eq(&digest)) {
                found = Some((name.clone(), *role));
            }
        }
        found
    }

    /// Checks a user's password (blocking: argon2 takes a while on purpose); a new session's
    /// id when it matches.
    /// After [`MAX_FAILURES`] failures in a row a user name is refused for [`LOCKOUT`]
    /// without checking its password.
    pub fn login(&self, config: &UiConfig, user: &str, password: &str) -> Option<String> {
        {
            let mut f = self.failures.lock().expect("failures lock");
            f.retain(|_, (_, at)| at.elapsed() < LOCKOUT);
            if f.get(user).is_some_and(|(n, _)| *n >= MAX_FAILURES) {
                return None;
            }
        }
        let found = config.users.iter().find(|u| u.name == user);
        let hash = found.map_or(self.dummy_hash.as_str(), |u| u.password_hash.as_str());
        let ok = verify_password(password, hash);
        {
            let mut f = self.failures.lock().expect("failures lock");
            if ok && found.is_some() {
                f.remove(user);
            } else if f.len() < MAX_SESSIONS {
                let e = f.entry(user.to_string()).or_insert((0, Instant::now()));
                *e = (e.0 + 1, Instant::now());
            }
        }
        let u = found.filter(|_| ok)?;
        let id = random_hex(32);
        let mut s = self.sessions.lock().expect("sessions lock");
        let now = Instant::now();
        s.retain(|_, v| v.expires > now);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s
                .iter()
                .min_by_key(|(_, v)| v.expires)
                .map(|(k, _)| k.clone())
            {
                s.remove(&oldest);
            }
        }
        s.insert(
            id.clone(),
            Session {
                user: u.name.clone(),
                role: u.role,
                csrf: random_hex(24),
                expires: now + self.ttl,
            },
        );
        Some(id)
    }

    /// Ends a session.
    pub fn logout(&self, id: &str) {
        self.sessions.lock().expect("sessions lock").remove(id);
    }

    fn session(&self, id: &str) -> Option<Identity> {
        let s = self.sessions.lock().expect("sessions lock");
        let v = s.get(id).filter(|v| v.expires > Instant::now())?;
        Some(Identity {
            name: v.user.clone(),
            role: v.role,
            via: Via::Session,
            csrf: Some(v.csrf.clone()),
        })
    }

    /// The session cookie's value for `id` (`Secure` under TLS).
    pub fn cookie(&self, id: &str, secure: bool) -> String {
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.ttl.as_secs(),
            if secure { "; Secure" } else { "" }
        )
    }
}

/// The session id in a request's cookies.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Who sent `headers`, when anyone known.
pub fn identify(ui: &Ui, headers: &HeaderMap) -> Option<Identity> {
    if !ui.config.auth_enabled() {
        return Some(Identity {
            name: "anonymous".into(),
            role: Role::Read,
            via: Via::Anonymous,
            csrf: None,
        });
    }
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return ui.auth.token(token.trim()).map(|(name, role)| Identity {
            name,
            role,
            via: Via::Token,
            csrf: None,
        });
    }
    session_id(headers).and_then(|id| ui.auth.session(&id))
}

/// Whether a `Host` header names this machine's loopback (`localhost`, `127.x.x.x`, `[::1]`,
/// with or without a port). An absent header (HTTP/1.0) counts as loopback.
pub fn loopback_host(host: &str) -> bool {
    if host.is_empty() {
        return true;
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

/// The middleware in front of everything but the login page and the static assets: no known
/// identity → 401 on `/api`, a redirect to `/login` for pages; a write (any method but GET and
/// HEAD) needs [`Identity::can_write`] and, for a session, its CSRF token → else 403.
pub async fn guard(State(ui): State<Arc<Ui>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    // Without users the UI trusts whoever reaches the loopback address; a page of another site
    // whose name resolves to 127.0.0.1 (DNS rebinding) would reach it too, with its own name
    // in `Host`. So without users only loopback names are served.
    if !ui.config.auth_enabled() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !loopback_host(host) {
            return json_error(
                StatusCode::FORBIDDEN,
                "without `ui.users` the UI answers only to loopback host names (localhost, 127.0.0.1, [::1]); configure users to serve other names",
            );
        }
    }
    let api = path.starts_with("/api/");
    let Some(who) = identify(&ui, req.headers()) else {
        if api {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "no session; log in at /login or send `Authorization: Bearer TOKEN`",
            );
        }
        let next = percent_encoding::utf8_percent_encode(
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
            percent_encoding::NON_ALPHANUMERIC,
        );
        return Redirect::to(&format!("/login?next={next}")).into_response();
    };
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
    if mutating {
        // Logging out and checking a schema's compatibility change nothing, but they are
        // CSRF-checked like writes.
        let changes = path != "/logout" && !path.ends_with("/compatibility");
        if changes && !who.can_write(&ui.config) {
            let why = if !ui.config.write {
                "the UI is read-only; set `ui.write: true` in the config to allow write actions"
            } else {
                "this user may not write; give it `role: write` in `ui.users`"
            };
            return json_error(StatusCode::FORBIDDEN, why);
        }
        if let Some(want) = &who.csrf {
            let got = req
                .headers()
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !bool::from(got.ct_eq(want.as_bytes())) {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "missing or wrong X-CSRF-Token header; reload the page",
                );
            }
        }
        tracing::info!(user = %who.name, method = %req.method(), path, "UI request that changes something");
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost:8080",
            "127.0.0.1:8080",
            "127.0.0.2",
            "[::1]:8080",
            "LOCALHOST",
            "",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1:8080",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn sessions_tokens_and_roles() {
        let h = hash_password("pw").unwrap();
        let c: UiConfig = serde_yaml::from_str(&format!(
            "write: true\nusers: [{{name: w, password_hash: '{h}', role: write}}, {{name: r, password_hash: '{h}'}}]\ntokens: [{{name: ci, token: 0123456789abcdef0123, role: write}}]"
        ))
        .unwrap();
        let a = Auth::new(&c);
        assert!(a.login(&c, "w", "nope").is_none());
        assert!(a.login(&c, "nobody", "pw").is_none());
        let id = a.login(&c, "w", "pw").unwrap();
        let who = a.session(&id).unwrap();
        assert!(who.can_write(&c) && who.csrf.is_some());
        let r = a.login(&c, "r", "pw").unwrap();
        assert!(!a.session(&r).unwrap().can_write(&c));
        assert_eq!(a.token("0123456789abcdef0123").unwrap().0, "ci");
        assert!(a.token("0123456789abcdef0124").is_none());
        a.logout(&id);
        assert!(a.session(&id).is_none());
        // Ten failures in a row lock the name, even for the right password.
        for _ in 0..MAX_FAILURES {
            assert!(a.login(&c, "r", "guess").is_none());
        }
        assert!(a.login(&c, "r", "pw").is_none(), "locked");
        assert!(a.login(&c, "w", "pw").is_some(), "other names are not");
        let cookie = a.cookie("x", true);
        assert!(
            cookie.contains("HttpOnly")
                && cookie.contains("SameSite=Strict")
                && cookie.ends_with("Secure")
        );
    }
}

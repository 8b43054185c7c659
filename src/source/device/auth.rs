//! Device authentication at the upgrade: what `auth:` asks a device to show, built once from the
//! config (token files and keys read, secrets hashed), and the check of one upgrade request.
//!
//! Every scheme proves the device id, not just "a device": a bearer token is bound to a pattern
//! of ids, a JWT's claim must equal the id, and a client certificate names the id. A request
//! without credentials is refused with 401 (`missing_credentials`), with ones that do not verify
//! with 401 (`bad_credentials`), and with valid ones for another device with 403
//! (`wrong_device`).

use std::collections::HashMap;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::config::{BearerAuthConfig, CertId, DeviceAuthConfig, JwtAuthConfig};
use crate::config::{At, ConfigError};

/// Shortest bearer token accepted.
const MIN_TOKEN: usize = 16;
/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash's 256 bits).
const MIN_HS256_SECRET: usize = 32;

/// The query parameter that carries a token for devices that cannot set headers.
pub(super) const QUERY_TOKEN: &str = "access_token";

/// `auth:`, ready to check requests.
#[derive(Debug)]
pub(super) enum Auth {
    None,
    Bearer(Vec<BearerToken>),
    Jwt(Box<JwtAuth>),
    Mtls(CertId),
}

/// A token (its sha256: compared in constant time whatever its length) and the ids it may use.
pub(super) struct BearerToken {
    digest: [u8; 32],
    devices: Pattern,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerToken")
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

/// Device ids: exact, `prefix*` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pattern {
    Exact(String),
    Prefix(String),
    Any,
}

impl Pattern {
    pub(super) fn parse(p: &str) -> Result<Pattern, String> {
        if p == "*" {
            return Ok(Pattern::Any);
        }
        let (body, prefix) = match p.strip_suffix('*') {
            Some(b) => (b, true),
            None => (p, false),
        };
        if body.is_empty() || body.contains('*') {
            return Err(format!(
                "`{p}` is not a device pattern; write an exact id (`mac:112233445566`), a prefix ending in `*` (`mac:*`) or `*`"
            ));
        }
        Ok(if prefix {
            Pattern::Prefix(body.into())
        } else {
            Pattern::Exact(body.into())
        })
    }

    pub(super) fn matches(&self, id: &str) -> bool {
        match self {
            Pattern::Exact(e) => e == id,
            Pattern::Prefix(p) => id.starts_with(p.as_str()),
            Pattern::Any => true,
        }
    }
}

/// `auth.jwt`, with its keys loaded.
pub(super) struct JwtAuth {
    keys: JwtKeys,
    validation: Validation,
    claim: String,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

enum JwtKeys {
    /// One key for one algorithm (HS256, RS256 or ES256).
    One(DecodingKey, Algorithm),
    /// A JWKS: keys by `kid`, each with the algorithm it names (if any).
    Set(Vec<JwkKey>),
}

struct JwkKey {
    kid: Option<String>,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// Algorithms a JWKS key may verify: the asymmetric ones (a shared secret goes in
/// `hs256_secret`, never in a key file that a verifier may publish).
const JWKS_ALGS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The client certificate of a TLS connection, as far as device ids go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCert {
    /// The subject's common name.
    pub cn: Option<String>,
    /// DNS, URI and email subject alternative names, in the certificate's order.
    pub sans: Vec<String>,
}

impl PeerCert {
    /// The ids this certificate vouches for, the first being the default.
    fn ids(&self, from: CertId) -> Vec<&str> {
        match from {
            CertId::Cn => self.cn.iter().map(String::as_str).collect(),
            CertId::San => self.sans.iter().map(String::as_str).collect(),
        }
    }
}

/// An upgrade refused by `auth`: 401 or 403, the metric reason, the words for the client.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Denied {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

fn missing(message: String) -> Denied {
    Denied {
        status: StatusCode::UNAUTHORIZED,
        reason: "missing_credentials",
        message,
    }
}

fn bad(message: String) -> Denied {
    Denied {
        status: StatusCode::UNAUTHORIZED,
        reason: "bad_credentials",
        message,
    }
}

fn wrong_device(message: String) -> Denied {
    Denied {
        status: StatusCode::FORBIDDEN,
        reason: "wrong_device",
        message,
    }
}

/// The credentials an upgrade request carries.
#[derive(Debug, Default)]
pub(super) struct Presented<'a> {
    /// `Authorization: Bearer <this>`, else the `access_token` query parameter.
    pub token: Option<String>,
    /// The verified client certificate, over TLS with `client_ca`.
    pub cert: Option<&'a PeerCert>,
}

impl<'a> Presented<'a> {
    /// The token of a request: the `Authorization` header's bearer token, else `access_token`.
    pub fn from_request(
        authorization: Option<&[u8]>,
        query: Option<&str>,
        cert: Option<&'a PeerCert>,
    ) -> Presented<'a> {
        let header = authorization
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| rest.trim().to_string())
            });
        let token = header.or_else(|| {
            query.and_then(|qs| {
                form_urlencoded::parse(qs.as_bytes())
                    .find(|(k, _)| k == QUERY_TOKEN)
                    .map(|(_, v)| v.into_owned())
            })
        });
        Presented {
            token: token.filter(|t| !t.is_empty()),
            cert,
        }
    }
}

impl Auth {
    /// Whether the device id may be taken from the client certificate when the request has none.
    pub(super) fn id_from_cert(&self, cert: Option<&PeerCert>) -> Option<String> {
        match (self, cert) {
            (Auth::Mtls(from), Some(c)) => c.ids(*from).first().map(|s| s.to_string()),
            _ => None,
        }
    }

    /// Checks that the request's credentials prove `device_id`.
    pub(super) fn check(&self, device_id: &str, p: &Presented<'_>) -> Result<(), Denied> {
        match self {
            Auth::None => Ok(()),
            Auth::Bearer(tokens) => {
                let Some(token) = &p.token else {
                    return Err(missing(format!(
                        "this endpoint needs a device token: send `Authorization: Bearer <token>` (or the query parameter `{QUERY_TOKEN}`)"
                    )));
                };
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                // Every token compared (no early exit), each in constant time.
                let mut known = subtle::Choice::from(0);
                let mut allowed = subtle::Choice::from(0);
                for t in tokens {
                    let eq = t.digest.ct_eq(&digest);
                    known |= eq;
                    allowed |= eq & subtle::Choice::from(u8::from(t.devices.matches(device_id)));
                }
                if !bool::from(known) {
                    return Err(bad("the device token is not valid".into()));
                }
                if !bool::from(allowed) {
                    return Err(wrong_device(format!(
                        "this token may not connect as device `{device_id}`"
                    )));
                }
                Ok(())
            }
            Auth::Jwt(jwt) => {
                let Some(token) = &p.token else {
                    return Err(missing(format!(
                        "this endpoint needs a device JWT: send `Authorization: Bearer <jwt>` (or the query parameter `{QUERY_TOKEN}`)"
                    )));
                };
                jwt.check(device_id, token)
            }
            Auth::Mtls(from) => {
                let Some(cert) = p.cert else {
                    return Err(missing(
                        "this endpoint needs a client certificate (mutual TLS)".into(),
                    ));
                };
                let ids = cert.ids(*from);
                if ids.is_empty() {
                    let what = match from {
                        CertId::Cn => "a subject common name",
                        CertId::San => "a DNS, URI or email subject alternative name",
                    };
                    return Err(bad(format!(
                        "the client certificate has no device id: it needs {what}"
                    )));
                }
                if !ids.contains(&device_id) {
                    return Err(wrong_device(format!(
                        "the client certificate is not for device `{device_id}`"
                    )));
                }
                Ok(())
            }
        }
    }

    /// `auth:` checked and loaded (files read); problems pushed at `at`.
    pub(super) fn build(
        cfg: Option<&DeviceAuthConfig>,
        loopback: bool,
        client_ca: bool,
        at: At<'_>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Auth> {
        let mut err = |field: &str, message: String| {
            errors.push(ConfigError {
                path: at.field(field),
                message,
            })
        };
        match cfg {
            None if loopback => Some(Auth::None),
            None => {
                err(
                    "auth",
                    "`listen` is not a loopback address, so anyone who reaches it could connect as any device (and replace it); add `auth: {bearer: {tokens: [{token: \"${DEV_TOKEN}\", devices: \"*\"}]}}`, `auth: {jwt: ...}` or `auth: {mtls: {id_from: cn}}` with `tls.client_ca`, or write `auth: none` to accept that".into(),
                );
                None
            }
            Some(DeviceAuthConfig::None) => Some(Auth::None),
            Some(DeviceAuthConfig::Bearer(b)) => bearer(b, &mut err).map(Auth::Bearer),
            Some(DeviceAuthConfig::Jwt(j)) => {
                JwtAuth::build(j, &mut err).map(|j| Auth::Jwt(Box::new(j)))
            }
            Some(DeviceAuthConfig::Mtls(m)) => {
                if !client_ca {
                    err(
                        "auth.mtls",
                        "needs `tls: {cert: ..., key: ..., client_ca: ca.pem}`: the CA that device certificates chain to".into(),
                    );
                    return None;
                }
                Some(Auth::Mtls(m.id_from))
            }
        }
    }
}

fn bearer(b: &BearerAuthConfig, err: &mut impl FnMut(&str, String)) -> Option<Vec<BearerToken>> {
    if b.tokens.is_empty() {
        err(
            "auth.bearer.tokens",
            "empty; add e.g. `[{token: \"${DEV_TOKEN}\", devices: \"*\"}]`".into(),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, t) in b.tokens.iter().enumerate() {
        let at = format!("auth.bearer.tokens[{i}]");
        let secret = match (&t.token, &t.token_file) {
            (Some(s), None) => Some(s.expose().to_string()),
            (None, Some(f)) => match std::fs::read_to_string(f) {
                Ok(s) => Some(s.trim().to_string()),
                Err(e) => {
                    err(
                        &format!("{at}.token_file"),
                        format!("cannot read `{f}`: {e}"),
                    );
                    None
                }
            },
            _ => {
                err(
                    &at,
                    "give exactly one of `token` (e.g. `${DEV_TOKEN}`) and `token_file`".into(),
                );
                None
            }
        };
        if let Some(s) = &secret {
            if s.chars().count() < MIN_TOKEN {
                // Never the token itself.
                err(
                    &at,
                    format!(
                        "the token has {} characters; use at least {MIN_TOKEN} (e.g. `openssl rand -hex 24`)",
                        s.chars().count()
                    ),
                );
                ok = false;
            }
        }
        let devices = match Pattern::parse(&t.devices) {
            Ok(p) => Some(p),
            Err(e) => {
                err(&format!("{at}.devices"), e);
                None
            }
        };
        match (secret, devices) {
            (Some(s), Some(devices)) => out.push(BearerToken {
                digest: Sha256::digest(s.as_bytes()).into(),
                devices,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

impl JwtAuth {
    fn build(j: &JwtAuthConfig, err: &mut impl FnMut(&str, String)) -> Option<JwtAuth> {
        let read = |field: &str, f: &str, err: &mut dyn FnMut(&str, String)| match std::fs::read(f)
        {
            Ok(b) => Some(b),
            Err(e) => {
                err(
                    &format!("auth.jwt.{field}"),
                    format!("cannot read `{f}`: {e}"),
                );
                None
            }
        };
        let given = [
            j.hs256_secret.is_some(),
            j.rs256_public_key_file.is_some(),
            j.es256_public_key_file.is_some(),
            j.jwks_file.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            err(
                "auth.jwt",
                "give exactly one of `hs256_secret`, `rs256_public_key_file`, `es256_public_key_file` and `jwks_file`".into(),
            );
            return None;
        }
        let keys = if let Some(s) = &j.hs256_secret {
            if s.len() < MIN_HS256_SECRET {
                err(
                    "auth.jwt.hs256_secret",
                    format!(
                        "{} bytes; HS256 needs at least {MIN_HS256_SECRET} (e.g. `openssl rand -hex 32`)",
                        s.len()
                    ),
                );
                return None;
            }
            JwtKeys::One(DecodingKey::from_secret(s.as_bytes()), Algorithm::HS256)
        } else if let Some(f) = &j.rs256_public_key_file {
            let pem = read("rs256_public_key_file", f, err)?;
            match DecodingKey::from_rsa_pem(&pem) {
                Ok(k) => JwtKeys::One(k, Algorithm::RS256),
                Err(e) => {
                    err(
                        "auth.jwt.rs256_public_key_file",
                        format!("`{f}` is not a PEM RSA public key: {e}"),
                    );
                    return None;
                }
            }
        } else if let Some(f) = &j.es256_public_key_file {
            let pem = read("es256_public_key_file", f, err)?;
            match DecodingKey::from_ec_pem(&pem) {
                Ok(k) => JwtKeys::One(k, Algorithm::ES256),
                Err(e) => {
                    err(
                        "auth.jwt.es256_public_key_file",
                        format!("`{f}` is not a PEM EC public key: {e}"),
                    );
                    return None;
                }
            }
        } else {
            let f = j.jwks_file.as_deref().unwrap_or_default();
            let text = read("jwks_file", f, err)?;
            match jwks(&text) {
                Ok(keys) => JwtKeys::Set(keys),
                Err(e) => {
                    err("auth.jwt.jwks_file", format!("`{f}`: {e}"));
                    return None;
                }
            }
        };
        if j.claim.is_empty() {
            err("auth.jwt.claim", "empty; e.g. `sub`".into());
            return None;
        }
        // The algorithm is set per token (after the key is chosen); exp is always required.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = j.leeway.as_secs();
        let mut required = vec!["exp"];
        match &j.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &j.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.aud = None,
        }
        validation.set_required_spec_claims(&required);
        Some(JwtAuth {
            keys,
            validation,
            claim: j.claim.clone(),
        })
    }

    fn check(&self, device_id: &str, token: &str) -> Result<(), Denied> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| bad(format!("the device token is not a JWT: {e}")))?;
        let (key, alg) = match &self.keys {
            JwtKeys::One(k, alg) => (k, *alg),
            JwtKeys::Set(keys) => {
                let k = match &header.kid {
                    Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid.as_str())),
                    None if keys.len() == 1 => keys.first(),
                    None => None,
                }
                .ok_or_else(|| bad("the JWT's `kid` names no key of the configured JWKS".into()))?;
                if !JWKS_ALGS.contains(&header.alg) || k.alg.is_some_and(|a| a != header.alg) {
                    return Err(bad(format!(
                        "the JWT's algorithm {:?} is not the key's",
                        header.alg
                    )));
                }
                (&k.key, header.alg)
            }
        };
        let mut v = self.validation.clone();
        v.algorithms = vec![alg];
        let data = jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(token, key, &v)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                bad(match e.kind() {
                    K::ExpiredSignature => "the device JWT has expired".into(),
                    K::ImmatureSignature => "the device JWT is not valid yet (nbf)".into(),
                    K::InvalidSignature => "the device JWT's signature does not verify".into(),
                    K::InvalidAlgorithm => format!(
                        "the device JWT is signed with {:?}; this endpoint takes {alg:?}",
                        header.alg
                    ),
                    K::InvalidIssuer => "the device JWT has another issuer (iss)".into(),
                    K::InvalidAudience => "the device JWT is for another audience (aud)".into(),
                    K::MissingRequiredClaim(c) => format!("the device JWT has no `{c}` claim"),
                    _ => format!("the device JWT is not valid: {e}"),
                })
            })?;
        match data.claims.get(&self.claim) {
            Some(serde_json::Value::String(s)) if s == device_id => Ok(()),
            Some(serde_json::Value::String(_)) => Err(wrong_device(format!(
                "the JWT's `{}` claim is not device `{device_id}`",
                self.claim
            ))),
            _ => Err(bad(format!(
                "the device JWT has no string `{}` claim",
                self.claim
            ))),
        }
    }
}

/// The keys of a JWKS document.
fn jwks(text: &[u8]) -> Result<Vec<JwkKey>, String> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(text)
        .map_err(|e| format!("not a JWKS (`{{\"keys\": [...]}}`): {e}"))?;
    if set.keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    let mut out = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        if matches!(
            jwk.algorithm,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
        ) {
            return Err(format!(
                "key {i} is a shared secret (kty oct); put it in `hs256_secret` instead"
            ));
        }
        let alg = match &jwk.common.key_algorithm {
            Some(a) => {
                let name = serde_json::to_value(a)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                Some(
                    Algorithm::from_str(&name)
                        .ok()
                        .filter(|a| JWKS_ALGS.contains(a))
                        .ok_or_else(|| format!("key {i}: algorithm `{name}` is not a signature algorithm kgate verifies"))?,
                )
            }
            None => None,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
        out.push(JwkKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn cfg(yaml: &str) -> DeviceAuthConfig {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        serde_json::from_value(serde_json::to_value(v).unwrap()).unwrap()
    }

    fn build(yaml: &str, loopback: bool, ca: bool) -> Result<Auth, Vec<String>> {
        let c = cfg(yaml);
        let mut e = Vec::new();
        Auth::build(Some(&c), loopback, ca, At("s"), &mut e)
            .ok_or_else(|| e.iter().map(|e| e.to_string()).collect())
    }

    fn token(t: &str) -> Presented<'static> {
        Presented {
            token: Some(t.into()),
            cert: None,
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn device_patterns() {
        assert!(Pattern::parse("mac:*").unwrap().matches("mac:1122"));
        assert!(!Pattern::parse("mac:*").unwrap().matches("serial:1"));
        assert!(Pattern::parse("*").unwrap().matches("x"));
        assert!(Pattern::parse("mac:1").unwrap().matches("mac:1"));
        assert!(!Pattern::parse("mac:1").unwrap().matches("mac:12"));
        for bad in ["", "a*b*", "**", "a*b"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_tokens_prove_their_devices() {
        let a = build(
            "bearer: {tokens: [{token: 'tok-aaaaaaaaaaaaaaaa', devices: 'mac:*'}, {token: 'tok-bbbbbbbbbbbbbbbb', devices: 'serial:1'}]}",
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.check("mac:1", &token("tok-aaaaaaaaaaaaaaaa")), Ok(()));
        assert_eq!(a.check("serial:1", &token("tok-bbbbbbbbbbbbbbbb")), Ok(()));
        let e = a
            .check("serial:1", &token("tok-aaaaaaaaaaaaaaaa"))
            .unwrap_err();
        assert_eq!(
            (e.status, e.reason),
            (StatusCode::FORBIDDEN, "wrong_device")
        );
        let e = a
            .check("mac:1", &token("tok-aaaaaaaaaaaaaaab"))
            .unwrap_err();
        assert_eq!(
            (e.status, e.reason),
            (StatusCode::UNAUTHORIZED, "bad_credentials")
        );
        let e = a.check("mac:1", &Presented::default()).unwrap_err();
        assert_eq!(e.reason, "missing_credentials");
        // Header first, the query parameter for devices that cannot set one.
        let p = Presented::from_request(Some(b"bearer  xyz "), Some("access_token=q"), None);
        assert_eq!(p.token.as_deref(), Some("xyz"));
        let p = Presented::from_request(Some(b"Basic abc"), Some("id=1&access_token=q%2B"), None);
        assert_eq!(p.token.as_deref(), Some("q+"));
    }

    #[test]
    fn bearer_config_is_checked_without_showing_the_token() {
        let e = build(
            "bearer: {tokens: [{token: 'short-secret', devices: 'a**'}]}",
            false,
            false,
        )
        .unwrap_err()
        .join("\n");
        assert!(
            e.contains("s.auth.bearer.tokens[0]: the token has 12 characters"),
            "{e}"
        );
        assert!(e.contains("s.auth.bearer.tokens[0].devices"), "{e}");
        assert!(!e.contains("short-secret"), "{e}");
        let e = build("bearer: {tokens: [{devices: '*'}]}", false, false).unwrap_err();
        assert!(e[0].contains("exactly one of `token`"), "{e:?}");
        let e = build("bearer: {tokens: []}", false, false).unwrap_err();
        assert!(e[0].contains("s.auth.bearer.tokens: empty"), "{e:?}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "from-a-file-0123456789\n").unwrap();
        let a = build(
            &format!(
                "bearer: {{tokens: [{{token_file: '{}', devices: '*'}}]}}",
                f.display()
            ),
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.check("x", &token("from-a-file-0123456789")), Ok(()));
        let dbg = format!(
            "{:?}",
            cfg("bearer: {tokens: [{token: 'tok-aaaaaaaaaaaaaaaa', devices: '*'}]}")
        );
        assert!(!dbg.contains("tok-aaaa"), "{dbg}");
    }

    #[test]
    fn the_default_and_mtls_need_their_settings() {
        let mut e = Vec::new();
        assert!(matches!(
            Auth::build(None, true, false, At("s"), &mut e),
            Some(Auth::None)
        ));
        assert!(Auth::build(None, false, false, At("s"), &mut e).is_none());
        assert!(
            e[0].to_string()
                .starts_with("s.auth: `listen` is not a loopback address"),
            "{e:?}"
        );
        assert!(matches!(build("none", false, false), Ok(Auth::None)));
        let e = build("mtls: {id_from: cn}", false, false).unwrap_err();
        assert!(e[0].contains("s.auth.mtls: needs `tls:"), "{e:?}");
        let a = build("mtls: {id_from: san}", false, true).unwrap();
        let cert = PeerCert {
            cn: Some("kgate device".into()),
            sans: vec!["mac:1122".into(), "dev.example".into()],
        };
        let p = Presented {
            token: None,
            cert: Some(&cert),
        };
        assert_eq!(a.check("dev.example", &p), Ok(()));
        assert_eq!(a.id_from_cert(Some(&cert)).as_deref(), Some("mac:1122"));
        assert_eq!(a.check("mac:9", &p).unwrap_err().reason, "wrong_device");
        assert_eq!(
            a.check("mac:9", &Presented::default()).unwrap_err().reason,
            "missing_credentials"
        );
        let a = build("mtls: {}", false, true).unwrap();
        assert_eq!(a.check("kgate device", &p), Ok(()));
        let none = PeerCert::default();
        let p = Presented {
            token: None,
            cert: Some(&none),
        };
        assert_eq!(a.check("x", &p).unwrap_err().reason, "bad_credentials");
    }

    fn hs(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn jwt_hs256_checks_signature_expiry_claim_issuer_and_audience() {
        let a = build(
            &format!(
                "jwt: {{hs256_secret: '{SECRET}', issuer: fleet, audience: kgate, leeway: 0s}}"
            ),
            false,
            false,
        )
        .unwrap();
        let good =
            serde_json::json!({"sub": "mac:1", "exp": now() + 60, "iss": "fleet", "aud": "kgate"});
        assert_eq!(a.check("mac:1", &token(&hs(good.clone(), SECRET))), Ok(()));
        let e = a
            .check("mac:2", &token(&hs(good.clone(), SECRET)))
            .unwrap_err();
        assert_eq!(
            (e.status, e.reason),
            (StatusCode::FORBIDDEN, "wrong_device")
        );
        let cases = [
            (
                serde_json::json!({"sub": "mac:1", "exp": now() - 10, "iss": "fleet", "aud": "kgate"}),
                SECRET,
                "expired",
            ),
            (
                good.clone(),
                "another-secret-another-secret-0123",
                "signature",
            ),
            (
                serde_json::json!({"sub": "mac:1", "exp": now() + 60, "iss": "other", "aud": "kgate"}),
                SECRET,
                "issuer",
            ),
            (
                serde_json::json!({"sub": "mac:1", "exp": now() + 60, "iss": "fleet", "aud": "x"}),
                SECRET,
                "audience",
            ),
            (
                serde_json::json!({"sub": "mac:1", "iss": "fleet", "aud": "kgate"}),
                SECRET,
                "`exp`",
            ),
            (
                serde_json::json!({"exp": now() + 60, "iss": "fleet", "aud": "kgate"}),
                SECRET,
                "no string `sub`",
            ),
        ];
        for (claims, secret, want) in cases {
            let e = a
                .check("mac:1", &token(&hs(claims.clone(), secret)))
                .unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{claims}");
            assert!(
                e.message.contains(want),
                "{claims}: {} (wanted {want})",
                e.message
            );
        }
        assert_eq!(
            a.check("mac:1", &token("not.a.jwt")).unwrap_err().reason,
            "bad_credentials"
        );
        // `none` and other algorithms are refused.
        let unsigned = format!(
            "{}.{}.",
            base64_url(br#"{"alg":"none","typ":"JWT"}"#),
            base64_url(good.to_string().as_bytes())
        );
        assert_eq!(
            a.check("mac:1", &token(&unsigned)).unwrap_err().reason,
            "bad_credentials"
        );
        // Another claim can be the id.
        let a = build(
            &format!("jwt: {{hs256_secret: '{SECRET}', claim: device_id}}"),
            false,
            false,
        )
        .unwrap();
        let t = hs(
            serde_json::json!({"sub": "u", "device_id": "mac:1", "exp": now() + 60}),
            SECRET,
        );
        assert_eq!(a.check("mac:1", &token(&t)), Ok(()));
        // Without `audience`, a token with one is refused.
        let t = hs(
            serde_json::json!({"sub": "mac:1", "aud": "x", "exp": now() + 60}),
            SECRET,
        );
        assert!(
            build(&format!("jwt: {{hs256_secret: '{SECRET}'}}"), false, false)
                .unwrap()
                .check("mac:1", &token(&t))
                .is_err()
        );
    }

    fn base64_url(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    #[test]
    fn jwt_config_is_checked() {
        let e = build("jwt: {hs256_secret: short}", false, false).unwrap_err();
        assert!(e[0].contains("s.auth.jwt.hs256_secret: 5 bytes"), "{e:?}");
        assert!(!e[0].contains("short"), "{e:?}");
        let e = build(
            &format!("jwt: {{hs256_secret: '{SECRET}', jwks_file: x}}"),
            false,
            false,
        )
        .unwrap_err();
        assert!(e[0].contains("exactly one of"), "{e:?}");
        let e = build(
            "jwt: {rs256_public_key_file: /nonexistent.pem}",
            false,
            false,
        )
        .unwrap_err();
        assert!(
            e[0].contains("s.auth.jwt.rs256_public_key_file: cannot read"),
            "{e:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("jwks.json");
        std::fs::write(&f, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
        let e = build(
            &format!("jwt: {{jwks_file: '{}'}}", f.display()),
            false,
            false,
        )
        .unwrap_err();
        assert!(e[0].contains("shared secret"), "{e:?}");
    }

    #[test]
    fn jwt_rs256_and_jwks_with_openssl_keys() {
        use openssl::{ec, nid::Nid, pkey::PKey, rsa::Rsa};
        let dir = tempfile::tempdir().unwrap();
        let rsa = Rsa::generate(2048).unwrap();
        let pubf = dir.path().join("rsa.pem");
        std::fs::write(&pubf, rsa.public_key_to_pem().unwrap()).unwrap();
        let priv_pem = rsa.private_key_to_pem().unwrap();
        let claims = serde_json::json!({"sub": "mac:1", "exp": now() + 60});
        let rs = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(&priv_pem).unwrap(),
        )
        .unwrap();
        let a = build(
            &format!("jwt: {{rs256_public_key_file: '{}'}}", pubf.display()),
            false,
            false,
        )
        .unwrap();
        assert_eq!(a.check("mac:1", &token(&rs)), Ok(()));
        // An HS256 token signed with the public key's bytes (algorithm confusion) is refused.
        let forged = hs(
            claims.clone(),
            &String::from_utf8(rsa.public_key_to_pem().unwrap()).unwrap(),
        );
        assert_eq!(
            a.check("mac:1", &token(&forged)).unwrap_err().reason,
            "bad_credentials"
        );

        // A JWKS with the RSA key (kid r1) and a P-256 key (kid e1).
        let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let eck = ec::EcKey::generate(&group).unwrap();
        let mut ctx = openssl::bn::BigNumContext::new().unwrap();
        let (mut x, mut y) = (
            openssl::bn::BigNum::new().unwrap(),
            openssl::bn::BigNum::new().unwrap(),
        );
        eck.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
            .unwrap();
        let pad = |b: Vec<u8>| {
            let mut v = vec![0u8; 32 - b.len()];
            v.extend(b);
            v
        };
        let jwks_text = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "n": base64_url(&rsa.n().to_vec()), "e": base64_url(&rsa.e().to_vec())},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "x": base64_url(&pad(x.to_vec())), "y": base64_url(&pad(y.to_vec()))},
        ]});
        let f = dir.path().join("jwks.json");
        std::fs::write(&f, jwks_text.to_string()).unwrap();
        let a = build(
            &format!("jwt: {{jwks_file: '{}'}}", f.display()),
            false,
            false,
        )
        .unwrap();
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("r1".into());
        let rs = encode(&h, &claims, &EncodingKey::from_rsa_pem(&priv_pem).unwrap()).unwrap();
        assert_eq!(a.check("mac:1", &token(&rs)), Ok(()));
        let ec_pem = PKey::from_ec_key(eck)
            .unwrap()
            .private_key_to_pem_pkcs8()
            .unwrap();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("e1".into());
        let es = encode(&h, &claims, &EncodingKey::from_ec_pem(&ec_pem).unwrap()).unwrap();
        assert_eq!(a.check("mac:1", &token(&es)), Ok(()));
        // Unknown kid, no kid with two keys, a kid whose key is of another kind.
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("r1".into());
        let wrong = encode(&h, &claims, &EncodingKey::from_ec_pem(&ec_pem).unwrap()).unwrap();
        for t in [
            wrong,
            encode(
                &Header::new(Algorithm::RS256),
                &claims,
                &EncodingKey::from_rsa_pem(&priv_pem).unwrap(),
            )
            .unwrap(),
        ] {
            assert_eq!(
                a.check("mac:1", &token(&t)).unwrap_err().reason,
                "bad_credentials"
            );
        }
    }
}

//! `topics:` — a pipeline's route list and `qos:` its QoS class, resolved.
//!
//! A route list maps a value of each event (by default its WRP event type) to a topic: the
//! first route whose glob matches wins, and a route with several topics picks one per event by
//! its shard strategy. Device-id and metadata sharding hash with FNV-1a, which never changes
//! between builds or machines, so that a device's events keep going to one topic (and keep
//! their order there) across restarts and across kgate instances. Pure, except for the
//! round-robin turn, an atomic counter per route.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use crate::event::QosClass;
use crate::transform::{Doc, Meta, Template};

/// `pipelines[].topics[]:` — one route: events whose match value fits `match` go to `topic`,
/// or to one of `topics` chosen by `shard`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RouteConfig {
    /// A glob over the match value (`topics_match`, by default the WRP event type): `*`
    /// matches any run of characters, e.g. `online`, `device-status-*` or `*` (catch-all).
    #[serde(rename = "match")]
    pub pattern: String,
    /// The topic matching events go to (a name, not a template). Exactly one of `topic` and
    /// `topics`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Several topics: each event goes to one of them, chosen by `shard`.
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// How one of `topics` is chosen: `round_robin` (each event the next topic), `device_id`
    /// (a stable hash of the device's id, `${@device_id}` or else `${@wrp.source}`, so that a
    /// device's events all go to one topic, in order) or `metadata:<key>` (a stable hash of the
    /// WRP metadata field `<key>`). Default: `round_robin`.
    #[serde(default)]
    pub shard: Option<String>,
}

/// `pipelines[].qos:` as written: a class name, a WRP level or a template.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum QosSetting {
    /// A WRP level, 0–99.
    Level(i64),
    /// `low`, `medium`, `high`, a level as text, or a template over source values such as
    /// `${@wrp.qos}`.
    Text(String),
}

/// A pipeline's QoS, resolved.
#[derive(Debug, Clone)]
pub enum Qos {
    /// Every event has this class.
    Fixed(QosClass),
    /// Each event's class from its source values (a level or a class name; `medium` when
    /// missing or neither).
    PerEvent(Template),
}

impl Qos {
    /// The class of an event with these source values.
    pub fn class(&self, meta: &Meta) -> QosClass {
        match self {
            Qos::Fixed(c) => *c,
            Qos::PerEvent(t) => t
                .render(Doc::None, meta)
                .ok()
                .and_then(|v| QosClass::parse(&v))
                .unwrap_or(QosClass::Medium),
        }
    }
}

/// How a route with several topics picks one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shard {
    /// The next topic, in turn.
    RoundRobin,
    /// A stable hash of the device id (`@device_id`, else `@wrp.source`).
    DeviceId,
    /// A stable hash of the source value `wrp.metadata.<key>`.
    Metadata(String),
}

impl Shard {
    /// Parses `round_robin`, `device_id` or `metadata:<key>`.
    pub fn parse(s: &str) -> Result<Shard, String> {
        match s.trim() {
            "round_robin" => Ok(Shard::RoundRobin),
            "device_id" => Ok(Shard::DeviceId),
            other => match other.strip_prefix("metadata:") {
                Some(k) if !k.trim().is_empty() => Ok(Shard::Metadata(k.trim().to_string())),
                _ => Err(format!(
                    "unknown shard `{s}`; use `round_robin`, `device_id` or `metadata:<key>` (e.g. `metadata:/hw-model`)"
                )),
            },
        }
    }
}

/// Where a route sends its events.
#[derive(Debug, Clone)]
pub enum Target {
    /// One topic.
    One(Arc<str>),
    /// One of several, by a shard strategy.
    Sharded {
        /// The topics, as listed.
        topics: Vec<Arc<str>>,
        /// How one is chosen.
        shard: Shard,
    },
}

/// One resolved route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The glob.
    pub pattern: String,
    /// Its topic(s).
    pub target: Target,
}

/// A resolved `topics:` list and the value its globs match.
#[derive(Debug, Clone)]
pub struct Routes {
    /// What is matched (`topics_match`).
    pub matcher: Template,
    /// `topics_match` as written, for messages.
    pub matcher_text: String,
    /// The routes, first match wins.
    pub routes: Vec<Route>,
}

/// Why no topic could be chosen for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// The match value could not be rendered (a field or source value is missing).
    Unrendered(String),
    /// No route's glob matches the value.
    NoMatch(String),
    /// The shard key is missing (no device id, no such metadata field).
    NoShardKey(String),
}

/// The default `topics_match`: the WRP event type, empty when the event has none (so that only
/// a `*` route takes it).
pub const DEFAULT_MATCH: &str = "${@wrp.event_type:-}";

impl Routes {
    /// Every topic the routes may write, in order, without repeats.
    pub fn all_topics(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for r in &self.routes {
            let topics = match &r.target {
                Target::One(t) => std::slice::from_ref(t),
                Target::Sharded { topics, .. } => &topics[..],
            };
            for t in topics {
                if !all.iter().any(|a| **a == **t) {
                    all.push(t.to_string());
                }
            }
        }
        all
    }

    /// The topic of an event: the first matching route's, sharded; `turns` holds each route's
    /// round-robin counter.
    pub fn pick(
        &self,
        doc: Doc<'_>,
        meta: &Meta,
        turns: &[AtomicUsize],
    ) -> Result<Arc<str>, NoRoute> {
        let value = self.matcher.render(doc, meta).map_err(|m| {
            NoRoute::Unrendered(format!(
                "`topics_match` `{}`: field `{}` is {}",
                self.matcher_text, m.field, m.found
            ))
        })?;
        let (i, route) = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| glob_matches(&r.pattern, &value))
            .ok_or_else(|| {
                NoRoute::NoMatch(format!(
                    "no route in `topics` matches `{value}` (the value of `{}`); add a catch-all route `{{match: \"*\", topic: …}}`",
                    self.matcher_text
                ))
            })?;
        match &route.target {
            Target::One(t) => Ok(t.clone()),
            Target::Sharded { topics, shard } => {
                let n = topics.len();
                let at = match shard {
                    Shard::RoundRobin => turns
                        .get(i)
                        .map_or(0, |c| c.fetch_add(1, Ordering::Relaxed)),
                    Shard::DeviceId => {
                        let id = meta
                            .get("device_id")
                            .or_else(|| meta.get("wrp.source"))
                            .ok_or_else(|| {
                                NoRoute::NoShardKey(format!(
                                    "route `{}` shards by device_id, and the event has no `@device_id` or `@wrp.source`",
                                    route.pattern
                                ))
                            })?;
                        fnv1a(id.as_bytes()) as usize
                    }
                    Shard::Metadata(key) => {
                        let v = meta.get(&format!("wrp.metadata.{key}")).ok_or_else(|| {
                            NoRoute::NoShardKey(format!(
                                "route `{}` shards by metadata `{key}`, and the event has no such WRP metadata field",
                                route.pattern
                            ))
                        })?;
                        fnv1a(v.as_bytes()) as usize
                    }
                };
                Ok(topics[at % n].clone())
            }
        }
    }
}

/// FNV-1a, 64 bits: a hash fixed by its definition, the same on every build and machine.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Whether `text` fits `pattern`, where `*` matches any run of characters (none included) and
/// everything else itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and where in `text` its run ends so far.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` take one more character.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t) in [
            ("*", ""),
            ("*", "anything"),
            ("online", "online"),
            ("device-status-*", "device-status-"),
            ("device-status-*", "device-status-online"),
            ("*-status", "device-status"),
            ("a*b*c", "aXXbYYc"),
            ("a*b*c", "abc"),
            ("*a*", "banana"),
        ] {
            assert!(glob_matches(p, t), "{p} ~ {t}");
        }
        for (p, t) in [
            ("online", "offline"),
            ("online", "online2"),
            ("device-status-*", "device-status"),
            ("a*b*c", "aXXbYY"),
            ("", "x"),
        ] {
            assert!(!glob_matches(p, t), "{p} !~ {t}");
        }
    }

    #[test]
    fn shards_parse() {
        assert_eq!(Shard::parse("round_robin"), Ok(Shard::RoundRobin));
        assert_eq!(Shard::parse("device_id"), Ok(Shard::DeviceId));
        assert_eq!(
            Shard::parse("metadata:/hw-model"),
            Ok(Shard::Metadata("/hw-model".into()))
        );
        for bad in ["metadata:", "hash", ""] {
            let e = Shard::parse(bad).unwrap_err();
            assert!(e.contains("metadata:<key>"), "{e}");
        }
    }

    #[test]
    fn fnv1a_is_the_published_function() {
        // The FNV-1a test vectors (offset basis, "a", "foobar").
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn qos_per_event_defaults_to_medium() {
        let q = Qos::PerEvent(Template::parse("${@wrp.qos}").unwrap());
        let class = |v: Option<&str>| {
            let mut m = Meta::empty();
            if let Some(v) = v {
                m.insert("wrp.qos", v);
            }
            q.class(&m)
        };
        assert_eq!(class(Some("0")), QosClass::Low);
        assert_eq!(class(Some("24")), QosClass::Low);
        assert_eq!(class(Some("25")), QosClass::Medium);
        assert_eq!(class(Some("74")), QosClass::Medium);
        assert_eq!(class(Some("75")), QosClass::High);
        assert_eq!(class(Some("99")), QosClass::High);
        assert_eq!(class(Some("150")), QosClass::High);
        assert_eq!(class(Some("-3")), QosClass::Low);
        assert_eq!(class(Some("high")), QosClass::High);
        assert_eq!(class(Some("urgent")), QosClass::Medium);
        assert_eq!(class(None), QosClass::Medium);
        assert_eq!(
            Qos::Fixed(QosClass::Low).class(&Meta::empty()),
            QosClass::Low
        );
    }
}

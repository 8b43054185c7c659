//! `kgate check`: the config, the brokers, the topics, the registry and every source, one
//! [`Probe`] per check; the command prints them as they come.

use std::path::Path;
use std::time::Duration;

use crate::config::redact_url;
use crate::gateway::{Config, Gateway};
use crate::kafka::fetch_metadata;
use crate::pipeline::Processor;
use crate::registry::{RegistryClient, RegistryConfig, SchemaCache};
use crate::source::{Probe, ProbeCtx};
use crate::transform::Template;

/// Prints a probe's line (`ok  ` or `FAIL`).
pub fn print(p: &Probe) {
    println!("{} {}", if p.ok { "ok  " } else { "FAIL" }, p.text);
}

/// Runs every check; `each` sees each one as it completes (the command prints it). Returns
/// them all (all passed = all `ok`).
pub async fn check(path: &Path, timeout: Duration, each: &mut dyn FnMut(&Probe)) -> Vec<Probe> {
    let mut out = Vec::new();
    let mut line = |p: Probe, out: &mut Vec<Probe>| {
        each(&p);
        out.push(p);
    };
    let gateway = match Gateway::load(path) {
        Ok(g) => {
            super::log::apply(&g.config.log);
            line(
                Probe::ok(format!(
                    "config {}: {} pipeline(s)",
                    path.display(),
                    g.pipelines.len()
                )),
                &mut out,
            );
            g
        }
        Err(e) => {
            for err in &e.errors {
                line(Probe::fail(format!("config {}: {err}", e.file)), &mut out);
            }
            return out;
        }
    };
    for p in check_kafka(&gateway.config, timeout).await {
        line(p, &mut out);
    }
    if let Some(rc) = &gateway.config.schema_registry {
        for p in check_registry(&gateway, rc).await {
            line(p, &mut out);
        }
    }
    let http_base = gateway.http.as_ref().map(|h| {
        let scheme = if h.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", h.config.listen)
    });
    for plan in &gateway.pipelines {
        let ctx = ProbeCtx {
            pipeline: &plan.spec.name,
            timeout,
            http_base: http_base.as_deref(),
        };
        for p in plan.source.probe(ctx).await {
            line(p, &mut out);
        }
        if let Some(sp) = &plan.spec.spool {
            line(check_spool(&plan.spec.name, sp), &mut out);
        }
    }
    out
}

/// A pipeline's spool: what it holds (produced first at the next start), or that its
/// directory can be made.
fn check_spool(pipeline: &str, sp: &crate::spool::SpoolSpec) -> Probe {
    let dir = sp.dir.display();
    let when = match sp.when {
        crate::spool::SpoolWhen::Always => "always",
        crate::spool::SpoolWhen::Overflow => "overflow",
    };
    if !sp.dir.exists() {
        // The nearest existing ancestor must take a new directory.
        let Some(parent) = sp.dir.ancestors().find(|a| a.exists()) else {
            return Probe::fail(format!(
                "spool {dir} (pipeline {pipeline}): no existing parent directory"
            ));
        };
        let c = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: access(2) reads a NUL-terminated path this function owns.
        let writable = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
        return if writable {
            Probe::ok(format!(
                "spool {dir} (pipeline {pipeline}, when {when}): empty; created at start"
            ))
        } else {
            Probe::fail(format!("spool {dir} (pipeline {pipeline}): {} is not writable; give kgate a `spool.dir` it can write", parent.display()))
        };
    }
    match crate::spool::inspect(&sp.dir) {
        Ok(i) => {
            let bytes: u64 = i.segments.iter().map(|s| s.bytes).sum();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let oldest = i
                .oldest_ms
                .map(|t| format!(", the oldest {}s old", now.saturating_sub(t) / 1000))
                .unwrap_or_default();
            let torn: Vec<String> = i
                .segments
                .iter()
                .filter_map(|s| Some(format!("{} ({})", s.path.display(), s.bad.as_ref()?)))
                .collect();
            let torn = if torn.is_empty() {
                String::new()
            } else {
                format!("; torn tails, cut at start: {}", torn.join(", "))
            };
            let user = i
                .locked_by
                .map(|p| format!("; in use by {p} (a second kgate on it is refused)"))
                .unwrap_or_default();
            Probe::ok(format!(
                "spool {dir} (pipeline {pipeline}, when {when}): {} segment(s), {bytes} bytes, {} unacknowledged record(s){oldest}, produced first at start{torn}{user}",
                i.segments.len(),
                i.unacked
            ))
        }
        Err(e) => Probe::fail(format!("spool (pipeline {pipeline}): {e}")),
    }
}

/// The brokers answer, and each fixed topic exists or will be auto-created.
async fn check_kafka(config: &Config, timeout: Duration) -> Vec<Probe> {
    let mut out = Vec::new();
    let brokers = config.kafka.brokers.join(",");
    match fetch_metadata(&config.kafka, timeout).await {
        Ok(info) => {
            out.push(Probe::ok(format!(
                "kafka {brokers}: {} broker(s) answered: {}",
                info.brokers.len(),
                info.brokers.join(", ")
            )));
            let mut topics: Vec<(String, String)> = Vec::new();
            // A pipeline with a consumer `sink:` writes no topic; one with `topics:` writes
            // its routes' topics.
            for p in config.pipelines.iter().filter(|p| p.sink.is_none()) {
                match &p.topics {
                    None => topics.push((p.topic.clone(), format!("pipelines.{}.topic", p.name))),
                    Some(routes) => {
                        for (i, r) in routes.iter().enumerate() {
                            if let Some(t) = &r.topic {
                                let field = format!("pipelines.{}.topics[{i}].topic", p.name);
                                topics.push((t.clone(), field));
                            }
                            for (j, t) in r.topics.iter().flatten().enumerate() {
                                let field = format!("pipelines.{}.topics[{i}].topics[{j}]", p.name);
                                topics.push((t.clone(), field));
                            }
                        }
                    }
                }
            }
            topics.push((config.dlq.topic.clone(), "dlq.topic".into()));
            topics.extend(config.pipelines.iter().filter_map(|p| {
                let d = p.dlq.as_ref()?;
                Some((d.topic.clone(), format!("pipelines.{}.dlq.topic", p.name)))
            }));
            for (topic, field) in topics {
                let fixed = Template::parse(&topic)
                    .ok()
                    .and_then(|t| t.fixed().map(str::to_string));
                out.push(match (fixed, info.auto_create) {
                    (Some(t), _) if info.topics.contains_key(&t) => Probe::ok(
                        format!("topic {t} ({field}) exists with {} partition(s)", info.topics[&t]),
                    ),
                    (Some(t), Some(true)) => Probe::ok(
                        format!("topic {t} ({field}) does not exist yet; the broker creates it on first write (auto.create.topics.enable=true)"),
                    ),
                    (Some(t), auto) => Probe::fail(
                        format!(
                            "topic {t} ({field}) does not exist{}; create it: kafka-topics.sh --create --topic {t} --bootstrap-server {brokers}",
                            if auto == Some(false) { " and the broker does not auto-create topics" } else { "" }
                        ),
                    ),
                    (None, Some(true)) => Probe::ok(
                        format!("topic template `{topic}` ({field}): topics are made per event; the broker auto-creates them"),
                    ),
                    (None, _) => Probe::ok(
                        format!("topic template `{topic}` ({field}): topics are made per event; make sure each exists (the broker does not auto-create)"),
                    ),
                });
            }
        }
        Err(e) => out.push(Probe::fail(format!("kafka {brokers}: {e}"))),
    }
    out
}

/// The registry answers, each Avro pipeline with a fixed topic finds its subjects, and each
/// `validate: {avro: …}` its subject.
async fn check_registry(gateway: &Gateway, rc: &RegistryConfig) -> Vec<Probe> {
    let mut out = Vec::new();
    let client = match RegistryClient::new(rc) {
        Ok(c) => c,
        Err(e) => {
            out.push(Probe::fail(format!(
                "schema registry {}: {e}",
                redact_url(&rc.url)
            )));
            return out;
        }
    };
    match client.list_subjects().await {
        Ok(s) => out.push(Probe::ok(format!(
            "schema registry {}: {} subject(s)",
            redact_url(&rc.url),
            s.len()
        ))),
        Err(e) => {
            out.push(Probe::fail(format!("schema registry: {e}")));
            return out;
        }
    }
    let cache = SchemaCache::new(client, None);
    for plan in &gateway.pipelines {
        let name = &plan.spec.name;
        let Ok(p) = Processor::from_spec(plan.spec.clone(), Some(cache.clone())) else {
            continue;
        };
        let fixed = p.fixed_topic().map(|t| p.subjects(t)).unwrap_or_default();
        let validate = p.validate_subject().map(str::to_string);
        for (subject, what) in fixed
            .into_iter()
            .map(|s| (s, ""))
            .chain(validate.map(|s| (s, ", validate")))
        {
            out.push(match cache.load(&subject).await {
                Ok(l) => Probe::ok(format!(
                    "schema {subject} (pipeline {name}{what}): version {}, id {}",
                    l.version, l.id
                )),
                Err(e) => Probe::fail(format!("schema (pipeline {name}{what}): {e}")),
            });
        }
    }
    out
}

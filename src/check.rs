//! `kgate check`: the config, the brokers, the topics and every source, one line per check.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{Config, SourceConfig};
use crate::kafka::fetch_metadata;
use crate::transform::Template;

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct CheckLine {
    /// Passed?
    pub ok: bool,
    /// What was checked and what was found.
    pub text: String,
}

fn line(ok: bool, text: impl Into<String>) -> CheckLine {
    let l = CheckLine {
        ok,
        text: text.into(),
    };
    println!("{} {}", if l.ok { "ok  " } else { "FAIL" }, l.text);
    l
}

/// Runs every check, printing as it goes; returns the lines (all passed = all `ok`).
pub async fn check(path: &Path, timeout: Duration) -> Vec<CheckLine> {
    let mut out = Vec::new();
    let config = match Config::load(path) {
        Ok(c) => {
            out.push(line(
                true,
                format!(
                    "config {}: {} pipeline(s)",
                    path.display(),
                    c.pipelines.len()
                ),
            ));
            c
        }
        Err(e) => {
            for err in &e.errors {
                out.push(line(false, format!("config {}: {err}", e.file)));
            }
            return out;
        }
    };

    let brokers = config.kafka.brokers.join(",");
    match fetch_metadata(&config.kafka, timeout).await {
        Ok(info) => {
            out.push(line(
                true,
                format!(
                    "kafka {brokers}: {} broker(s) answered: {}",
                    info.brokers.len(),
                    info.brokers.join(", ")
                ),
            ));
            let mut topics: Vec<(String, String)> = config
                .pipelines
                .iter()
                .map(|p| (p.topic.clone(), format!("pipelines.{}.topic", p.name)))
                .collect();
            topics.push((config.dlq.topic.clone(), "dlq.topic".into()));
            for (topic, field) in topics {
                let fixed = Template::parse(&topic)
                    .ok()
                    .and_then(|t| t.fixed().map(str::to_string));
                match (fixed, info.auto_create) {
                    (Some(t), _) if info.topics.contains_key(&t) => out.push(line(
                        true,
                        format!("topic {t} ({field}) exists with {} partition(s)", info.topics[&t]),
                    )),
                    (Some(t), Some(true)) => out.push(line(
                        true,
                        format!("topic {t} ({field}) does not exist yet; the broker creates it on first write (auto.create.topics.enable=true)"),
                    )),
                    (Some(t), auto) => out.push(line(
                        false,
                        format!(
                            "topic {t} ({field}) does not exist{}; create it: kafka-topics.sh --create --topic {t} --bootstrap-server {brokers}",
                            if auto == Some(false) { " and the broker does not auto-create topics" } else { "" }
                        ),
                    )),
                    (None, Some(true)) => out.push(line(
                        true,
                        format!("topic template `{topic}` ({field}): topics are made per event; the broker auto-creates them"),
                    )),
                    (None, _) => out.push(line(
                        true,
                        format!("topic template `{topic}` ({field}): topics are made per event; make sure each exists (the broker does not auto-create)"),
                    )),
                }
            }
        }
        Err(e) => out.push(line(false, format!("kafka {brokers}: {e}"))),
    }

    if let Some(rc) = &config.schema_registry {
        out.extend(check_registry(&config, rc).await);
    }

    for p in &config.pipelines {
        match &p.source {
            SourceConfig::Websocket(ws) => {
                for url in &ws.urls {
                    let started = Instant::now();
                    let r = tokio::time::timeout(
                        timeout,
                        tokio_tungstenite::connect_async(url.as_str()),
                    )
                    .await;
                    match r {
                        Ok(Ok((mut s, _))) => {
                            let _ = s.close(None).await;
                            out.push(line(
                                true,
                                format!("websocket {url} (pipeline {}): connected in {} ms", p.name, started.elapsed().as_millis()),
                            ));
                        }
                        Ok(Err(e)) => out.push(line(
                            false,
                            format!("websocket {url} (pipeline {}): cannot connect: {e}; is the feed running at that address?", p.name),
                        )),
                        Err(_) => out.push(line(
                            false,
                            format!("websocket {url} (pipeline {}): no answer within {timeout:?}", p.name),
                        )),
                    }
                }
            }
            SourceConfig::DeviceWebsocket(d) => {
                // Binding tells whether `kgate run` could listen there (and frees it at once).
                let ok = tokio::net::TcpListener::bind(d.listen.as_str()).await;
                out.push(match ok {
                    Ok(_) => line(
                        true,
                        format!("device websocket {} (pipeline {}): address is free; devices connect to ws://{}{}", d.listen, p.name, d.listen, d.path),
                    ),
                    Err(e) => line(
                        false,
                        format!("device websocket {} (pipeline {}): cannot listen: {e}; is kgate (or something else) already on that address?", d.listen, p.name),
                    ),
                });
            }
            SourceConfig::Http(_) => {
                let (scheme, listen) = config
                    .http
                    .as_ref()
                    .map(|h| {
                        (
                            if h.tls.is_some() { "https" } else { "http" },
                            h.listen.as_str(),
                        )
                    })
                    .unwrap_or(("http", "?"));
                out.push(line(
                    true,
                    format!(
                        "http (pipeline {}): POST {scheme}://{listen}/ingest/{}",
                        p.name, p.name
                    ),
                ));
            }
            SourceConfig::Mqtt(m) => {
                let r = crate::source::mqtt::probe(m, &p.name, timeout).await;
                out.push(line(
                    r.is_ok(),
                    format!(
                        "mqtt {} (pipeline {}): {}",
                        m.url,
                        p.name,
                        r.unwrap_or_else(|e| e)
                    ),
                ));
            }
        }
    }
    out
}

/// The registry answers, and each Avro pipeline with a fixed topic finds its subjects.
async fn check_registry(config: &Config, rc: &crate::registry::RegistryConfig) -> Vec<CheckLine> {
    let mut out = Vec::new();
    let client = match crate::registry::RegistryClient::new(rc) {
        Ok(c) => c,
        Err(e) => {
            out.push(line(false, format!("schema registry {}: {e}", rc.url)));
            return out;
        }
    };
    match client.list_subjects().await {
        Ok(s) => out.push(line(
            true,
            format!("schema registry {}: {} subject(s)", rc.url, s.len()),
        )),
        Err(e) => {
            out.push(line(false, format!("schema registry: {e}")));
            return out;
        }
    }
    let cache = crate::schema_cache::SchemaCache::new(client, None);
    for pc in &config.pipelines {
        let Ok(p) = crate::pipeline::Processor::with_schemas(pc, Some(cache.clone())) else {
            continue;
        };
        let Some(topic) = p.fixed_topic() else {
            continue;
        };
        for subject in p.subjects(topic) {
            out.push(match cache.load(&subject).await {
                Ok(l) => line(
                    true,
                    format!(
                        "schema {subject} (pipeline {}): version {}, id {}",
                        pc.name, l.version, l.id
                    ),
                ),
                Err(e) => line(false, format!("schema (pipeline {}): {e}", pc.name)),
            });
        }
    }
    out
}

//! What a reload does to a running `kgate run`: what triggers one (SIGHUP, `--watch`, `POST
//! /-/reload`), the comparison of the file's sections with what runs (the pipelines by name,
//! the sections that need a restart), and the reload itself (`Runtime::reload`): pipelines
//! stopped, drained and started again, the shared producer swapped; its `Outcome` answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{
    dlq_topics, hash_bytes, load, pipeline_sections, start_unit, watch_brokers, Counts, Loaded,
    Reloads, Runtime, State, Unit,
};
use crate::gateway::Gateway;
use crate::metrics;
use crate::registry::{RegistryClient, SchemaCache};
use crate::sink::{KafkaSink, Sink};

/// How often `--watch` looks at the config file.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Top-level sections that cannot change while running, with the reason.
const NEEDS_RESTART: &[&str] = &["metrics", "http", "ui"];

/// What one reload did (the `POST /-/reload` answer's body).
#[derive(Debug, Default, serde::Serialize)]
struct Outcome {
    result: &'static str,
    trigger: String,
    kept: Vec<String>,
    restarted: Vec<String>,
    added: Vec<String>,
    removed: Vec<String>,
    producer_swapped: bool,
    /// Fields that changed but apply only at the next start.
    needs_restart: Vec<String>,
    /// Pipelines that did not start again (with why); they stay stopped until a good reload.
    failed: Vec<String>,
    /// Records of stopped pipelines not settled within `shutdown_timeout`.
    unsettled: i64,
}

/// Of the sections that cannot change while running (`metrics:` but its `reload_token`,
/// `http:`, `ui:`, `log.format`): the fields that changed, and `new` (value and config) with
/// the running values put back, so that the next reload compares with what runs (and reports
/// them again until a restart).
fn hold_fixed_sections(
    running: &crate::gateway::Config,
    old: &serde_json::Value,
    new: &serde_json::Value,
    new_config: &mut crate::gateway::Config,
) -> (Vec<String>, serde_json::Value) {
    let mut needs = Vec::new();
    for key in NEEDS_RESTART {
        let mut fields = changed_fields(key, section(old, key), section(new, key));
        fields.retain(|f| f != "metrics.reload_token");
        needs.extend(fields);
    }
    let format_changed =
        section(section(old, "log"), "format") != section(section(new, "log"), "format");
    if format_changed {
        needs.push("log.format".to_string());
    }
    let mut next = new.clone();
    let Some(root) = next.as_object_mut() else {
        return (needs, next);
    };
    let restore = |root: &mut serde_json::Map<String, serde_json::Value>,
                   key: &str,
                   v: &serde_json::Value| {
        if v.is_null() {
            root.remove(key);
        } else {
            root.insert(key.to_string(), v.clone());
        }
    };
    restore(root, "http", section(old, "http"));
    restore(root, "ui", section(old, "ui"));
    // `metrics:` as running, with the new token.
    let mut metrics = section(old, "metrics").clone();
    if metrics.is_null() {
        metrics = serde_json::json!({});
    }
    if let Some(m) = metrics.as_object_mut() {
        match section(new, "metrics").get("reload_token") {
            Some(t) => m.insert("reload_token".into(), t.clone()),
            None => m.remove("reload_token"),
        };
    }
    if metrics.as_object().is_some_and(|m| m.is_empty()) && section(old, "metrics").is_null() {
        root.remove("metrics");
    } else {
        root.insert("metrics".into(), metrics);
    }
    if format_changed {
        let format = section(section(old, "log"), "format").clone();
        if let Some(log) = root.get_mut("log").and_then(|l| l.as_object_mut()) {
            restore(log, "format", &format);
        }
        new_config.log.format = running.log.format;
    }
    let token = new_config.metrics.reload_token.clone();
    new_config.metrics = running.metrics.clone();
    new_config.metrics.reload_token = token;
    new_config.http = running.http.clone();
    new_config.ui = running.ui.clone();
    (needs, next)
}

/// The fields under `key` that differ between `old` and `new` (`metrics.listen`), or `key`
/// itself when it is not a mapping on both sides.
fn changed_fields(key: &str, old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    match (old.as_object(), new.as_object()) {
        (Some(o), Some(n)) => {
            let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| o.get(*k) != n.get(*k))
                .map(|k| format!("{key}.{k}"))
                .collect()
        }
        _ if old != new => vec![key.to_string()],
        _ => vec![],
    }
}

fn section<'a>(v: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    v.get(key).unwrap_or(&serde_json::Value::Null)
}

impl Runtime {
    /// SIGHUP and `--watch`: each asks the runtime for one reload (they queue on its lock).
    pub(super) fn spawn_triggers(
        self: &Arc<Self>,
        reloads: Reloads,
        hash: u64,
        shutdown: CancellationToken,
    ) {
        let Reloads {
            path,
            watch,
            mut hangups,
        } = reloads;
        let r = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    got = hangups.recv() => match got {
                        Some(()) => { r.reload("SIGHUP").await; }
                        None => return,
                    },
                }
            }
        });
        if !watch {
            return;
        }
        tracing::info!(file = %path.display(), "watching the config file for changes");
        let rt = self.clone();
        tokio::spawn(async move {
            // What was loaded last, and what the previous look saw: a change is reloaded once its
            // content stayed the same for one look (an editor's write in several steps, or its
            // rename over the file, is read whole).
            let mut loaded = hash;
            let mut seen = hash;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                }
                let Ok(bytes) = tokio::fs::read(&path).await else {
                    continue;
                };
                let now = hash_bytes(&bytes);
                if now != loaded && now == seen {
                    loaded = now;
                    rt.reload("--watch").await;
                }
                seen = now;
            }
        });
    }

    /// Serves `POST /-/reload` with the token of `config` (called again after each reload).
    pub(super) fn arm_endpoint(self: &Arc<Self>, config: &crate::gateway::Config) {
        let rt = Arc::downgrade(self);
        let hook: metrics::ReloadHook = Arc::new(move || {
            let rt = rt.clone();
            Box::pin(async move {
                match rt.upgrade() {
                    Some(rt) => rt.reload("POST /-/reload").await,
                    None => metrics::ReloadAnswer {
                        status: 503,
                        body: serde_json::json!({"error": "kgate is stopping"}),
                    },
                }
            })
        });
        self.env
            .metrics
            .set_reload(hook, config.metrics.reload_token.clone());
    }

    /// Loads the file again and applies what changed; the answer for `POST /-/reload`.
    async fn reload(self: &Arc<Self>, trigger: &str) -> metrics::ReloadAnswer {
        let mut st = self.state.lock().await;
        if st.stopped {
            return metrics::ReloadAnswer {
                status: 503,
                body: serde_json::json!({"error": "kgate is stopping"}),
            };
        }
        let loaded = match load(&self.path) {
            Ok(l) => l,
            Err(e) => {
                self.env
                    .metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(
                    trigger,
                    errors = e.errors.len(),
                    "config reload refused; the running config stays"
                );
                for err in &e.errors {
                    tracing::error!(trigger, "{}: {err}", e.file);
                }
                return metrics::ReloadAnswer {
                    status: 422,
                    body: serde_json::json!({
                        "result": "rejected",
                        "errors": e.errors.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
                        "text": e.to_string(),
                    }),
                };
            }
        };
        let out = self.apply(&mut st, loaded, trigger).await;
        let status = if out.failed.is_empty() { 200 } else { 500 };
        self.env
            .metrics
            .config_reloads
            .with_label_values(&[out.result])
            .inc();
        metrics::ReloadAnswer {
            status,
            body: serde_json::to_value(&out).unwrap_or_default(),
        }
    }

    async fn apply(self: &Arc<Self>, st: &mut State, loaded: Loaded, trigger: &str) -> Outcome {
        let Loaded {
            gateway,
            value: new_value,
            ..
        } = loaded;
        let Gateway {
            config: mut new_config,
            pipelines: plans,
            ..
        } = gateway;
        let old_value = st.value.clone();
        let changed = |key: &str| section(&old_value, key) != section(&new_value, key);
        let mut out = Outcome {
            trigger: trigger.to_string(),
            ..Default::default()
        };
        let (needs_restart, next_value) =
            hold_fixed_sections(&st.config, &old_value, &new_value, &mut new_config);
        out.needs_restart = needs_restart;
        if changed("log") {
            crate::cmd::log::apply_level(&new_config.log);
        }

        let swap = changed("kafka") || changed("dlq");
        let restart_all = changed("schema_registry") || changed("dlq");
        let kafka_changed = changed("kafka");
        // The fallible parts first, before anything stops.
        let new_schemas = if changed("schema_registry") {
            match &new_config.schema_registry {
                Some(rc) => match RegistryClient::new(rc) {
                    Ok(c) => Some(Some(SchemaCache::new(c, Some(self.env.metrics.clone())))),
                    Err(e) => {
                        out.failed.push(format!("schema_registry: {e}"));
                        None
                    }
                },
                None => Some(None),
            }
        } else {
            None
        };
        let new_producer = if swap {
            match KafkaSink::new(
                &new_config.kafka,
                &new_config.dlq.topic,
                self.env.metrics.clone(),
            ) {
                Ok(p) => Some(p),
                Err(e) => {
                    out.failed.push(format!("kafka: {e}"));
                    None
                }
            }
        } else {
            None
        };
        if !out.failed.is_empty() {
            out.result = "rejected";
            tracing::error!(trigger, failed = ?out.failed, "config reload refused; the running config stays");
            return out;
        }

        // Which pipelines stop, which start.
        let new_sections = pipeline_sections(&new_value);
        let mut stopping: Vec<Unit> = Vec::new();
        let mut kept: Vec<Unit> = Vec::new();
        for u in std::mem::take(&mut st.units) {
            match new_sections.get(&*u.name) {
                None => {
                    out.removed.push(u.name.to_string());
                    stopping.push(u);
                }
                Some(s)
                    if *s != u.section
                        || restart_all
                        || (kafka_changed && u.uses_kafka_clients) =>
                {
                    out.restarted.push(u.name.to_string());
                    stopping.push(u);
                }
                Some(_) => {
                    out.kept.push(u.name.to_string());
                    kept.push(u);
                }
            }
        }
        let to_start: Vec<crate::gateway::PipelinePlan> = plans
            .into_iter()
            .filter(|p| !out.kept.iter().any(|k| *k == *p.spec.name))
            .collect();
        for p in &to_start {
            if !out.restarted.iter().any(|r| *r == *p.spec.name) {
                out.added.push(p.spec.name.to_string());
            }
        }
        if !self.http_served {
            for p in &to_start {
                if new_config
                    .pipelines
                    .iter()
                    .any(|c| *c.name == *p.spec.name && c.source.kind().served_over_http())
                {
                    out.needs_restart
                        .push(format!("http (pipeline {} is fed over HTTP)", p.spec.name));
                }
            }
        }
        let timeout = new_config.shutdown_timeout;
        if let Some(s) = new_schemas {
            st.refresher_stop.cancel();
            st.refresher_stop = st.background_stop.child_token();
            if let (Some(cache), Some(rc)) = (&s, &new_config.schema_registry) {
                cache.spawn_refresher(rc.refresh, st.refresher_stop.clone());
            }
            st.schemas = s;
        }
        let dlq_topics = dlq_topics(&new_config);
        // An HTTP pipeline without a spool is handed over: the new one takes its route first
        // (no request finds it missing), then the old one drains the requests it has. The
        // others stop first (a feed, a consumer group, a spool's directory are theirs alone).
        let handed_over = |p: &crate::gateway::PipelinePlan| {
            p.spec.spool.is_none()
                && new_config
                    .pipelines
                    .iter()
                    .any(|c| *c.name == *p.spec.name && c.source.kind().served_over_http())
        };
        let (early, late): (Vec<_>, Vec<_>) = to_start.into_iter().partition(handed_over);
        let mut started = Vec::new();
        for plan in early {
            match self
                .start_planned(plan, &new_sections, &dlq_topics, &new_config, st, &mut out)
                .await
            {
                Ok(u) => started.push(u),
                Err(name) => {
                    // Its old self keeps serving.
                    if let Some(i) = stopping.iter().position(|u| *u.name == *name) {
                        let u = stopping.remove(i);
                        out.restarted.retain(|r| *r != *name);
                        kept.push(u);
                    }
                }
            }
        }
        // Stop the changed and removed ones, each drained (together, within the timeout).
        let stopped = futures_util::future::join_all(
            stopping.into_iter().map(|u| self.stop_unit(u, timeout)),
        )
        .await;
        for (left, counts) in stopped {
            out.unsettled += left;
            st.retired.add(counts);
        }
        if let Some(p) = new_producer {
            match self.swap_producer(p, timeout).await {
                Ok(c) => {
                    st.retired.add(c);
                    out.producer_swapped = true;
                    st.brokers_stop.cancel();
                    st.brokers_stop = st.background_stop.child_token();
                    watch_brokers(
                        new_config.kafka.clone(),
                        self.env.metrics.clone(),
                        st.brokers_stop.clone(),
                    );
                }
                Err(e) => out.failed.push(format!("kafka: {e}")),
            }
        }
        for plan in late {
            if let Ok(u) = self
                .start_planned(plan, &new_sections, &dlq_topics, &new_config, st, &mut out)
                .await
            {
                started.push(u);
            }
        }
        let mut units: Vec<Unit> = kept.into_iter().chain(started).collect();
        let order: Vec<&str> = new_config
            .pipelines
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        units.sort_by_key(|u| {
            order
                .iter()
                .position(|n| *n == &*u.name)
                .unwrap_or(usize::MAX)
        });
        st.units = units;
        st.config = new_config;
        st.value = next_value;
        self.arm_endpoint(&st.config);
        let nothing = out.restarted.is_empty()
            && out.added.is_empty()
            && out.removed.is_empty()
            && !out.producer_swapped
            && old_value == new_value;
        out.result = if nothing { "unchanged" } else { "applied" };
        for f in &out.needs_restart {
            tracing::warn!(
                trigger,
                "config: `{f}` changed and needs a restart of kgate to apply"
            );
        }
        tracing::info!(
            trigger,
            kept = ?out.kept,
            restarted = ?out.restarted,
            added = ?out.added,
            removed = ?out.removed,
            producer_swapped = out.producer_swapped,
            unsettled = out.unsettled,
            "config reloaded: {}",
            out.result
        );
        out
    }

    /// Starts one pipeline of a reload; a failure is logged and put in `out.failed`, and its
    /// name returned.
    async fn start_planned(
        &self,
        plan: crate::gateway::PipelinePlan,
        sections: &HashMap<String, serde_json::Value>,
        dlq_topics: &[String],
        config: &crate::gateway::Config,
        st: &State,
        out: &mut Outcome,
    ) -> Result<Unit, Arc<str>> {
        let name = plan.spec.name.clone();
        let sec = sections.get(&*name).cloned().unwrap_or_default();
        start_unit(
            &self.env,
            plan,
            sec,
            dlq_topics,
            config,
            st.schemas.as_ref(),
        )
        .await
        .map_err(|e| {
            tracing::error!(pipeline = %name, "pipeline did not start after the reload: {e:#}");
            out.failed.push(format!("pipeline {name}: {e:#}"));
            name.clone()
        })
    }

    /// Stops one pipeline for a reload: its route goes, its source stops (handing over what
    /// it read) while its consumer sink flushes, requests in flight on its route finish, then
    /// everything it accepted settles (its spool drains like at shutdown), within `timeout`.
    /// Returns what was left unsettled and what its own sinks counted.
    async fn stop_unit(&self, mut u: Unit, timeout: Duration) -> (i64, Counts) {
        let deadline = Instant::now() + timeout;
        if let Some(r) = &u.route {
            // Unless a new pipeline of the same name took the route already.
            let mut table = self.env.routes.write().unwrap_or_else(|e| e.into_inner());
            if table.get(&*u.name).is_some_and(|t| Arc::ptr_eq(t, r)) {
                table.remove(&*u.name);
            }
        }
        u.stop.cancel();
        let flush = async {
            match &u.deliver {
                Some(d) => d.drain(timeout).await.max(0),
                None => 0,
            }
        };
        let tasks = &mut u.tasks;
        let (mut left, joined) = tokio::join!(
            flush,
            tokio::time::timeout_at(deadline.into(), async {
                while tasks.join_next().await.is_some() {}
            })
        );
        if joined.is_err() {
            tracing::warn!(pipeline = %u.name, "its source did not stop in time (is Kafka down with the buffer full?)");
            u.tasks.abort_all();
        }
        // An HTTP request holds its pipeline until answered.
        if let Some(r) = u.route.take() {
            while Arc::strong_count(&r) > 1 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let rest = || deadline.saturating_duration_since(Instant::now());
        for s in u.spool.iter().chain(u.txn.iter()) {
            left += s.drain(rest()).await.max(0);
        }
        if let Some(p) = &u.on_producer {
            left += p.drain(rest()).await.max(0);
        }
        let mut counts = Counts::default();
        if let Some(t) = &u.txn {
            counts.add(Counts::of_kafka(&**t));
        }
        if let Some(d) = &u.deliver {
            counts.add(Counts::of_consumer(&**d));
        }
        tracing::info!(pipeline = %u.name, unsettled = left, "pipeline stopped for the reload");
        (left, counts)
    }

    /// Puts `new` in place of the shared producer: new sends wait while the old one's records
    /// settle and it flushes (within `timeout`); returns what the old one counted.
    async fn swap_producer(
        &self,
        new: Arc<KafkaSink>,
        timeout: Duration,
    ) -> Result<Counts, String> {
        let started = Instant::now();
        let mut current = tokio::time::timeout(timeout, self.env.producer.current.write())
            .await
            .map_err(|_| format!("sends into the old producer did not finish within {timeout:?}; the producer was not swapped"))?;
        let left = current
            .drain(timeout.saturating_sub(started.elapsed()))
            .await;
        let old = std::mem::replace(&mut *current, new);
        drop(current);
        let counts = Counts::of_kafka(&*old);
        tracing::info!(
            unsettled = left,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "producer swapped: the old one flushed, the new one takes the records"
        );
        // librdkafka's teardown blocks: not on a runtime thread.
        tokio::task::spawn_blocking(move || drop(old));
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::run::tests::value;

    #[test]
    fn changed_fields_name_each_key() {
        let old = value("metrics: {listen: '0.0.0.0:9000', max_connections: 5}", &[]);
        let new = value(
            "metrics: {listen: '0.0.0.0:9100', max_connections: 5, enabled: true}",
            &[],
        );
        assert_eq!(
            changed_fields(
                "metrics",
                section(&old, "metrics"),
                section(&new, "metrics")
            ),
            vec!["metrics.enabled".to_string(), "metrics.listen".to_string()]
        );
        assert!(changed_fields("ui", section(&old, "ui"), section(&new, "ui")).is_empty());
        assert_eq!(
            changed_fields(
                "http",
                section(&old, "http"),
                &serde_json::json!({"listen": "x"})
            ),
            vec!["http".to_string()]
        );
    }

    fn config(yaml: &str) -> crate::gateway::Config {
        crate::gateway::Config::from_yaml_str(yaml, "kgate.yaml", &|_| None).unwrap()
    }

    #[test]
    fn fixed_sections_are_reported_and_kept_as_running() {
        let base = "pipelines: [{name: a, source: {http: {}}, topic: a}]\nhttp: {listen: '127.0.0.1:8082'}\n";
        let old_yaml =
            format!("{base}metrics: {{listen: '127.0.0.1:9000'}}\nlog: {{level: info}}\n");
        let new_yaml = format!("{base}metrics: {{listen: '127.0.0.1:9100', reload_token: 'abcdefghijklmnop'}}\nlog: {{level: debug, format: json}}\n");
        let running = config(&old_yaml);
        let mut new_config = config(&new_yaml);
        let (old, new) = (value(&old_yaml, &[]), value(&new_yaml, &[]));
        let (needs, next) = hold_fixed_sections(&running, &old, &new, &mut new_config);
        assert_eq!(
            needs,
            vec!["metrics.listen".to_string(), "log.format".to_string()]
        );
        // The listener as running, the token and the level as new.
        assert_eq!(next["metrics"]["listen"], "127.0.0.1:9000");
        assert_eq!(next["metrics"]["reload_token"], "abcdefghijklmnop");
        assert_eq!(next["log"]["level"], "debug");
        assert!(next["log"].get("format").is_none());
        assert_eq!(new_config.metrics.listen, "127.0.0.1:9000");
        assert!(new_config.metrics.reload_token.is_some());
        assert_eq!(new_config.log.format, running.log.format);
        // Compared again, only what still differs from the running config is reported.
        let mut again = config(&new_yaml);
        let (needs, _) = hold_fixed_sections(&new_config, &next, &new, &mut again);
        assert_eq!(
            needs,
            vec!["metrics.listen".to_string(), "log.format".to_string()]
        );
        let (needs, _) = hold_fixed_sections(&new_config, &next, &next, &mut again);
        assert!(needs.is_empty(), "{needs:?}");
    }
}

//! The schemas a running gateway encodes with: the latest version of each subject, fetched from
//! the registry at start, kept in memory, and refreshed every `schema_registry.refresh` so that a
//! newly registered version is used without a restart. A refresh that fails keeps the cached
//! schema (logged and counted, never fatal). Schemas by id (for decoding) never change, so they
//! are cached for good.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::avro;
use crate::metrics::Metrics;
use crate::registry::{RegistryClient, Version};

/// The latest version of a subject, compiled.
#[derive(Debug)]
pub struct Latest {
    /// The subject.
    pub subject: String,
    /// The schema id written into each record (Confluent wire format).
    pub id: u32,
    /// The subject's version.
    pub version: i64,
    /// The compiled schema.
    pub schema: Arc<avro::Schema>,
}

/// Subjects → latest schema, and ids → schema.
pub struct SchemaCache {
    client: RegistryClient,
    subjects: RwLock<HashMap<String, Arc<Latest>>>,
    by_id: RwLock<HashMap<u32, Arc<avro::Schema>>>,
    /// Subjects that could not be loaded lately, so that a stream of records for them does
    /// not become a stream of registry requests.
    failed: Mutex<Failed>,
    /// (subject, schema text) → id of schemas registered through [`SchemaCache::register`], so
    /// that a client sending the same schema text with every request (the REST Proxy's
    /// `value_schema`) costs one registry call, not one per request.
    registered: RwLock<HashMap<(String, String), u32>>,
    metrics: Option<Arc<Metrics>>,
}

/// Why [`SchemaCache::register`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// The text is not an Avro schema kgate can use (nothing was sent to the registry).
    Invalid(String),
    /// The registry refused it (incompatible, …) or could not be reached.
    Registry(String),
}

/// At most this many (subject, text) pairs are remembered; beyond, the map starts over (a
/// client sending ever-new schema texts must not grow it without bound).
const MAX_REGISTERED: usize = 10_000;

/// How long a failed subject load is remembered before the registry is asked again.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(5);

/// At most this many failed subjects are remembered (subjects follow templated topics, which
/// input chooses within `topics_allowed`): when full, the expired ones go, then the oldest.
const MAX_FAILED: usize = 1000;

type Failed = HashMap<String, (Instant, String)>;

/// Remembers that `subject` failed with `e` at `now`, keeping `failed` within `max` entries.
fn remember_failure(failed: &mut Failed, subject: &str, e: &str, now: Instant, max: usize) {
    if !failed.contains_key(subject) && failed.len() >= max {
        failed.retain(|_, (at, _)| now.saturating_duration_since(*at) < RETRY_FAILED_AFTER);
        if failed.len() >= max {
            let oldest = failed
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                failed.remove(&k);
            }
        }
    }
    failed.insert(subject.to_string(), (now, e.to_string()));
}

impl SchemaCache {
    /// A cache over `client`; `metrics` counts refresh failures.
    pub fn new(client: RegistryClient, metrics: Option<Arc<Metrics>>) -> Arc<SchemaCache> {
        Arc::new(SchemaCache {
            client,
            subjects: RwLock::new(HashMap::new()),
            by_id: RwLock::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            registered: RwLock::new(HashMap::new()),
            metrics,
        })
    }

    /// The registry client.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// The cached latest version of `subject`, if loaded.
    pub fn get(&self, subject: &str) -> Option<Arc<Latest>> {
        self.subjects
            .read()
            .expect("schema cache lock")
            .get(subject)
            .cloned()
    }

    async fn fetch(&self, subject: &str) -> Result<Arc<Latest>, String> {
        let r = self
            .client
            .get_version(subject, Version::Latest)
            .await
            .map_err(|e| e.to_string())?;
        let schema = avro::Schema::parse(&r.schema).map_err(|e| {
            format!(
                "subject {subject} version {} (id {}) is not an Avro schema kgate can use: {e}",
                r.version, r.id
            )
        })?;
        Ok(Arc::new(Latest {
            subject: subject.to_string(),
            id: r.id,
            version: i64::from(r.version),
            schema: Arc::new(schema),
        }))
    }

    /// Fetches the latest version of `subject` and caches it (also when it is cached already).
    pub async fn load(&self, subject: &str) -> Result<Arc<Latest>, String> {
        let l = self.fetch(subject).await?;
        self.by_id
            .write()
            .expect("schema cache lock")
            .insert(l.id, l.schema.clone());
        self.subjects
            .write()
            .expect("schema cache lock")
            .insert(subject.to_string(), l.clone());
        Ok(l)
    }

    /// [`SchemaCache::load`], but a subject that failed in the last few seconds fails again
    /// at once without asking the registry.
    pub async fn load_throttled(&self, subject: &str) -> Result<Arc<Latest>, String> {
        if let Some((at, e)) = self.failed.lock().expect("lock").get(subject) {
            if at.elapsed() < RETRY_FAILED_AFTER {
                return Err(e.clone());
            }
        }
        let r = self.load(subject).await;
        let mut failed = self.failed.lock().expect("lock");
        match &r {
            Ok(_) => {
                failed.remove(subject);
            }
            Err(e) => {
                remember_failure(&mut failed, subject, e, Instant::now(), MAX_FAILED);
            }
        }
        r
    }

    /// Re-fetches every cached subject; a failure keeps the cached version.
    pub async fn refresh(&self) {
        let subjects: Vec<(String, u32)> = self
            .subjects
            .read()
            .expect("schema cache lock")
            .values()
            .map(|l| (l.subject.clone(), l.id))
            .collect();
        for (subject, old) in subjects {
            match self.load(&subject).await {
                Ok(l) if l.id != old => tracing::info!(
                    subject = %subject, version = l.version, id = l.id, previous_id = old,
                    "a new schema version is in use"
                ),
                Ok(_) => {}
                Err(e) => {
                    if let Some(m) = &self.metrics {
                        m.schema_refresh_errors.with_label_values(&[&subject]).inc();
                    }
                    tracing::warn!(subject = %subject, "schema refresh failed, still using id {old}: {e}");
                }
            }
        }
    }

    /// Refreshes every `every` until `stop`.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => cache.refresh().await,
                }
            }
        });
    }

    /// The schema with registry id `id` (cached for good: ids are immutable).
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<avro::Schema>, String> {
        if let Some(s) = self.by_id.read().expect("schema cache lock").get(&id) {
            return Ok(s.clone());
        }
        let text = self
            .client
            .schema_by_id(id)
            .await
            .map_err(|e| e.to_string())?;
        let s = Arc::new(
            avro::Schema::parse(&text)
                .map_err(|e| format!("schema id {id} is not an Avro schema: {e}"))?,
        );
        self.by_id
            .write()
            .expect("schema cache lock")
            .insert(id, s.clone());
        Ok(s)
    }

    /// Registers the Avro schema `text` under `subject`, or finds it there (registering a text
    /// the subject already has returns the existing id), and returns the id with the compiled
    /// schema (cached by id). The text is parsed first, so that an invalid schema is answered
    /// without a registry call; a (subject, text) pair seen before is answered from memory.
    pub async fn register(
        &self,
        subject: &str,
        text: &str,
    ) -> Result<(u32, Arc<avro::Schema>), RegisterError> {
        let key = (subject.to_string(), text.to_string());
        let known = self
            .registered
            .read()
            .expect("schema cache lock")
            .get(&key)
            .copied();
        if let Some(id) = known {
            if let Some(s) = self.by_id.read().expect("schema cache lock").get(&id) {
                return Ok((id, s.clone()));
            }
        }
        let schema = Arc::new(avro::Schema::parse(text).map_err(RegisterError::Invalid)?);
        let id = self
            .client
            .register(subject, text)
            .await
            .map_err(|e| RegisterError::Registry(e.to_string()))?;
        // Ids are immutable: a schema already cached under this id is the same schema.
        let schema = self
            .by_id
            .write()
            .expect("schema cache lock")
            .entry(id)
            .or_insert(schema)
            .clone();
        let mut reg = self.registered.write().expect("schema cache lock");
        if reg.len() >= MAX_REGISTERED {
            reg.clear();
        }
        reg.insert(key, id);
        Ok((id, schema))
    }

    /// Caches `schema` as the one with id `id`, as if fetched (for tests without a registry).
    #[cfg(test)]
    pub(crate) fn insert_by_id(&self, id: u32, schema: avro::Schema) {
        self.by_id
            .write()
            .expect("schema cache lock")
            .insert(id, Arc::new(schema));
    }

    /// Decodes a Confluent wire-format record (magic byte, schema id, Avro body) to JSON.
    pub async fn decode(&self, bytes: &[u8]) -> Result<(u32, Value), String> {
        let (id, body) = avro::unframe(bytes)?;
        let schema = self.schema_by_id(id).await?;
        Ok((id, schema.decode(body)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_subjects_are_bounded() {
        let mut failed = Failed::new();
        let t0 = Instant::now();
        for i in 0..10 {
            let at = t0 + Duration::from_millis(i);
            remember_failure(&mut failed, &format!("s{i}-value"), "404", at, 4);
            assert!(failed.len() <= 4);
        }
        // The newest stay; the oldest went.
        assert!(failed.contains_key("s9-value") && !failed.contains_key("s0-value"));
        // Expired entries go first, all at once.
        let later = t0 + RETRY_FAILED_AFTER + Duration::from_secs(1);
        remember_failure(&mut failed, "new-value", "404", later, 4);
        assert_eq!(failed.len(), 1);
        // A subject already there is only updated.
        remember_failure(&mut failed, "new-value", "500", later, 1);
        assert_eq!(failed["new-value"].1, "500");
    }
}

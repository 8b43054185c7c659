//! `pipelines[].spool:` — a pipeline's disk spool as written, and its checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{OnFull, SpoolOptions};
use crate::config::{At, ByteSize, ConfigError};

/// `pipelines[].spool:` — keep accepted records on disk: through a crash (`when: always`) or
/// a Kafka outage (`when: overflow`). See the README's "Disk spool".
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The spool's directory; each pipeline writes its own `<dir>/<pipeline name>/`, locked
    /// while one kgate uses it. A relative path is relative to the config file.
    pub dir: PathBuf,
    /// The most the pipeline's spool holds on disk, e.g. `10GiB` (at least 1MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// `always`: every accepted record is written to disk before it goes to Kafka (a killed
    /// kgate loses none), and after a crash the records Kafka had not acknowledged are
    /// produced again first.
    /// `overflow`: records go to Kafka from memory; only when the memory buffer is full
    /// (Kafka down or slow) do they go to disk, to be produced in order when Kafka is back.
    #[serde(default)]
    pub when: SpoolWhen,
    /// How often written records are fsynced together (group commit): a power loss can take
    /// at most the records of the last interval that Kafka did not hold yet.
    #[schemars(with = "crate::config::HumanDuration")]
    #[serde(default = "default_fsync", with = "humantime_serde")]
    pub fsync: Duration,
    /// When the spool holds `max_bytes`: `block` (the source waits for Kafka to take older
    /// records), `drop_oldest` (the oldest segment of records not yet in Kafka is deleted,
    /// and counted) or `drop_newest` (the new record is dropped, and counted).
    #[serde(default)]
    pub on_full: OnFull,
}

/// When records go to the spool.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SpoolWhen {
    /// Every record, before Kafka (crash-safe).
    #[default]
    Always,
    /// Only when the memory buffer is full (outage-safe; a crash loses what was in memory).
    Overflow,
}

fn default_max_bytes() -> ByteSize {
    ByteSize(10 * 1024 * 1024 * 1024)
}

fn default_fsync() -> Duration {
    Duration::from_millis(100)
}

/// A pipeline's spool, resolved.
#[derive(Debug, Clone)]
pub struct SpoolSpec {
    /// `<dir>/<pipeline name>`.
    pub dir: PathBuf,
    /// Its bounds.
    pub options: SpoolOptions,
    /// `always` or `overflow`.
    pub when: SpoolWhen,
    /// The group-commit interval.
    pub fsync: Duration,
}

impl SpoolConfig {
    /// The directory of pipeline `name`'s spool: `<dir>/<name>`, `dir` relative to `base`.
    pub fn dir_of(&self, base: &Path, name: &str) -> PathBuf {
        let dir = if self.dir.is_relative() {
            base.join(&self.dir)
        } else {
            self.dir.clone()
        };
        dir.join(name)
    }

    /// Checks the section of pipeline `name` at `at` (`pipelines[0].spool`); `base` is the
    /// config file's directory.
    pub fn resolve(
        &self,
        at: At<'_>,
        name: &str,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<SpoolSpec> {
        let before = errors.len();
        if self.dir.as_os_str().is_empty() {
            errors.push(ConfigError::new(
                at.field("dir"),
                "empty; name a directory on a local disk, e.g. `/var/lib/kgate/spool`",
            ));
        }
        if self.max_bytes.0 < 1024 * 1024 {
            errors.push(ConfigError::new(
                at.field("max_bytes"),
                format!(
                    "{} bytes is too small for a spool; give at least `1MiB` (e.g. `10GiB`)",
                    self.max_bytes.0
                ),
            ));
        }
        if self.fsync.is_zero() || self.fsync > Duration::from_secs(10) {
            errors.push(ConfigError::new(
                at.field("fsync"),
                format!(
                    "`{}` is outside 1ms..10s; records wait for it before Kafka, e.g. `100ms`",
                    humantime::format_duration(self.fsync)
                ),
            ));
        }
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
            errors.push(ConfigError::new(
                at.field("dir"),
                format!("the spool lives in `<dir>/<pipeline name>`, and `{name}` cannot name a directory; rename the pipeline (no `/`)"),
            ));
        }
        if errors.len() != before {
            return None;
        }
        Some(SpoolSpec {
            dir: self.dir_of(base, name),
            options: SpoolOptions::new(self.max_bytes.0, self.on_full),
            when: self.when,
            fsync: self.fsync,
        })
    }
}

/// The pipelines whose spool directories coincide or nest (`(i, j)`: pipelines[j] clashes with
/// the earlier pipelines[i]); paths are compared as written, made absolute.
pub fn clashes(dirs: &[(usize, PathBuf)]) -> Vec<(usize, usize)> {
    let abs = |p: &Path| -> PathBuf {
        let p = if p.is_relative() {
            std::env::current_dir().unwrap_or_default().join(p)
        } else {
            p.to_path_buf()
        };
        // Lexically normal: `a/./b` and `a/b/` are the same directory.
        p.components().collect()
    };
    let mut found = Vec::new();
    for (a, (i, pi)) in dirs.iter().enumerate() {
        for (j, pj) in &dirs[a + 1..] {
            let (x, y) = (abs(pi), abs(pj));
            if x.starts_with(&y) || y.starts_with(&x) {
                found.push((*i, *j));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use crate::gateway::Gateway;

    fn load(pipelines: &str) -> Result<Gateway, Vec<(String, String)>> {
        let yaml = format!("pipelines:\n{pipelines}");
        Gateway::from_yaml_str(&yaml, "/etc/kgate/k.yaml", &|_| None)
            .map_err(|e| e.errors.into_iter().map(|e| (e.path, e.message)).collect())
    }

    const WS: &str = "source: {websocket: {urls: ['ws://h:1/ws']}}";

    #[test]
    fn a_spool_resolves_to_its_pipelines_own_directory() {
        let g = load(&format!(
            "  - {{name: trades, {WS}, topic: t, spool: {{dir: spool, max_bytes: 2GiB, when: overflow, fsync: 50ms, on_full: drop_oldest}}}}\n"
        ))
        .unwrap();
        let s = g.pipelines[0].spec.spool.as_ref().unwrap();
        assert_eq!(s.dir, std::path::Path::new("/etc/kgate/spool/trades"));
        assert_eq!(s.when, super::SpoolWhen::Overflow);
        assert_eq!(s.fsync, std::time::Duration::from_millis(50));
        assert_eq!(s.options.max_bytes, 2 << 30);
        assert_eq!(s.options.on_full, super::OnFull::DropOldest);
        let d = load(&format!(
            "  - {{name: a, {WS}, topic: t, spool: {{dir: /s}}}}\n"
        ))
        .unwrap();
        let s = d.pipelines[0].spec.spool.as_ref().unwrap();
        assert_eq!(s.when, super::SpoolWhen::Always);
        assert_eq!(s.options.max_bytes, 10 << 30);
        assert_eq!(s.fsync, std::time::Duration::from_millis(100));
    }

    #[test]
    fn bad_spools_are_refused_with_the_fix() {
        let e = load(&format!(
            "  - {{name: a, {WS}, topic: t, spool: {{dir: '', max_bytes: 1KB, fsync: 0s}}}}\n"
        ))
        .unwrap_err();
        for (path, words) in [
            ("pipelines[0].spool.dir", "empty"),
            ("pipelines[0].spool.max_bytes", "at least `1MiB`"),
            ("pipelines[0].spool.fsync", "1ms..10s"),
        ] {
            assert!(
                e.iter().any(|(p, m)| p == path && m.contains(words)),
                "{path}: {e:?}"
            );
        }
        let e = load(&format!(
            "  - {{name: a, {WS}, topic: t, spool: {{dir: /s/b}}}}\n  - {{name: b, {WS}, topic: t, spool: {{dir: /s}}}}\n"
        ))
        .unwrap_err();
        assert!(
            e.iter()
                .any(|(p, m)| p == "pipelines[1].spool.dir" && m.contains("share its spool")),
            "{e:?}"
        );
        // Side by side in one root is what `dir` is for.
        load(&format!(
            "  - {{name: a, {WS}, topic: t, spool: {{dir: /s}}}}\n  - {{name: b, {WS}, topic: t, spool: {{dir: /s}}}}\n"
        ))
        .unwrap();
    }
}

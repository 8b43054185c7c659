//! `kgate schemas ...`: look at and change the subjects of a Confluent-compatible schema
//! registry from the command line.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use crate::registry::{RegistryClient, RegistryConfig, RegistryError, Version};

/// Exit status: done (or compatible).
pub const EXIT_OK: u8 = 0;
/// Exit status of `check`: not compatible.
pub const EXIT_INCOMPATIBLE: u8 = 1;
/// Exit status: an error (unreachable registry, unknown subject, bad file, ...).
pub const EXIT_ERROR: u8 = 2;

const EXAMPLES: &str = "\
Where the registry is (the first that is given):
  --registry URL       e.g. http://127.0.0.1:8081/apis/ccompat/v7 (Apicurio), http://HOST:8081
                       (Confluent); https://KEY:SECRET@HOST for basic auth
  --config FILE        the `schema_registry:` section of a kgate config (url, username,
                       password, tls, timeout)
  KGATE_REGISTRY_URL   environment variable, like --registry

Exit status: 0 done (check: compatible), 1 check: not compatible, 2 error.

Examples:
  export KGATE_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7   # scripts/services up registry
  kgate schemas list
  kgate schemas register TradeEvent-value --file schemas/TradeEvent.avsc
  kgate schemas versions TradeEvent-value
  kgate schemas get TradeEvent-value                  # the latest version
  kgate schemas get TradeEvent-value --version 1 --json
  kgate schemas check TradeEvent-value --file schemas/TradeEvent.v2.avsc && echo safe to register
  kgate schemas list --config kgate.yaml

Subjects follow Confluent's naming: the value schema of topic T is `T-value`, its key schema
`T-key` (TopicNameStrategy).";

/// `kgate schemas`: arguments.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct SchemasArgs {
    /// The registry's Confluent-compatible API URL (else --config, else $KGATE_REGISTRY_URL).
    #[arg(long, global = true, value_name = "URL")]
    pub registry: Option<String>,
    /// A kgate config file whose `schema_registry:` section says where the registry is.
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON (one document) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: SchemasCommand,
}

/// `kgate schemas` subcommands.
#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// List the subjects.
    #[command(
        after_long_help = "Example:\n  kgate schemas list --registry http://127.0.0.1:8081/apis/ccompat/v7"
    )]
    List,
    /// List the versions of a subject.
    #[command(
        after_long_help = "Example:\n  kgate schemas versions TradeEvent-value --json   # [1,2]"
    )]
    Versions {
        /// The subject, e.g. TradeEvent-value.
        subject: String,
    },
    /// Print one version of a subject: its version, id, type and schema.
    #[command(
        disable_version_flag = true,
        after_long_help = "Examples:\n  kgate schemas get TradeEvent-value\n  kgate schemas get TradeEvent-value --version 1 --json"
    )]
    Get {
        /// The subject, e.g. TradeEvent-value.
        subject: String,
        /// The version: 1, 2, ... or latest.
        #[arg(long, default_value = "latest", value_name = "N")]
        version: Version,
    },
    /// Register an Avro schema file as the next version of a subject; prints its id and version.
    ///
    /// The file is parsed as Avro first, so a typo is reported with the file name before the
    /// registry sees it. Registering the schema a subject already has changes nothing and prints
    /// the existing id and version.
    #[command(
        after_long_help = "Example:\n  kgate schemas register TradeEvent-value --file schemas/TradeEvent.avsc\n  registered TradeEvent-value version 1, id 1"
    )]
    Register {
        /// The subject, e.g. TradeEvent-value.
        subject: String,
        /// The Avro schema (.avsc).
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Decode a Confluent wire-format Avro record (magic byte 0, schema id, Avro body) to JSON.
    ///
    /// The record is given as hex or base64 (either is recognised), or `-` to read one record
    /// per line from stdin. The writer schema is fetched by id from the registry (cached).
    /// Prints `{"id":N,"value":{...}}` per record, unions unwrapped and logical types as text.
    #[command(
        after_long_help = "Examples:\n  kgate schemas decode 0000000003020a68656c6c6f\n  kgate tail --topic TradeEvent --registry URL   # decodes Avro records as it prints them"
    )]
    Decode {
        /// The record as hex or base64, or `-` for one per line on stdin.
        record: String,
    },
    /// Check whether an Avro schema file may become the next version of a subject.
    ///
    /// Exits 0 when it is compatible with the subject's compatibility level, 1 when it is not
    /// (and lists why), 2 on errors. Registries that do not say why (Apicurio) get the
    /// reasons from Avro's schema resolution rules.
    #[command(
        after_long_help = "Example (in CI, before registering):\n  kgate schemas check TradeEvent-value --file schemas/TradeEvent.avsc \\\n    && kgate schemas register TradeEvent-value --file schemas/TradeEvent.avsc"
    )]
    Check {
        /// The subject, e.g. TradeEvent-value.
        subject: String,
        /// The Avro schema (.avsc).
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
    },
}

/// Runs `kgate schemas ...`; returns the exit status.
pub async fn main(args: SchemasArgs) -> u8 {
    match run(&args).await {
        Ok(code) => code,
        Err(e) => {
            if args.json {
                println!("{}", json!({ "error": e }));
            }
            eprintln!("kgate schemas: {e}");
            EXIT_ERROR
        }
    }
}

/// The registry settings from --registry, --config or $KGATE_REGISTRY_URL (in that order).
pub fn registry_config(args: &SchemasArgs) -> Result<RegistryConfig, String> {
    if let Some(url) = &args.registry {
        return Ok(RegistryConfig::from_url(url));
    }
    if let Some(path) = &args.config {
        let cfg = crate::gateway::Config::load(path).map_err(|e| e.to_string())?;
        return cfg.schema_registry.ok_or_else(|| {
            format!(
                "{} has no `schema_registry:` section; add `schema_registry: {{ url: http://127.0.0.1:8081/apis/ccompat/v7 }}` or pass --registry URL",
                path.display()
            )
        });
    }
    match std::env::var("KGATE_REGISTRY_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(RegistryConfig::from_url(url.trim())),
        _ => Err("no schema registry given: pass --registry URL (e.g. http://127.0.0.1:8081/apis/ccompat/v7), --config FILE with a `schema_registry:` section, or set KGATE_REGISTRY_URL".into()),
    }
}

async fn run(args: &SchemasArgs) -> Result<u8, String> {
    let cfg = registry_config(args)?;
    let client = RegistryClient::new(&cfg).map_err(|e| e.to_string())?;
    let err = |e: RegistryError| e.to_string();
    match &args.command {
        SchemasCommand::Decode { record } => {
            let cache = crate::registry::SchemaCache::new(client, None);
            let inputs: Vec<String> = if record == "-" {
                std::io::stdin()
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| !l.trim().is_empty())
                    .collect()
            } else {
                vec![record.clone()]
            };
            let mut failed = false;
            for (i, text) in inputs.iter().enumerate() {
                let bytes =
                    record_bytes(text.trim()).map_err(|e| format!("record {}: {e}", i + 1))?;
                match cache.decode(&bytes).await {
                    Ok((id, value)) => println!("{}", json!({"id": id, "value": value})),
                    Err(e) => {
                        failed = true;
                        if args.json {
                            println!("{}", json!({"error": e}));
                        }
                        eprintln!("kgate schemas decode: record {}: {e}", i + 1);
                    }
                }
            }
            if failed {
                return Ok(EXIT_ERROR);
            }
        }
        SchemasCommand::List => {
            let mut subjects = client.list_subjects().await.map_err(err)?;
            subjects.sort();
            if args.json {
                println!("{}", json!(subjects));
            } else if subjects.is_empty() {
                eprintln!("no subjects at {}", client.url());
            } else {
                for s in subjects {
                    println!("{s}");
                }
            }
        }
        SchemasCommand::Versions { subject } => {
            let versions = client.versions(subject).await.map_err(err)?;
            if args.json {
                println!("{}", json!(versions));
            } else {
                for v in versions {
                    println!("{v}");
                }
            }
        }
        SchemasCommand::Get { subject, version } => {
            let s = client.get_version(subject, *version).await.map_err(err)?;
            if args.json {
                println!("{}", json!(s));
            } else {
                println!("subject: {}", s.subject);
                println!("version: {}", s.version);
                println!("id:      {}", s.id);
                println!("type:    {}", s.schema_type);
                println!("{}", pretty(&s.schema));
            }
        }
        SchemasCommand::Register { subject, file } => {
            let text = read_avro(file)?;
            let id = client.register(subject, &text).await.map_err(err)?;
            // The register answer has only the id; the version comes from a lookup.
            let version = match client.lookup(subject, &text).await {
                Ok(s) if s.id == id => Some(s.version),
                _ => client
                    .get_version(subject, Version::Latest)
                    .await
                    .ok()
                    .filter(|s| s.id == id)
                    .map(|s| s.version),
            };
            if args.json {
                println!(
                    "{}",
                    json!({ "subject": subject, "id": id, "version": version })
                );
            } else {
                match version {
                    Some(v) => println!("registered {subject} version {v}, id {id}"),
                    None => println!("registered {subject}, id {id}"),
                }
            }
        }
        SchemasCommand::Check { subject, file } => {
            let text = read_avro(file)?;
            let (ok, reasons) = client
                .check_compatibility(subject, &text)
                .await
                .map_err(err)?;
            let level = client.compatibility_level(subject).await.ok();
            if args.json {
                println!(
                    "{}",
                    json!({ "subject": subject, "is_compatible": ok, "level": level, "messages": reasons })
                );
            } else {
                let level = level.map(|l| format!(" (level {l})")).unwrap_or_default();
                if ok {
                    println!(
                        "{}: compatible with {subject}{level}; register it with kgate schemas register {subject} --file {}",
                        file.display(),
                        file.display()
                    );
                } else {
                    println!("{}: NOT compatible with {subject}{level}:", file.display());
                    for r in &reasons {
                        println!("  - {r}");
                    }
                }
            }
            return Ok(if ok { EXIT_OK } else { EXIT_INCOMPATIBLE });
        }
    }
    Ok(EXIT_OK)
}

/// Reads an .avsc file and parses it as Avro, so that mistakes are reported with the file name.
/// A record given on the command line: hex (`00000000…`) or base64.
pub fn record_bytes(text: &str) -> Result<Vec<u8>, String> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if !hex.is_empty() && hex.len().is_multiple_of(2) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect();
    }
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| {
            "not hex or base64; give the record's bytes as hex (e.g. 0000000003…) or base64"
                .to_string()
        })
}

pub fn read_avro(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    crate::avro::parse_apache(&text)
        .map_err(|e| format!("{} is not a valid Avro schema: {e}", file.display()))?;
    Ok(text)
}

fn pretty(schema: &str) -> String {
    serde_json::from_str::<serde_json::Value>(schema)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| schema.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_avro_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("Bad.avsc");
        std::fs::write(
            &f,
            r#"{"type":"record","name":"T","fields":[{"name":"a"}]}"#,
        )
        .unwrap();
        let e = read_avro(&f).unwrap_err();
        assert!(
            e.starts_with(&format!("{} is not a valid Avro schema: ", f.display())),
            "{e}"
        );
        let e = read_avro(&dir.path().join("missing.avsc")).unwrap_err();
        assert!(e.starts_with("cannot read "), "{e}");
    }
}

//! The `kgate` command line: each subcommand parses its arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

// Records are allocated on the source's task and freed on librdkafka's delivery thread; glibc's
// arena lock made that hand-over a measurable share of the per-message cost (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio_util::sync::CancellationToken;

/// kgate — the ingestion gateway to Apache Kafka.
///
/// Takes events from WebSocket feeds, normalizes and routes them, and produces them to Kafka
/// without losing any: every event ends in its topic or, with a reason, in the dead-letter queue.
#[derive(Parser)]
#[command(name = "kgate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: sources → pipelines → Kafka, with metrics and health endpoints.
    ///
    /// Stops on SIGINT/SIGTERM: sources stop reading, everything accepted is flushed to Kafka
    /// within `shutdown_timeout`, and a summary of delivered/dead-lettered/dropped is logged.
    /// Exits 0 when nothing accepted was left undelivered.
    Run {
        /// The YAML config file (see README.md, "Configuration reference").
        #[arg(short, long, env = "KGATE_CONFIG")]
        config: PathBuf,
    },
    /// Check a config: every config error with its path, the brokers, the topics and each source.
    ///
    /// Prints one line per check and exits non-zero if any fails.
    Check {
        /// The YAML config file.
        #[arg(short, long, env = "KGATE_CONFIG")]
        config: PathBuf,
        /// How long to wait for each broker and source.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print the latest records of a topic as JSON lines (partition, offset, key, headers, value).
    Tail(kgate::tail::TailArgs),
    /// Serve a synthetic WebSocket feed (trades, iot, ticker, orderbook) for demos, tests and benchmarks.
    Synth(kgate::synth::SynthArgs),
    /// Schema registry subjects: list, versions, get, register and check Avro schemas.
    ///
    /// Talks to a Confluent-compatible schema registry (Confluent, Apicurio's /apis/ccompat/v7,
    /// Karapace, Redpanda).
    Schemas(kgate::schemas::SchemasArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Cancels the token on the first SIGINT or SIGTERM.
fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    });
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Run { config } => {
            let cfg = match kgate::config::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    eprintln!(
                        "(run `kgate check --config {}` to check brokers and sources too)",
                        config.display()
                    );
                    return ExitCode::from(2);
                }
            };
            let token = CancellationToken::new();
            on_signal(token.clone());
            match kgate::run::run(cfg, token).await {
                Ok(s) if s.undelivered == 0 && s.failed == 0 => ExitCode::SUCCESS,
                Ok(s) => {
                    eprintln!("kgate: not everything accepted reached Kafka: {s}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("kgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config, timeout } => {
            let lines = kgate::check::check(&config, timeout).await;
            let failed = lines.iter().filter(|l| !l.ok).count();
            if failed == 0 {
                println!("all {} checks passed", lines.len());
                ExitCode::SUCCESS
            } else {
                println!("{failed} of {} checks failed", lines.len());
                ExitCode::FAILURE
            }
        }
        Command::Tail(args) => {
            let (kafka, registry) = match &args.config {
                Some(path) => match kgate::config::Config::load(path) {
                    Ok(c) => (c.kafka, c.schema_registry),
                    Err(e) => {
                        eprint!("{e}");
                        return ExitCode::from(2);
                    }
                },
                None => (
                    kgate::config::KafkaConfig {
                        brokers: args.brokers.split(',').map(str::to_string).collect(),
                        ..Default::default()
                    },
                    None,
                ),
            };
            let registry = match &args.registry {
                Some(url) => Some(kgate::registry::RegistryConfig::from_url(url)),
                None => registry,
            };
            let avro = match registry.map(|r| kgate::registry::RegistryClient::new(&r)) {
                Some(Ok(client)) => Some(kgate::tail::AvroDecoding {
                    cache: kgate::schema_cache::SchemaCache::new(client, None),
                    runtime: tokio::runtime::Handle::current(),
                }),
                Some(Err(e)) => {
                    eprintln!("kgate tail: {e}");
                    return ExitCode::from(2);
                }
                None => None,
            };
            match tokio::task::spawn_blocking(move || {
                kgate::tail::tail(&args, &kafka, avro.as_ref())
            })
            .await
            {
                Ok(Ok(_)) => ExitCode::SUCCESS,
                Ok(Err(e)) => {
                    eprintln!("kgate tail: {e:#}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("kgate tail: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Schemas(args) => ExitCode::from(kgate::schemas::main(args).await),
        Command::Synth(args) => {
            let token = CancellationToken::new();
            on_signal(token.clone());
            match kgate::synth::serve(args, token).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kgate synth: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

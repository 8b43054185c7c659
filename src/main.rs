//! The `kgate` command line: each subcommand parses its arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use kgate::cmd;

// Records are allocated on the source's task and freed on librdkafka's delivery thread; glibc's
// arena lock made that hand-over a measurable share of the per-message cost (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// kgate — the ingestion gateway to Apache Kafka.
///
/// Takes events from WebSocket feeds, normalizes and routes them, and produces them to Kafka
/// without losing any: every event ends in its topic or, with a reason, in the dead-letter queue.
#[derive(Parser)]
#[command(name = "kgate", version, propagate_version = true)]
struct Cli {
    /// Log lines on stderr as `text` or `json` (JSON lines); wins over the config's `log.format`.
    /// The filter is `KGATE_LOG` (e.g. `debug` or `info,kgate::source=debug`), else `RUST_LOG`,
    /// else the config's `log.level`, else `info`.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "KGATE_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    log_format: Option<kgate::log::LogFormat>,
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
    ///
    /// Reloads the config on SIGHUP, on `POST /-/reload` at the metrics listener and, with
    /// `--watch`, when the file changes: unchanged pipelines keep running, changed ones drain
    /// and restart (README.md, "Live reconfiguration").
    Run {
        /// The YAML config file (see README.md, "Configuration reference").
        #[arg(short, long, env = "KGATE_CONFIG")]
        config: PathBuf,
        /// Reload the config when the file changes (looked at every second).
        #[arg(long)]
        watch: bool,
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
    Tail(cmd::tail::TailArgs),
    /// Serve a synthetic WebSocket feed (trades, iot, ticker, orderbook) for demos, tests and benchmarks.
    Synth(cmd::synth::SynthArgs),
    /// Schema registry subjects: list, versions, get, register and check Avro schemas.
    ///
    /// Talks to a Confluent-compatible schema registry (Confluent, Apicurio's /apis/ccompat/v7,
    /// Karapace, Redpanda).
    Schemas(cmd::schemas::SchemasArgs),
    /// Consume topics as a consumer group and hand each record to a sink: stdout (JSON lines),
    /// a rotating file, an HTTP webhook or a long-lived command; batched or single.
    ///
    /// A record's offset is committed only once the sink took it (or its DLQ record is in
    /// Kafka): at-least-once. SIGINT/SIGTERM finishes the batch, commits and exits 0.
    Consume(cmd::consume::ConsumeArgs),
    /// The dead-letter queue: `inspect` prints its records and counts them by error type and
    /// source topic; `replay` sends them again (back to their source topic), exactly once.
    Dlq(cmd::dlq::DlqArgs),
    /// The config file's JSON Schema (for editors) and its Markdown reference.
    ///
    /// Both are generated from the same source as the loader, so they list exactly the keys,
    /// types and defaults that `kgate run` reads.
    Config(cmd::config::ConfigArgs),
    /// The Kafka cluster: its id, controller, brokers, topic and partition counts.
    Cluster(cmd::admin::ClusterArgs),
    /// Kafka topics: list, describe (partitions, watermarks, configs), create, alter, delete.
    Topics(cmd::topics::TopicsArgs),
    /// Consumer groups: list, describe (members, lag per partition), reset-offsets, delete.
    Groups(cmd::groups::GroupsArgs),
    /// The web UI: topics, messages (Avro decoded), consumer groups and lag, schemas, the DLQ.
    ///
    /// Serves the config's `kafka:`, `schema_registry:` and `dlq:` with its `ui:` settings
    /// (read-only unless `ui.write` and a user with the write role). `kgate ui hash-password`
    /// prints the argon2 hash of a password read from stdin.
    Ui(cmd::ui::UiArgs),
    /// A pipeline's disk spool: `inspect DIR` prints its segments, records, unacknowledged count
    /// and oldest age.
    Spool(cmd::spool::SpoolArgs),
    /// Shell completions (bash, zsh, fish) on stdout; `scripts/install` puts them in place.
    ///
    /// e.g. `kgate completions bash > ~/.local/share/bash-completion/completions/kgate`.
    Completions(cmd::completions::CompletionsArgs),
    /// The man page (roff) on stdout, or `--dir DIR`: one page per command (`kgate-run.1`, …).
    ///
    /// e.g. `kgate man | man -l -`; `scripts/install` writes them to `$PREFIX/share/man/man1`.
    Man(cmd::completions::ManArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::log::init(cli.log_format);
    match cli.command {
        Command::Run { config, watch } => cmd::run_main(&config, watch).await,
        Command::Check { config, timeout } => cmd::check_main(&config, timeout).await,
        Command::Tail(args) => cmd::tail_main(args).await,
        Command::Schemas(args) => ExitCode::from(cmd::schemas::main(args).await),
        Command::Synth(args) => cmd::synth_main(args).await,
        Command::Config(args) => cmd::config::main(args),
        Command::Dlq(args) => cmd::dlq::main(args).await,
        Command::Consume(args) => cmd::consume::main(args).await,
        Command::Cluster(args) => cmd::admin::cluster_main(args).await,
        Command::Topics(args) => cmd::topics::main(args).await,
        Command::Groups(args) => cmd::groups::main(args).await,
        Command::Ui(args) => cmd::ui::main(args).await,
        Command::Spool(args) => cmd::spool::main(args),
        Command::Completions(args) => cmd::completions::completions_main(Cli::command(), args),
        Command::Man(args) => cmd::completions::man_main(Cli::command(), args),
    }
}

//! The commands of the `kgate` binary: each parses nothing (clap did), runs the library and
//! prints; `main.rs` calls one `main` here per subcommand. The library outside `cmd/` prints
//! nothing.

pub mod admin;
pub mod check;
pub mod completions;
pub mod config;
pub mod consume;
pub mod dlq;
pub mod groups;
pub mod log;
pub mod run;
pub mod schemas;
pub mod spool;
pub mod synth;
pub mod tail;
pub mod topics;
pub mod ui;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::gateway::Config;
use crate::kafka::KafkaConfig;
use crate::registry::{RegistryClient, RegistryConfig, SchemaCache};

/// Cancels the token on the first SIGINT or SIGTERM.
pub fn on_signal(token: CancellationToken) {
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

/// One message on `tx` per SIGHUP (a reload of `kgate run`'s config).
pub fn on_hangup(tx: tokio::sync::mpsc::UnboundedSender<()>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("no SIGHUP handler: reload with POST /-/reload or --watch");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the config");
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    #[cfg(not(unix))]
    drop(tx);
}

/// `kgate run --config F [--watch]`: exits 0 when nothing accepted was left undelivered, 1
/// when something was, 2 when the config has errors. SIGHUP (and with `watch`, a change of
/// the file) reloads the config.
pub async fn run_main(config: &Path, watch: bool) -> ExitCode {
    let loaded = match run::load(config) {
        Ok(l) => l,
        Err(e) => {
            eprint!("{e}");
            eprintln!(
                "(run `kgate check --config {}` to check brokers and sources too)",
                config.display()
            );
            return ExitCode::from(2);
        }
    };
    log::apply(&loaded.gateway.config.log);
    let token = CancellationToken::new();
    on_signal(token.clone());
    let (tx, hangups) = tokio::sync::mpsc::unbounded_channel();
    on_hangup(tx);
    let reloads = run::Reloads {
        path: config.to_path_buf(),
        watch,
        hangups,
    };
    match run::run(loaded, reloads, token).await {
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

/// `kgate check --config F`: one line per check; exits 1 if any failed.
pub async fn check_main(config: &Path, timeout: Duration) -> ExitCode {
    let lines = check::check(config, timeout, &mut check::print).await;
    let failed = lines.iter().filter(|l| !l.ok).count();
    if failed == 0 {
        println!("all {} checks passed", lines.len());
        ExitCode::SUCCESS
    } else {
        println!("{failed} of {} checks failed", lines.len());
        ExitCode::FAILURE
    }
}

/// The `kafka:` and `schema_registry:` sections of `config` when one is given, else the
/// `brokers` flag; a `registry` URL flag wins over the config's. Errs with the config's errors.
pub fn kafka_and_registry(
    config: Option<&Path>,
    brokers: &str,
    registry: Option<&str>,
) -> Result<(KafkaConfig, Option<RegistryConfig>), String> {
    let (kafka, from_config) = match config {
        Some(path) => match Config::load(path) {
            Ok(c) => (c.kafka, c.schema_registry),
            Err(e) => return Err(e.to_string()),
        },
        None => (
            KafkaConfig {
                brokers: brokers.split(',').map(str::to_string).collect(),
                ..Default::default()
            },
            None,
        ),
    };
    let registry = match registry {
        Some(url) => Some(RegistryConfig::from_url(url)),
        None => from_config,
    };
    Ok((kafka, registry))
}

/// `kgate tail`: the brokers and registry from `--config` or the flags.
pub async fn tail_main(args: tail::TailArgs) -> ExitCode {
    let (kafka, registry) = match kafka_and_registry(
        args.config.as_deref(),
        &args.brokers,
        args.registry.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let avro = match registry.map(|r| RegistryClient::new(&r)) {
        Some(Ok(client)) => Some(tail::AvroDecoding {
            cache: SchemaCache::new(client, None),
            runtime: tokio::runtime::Handle::current(),
        }),
        Some(Err(e)) => {
            eprintln!("kgate tail: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    match tokio::task::spawn_blocking(move || tail::tail(&args, &kafka, avro.as_ref())).await {
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

/// `kgate synth`: serves until SIGINT/SIGTERM (or `--count` is sent with `--exit-when-done`).
pub async fn synth_main(args: synth::SynthArgs) -> ExitCode {
    let token = CancellationToken::new();
    on_signal(token.clone());
    match synth::serve(args, token).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kgate synth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `kgate ui`: serves the web UI alone (the config's `kafka:`, `schema_registry:`, `dlq:` and
//! `ui:` sections; its pipelines are not run), and `kgate ui hash-password`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, At, ConfigErrors};
use crate::gateway::Config;
use crate::registry::{RegistryClient, SchemaCache};
use crate::ui::{Ui, UiConfig};

/// `kgate ui`: arguments.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UiArgs {
    /// `hash-password`; none = serve the UI.
    #[command(subcommand)]
    pub command: Option<UiCommand>,
    /// The config file: its `kafka:` (brokers, security), `schema_registry:`, `dlq:` and `ui:`
    /// (users, write mode, TLS) sections.
    #[arg(short, long, env = "KGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The address to serve on (else the config's `ui.listen`, else 127.0.0.1:8080).
    #[arg(short, long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// `kgate ui …` subcommands.
#[derive(Debug, Subcommand)]
pub enum UiCommand {
    /// Read a password from stdin (one line) and print its argon2 hash for
    /// `ui.users[].password_hash`.
    HashPassword,
}

/// The config's sections the UI uses, checked; `listen` overrides `ui.listen`.
pub fn load(
    path: &Path,
    listen: Option<&str>,
) -> Result<(Config, UiConfig, SocketAddr), ConfigErrors> {
    let text = config::read(path)?;
    let mut errors = Vec::new();
    let file = path.display().to_string();
    let parsed: Option<Config> = config::parse(&text, &|k| std::env::var(k).ok(), &mut errors);
    let fail = |errors| ConfigErrors {
        file: file.clone(),
        errors,
    };
    let Some(c) = parsed else {
        return Err(fail(errors));
    };
    if let Some(r) = &c.schema_registry {
        crate::registry::validate_config(r, "schema_registry", &mut errors);
    }
    c.kafka.validate(At("kafka"), &mut errors);
    c.dlq.validate(At("dlq"), &mut errors);
    let ui = c.ui.clone().unwrap_or_default();
    let addr = ui.resolve_listen(listen.unwrap_or(&ui.listen), At("ui"), &mut errors);
    match addr {
        Some(a) if errors.is_empty() => Ok((c, ui, a)),
        _ => Err(fail(errors)),
    }
}

/// `kgate ui`.
pub async fn main(args: UiArgs) -> ExitCode {
    if let Some(UiCommand::HashPassword) = args.command {
        return hash_password();
    }
    let Some(path) = &args.config else {
        eprintln!("kgate ui: give the config file with --config FILE (its kafka: section names the brokers)");
        return ExitCode::from(2);
    };
    let (c, ui_config, addr) = match load(path, args.listen.as_deref()) {
        Ok(x) => x,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let registry = match &c.schema_registry {
        Some(r) => match RegistryClient::new(r) {
            Ok(client) => Some(SchemaCache::new(client, None)),
            Err(e) => {
                eprintln!("kgate ui: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let scheme = if ui_config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let (write, auth) = (ui_config.write, ui_config.auth_enabled());
    let ui = Ui::new(
        ui_config,
        c.kafka.clone(),
        c.dlq.topic.clone(),
        registry,
        None,
    );
    let token = CancellationToken::new();
    super::on_signal(token.clone());
    match crate::ui::serve(addr, ui, token).await {
        Ok(h) => {
            tracing::info!(
                write,
                auth,
                "kgate UI at {scheme}://{addr}/ ({})",
                if write { "write mode" } else { "read-only" }
            );
            let _ = h.await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kgate ui: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hash_password() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("kgate ui hash-password: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = input.lines().next().unwrap_or("");
    if password.is_empty() {
        eprintln!("kgate ui hash-password: no password on stdin; e.g. `printf '%s\\n' \"$PW\" | kgate ui hash-password`");
        return ExitCode::from(2);
    }
    match crate::ui::auth::hash_password(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kgate ui hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

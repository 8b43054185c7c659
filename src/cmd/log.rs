//! kgate's log on stderr: set up once at start, before any config is read (so that reading it
//! can log), then adjusted once from the config's `log:` section.
//!
//! Why reload layers rather than setting the subscriber up after the config is read: a command
//! logs before and while it reads its config, and tracing's global subscriber can be set only
//! once. The filter and the formatting layer each sit behind a `tracing_subscriber::reload`
//! handle; [`apply`] swaps them when `log:` asks for something else. The format is swapped only
//! before any span exists (right after the config is loaded): a span keeps the fields its
//! formatter recorded, and the other formatter could not read them.
//!
//! Precedence: the filter is `KGATE_LOG`, else `RUST_LOG`, else `log.level`, else `info` (with
//! librdkafka at `warn`); the format is `--log-format`/`KGATE_LOG_FORMAT`, else `log.format`,
//! else text.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::Registry;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer};

use crate::log::{LogConfig, LogFormat};

type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type BoxedFmt = Box<dyn Layer<Filtered> + Send + Sync>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<BoxedFmt, Filtered>,
    /// The format chosen on the command line (it wins over `log.format`).
    flag: Option<LogFormat>,
    /// Whether `KGATE_LOG` or `RUST_LOG` set the filter (it wins over `log.level`).
    env_filter: bool,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// The filter from `KGATE_LOG`, else `RUST_LOG`; `None` when neither is set (or valid).
fn env_filter() -> Option<EnvFilter> {
    ["KGATE_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| EnvFilter::try_from_env(var).ok())
}

fn fmt_layer(format: LogFormat) -> BoxedFmt {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
    }
}

/// `log`'s own max level (rdkafka logs through `log`): as verbose as the filter, no more, so
/// that a disabled `log::trace!` costs a comparison.
fn set_log_max_level(filter: &EnvFilter) {
    use tracing_log::log::LevelFilter as L;
    use tracing_subscriber::filter::LevelFilter as T;
    let level = match filter.max_level_hint() {
        Some(T::OFF) => L::Off,
        Some(T::ERROR) => L::Error,
        Some(T::WARN) => L::Warn,
        Some(T::INFO) => L::Info,
        Some(T::DEBUG) => L::Debug,
        _ => L::Trace,
    };
    tracing_log::log::set_max_level(level);
}

/// Sets up the log (stderr) before anything else runs: the filter from the environment (else
/// `info`), the format from `flag` (else text).
pub fn init(flag: Option<LogFormat>) {
    let from_env = env_filter();
    let env_set = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(LogConfig::default().directives()));
    let (filter_layer, filter_handle) = reload::Layer::new(filter);
    let (format_layer, format_handle) = reload::Layer::new(fmt_layer(flag.unwrap_or_default()));
    let installed = Registry::default()
        .with(filter_layer)
        .with(format_layer)
        .try_init()
        .is_ok();
    if !installed {
        return;
    }
    let _ = filter_handle.with_current(set_log_max_level);
    let _ = HANDLES.set(Handles {
        filter: filter_handle,
        format: format_handle,
        flag,
        env_filter: env_set,
    });
}

/// Applies a config's `log:` where the command line and environment left it open. Call it once
/// the config is loaded and before any span is entered.
pub fn apply(config: &LogConfig) {
    let Some(h) = HANDLES.get() else {
        return;
    };
    apply_level(config);
    if h.flag.is_none() && config.format != LogFormat::Text {
        if let Err(e) = h.format.reload(fmt_layer(config.format)) {
            tracing::warn!("log.format not applied: {e}");
        }
    }
}

/// Applies `log.level` alone, where `KGATE_LOG`/`RUST_LOG` left it open: what a reload of
/// `kgate run`'s config changes live (the format needs a restart, see the module's doc).
pub fn apply_level(config: &LogConfig) {
    let Some(h) = HANDLES.get() else {
        return;
    };
    if !h.env_filter {
        // Validated with the config; a filter that fails here leaves the default in place.
        if let Ok(filter) = EnvFilter::builder().parse(config.directives()) {
            set_log_max_level(&filter);
            if let Err(e) = h.filter.reload(filter) {
                tracing::warn!("log.level not applied: {e}");
            }
        }
    }
}

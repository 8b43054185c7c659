//! What `kgate cluster`, `kgate topics` and `kgate groups` share: where Kafka is (`--config` or
//! `--brokers`), `--output table|json`, aligned tables, human durations, exit codes; and
//! `kgate cluster` itself. The work is done by [`crate::admin`].

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::admin::{self, AdminError};
use crate::kafka::KafkaConfig;

/// How a command prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people, durations like `7d`.
    Table,
    /// One JSON document (the same shapes as the web UI's API), raw numbers (milliseconds).
    Json,
}

/// Where Kafka is, and how to print: the flags every admin command takes.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// A kgate config file: its `kafka:` section (brokers and security: TLS, SASL) is used.
    #[arg(short, long, env = "KGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Brokers (host:port[,host:port]), without security, when no --config is given.
    #[arg(long, default_value = "127.0.0.1:9092", value_name = "LIST")]
    pub brokers: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// The exit status of a command: 0 done, 1 Kafka or runtime error, 2 usage or config error.
pub fn exit_for(e: &AdminError) -> ExitCode {
    match e {
        AdminError::Invalid(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// The `kafka:` section of `config`, else `brokers`; prints the config's errors and answers
/// exit status 2 when it does not load.
pub fn load_kafka(config: Option<&Path>, brokers: &str) -> Result<KafkaConfig, ExitCode> {
    match super::kafka_and_registry(config, brokers, None) {
        Ok((k, _)) => Ok(k),
        Err(e) => {
            eprint!("{e}");
            if !e.ends_with('\n') {
                eprintln!();
            }
            Err(ExitCode::from(2))
        }
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("kgate: cannot write JSON: {e}"),
    }
}

/// Columns aligned with two spaces between them; a column whose cells are all numbers (or
/// `-`) is right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    let mut numeric = vec![true; n];
    let mut any_number = vec![false; n];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(n) {
            width[i] = width[i].max(cell.chars().count());
            if cell.parse::<f64>().is_ok() {
                any_number[i] = true;
            } else if cell != "-" {
                numeric[i] = false;
            }
        }
    }
    for (num, any) in numeric.iter_mut().zip(&any_number) {
        *num &= *any;
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate().take(n) {
            let pad = width[i].saturating_sub(cell.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if numeric[i] {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if i + 1 < n {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Milliseconds as people write them: `7d`, `1h30m`, `250ms`; `forever` for -1.
pub fn human_ms(ms: i64) -> String {
    if ms < 0 {
        return "forever".into();
    }
    if ms == 0 {
        return "0s".into();
    }
    const UNITS: [(&str, i64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let mut left = ms;
    let mut out = String::new();
    for (unit, size) in UNITS {
        if left >= size {
            out.push_str(&format!("{}{unit}", left / size));
            left %= size;
        }
    }
    out
}

/// Bytes as people write them: `1.5 MiB`, `512 B`.
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v.abs() >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Asks on the terminal (stderr/stdin) to type `name` to confirm; `Ok(false)` when it was not
/// typed, `Err` with a message when stdin is not a terminal (then `--yes` is needed).
pub fn confirm(what: &str, name: &str) -> Result<bool, String> {
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "refusing to {what} without --yes: stdin is not a terminal, so nobody can confirm; add --yes"
        ));
    }
    let mut first = what.chars();
    let prompt: String = first
        .next()
        .map(|c| c.to_uppercase().chain(first).collect())
        .unwrap_or_default();
    eprint!("{prompt}? Type `{name}` to confirm: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return Ok(false);
    }
    Ok(line.trim() == name)
}

/// [`confirm`] for command `cmd` (e.g. `kgate topics delete`), saying why it stops when it
/// must: `Err` with the exit code (1: not confirmed, the `kind` `name` kept; 2: nobody can
/// confirm).
pub fn confirmed(cmd: &str, what: &str, kind: &str, name: &str) -> Result<(), ExitCode> {
    match confirm(what, name) {
        Ok(true) => Ok(()),
        Ok(false) => {
            eprintln!("{cmd}: not confirmed; {kind} {name} kept");
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("{cmd}: {e}");
            Err(ExitCode::from(2))
        }
    }
}

const CLUSTER_EXAMPLES: &str = "\
Where Kafka is (the first that is given):
  --config FILE        the `kafka:` section of a kgate config (brokers, TLS, SASL)
  --brokers LIST       host:port[,host:port] (default 127.0.0.1:9092), no security

Examples:
  kgate cluster
  kgate cluster --config kgate.yaml
  kgate cluster --brokers kafka-1:9092 --output json | jq .brokers

Sample output:
  cluster id   5L6g3nShT-eMCtK--X86sw
  controller   1
  brokers      1
  topics       14 (2 internal)
  partitions   91

  ID  HOST       PORT  CONTROLLER
   1  localhost  9092  yes

The Kafka version is not shown: no cheap request answers it (ApiVersions gives ranges).

Exit status: 0 done, 1 Kafka error, 2 bad arguments or config.";

/// `kgate cluster`: arguments.
#[derive(Debug, Args)]
#[command(after_long_help = CLUSTER_EXAMPLES)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// `kgate cluster`.
pub async fn cluster_main(args: ClusterArgs) -> ExitCode {
    let k = match load_kafka(args.conn.config.as_deref(), &args.conn.brokers) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let info = match admin::cluster(&k).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("kgate cluster: {e}");
            return exit_for(&e);
        }
    };
    if args.conn.output == Output::Json {
        print_json(&info);
        return ExitCode::SUCCESS;
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut out = table(
        &["", ""],
        &[
            vec!["cluster id".into(), opt(info.cluster_id.clone())],
            vec![
                "controller".into(),
                opt(info.controller_id.map(|i| i.to_string())),
            ],
            vec!["brokers".into(), info.brokers.len().to_string()],
            vec![
                "topics".into(),
                format!("{} ({} internal)", info.topics, info.internal_topics),
            ],
            vec!["partitions".into(), info.partitions.to_string()],
        ],
    );
    // The header line of a headerless table is blank.
    out = out.trim_start_matches('\n').to_string();
    out.push('\n');
    let rows: Vec<Vec<String>> = info
        .brokers
        .iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                b.host.clone(),
                b.port.to_string(),
                if b.controller { "yes" } else { "" }.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["ID", "HOST", "PORT", "CONTROLLER"], &rows));
    print!("{out}");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_like_people_write_them() {
        assert_eq!(human_ms(604_800_000), "7d");
        assert_eq!(human_ms(5_400_000), "1h30m");
        assert_eq!(human_ms(250), "250ms");
        assert_eq!(human_ms(-1), "forever");
        assert_eq!(human_ms(0), "0s");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1_572_864), "1.5 MiB");
    }

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let t = table(
            &["NAME", "PARTITIONS"],
            &[
                vec!["a".into(), "3".into()],
                vec!["long.name".into(), "12".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME       PARTITIONS\na                   3\nlong.name          12\n"
        );
    }
}

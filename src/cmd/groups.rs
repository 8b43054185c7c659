//! `kgate groups ...`: list and describe consumer groups (members, committed offsets, lag),
//! reset their offsets, delete them.

use std::process::ExitCode;
use std::time::SystemTime;

use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;

use super::admin::{confirmed, exit_for, load_kafka, print_json, table, Conn, Output};
use crate::admin::{self, ResetTo};

const EXAMPLES: &str = "\
Where Kafka is (the first that is given):
  --config FILE        the `kafka:` section of a kgate config (brokers, TLS, SASL)
  --brokers LIST       host:port[,host:port] (default 127.0.0.1:9092), no security

Lag is what a group has left to read: end offset (high watermark) − committed offset, per
partition; a partition it never committed an offset for shows no lag.

Examples:
  kgate groups list
  kgate groups describe billing
  kgate groups describe billing --output json | jq .total_lag
  kgate groups reset-offsets billing --topic ticks.v1.raw --to-earliest            # dry run
  kgate groups reset-offsets billing --topic ticks.v1.raw --to-earliest --execute
  kgate groups reset-offsets billing --topic ticks.v1.raw --to-datetime 2026-12-01T00:00:00Z
  kgate groups reset-offsets billing --topic ticks.v1.raw --shift-by -100 --execute
  kgate groups delete billing --yes

Exit status: 0 done, 1 Kafka error (unreachable, refused, group active or missing), 2 bad
arguments or config (or delete without --yes off a terminal).";

/// `kgate groups`: arguments.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct GroupsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: GroupsCommand,
}

/// `kgate groups` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups: state, protocol, members and total lag.
    #[command(after_long_help = EXAMPLES)]
    List(ListArgs),
    /// A group's state, its members and their partitions, and per partition the committed
    /// offset, the end offset and the lag.
    #[command(after_long_help = EXAMPLES)]
    Describe(DescribeArgs),
    /// Move a group's committed offsets on a topic. A dry run unless --execute; refused while
    /// the group has members (stop its consumers first).
    #[command(after_long_help = EXAMPLES)]
    ResetOffsets(ResetArgs),
    /// Delete a group and its committed offsets. Asks on a terminal; elsewhere needs --yes.
    #[command(after_long_help = EXAMPLES)]
    Delete(DeleteArgs),
}

/// `kgate groups list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// `kgate groups describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The group id.
    pub group: String,
    #[command(flatten)]
    pub conn: Conn,
}

/// `kgate groups reset-offsets`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_datetime", "to_offset", "shift_by"])))]
pub struct ResetArgs {
    /// The group id.
    pub group: String,
    /// The topic whose partitions (all of them) get new offsets.
    #[arg(short, long)]
    pub topic: String,
    /// To the first record still held (the low watermark).
    #[arg(long)]
    pub to_earliest: bool,
    /// To the end: skip everything there is now.
    #[arg(long)]
    pub to_latest: bool,
    /// To the first record at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z); the
    /// end where there is none.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to_datetime: Option<SystemTime>,
    /// To this offset on every partition (kept within each partition's low..high).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub to_offset: Option<i64>,
    /// By N from the committed offset (negative: back, to read again), kept within low..high.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,
    /// Commit the new offsets (without it, only show them).
    #[arg(long)]
    pub execute: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// `kgate groups delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The group id.
    pub group: String,
    /// Delete without asking (needed when stdin is not a terminal).
    #[arg(short, long)]
    pub yes: bool,
    #[command(flatten)]
    pub conn: Conn,
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e}: give a time like 2026-12-01T00:00:00Z (UTC)"))
}

/// `kgate groups ...`.
pub async fn main(args: GroupsArgs) -> ExitCode {
    match args.command {
        GroupsCommand::List(a) => list(a).await,
        GroupsCommand::Describe(a) => describe(a).await,
        GroupsCommand::ResetOffsets(a) => reset(a).await,
        GroupsCommand::Delete(a) => delete(a).await,
    }
}

macro_rules! kafka_or_exit {
    ($e:expr) => {
        match $e {
            Ok(k) => k,
            Err(code) => return code,
        }
    };
}

macro_rules! ok_or_exit {
    ($cmd:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                eprintln!("kgate groups {}: {e}", $cmd);
                return exit_for(&e);
            }
        }
    };
}

fn opt(v: Option<i64>) -> String {
    v.map_or("-".into(), |n| n.to_string())
}

async fn list(a: ListArgs) -> ExitCode {
    let k = kafka_or_exit!(load_kafka(a.conn.config.as_deref(), &a.conn.brokers));
    let groups = ok_or_exit!("list", admin::list_groups(&k).await);
    if a.conn.output == Output::Json {
        print_json(&groups);
        return ExitCode::SUCCESS;
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.group.clone(),
                g.state.clone(),
                if g.protocol_type.is_empty() {
                    "-".into()
                } else {
                    g.protocol_type.clone()
                },
                g.members.to_string(),
                opt(g.lag),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["GROUP", "STATE", "PROTOCOL", "MEMBERS", "LAG"], &rows)
    );
    println!("{} group(s)", groups.len());
    ExitCode::SUCCESS
}

async fn describe(a: DescribeArgs) -> ExitCode {
    let k = kafka_or_exit!(load_kafka(a.conn.config.as_deref(), &a.conn.brokers));
    let g = ok_or_exit!("describe", admin::describe_group(&k, &a.group).await);
    if a.conn.output == Output::Json {
        print_json(&g);
        return ExitCode::SUCCESS;
    }
    println!(
        "group {}: {}{}, {} member(s), total lag {}\n",
        g.group,
        g.state,
        if g.protocol.is_empty() {
            String::new()
        } else {
            format!(" ({} {})", g.protocol_type, g.protocol)
        },
        g.members.len(),
        g.total_lag
    );
    if !g.members.is_empty() {
        let rows: Vec<Vec<String>> = g
            .members
            .iter()
            .map(|m| {
                let parts = m
                    .assignment
                    .iter()
                    .map(|tp| {
                        let ps: Vec<String> = tp.partitions.iter().map(i32::to_string).collect();
                        format!("{}[{}]", tp.topic, ps.join(","))
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                vec![
                    m.client_id.clone(),
                    m.host.clone(),
                    if parts.is_empty() { "-".into() } else { parts },
                    m.id.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["CLIENT", "HOST", "ASSIGNMENT", "MEMBER ID"], &rows)
        );
        println!();
    }
    let client_of = |member: &Option<String>| {
        member
            .as_ref()
            .and_then(|id| g.members.iter().find(|m| &m.id == id))
            .map_or("-".to_string(), |m| m.client_id.clone())
    };
    let rows: Vec<Vec<String>> = g
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                opt(p.committed),
                p.end.to_string(),
                opt(p.lag),
                client_of(&p.member),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no committed offsets and no assigned partitions");
    } else {
        print!(
            "{}",
            table(
                &["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "CLIENT"],
                &rows
            )
        );
    }
    ExitCode::SUCCESS
}

async fn reset(a: ResetArgs) -> ExitCode {
    let to = if a.to_earliest {
        ResetTo::Earliest
    } else if a.to_latest {
        ResetTo::Latest
    } else if let Some(t) = a.to_datetime {
        ResetTo::Datetime(t)
    } else if let Some(o) = a.to_offset {
        ResetTo::Offset(o)
    } else if let Some(n) = a.shift_by {
        ResetTo::ShiftBy(n)
    } else {
        unreachable!("clap requires one of the --to-* / --shift-by flags")
    };
    let k = kafka_or_exit!(load_kafka(a.conn.config.as_deref(), &a.conn.brokers));
    let changes = ok_or_exit!(
        "reset-offsets",
        admin::reset_offsets(&k, &a.group, &a.topic, to, a.execute).await
    );
    if a.conn.output == Output::Json {
        print_json(&json!({
            "group": a.group,
            "topic": a.topic,
            "executed": a.execute,
            "changes": changes,
        }));
        return ExitCode::SUCCESS;
    }
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                c.topic.clone(),
                c.partition.to_string(),
                opt(c.current),
                c.new.to_string(),
                c.lag_after.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["TOPIC", "PARTITION", "CURRENT", "NEW", "LAG AFTER"],
            &rows
        )
    );
    if a.execute {
        println!(
            "committed the new offsets of group {} on {} partition(s)",
            a.group,
            changes.len()
        );
    } else {
        println!("dry run: nothing committed; add --execute to commit these offsets");
    }
    ExitCode::SUCCESS
}

async fn delete(a: DeleteArgs) -> ExitCode {
    let k = kafka_or_exit!(load_kafka(a.conn.config.as_deref(), &a.conn.brokers));
    if !a.yes {
        let what = format!(
            "delete consumer group {} and its committed offsets",
            a.group
        );
        if let Err(code) = confirmed("kgate groups delete", &what, "group", &a.group) {
            return code;
        }
    }
    ok_or_exit!("delete", admin::delete_group(&k, &a.group).await);
    if a.conn.output == Output::Json {
        print_json(&json!({ "deleted": a.group }));
    } else {
        println!("deleted consumer group {}", a.group);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_are_rfc3339() {
        let t = parse_time("2026-12-01T00:00:00Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_796_083_200
        );
        assert!(parse_time("yesterday").unwrap_err().contains("2026-12-01"));
    }
}

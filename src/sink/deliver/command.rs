//! `sink.command`: a long-lived child process. Each batch is one line on its stdin (a record
//! object, or a JSON array when batching); it answers one line on stdout: `ok`, or an error
//! text. A child that exits, or does not answer within `timeout`, is started again (counted
//! and logged) and the attempt counts as failed.

use std::process::Stdio;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::{CommandConfig, Failure, Retry, Shape, Target};

/// The running child and its pipes.
struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The command sink.
pub(super) struct Command {
    argv: Vec<String>,
    timeout: Duration,
    retry: Retry,
    batched: bool,
    running: Option<Running>,
    /// Children started, the first included.
    starts: u64,
    line: String,
}

impl Command {
    pub(super) fn new(c: &CommandConfig, batched: bool) -> Command {
        Command {
            argv: c.command.clone(),
            timeout: c.timeout,
            retry: Retry {
                max_attempts: c.max_attempts,
                backoff: c.backoff,
                max_backoff: c.max_backoff,
            },
            batched,
            running: None,
            starts: 0,
            line: String::new(),
        }
    }

    fn start(&mut self) -> Result<&mut Running, Failure> {
        if self.running.is_none() {
            let mut child = tokio::process::Command::new(&self.argv[0])
                .args(&self.argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                // Not killed with kgate: when kgate exits its stdin closes, and a handler
                // that reads to the end finishes on its own.
                .kill_on_drop(false)
                .spawn()
                .map_err(|e| {
                    Failure::Retry(format!("cannot start `{}`: {e}", self.argv.join(" ")))
                })?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(Failure::Retry("the child has no stdin/stdout pipe".into()));
            };
            self.starts += 1;
            if self.starts > 1 {
                tracing::warn!(command = %self.argv.join(" "), restarts = self.starts - 1, "command sink: started the command again");
            } else {
                tracing::info!(command = %self.argv.join(" "), pid = child.id(), "command sink: started");
            }
            self.running = Some(Running {
                child,
                stdin,
                stdout: BufReader::new(stdout),
            });
        }
        Ok(self.running.as_mut().expect("just set"))
    }

    /// Forgets a child that died or went out of step, logging how it ended.
    async fn lost(&mut self, why: &str) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.start_kill();
            let status = r.child.wait().await;
            tracing::warn!(command = %self.argv.join(" "), ?status, "command sink: {why}; it is started again for the next attempt");
        }
    }

    async fn call(&mut self, body: &[u8]) -> Result<(), Failure> {
        let timeout = self.timeout;
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        let r = {
            let run = self.start()?;
            let io = async {
                run.stdin.write_all(body).await?;
                run.stdin.flush().await?;
                run.stdout.read_line(&mut line).await
            };
            tokio::time::timeout(timeout, io).await
        };
        let result = match r {
            Err(_) => {
                self.lost("no answer in time").await;
                Err(Failure::Retry(format!("no answer within {timeout:?}")))
            }
            Ok(Err(e)) => {
                self.lost(&format!("its pipe failed ({e})")).await;
                Err(Failure::Retry(format!("the command's pipe failed: {e}")))
            }
            Ok(Ok(0)) => {
                self.lost("it exited").await;
                Err(Failure::Retry(
                    "the command exited without answering".into(),
                ))
            }
            Ok(Ok(_)) if line.trim().eq_ignore_ascii_case("ok") => Ok(()),
            Ok(Ok(_)) => Err(Failure::Retry(format!(
                "the command answered: {}",
                line.trim()
            ))),
        };
        self.line = line;
        result
    }
}

impl Target for Command {
    fn kind(&self) -> &'static str {
        "command"
    }
    fn describe(&self) -> String {
        format!("`{}`", self.argv.join(" "))
    }
    fn shape(&self) -> Shape {
        if self.batched {
            Shape::ArrayLines
        } else {
            Shape::Records
        }
    }
    fn coalesces(&self) -> bool {
        false
    }
    fn retry(&self) -> Retry {
        self.retry
    }
    fn deliver<'a>(&'a mut self, body: &'a [u8], _: usize) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.call(body))
    }
}

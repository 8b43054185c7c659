//! `sink.stdout`: JSON lines on standard output, written and flushed once per group of ready
//! batches under one lock.

use std::io::Write;

use futures_util::future::BoxFuture;

use super::{blocking, Failure, Retry, Shape, Target};

/// Standard output.
pub(super) struct Stdout {
    out: std::io::Stdout,
    batched: bool,
}

impl Stdout {
    pub(super) fn new(batched: bool) -> Stdout {
        Stdout {
            out: std::io::stdout(),
            batched,
        }
    }
}

impl Target for Stdout {
    fn kind(&self) -> &'static str {
        "stdout"
    }
    fn describe(&self) -> String {
        "stdout".into()
    }
    fn shape(&self) -> Shape {
        if self.batched {
            Shape::ArrayLines
        } else {
            Shape::Records
        }
    }
    fn coalesces(&self) -> bool {
        true
    }
    fn retry(&self) -> Retry {
        Retry::NONE
    }
    fn deliver<'a>(&'a mut self, body: &'a [u8], _: usize) -> BoxFuture<'a, Result<(), Failure>> {
        let r = blocking(|| {
            let mut lock = self.out.lock();
            lock.write_all(body)?;
            lock.flush()
        });
        Box::pin(
            async move { r.map_err(|e| Failure::Fatal(format!("cannot write to stdout: {e}"))) },
        )
    }
}

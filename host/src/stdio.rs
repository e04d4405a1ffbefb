//! A plugin's stdout and stderr, turned into the host's log lines.
//!
//! Each complete line becomes one log event tagged with the connection id
//! and the stream's name. Two bounds keep a plugin from flooding the log: a
//! line longer than [`MAX_LINE_BYTES`] is cut there, and a connection may
//! log only so many lines per second; the lines over that are dropped, and
//! one line says how many once the second is over.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::counters::Counters;

/// Longest line logged whole; the rest of a longer line is dropped.
pub const MAX_LINE_BYTES: usize = 4096;

/// The log of one connection's plugin, shared by its stdout and stderr.
pub struct PluginLog {
    conn: u64,
    rate: Mutex<Rate>,
    lines_per_second: u32,
    counters: Arc<Counters>,
}

/// Lines logged in the current one-second window, and lines dropped.
struct Rate {
    window_start: Instant,
    logged: u32,
    dropped: u64,
}

impl PluginLog {
    pub fn new(conn: u64, lines_per_second: u32, counters: Arc<Counters>) -> Arc<Self> {
        Arc::new(Self {
            conn,
            rate: Mutex::new(Rate {
                window_start: Instant::now(),
                logged: 0,
                dropped: 0,
            }),
            lines_per_second,
            counters,
        })
    }

    /// The stream to hand the WASI context as stdout or stderr.
    pub fn stream(self: &Arc<Self>, name: &'static str) -> LogStream {
        LogStream {
            log: self.clone(),
            name,
        }
    }

    fn line(&self, stream: &'static str, text: &str) {
        let mut rate = self
            .rate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if rate.window_start.elapsed() >= Duration::from_secs(1) {
            report_dropped(self.conn, self.lines_per_second, &mut rate);
            rate.window_start = Instant::now();
            rate.logged = 0;
        }
        if rate.logged < self.lines_per_second {
            rate.logged += 1;
            tracing::info!(target: "plugin", conn = self.conn, stream, "{text}");
        } else {
            rate.dropped += 1;
            crate::counters::count(&self.counters.log_lines_dropped);
        }
    }
}

/// Logs how many lines were dropped, if any, and starts counting afresh.
fn report_dropped(conn: u64, lines_per_second: u32, rate: &mut Rate) {
    if rate.dropped > 0 {
        tracing::warn!(
            target: "plugin",
            conn,
            dropped = rate.dropped,
            "plugin log lines dropped: over {lines_per_second} lines per second"
        );
        rate.dropped = 0;
    }
}

impl Drop for PluginLog {
    fn drop(&mut self) {
        let (conn, lines_per_second) = (self.conn, self.lines_per_second);
        let rate = self
            .rate
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        report_dropped(conn, lines_per_second, rate);
    }
}

/// One of a connection's output streams (stdout or stderr), as handed to
/// its WASI context.
pub struct LogStream {
    log: Arc<PluginLog>,
    name: &'static str,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineSplitter::new(self.log.clone(), self.name))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineSplitter::new(self.log.clone(), self.name))
    }
}

/// Collects bytes into lines and logs each line as it completes.
struct LineSplitter {
    log: Arc<PluginLog>,
    name: &'static str,
    line: Vec<u8>,
    /// The current line was too long and has been logged; skip to its end.
    truncated: bool,
}

impl LineSplitter {
    fn new(log: Arc<PluginLog>, name: &'static str) -> Self {
        Self {
            log,
            name,
            line: Vec::new(),
            truncated: false,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n');
            let (part, rest) = match end {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &[][..]),
            };
            if !self.truncated {
                let room = MAX_LINE_BYTES - self.line.len();
                self.line.extend_from_slice(&part[..part.len().min(room)]);
                if part.len() > room {
                    self.emit(" [line cut]");
                    self.truncated = true;
                }
            }
            if end.is_some() {
                if !self.truncated {
                    self.emit("");
                }
                self.truncated = false;
            }
            bytes = rest;
        }
    }

    fn emit(&mut self, marker: &str) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        if !text.trim().is_empty() {
            self.log.line(self.name, &format!("{text}{marker}"));
        }
        self.line.clear();
    }
}

impl Drop for LineSplitter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit("");
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LineSplitter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineSplitter {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineSplitter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

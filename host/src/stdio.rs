//! A plugin's stdout and stderr, turned into the host's log lines.
//!
//! Each complete line becomes one log event tagged with the connection id
//! and the stream's name. A line longer than [`MAX_LINE_BYTES`] is cut
//! there, so a plugin cannot make the host hold an unbounded line.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line logged whole; the rest of a longer line is dropped.
pub const MAX_LINE_BYTES: usize = 4096;

/// Where one of a connection's output streams goes: handed to the WASI
/// context as its stdout or stderr.
#[derive(Clone, Copy)]
pub struct PluginLog {
    pub conn: u64,
    pub stream: &'static str,
}

impl IsTerminal for PluginLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger::new(*self))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger::new(*self))
    }
}

/// Collects bytes into lines and logs each line as it completes.
struct LineLogger {
    log: PluginLog,
    line: Vec<u8>,
    /// The current line was too long and has been logged; skip to its end.
    truncated: bool,
}

impl LineLogger {
    fn new(log: PluginLog) -> Self {
        Self {
            log,
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
                    self.emit(true);
                    self.truncated = true;
                }
            }
            if end.is_some() {
                if !self.truncated {
                    self.emit(false);
                }
                self.truncated = false;
            }
            bytes = rest;
        }
    }

    fn emit(&mut self, cut: bool) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            self.line.clear();
            return;
        }
        let marker = if cut { " [line cut]" } else { "" };
        tracing::info!(target: "plugin", conn = self.log.conn, stream = self.log.stream, "{text}{marker}");
        self.line.clear();
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit(false);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LineLogger {
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
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineLogger {
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

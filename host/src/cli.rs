//! Command-line flags: every setting an operator can give, with its default
//! and unit. [`Args::limits`] checks them and turns them into the limits the
//! server and the sandbox enforce, before anything listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

use crate::sandbox::Limits;

/// Serve TCP connections with a WebAssembly plugin: each connection gets a
/// fresh, sandboxed instance of the plugin component.
///
/// Logs go to stderr; set PORTICO_LOG (for example `PORTICO_LOG=debug`) to
/// choose what is logged. The one line on stdout is `listening on ADDR`.
/// Durations are written like `300ms`, `10s`, `5m` or `1h 30m`.
#[derive(Debug, Parser)]
#[command(name = "host", version, max_term_width = 100)]
pub struct Args {
    /// The plugin: a WebAssembly component built against the
    /// `portico:plugin/handler` world (for Rust, with the portico-guest-sdk
    /// crate and `--target wasm32-wasip2`).
    #[arg(long, value_name = "PATH")]
    pub plugin: PathBuf,

    /// Address to listen on. Port 0 picks a free port; the address actually
    /// bound is printed as `listening on ADDR`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,

    /// A setting for the plugin, read through `wasi:config/store`. Repeat for
    /// more settings; a later value for the same key wins.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub config: Vec<(String, String)>,

    /// Connections served at once. The instance pool is sized for exactly
    /// this many, so an admitted connection always gets its instance.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_connections: u32,

    /// Connections held, accepted but waiting, while --max-connections are
    /// being served. Past this, a new connection is accepted and closed at
    /// once, and counted as refused.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_queued: u32,

    /// Largest linear memory of one plugin instance, in MiB. Growing past it
    /// fails inside the plugin, as `memory.grow` returning -1.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub max_memory: u32,

    /// Time a connection's plugin may spend running (computing, not waiting
    /// for input); then it is stopped and the connection closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub cpu_budget: Duration,

    /// Close a connection when no byte has moved in either direction for
    /// this long.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Close a connection this long after it was accepted, whatever it is
    /// doing. Off unless given.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_lifetime: Option<Duration>,

    /// On SIGINT or SIGTERM, how long live connections may take to finish
    /// before they are stopped. A second signal stops them at once.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Lines per second one connection's plugin may write to stdout and
    /// stderr together; the rest are dropped and counted in the log.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub log_lines_per_second: u32,
}

impl Args {
    /// The limits the flags ask for, once checked to make sense together.
    pub fn limits(&self) -> Result<Limits> {
        if self.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if self.max_memory == 0 {
            bail!("--max-memory must be at least 1 (MiB)");
        }
        if self.cpu_budget.is_zero() || self.idle_timeout.is_zero() {
            bail!("--cpu-budget and --idle-timeout must be longer than zero");
        }
        Ok(Limits {
            max_connections: self.max_connections,
            max_queued: self.max_queued,
            memory_bytes: usize::try_from(u64::from(self.max_memory) << 20)?,
            cpu_budget: self.cpu_budget,
            idle_timeout: self.idle_timeout,
            max_lifetime: self.max_lifetime,
            log_lines_per_second: self.log_lines_per_second,
            drain_timeout: self.drain_timeout,
        })
    }
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{error} (write durations like 500ms, 10s or 5m)"))
}

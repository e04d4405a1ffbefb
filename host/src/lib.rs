//! Portico's host: a TCP server whose every connection is served by a
//! fresh, sandboxed instance of a WebAssembly plugin component.
//!
//! # Layout
//!
//! A connection flows accept → admit → instantiate → run → close:
//!
//! - [`cli`]: the flags, with their defaults and checks.
//! - [`plugin`]: reads, compiles and validates the plugin once, and keeps it
//!   pre-instantiated.
//! - [`server`]: the accept loop, admission control, one task per
//!   connection, graceful drain.
//! - [`shutdown`]: SIGINT and SIGTERM, watched apart from the async runtime
//!   so that the process always stops.
//! - [`sandbox`]: the engine's settings and, per connection, a store with
//!   its own WASI context in which `run` is called.
//! - [`socket`]: the client socket as the `wasi:io` streams `run` borrows.
//! - [`stdio`]: a plugin's stdout and stderr, as rate-limited log lines.
//! - [`reclaim`]: memory freed by closed connections, given back once
//!   connections stop ending.
//! - [`untrusted`]: plugin-controlled text, escaped and bounded for the log.
//! - [`counters`]: what the server counts, reported at shutdown.
//! - [`bindings`]: the plugin contract, generated from `guest-sdk/wit`.

pub mod bindings;
pub mod cli;
pub mod counters;
pub mod plugin;
pub mod reclaim;
pub mod sandbox;
pub mod server;
pub mod shutdown;
pub mod socket;
pub mod stdio;
pub mod untrusted;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

/// Sends log lines to stderr, filtered by `PORTICO_LOG` (default `info`).
pub fn init_logging() {
    let filter = EnvFilter::try_from_env("PORTICO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Runs the host until SIGINT or SIGTERM: loads the plugin, listens, serves,
/// drains. The exit code says whether the drain finished.
pub fn run(args: cli::Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(server::run(args));
    // Tasks still running (connections stopped at the end of a drain) are
    // dropped; there is nothing left to wait for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

//! Portico's host: a TCP server whose every connection is served by a
//! fresh, sandboxed instance of a WebAssembly plugin component.
//!
//! # Layout
//!
//! Folders are layers, from the top down; a module imports only from its
//! own folder and the folders below it (`tests/layout.rs` checks this, and
//! that no imports run in a circle):
//!
//! - [`cli`]: the flags, made into a [`config::Config`].
//! - [`scaffold`]: `host new`, which writes a plugin project in any of the
//!   languages, carrying the contract and the SDKs in the binary.
//! - [`server`]: the listeners and accept loops, the front door, admission
//!   control, one task per connection (and its hibernation between
//!   instances), reload, graceful drain, upgrades of the binary that hand
//!   the listeners and hibernated connections to the new process, and one
//!   version of each service ([`server::service`]).
//! - [`sandbox`]: the engine and its instance pool, the plugin loaded once
//!   ([`sandbox::plugin`], with its compile [`sandbox::cache`], read from
//!   its file or pulled from an OCI registry by [`sandbox::registry`]), and per
//!   connection a store with its own WASI context, capabilities and limits
//!   in which `run` is called; the plugin's stdout and stderr as log lines
//!   ([`sandbox::stdio`]); the contract's bindings ([`sandbox::bindings`]).
//! - [`config`]: what the host serves: the model, each default and bound
//!   defined once, the file as written and as meant.
//! - [`capabilities`]: what a plugin may ask beyond its streams: outbound
//!   TCP, key-value buckets, messages, what it may learn of its connection,
//!   hibernation, its settings. Each owns its per-connection state and links its own
//!   imports; only the sandbox's store knows them all.
//! - [`net`]: the client's socket as the streams `run` borrows, the PROXY
//!   protocol header, TLS; listening sockets inherited from systemd or from
//!   the process an upgrade replaces, and how they are handed over.
//! - [`ops`]: what operators see: the admin endpoint and metrics (steering
//!   the server through a trait it implements), counters, signals, the
//!   log's line format, and plugin text escaped for the log.
//!
//! # A connection's path
//!
//! accept ([`server`]) → PROXY header, peer filter, TLS handshake (the
//! front door, [`net`]) → admit (a place in the service's pool, or the
//! queue) → a fresh store and instance ([`sandbox`]) → `run` with the
//! socket's streams, under the CPU budget, idle timeout and lifetime →
//! output flushed, socket closed, one `closed` log line. A plugin that
//! hibernates returns without the close: the instance and its place go,
//! and a wake admits the connection again for a fresh instance.

pub mod capabilities;
pub mod cli;
pub mod config;
pub mod net;
pub mod ops;
pub mod sandbox;
pub mod scaffold;
pub mod server;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

/// Sends log lines to stderr, as text or JSON, filtered by `PORTICO_LOG`
/// (default `info`); text in colour on a terminal, in [`ops::log`]'s
/// cheaper format elsewhere.
pub fn init_logging(format: config::LogFormat) {
    let filter = EnvFilter::try_from_env("PORTICO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text if std::io::stderr().is_terminal() => logs.with_ansi(true).init(),
        config::LogFormat::Text => logs
            .with_ansi(false)
            .event_format(ops::log::LineFormat)
            .init(),
        config::LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// Runs the host until SIGINT or SIGTERM: loads the plugins, listens,
/// serves, reloads on request, drains.
pub fn run(config: config::Config, source: server::Source) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(server::run(config, source));
    // Tasks still running (connections stopped at the end of a drain) are
    // dropped; there is nothing left to wait for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

//! Portico's host: a TCP server whose every connection is served by a
//! fresh, sandboxed instance of a WebAssembly plugin component.
//!
//! # Layout
//!
//! A connection flows accept → PROXY header → filter → TLS handshake →
//! admit → instantiate → run → close:
//!
//! - [`cli`]: the flags, with their defaults and checks.
//! - [`config`]: what the host serves: services from the config file, or
//!   one from the flags.
//! - [`server`]: the listeners and accept loops, admission control, one
//!   task per connection, reload, graceful drain.
//! - [`service`]: one version of a service: its plugin, pool and places.
//! - [`plugin`]: reads, compiles and validates a plugin (a handler
//!   exporting `run`, or a WASI command served on its stdio), and keeps it
//!   pre-instantiated; [`cache`] keeps the compiled code on disk.
//! - [`sandbox`]: the engine's settings and, per connection, a store with
//!   its own WASI context in which `run` is called under the limits.
//! - [`proxy_protocol`]: the client's address from a trusted proxy's
//!   PROXY protocol header; [`tls`]: TLS termination. Both happen before a
//!   connection is admitted.
//! - [`socket`]: the client socket as the `wasi:io` streams `run` borrows,
//!   or a command's stdin and stdout.
//! - [`connection`]: what a plugin may ask of its connection
//!   (`portico:plugin/connection`): TLS details, whether it was proxied.
//! - [`keyvalue`]: key-value buckets (`wasi:keyvalue`) in memory, in a
//!   file or in Redis, opened only by services granted them.
//! - [`messaging`]: messages between connections (`portico:plugin/pubsub`).
//! - [`outbound`]: where a plugin may connect (`grants.outbound`), and how
//!   many sockets it may hold.
//! - [`stdio`]: a plugin's stdout and stderr, as rate-limited log lines.
//! - [`untrusted`]: plugin-controlled text, escaped and bounded for the log.
//! - [`reclaim`]: memory freed by closed connections, given back once
//!   connections stop ending.
//! - [`signals`]: SIGINT, SIGTERM and SIGHUP, watched apart from the async
//!   runtime so that the process always stops.
//! - [`admin`]: health, readiness, Prometheus metrics and reload over HTTP.
//! - [`counters`]: what each service counts.
//! - [`bindings`]: the plugin contract, generated from `guest-sdk/wit`, and
//!   the earlier versions of imports still answered.

pub mod capabilities;
pub mod cli;
pub mod config;
pub mod net;
pub mod ops;
pub mod sandbox;
pub mod server;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

/// Sends log lines to stderr, as text or JSON, filtered by `PORTICO_LOG`
/// (default `info`).
pub fn init_logging(format: config::LogFormat) {
    let filter = EnvFilter::try_from_env("PORTICO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
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

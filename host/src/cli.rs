//! Command-line flags: every setting an operator can give, with its default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Serve TCP connections with a WebAssembly plugin: each connection gets a
/// fresh, sandboxed instance of the plugin component.
///
/// Logs go to stderr; set PORTICO_LOG (for example `PORTICO_LOG=debug`) to
/// choose what is logged. The one line on stdout is `listening on ADDR`.
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
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

//! Write [Portico](https://github.com/) plugins in Rust.
//!
//! A Portico host accepts TCP connections and serves each one with a fresh
//! instance of your plugin: your [`Handler::run`] is called once per
//! connection with a [`Connection`] to read from and write to, and the
//! instance is thrown away when it returns. Nothing is shared between
//! connections, so a plugin needs no locks and can never see another
//! client's data.
//!
//! # A complete plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "echo"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! portico-guest-sdk = "0.1"
//! ```
//!
//! `src/lib.rs`:
//!
//! ```no_run
//! use portico_guest_sdk::{Connection, Handler};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
//!         let (mut input, mut output) = conn.split();
//!         std::io::copy(&mut input, &mut output)?;
//!         Ok(())
//!     }
//! }
//!
//! portico_guest_sdk::export!(Echo);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (add the
//! target once with `rustup target add wasm32-wasip2`) and serve it with
//! `host --plugin target/wasm32-wasip2/release/echo.wasm`.
//!
//! # What a plugin may do
//!
//! Read and write its connection, read the clock, get random numbers, print
//! to stdout and stderr (each line lands in the host's log, tagged with the
//! connection id), read its settings with [`config::get`], and learn what
//! TLS established ([`Connection::tls`]). Where the
//! operator granted it, connect to other servers with [`net::TcpStream`], and
//! serve the client and those servers at once with [`net::wait_readable`];
//! keep state beyond one connection in a [`keyvalue::Bucket`]; reach other
//! connections with [`pubsub`]. An idle connection can give its instance
//! back and keep its socket with [`hibernation`].
//! Files, environment variables, arguments, and sockets or name lookups
//! beyond the grant are not available: the calls for them fail with an
//! error.
//!
//! Returning an error from [`Handler::run`] closes the connection and logs
//! the error's message on the host; so does a panic. An `io::Error` of kind
//! `BrokenPipe`, which writing to a client that has gone away returns, is
//! not reported: the connection simply ended.
#![deny(missing_docs)]

pub mod config;
mod connection;
pub mod hibernation;
pub mod keyvalue;
pub mod net;
pub mod pubsub;

pub use connection::{ClientCertificate, Connection, Input, Output, TlsSession};

/// The generated WIT bindings, for the [`export!`] macro. Not a stable API.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "portico:plugin/handler",
        pub_export_macro: true,
        default_bindings_module: "portico_guest_sdk::bindings",
        generate_all,
    });
}

/// The error a plugin returns: anything that converts into a boxed error,
/// such as `std::io::Error` (through `?`) or a `String` or `&str` (through
/// `.into()`).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// What [`Handler::run`] returns.
pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// A plugin: serves one connection, then returns.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Portico handler",
    label = "`export!` needs a type that implements `portico_guest_sdk::Handler`",
    note = "add `impl portico_guest_sdk::Handler for {Self} {{ fn run(conn: &mut Connection) -> portico_guest_sdk::Result {{ ... }} }}`"
)]
pub trait Handler {
    /// Serves `conn` until done. The host flushes what was written and
    /// closes the connection when this returns.
    fn run(conn: &mut Connection) -> Result;
}

/// Makes a [`Handler`] the plugin's entry point. Use it once per plugin.
///
/// ```no_run
/// # use portico_guest_sdk::{Connection, Handler};
/// struct Hello;
///
/// impl Handler for Hello {
///     fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
///         use std::io::Write;
///         conn.write_all(b"hello\n")?;
///         Ok(())
///     }
/// }
///
/// portico_guest_sdk::export!(Hello);
/// ```
#[macro_export]
macro_rules! export {
    ($handler:ty) => {
        const _: () = {
            type PorticoExport = $crate::Export<$handler>;
    $crate::bindings::export!(PorticoExport with_types_in $crate::bindings);
        };
    };
}

/// Connects a [`Handler`] to the generated bindings; used by [`export!`].
#[doc(hidden)]
pub struct Export<H>(std::marker::PhantomData<H>);

impl<H: Handler> bindings::Guest for Export<H> {
    fn run(
        info: bindings::portico::plugin::types::ConnectionInfo,
        input: &bindings::wasi::io::streams::InputStream,
        output: &bindings::wasi::io::streams::OutputStream,
    ) -> std::result::Result<(), String> {
        let mut conn = Connection::new(info, input, output);
        match H::run(&mut conn) {
            Ok(()) => Ok(()),
            // The client left while the plugin was still writing: nobody is
            // left to serve, which is how connections end, not a failure.
            Err(error) if is_client_gone(&*error) => Ok(()),
            Err(error) => Err(error_chain(&*error)),
        }
    }
}

fn is_client_gone(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Renders an error with its causes, `outer: inner: innermost`, for the
/// host's log.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

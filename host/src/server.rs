//! The server: listen, accept, give each connection a task of its own, stop
//! on a signal.
//!
//! Errors of one connection stay in its task and its log lines; the accept
//! loop only ever sees accept errors.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::bindings::ConnectionInfo;
use crate::cli::Args;
use crate::plugin::Plugin;
use crate::sandbox::{self, EngineLimits, EpochTicker, Outcome};
use crate::socket::Socket;

/// Connections served at once; the instance pool is sized for this many.
const MAX_CONNECTIONS: u32 = 1000;
/// Largest linear memory of one plugin instance.
const MAX_MEMORY_BYTES: usize = 64 << 20;
/// How long output still pending when `run` returns may take to reach a
/// client before the connection is closed anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, after the host has finished sending, it keeps reading and
/// discarding what the client still sends. Closing a socket with unread
/// input makes the kernel send a reset, which can destroy the last response
/// before the client reads it.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of file descriptors, say), so that the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Loads the plugin, listens on `args.listen` and serves until SIGINT or
/// SIGTERM. Everything that can be wrong with the flags or the plugin fails
/// here, before the host listens.
pub async fn run(args: Args) -> Result<()> {
    let engine = sandbox::engine(EngineLimits {
        instances: MAX_CONNECTIONS,
        memory_bytes: MAX_MEMORY_BYTES,
    })?;
    let _ticker = EpochTicker::start(&engine)?;
    let config = args.config.into_iter().collect();
    let plugin = Arc::new(Plugin::load(&engine, &args.plugin, config)?);
    let shutdown = shutdown_signal()?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;
    println!("listening on {local}");
    info!(plugin = %args.plugin.display(), %local, "listening");

    serve(listener, plugin, shutdown).await;
    info!("stopped");
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT: shutting down"),
            _ = terminate.recv() => info!("SIGTERM: shutting down"),
        }
    })
}

/// Accepts connections on `listener` until `shutdown` resolves, each served
/// by `plugin` in a task of its own.
pub async fn serve(listener: TcpListener, plugin: Arc<Plugin>, shutdown: impl Future<Output = ()>) {
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                next_id += 1;
                tokio::spawn(serve_connection(plugin.clone(), tcp, peer, next_id));
            }
            Err(error) => {
                error!("accept failed: {error}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Serves one accepted connection from start to close, and logs it.
async fn serve_connection(plugin: Arc<Plugin>, tcp: TcpStream, peer: SocketAddr, id: u64) {
    let accepted = Instant::now();
    info!(conn = id, %peer, "accepted");
    let local = match tcp.local_addr() {
        Ok(local) => local,
        Err(error) => {
            warn!(
                conn = id,
                "closed at once: cannot read its local address: {error}"
            );
            return;
        }
    };
    // Plugins often answer with small writes; Nagle's algorithm would hold
    // each one back for up to 40 ms waiting for the client's ACK.
    let _ = tcp.set_nodelay(true);

    let socket = Socket::new(tcp);
    let info = ConnectionInfo {
        id,
        peer_address: peer.to_string(),
        local_address: local.to_string(),
    };
    let outcome = sandbox::serve(&plugin, info, &socket, accepted, FLUSH_TIMEOUT).await;
    close(&socket).await;

    let elapsed_ms = accepted.elapsed().as_millis() as u64;
    let (bytes_in, bytes_out) = (socket.bytes_in(), socket.bytes_out());
    match outcome {
        Outcome::Finished => {
            info!(
                conn = id,
                elapsed_ms,
                bytes_in,
                bytes_out,
                outcome = "ok",
                "closed"
            )
        }
        Outcome::Failed(message) => warn!(
            conn = id, elapsed_ms, bytes_in, bytes_out, outcome = "error", error = %message, "closed"
        ),
        Outcome::Trapped(error) => {
            // The wasm backtrace (several lines) goes last, after the fields.
            let backtrace = error
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(|backtrace| format!("\n{backtrace}"))
                .unwrap_or_default();
            warn!(
                conn = id, elapsed_ms, bytes_in, bytes_out, outcome = "trap",
                error = %error.root_cause(), wasm_backtrace = backtrace, "closed"
            )
        }
    }
}

/// Ends the connection: sends FIN after everything written, then reads and
/// discards until the client closes too, for at most [`LINGER_TIMEOUT`].
async fn close(socket: &Socket) {
    let tcp = socket.tcp();
    if socket2::SockRef::from(tcp)
        .shutdown(std::net::Shutdown::Write)
        .is_err()
    {
        return;
    }
    let discard = async {
        let mut sink = [0; 4096];
        loop {
            if tcp.readable().await.is_err() {
                return;
            }
            match tcp.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, discard).await;
}

//! The server: listen, admit, give each connection a task of its own, and
//! drain on a signal.
//!
//! Admission works as POCO's `TCPServer` does: the host always accepts, so
//! the kernel's backlog never decides for it. An accepted connection is
//! served at once if fewer than `--max-connections` are being served; else
//! it waits in a queue of at most `--max-queued`, first come first served;
//! past that it is closed at once and counted as refused.
//!
//! Errors of one connection stay in its task and its log lines; the accept
//! loop only ever sees accept errors.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::bindings::ConnectionInfo;
use crate::cli::Args;
use crate::counters::{Counters, count};
use crate::plugin::Plugin;
use crate::sandbox::{self, EpochTicker, Outcome, Sandbox, StopReason};
use crate::socket::Socket;

/// How long, after the host has finished sending, it keeps reading and
/// discarding what the client still sends. Closing a socket with unread
/// input makes the kernel send a reset, which can destroy the last response
/// before the client reads it.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of file descriptors, say), so that the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Least time between two warnings about refused connections.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Loads the plugin, listens on `args.listen` and serves until SIGINT or
/// SIGTERM, then drains. Everything that can be wrong with the flags or the
/// plugin fails here, before the host listens. Exits with failure only if a
/// second signal cut the drain short.
pub async fn run(args: Args) -> Result<ExitCode> {
    let limits = args.limits()?;
    let engine = sandbox::engine(&limits)?;
    let _ticker = EpochTicker::start(&engine)?;
    let config = args.config.into_iter().collect();
    let plugin = Plugin::load(&engine, &args.plugin, config)?;
    let sandbox = Arc::new(Sandbox {
        plugin,
        limits,
        counters: Arc::new(Counters::default()),
        stop: CancellationToken::new(),
    });
    sandbox
        .check()
        .await
        .map_err(anyhow::Error::from)
        .with_context(|| format!("plugin {} cannot be instantiated", args.plugin.display()))?;
    let mut signals = Signals::new()?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;
    println!("listening on {local}");
    info!(plugin = %args.plugin.display(), %local, limits = ?sandbox.limits, "listening");

    let ceiling = connection_ceiling(&sandbox.limits);
    let tracker = TaskTracker::new();
    accept_loop(listener, &sandbox, ceiling, &tracker, signals.next()).await;
    let finished = drain(&sandbox, &tracker, &mut signals).await;
    info!(counters = %sandbox.counters, "stopped");
    Ok(if finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// SIGINT and SIGTERM, watched from before the host listens.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM, with its name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Memory mappings one live connection adds (measured with the echo
/// plugin by `portico-bench`: its memory's copy-on-write image splits the
/// memory slot, and its fiber stack and tables add a few more).
const MAPPINGS_PER_CONNECTION: u64 = 4;
/// Mappings and files kept free for everything else the process does.
const HEADROOM: u64 = 1024;

/// How many connections this process can hold: the open-file limit (raised
/// as far as the hard limit allows) and the kernel's cap on memory mappings
/// (`vm.max_map_count`) both bound it. Logs the figure and what to raise
/// for more; if `--max-connections` asks for more than fits, admits only
/// what fits, so that the host refuses connections at the ceiling instead
/// of failing to instantiate them.
fn connection_ceiling(limits: &sandbox::Limits) -> u32 {
    let wanted = u64::from(limits.max_connections) + u64::from(limits.max_queued) + HEADROOM;
    let files = match rlimit::increase_nofile_limit(wanted) {
        Ok(files) => files,
        Err(error) => {
            warn!("cannot read the open-file limit: {error}");
            wanted
        }
    };
    let by_files = files.saturating_sub(HEADROOM + u64::from(limits.max_queued));
    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    let mapped =
        std::fs::read_to_string("/proc/self/maps").map_or(0, |maps| maps.lines().count() as u64);
    let by_mappings = max_map_count.map_or(u64::MAX, |max| {
        max.saturating_sub(mapped + HEADROOM) / MAPPINGS_PER_CONNECTION
    });

    let ceiling = by_files
        .min(by_mappings)
        .min(u64::from(limits.max_connections));
    let ceiling = u32::try_from(ceiling)
        .unwrap_or(limits.max_connections)
        .max(1);
    info!(
        ceiling, open_files = files, max_map_count = ?max_map_count, mappings = mapped,
        "connections this process can hold"
    );
    if ceiling < limits.max_connections {
        let binding = if by_mappings < by_files {
            format!(
                "{mapped} memory mappings in use of vm.max_map_count {}: raise it with \
                 `sysctl -w vm.max_map_count=N`",
                max_map_count.unwrap_or_default()
            )
        } else {
            format!("the open-file limit is {files}: raise it with `ulimit -n`")
        };
        warn!(
            "--max-connections {} does not fit, serving at most {ceiling} at once: {binding}",
            limits.max_connections
        );
    }
    ceiling
}

/// Accepts connections on `listener` until `shutdown` resolves, and admits
/// each one (see the module doc), serving at most `max_connections` at once.
async fn accept_loop(
    listener: TcpListener,
    sandbox: &Arc<Sandbox>,
    max_connections: u32,
    tracker: &TaskTracker,
    shutdown: impl Future<Output = &'static str>,
) {
    let counters = &sandbox.counters;
    let places = Arc::new(Semaphore::new(max_connections as usize));
    let mut next_id = 0u64;
    let mut last_refusal_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            name = &mut shutdown => {
                info!("{name}: stopped accepting");
                return;
            }
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                error!("accept failed: {error}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        count(&counters.total);

        if let Ok(place) = places.clone().try_acquire_owned() {
            tracker.spawn(serve_connection(sandbox.clone(), tcp, peer, id, place));
        } else if counters.queued.load(Relaxed) < u64::from(sandbox.limits.max_queued) {
            count(&counters.queued);
            info!(conn = id, %peer, "queued: all places taken");
            let (sandbox, places) = (sandbox.clone(), places.clone());
            tracker.spawn(async move {
                let place = tokio::select! {
                    place = places.acquire_owned() => place,
                    () = sandbox.stop.cancelled() => {
                        sandbox.counters.queued.fetch_sub(1, Relaxed);
                        return;
                    }
                };
                sandbox.counters.queued.fetch_sub(1, Relaxed);
                // The semaphore is never closed, so acquiring cannot fail.
                if let Ok(place) = place {
                    serve_connection(sandbox, tcp, peer, id, place).await;
                }
            });
        } else {
            count(&counters.refused);
            drop(tcp);
            let due =
                last_refusal_warning.is_none_or(|last| last.elapsed() >= REFUSAL_WARNING_INTERVAL);
            if due {
                last_refusal_warning = Some(Instant::now());
                warn!(
                    conn = id, %peer, refused = counters.refused.load(Relaxed),
                    "refused: {max_connections} connections served and {} queued",
                    sandbox.limits.max_queued
                );
            }
        }
    }
}

/// Lets live connections finish for up to the drain timeout, then stops
/// the rest. Returns `false` if a second signal cut the drain short.
async fn drain(sandbox: &Sandbox, tracker: &TaskTracker, signals: &mut Signals) -> bool {
    tracker.close();
    let counters = &sandbox.counters;
    let timeout = sandbox.limits.drain_timeout;
    info!(
        live = counters.current.load(Relaxed),
        queued = counters.queued.load(Relaxed),
        "draining for up to {}",
        humantime::format_duration(timeout)
    );
    tokio::select! {
        () = tracker.wait() => true,
        () = tokio::time::sleep(timeout) => {
            warn!(live = counters.current.load(Relaxed), "drain timed out: stopping the connections left");
            sandbox.stop.cancel();
            tracker.wait().await;
            true
        }
        name = signals.next() => {
            warn!(live = counters.current.load(Relaxed), "{name} again: exiting without draining");
            false
        }
    }
}

/// Serves one admitted connection from start to close, and logs it. The
/// place is given back when this returns.
async fn serve_connection(
    sandbox: Arc<Sandbox>,
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    _place: OwnedSemaphorePermit,
) {
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

    let counters = &sandbox.counters;
    counters.connection_started();
    let socket = Socket::new(tcp);
    let info = ConnectionInfo {
        id,
        peer_address: peer.to_string(),
        local_address: local.to_string(),
    };
    let outcome = sandbox.serve(info, &socket, accepted).await;
    close(&socket).await;
    let left = counters.connection_ended();
    log_outcome(counters, id, accepted, &socket, outcome);
    if left == 0 {
        heap::release_when_idle(sandbox.counters.clone());
    }
}

/// Logs the one `closed` line of a connection, and counts how it ended.
fn log_outcome(counters: &Counters, id: u64, accepted: Instant, socket: &Socket, outcome: Outcome) {
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
        Outcome::Failed(message) => {
            count(&counters.errors);
            warn!(conn = id, elapsed_ms, bytes_in, bytes_out, outcome = "error", error = %message, "closed")
        }
        Outcome::Trapped(error) => {
            count(&counters.traps);
            // The wasm backtrace (several lines) goes last, after the fields.
            let backtrace = error
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(|backtrace| format!("\n{backtrace}"))
                .unwrap_or_default();
            warn!(
                conn = id, elapsed_ms, bytes_in, bytes_out, outcome = "trap",
                error = %error.root_cause(), wasm_backtrace = %backtrace, "closed"
            )
        }
        Outcome::Stopped(reason) => {
            let (counter, why) = match reason {
                StopReason::CpuBudget => (&counters.cpu_budget_stops, "CPU budget spent"),
                StopReason::Idle => (&counters.idle_timeouts, "idle timeout"),
                StopReason::Lifetime => (&counters.lifetime_stops, "maximum lifetime reached"),
                StopReason::Shutdown => (&counters.drain_stops, "drain timed out"),
            };
            count(counter);
            warn!(
                conn = id,
                elapsed_ms,
                bytes_in,
                bytes_out,
                outcome = "stopped",
                reason = why,
                "closed"
            )
        }
    }
}

/// Ends the connection: sends FIN after everything written; then, unless
/// the client has closed its side already, reads and discards until it
/// does, for at most [`LINGER_TIMEOUT`].
async fn close(socket: &Socket) {
    let tcp = socket.tcp();
    let shutdown = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
    if shutdown.is_err() || socket.input_ended() {
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

/// Giving freed heap back to the system once the host is idle.
mod heap {
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use crate::counters::Counters;

    /// Least time between two trims: a trim walks the whole heap.
    const TRIM_INTERVAL: Duration = Duration::from_secs(5);

    static LAST_TRIM: Mutex<Option<Instant>> = Mutex::new(None);
    static TRIM_SCHEDULED: AtomicBool = AtomicBool::new(false);

    /// glibc keeps the heap freed by closed connections in its per-thread
    /// arenas, fragmented: after a peak of 10,000 connections, over
    /// 100 MiB. Called when the last live connection has ended: trims on a
    /// blocking thread, at most every [`TRIM_INTERVAL`] (a trim that comes
    /// too soon waits its turn) and only if the host is still idle then.
    pub fn release_when_idle(counters: Arc<Counters>) {
        if TRIM_SCHEDULED.swap(true, Relaxed) {
            return;
        }
        let last = *LAST_TRIM
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let wait = last.map_or(Duration::ZERO, |last| {
            TRIM_INTERVAL.saturating_sub(last.elapsed())
        });
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            TRIM_SCHEDULED.store(false, Relaxed);
            if counters.current.load(Relaxed) != 0 {
                return;
            }
            *LAST_TRIM
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
            tokio::task::spawn_blocking(|| {
                // SAFETY: malloc_trim only returns free memory to the system.
                #[cfg(all(target_os = "linux", target_env = "gnu"))]
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        });
    }
}

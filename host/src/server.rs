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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::bindings::ConnectionInfo;
use crate::cli::Args;
use crate::counters::{Counters, count};
use crate::plugin::Plugin;
use crate::reclaim::Reclaimer;
use crate::sandbox::{self, EpochTicker, Outcome, Sandbox, Served, StopReason};
use crate::shutdown;
use crate::socket::Socket;
use crate::untrusted::{self, Untrusted};

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
/// plugin fails here, before the host listens. (A second signal, or a drain
/// that overruns, ends the process from [`shutdown`] with status 1.)
pub async fn run(args: Args) -> Result<ExitCode> {
    let limits = args.limits()?;
    let mut shutdown = shutdown::watch(limits.drain_timeout)?;
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
    let checked = tokio::select! {
        checked = sandbox.check() => checked,
        name = shutdown.requested() => {
            info!("{name} during the plugin's start-up check: stopped before listening");
            return Ok(ExitCode::SUCCESS);
        }
    };
    checked
        .map_err(anyhow::Error::from)
        .with_context(|| format!("plugin {} cannot be instantiated", args.plugin.display()))?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;
    println!("listening on {local}");
    info!(plugin = %args.plugin.display(), %local, limits = ?sandbox.limits, "listening");

    let ceiling = connection_ceiling(&sandbox.limits);
    let places = Arc::new(Semaphore::new(ceiling as usize));
    let memory_slots = sandbox::memory_slots(&sandbox.limits);
    let reclaimer = Arc::new(
        Reclaimer::new(&engine, places.clone(), memory_slots)
            .map_err(anyhow::Error::from)
            .context("cannot set up memory reclaiming")?,
    );

    tokio::spawn(reclaimer.clone().run());
    let tracker = TaskTracker::new();
    let admission = Admission {
        places,
        max_connections: ceiling,
        reclaimer,
    };
    accept_loop(
        listener,
        &sandbox,
        &admission,
        &tracker,
        shutdown.requested(),
    )
    .await;
    drain(&sandbox, &tracker).await;
    info!(counters = %sandbox.counters, "stopped");
    Ok(ExitCode::SUCCESS)
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

/// What admission works with: the places, one per connection served at
/// once, and the reclaimer told of every connection's end.
struct Admission {
    places: Arc<Semaphore>,
    max_connections: u32,
    reclaimer: Arc<Reclaimer>,
}

/// Accepts connections on `listener` until `shutdown` resolves, and admits
/// each one (see the module doc), serving at most `max_connections` at once.
async fn accept_loop(
    listener: TcpListener,
    sandbox: &Arc<Sandbox>,
    admission: &Admission,
    tracker: &TaskTracker,
    shutdown: impl Future<Output = &'static str>,
) {
    let counters = &sandbox.counters;
    let Admission {
        places,
        max_connections,
        reclaimer,
    } = admission;
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

        let serve = {
            let (sandbox, reclaimer) = (sandbox.clone(), reclaimer.clone());
            move |place| serve_connection(sandbox, reclaimer, tcp, peer, id, place)
        };
        if let Ok(place) = places.clone().try_acquire_owned() {
            tracker.spawn(serve(place));
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
                    serve(place).await;
                }
            });
        } else {
            count(&counters.refused);
            drop(serve);
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
/// the rest. Every limit covers a connection's whole life, so a stopped one
/// ends within a yield interval; [`shutdown`] ends the process if not.
async fn drain(sandbox: &Sandbox, tracker: &TaskTracker) {
    tracker.close();
    let counters = &sandbox.counters;
    let timeout = sandbox.limits.drain_timeout;
    info!(
        live = counters.current.load(Relaxed),
        queued = counters.queued.load(Relaxed),
        "draining for up to {}",
        humantime::format_duration(timeout)
    );
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        warn!(
            live = counters.current.load(Relaxed),
            "drain timed out: stopping the connections left"
        );
        sandbox.stop.cancel();
        tracker.wait().await;
    }
}

/// Serves one admitted connection from start to close, and logs it. The
/// place is given back when this returns.
async fn serve_connection(
    sandbox: Arc<Sandbox>,
    reclaimer: Arc<Reclaimer>,
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
    let served = sandbox.serve(&info, &socket, accepted).await;
    close(&socket).await;
    counters.connection_ended();
    reclaimer.connection_ended();
    log_outcome(counters, id, accepted, &socket, served);
}

/// Logs the one `closed` line of a connection, and counts how it ended.
/// Whatever the plugin wrote into it (an error message, names in a trap's
/// backtrace) is escaped and bounded ([`Untrusted`]), so the record stays
/// one line of bounded size.
fn log_outcome(counters: &Counters, id: u64, accepted: Instant, socket: &Socket, served: Served) {
    let elapsed_ms = accepted.elapsed().as_millis() as u64;
    let (bytes_in, bytes_out) = (socket.bytes_in(), socket.bytes_out());
    let unsent = served.unsent;
    match served.outcome {
        Outcome::Finished if unsent == 0 => {
            info!(
                conn = id,
                elapsed_ms,
                bytes_in,
                bytes_out,
                outcome = "ok",
                "closed"
            )
        }
        Outcome::Finished => {
            warn!(
                conn = id,
                elapsed_ms,
                bytes_in,
                bytes_out,
                outcome = "ok",
                unsent,
                "closed: output not delivered, the client did not take it in time"
            )
        }
        Outcome::Failed(message) => {
            count(&counters.errors);
            warn!(
                conn = id, elapsed_ms, bytes_in, bytes_out, outcome = "error", unsent,
                error = %Untrusted(&message), "closed"
            )
        }
        Outcome::Trapped(error) => {
            count(&counters.traps);
            let backtrace = error
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(|backtrace| untrusted::displayed(backtrace))
                .unwrap_or_default();
            warn!(
                conn = id, elapsed_ms, bytes_in, bytes_out, outcome = "trap",
                error = %Untrusted(&error.root_cause().to_string()),
                wasm_backtrace = %Untrusted(backtrace.trim_end()), "closed"
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

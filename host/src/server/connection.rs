//! One admitted connection, from its place to its close: the sandbox
//! serves it (with one instance, or several in turn if it hibernates), and
//! its one `closed` line says how it ended. Apart from admission, so that
//! what a connection does once served never touches the accept loop: its
//! errors stay in its task and its log lines.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::{info, warn};

use crate::capabilities::hibernation::Hibernation;
use crate::capabilities::messaging::Subscription;
use crate::net::socket::Socket;
use crate::ops::counters::{Counters, count};
use crate::ops::metrics;
use crate::ops::untrusted::{self, Untrusted};
use crate::sandbox::bindings::ConnectionInfo;
use crate::sandbox::{CpuBudget, Outcome, Served, StopReason};
use crate::server::front_door::Arrival;
use crate::server::handed::{HandedConnection, HandedSubscription};
use crate::server::hibernation::{Awake, FirstSlice, Parting, hibernate};
use crate::server::service::Version;

/// How long, after the host has finished sending, it keeps reading and
/// discarding what the client still sends. Closing a socket with unread
/// input makes the kernel send a reset, which can destroy the last response
/// before the client reads it.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one admitted connection from start to close, and logs it. The
/// place is given back when this returns, or while it hibernates.
pub(super) async fn serve_connection(
    version: Arc<Version>,
    arrival: Arrival,
    place: OwnedSemaphorePermit,
) {
    let Arrival {
        id,
        accepted,
        tcp,
        peer,
        local,
        proxied,
        tls,
        serving,
    } = arrival;
    let service = version.name();
    if proxied {
        info!(target: "portico_host::server", service, conn = id, %peer, proxied, "accepted");
    } else {
        info!(target: "portico_host::server", service, conn = id, %peer, "accepted");
    }
    let local = match local.map_or_else(|| tcp.local_addr(), Ok) {
        Ok(local) => local,
        Err(error) => {
            warn!(
                target: "portico_host::server",
                service,
                conn = id,
                "closed at once: cannot read its local address: {error}"
            );
            return;
        }
    };
    // Plugins often answer with small writes; Nagle's algorithm would hold
    // each one back for up to 40 ms waiting for the client's ACK.
    let _ = tcp.set_nodelay(true);

    let conn = Conn {
        id,
        accepted,
        socket: Socket::new(tcp, tls, proxied),
        info: ConnectionInfo {
            id,
            peer_address: peer.to_string(),
            local_address: local.to_string(),
        },
        serving,
    };
    serve_in_turns(version, conn, Some(place), None).await;
}

/// A connection, across the instances that serve it in turn.
struct Conn {
    id: u64,
    accepted: Instant,
    socket: Arc<Socket>,
    info: ConnectionInfo,
    /// Which version of its service is in force, as its listener has it.
    serving: watch::Receiver<Option<Arc<Version>>>,
}

/// Serves `conn` until it closes: by an instance of `version` in its
/// `place` first, or, a connection handed over hibernated, by hibernating
/// first; then by a fresh instance at each wake. Logs its end.
async fn serve_in_turns(
    version: Arc<Version>,
    conn: Conn,
    mut place: Option<OwnedSemaphorePermit>,
    mut hibernated: Option<Hibernation>,
) {
    let Conn {
        id,
        accepted,
        ref socket,
        ref info,
        ref serving,
    } = conn;
    // Counters are the service's, the same for every version.
    let counters = version.sandbox.counters.clone();
    counters.connection_started();
    let limits = &version.sandbox.limits;
    let mut cpu = CpuBudget::new(limits.cpu_budget, limits.cpu_refill);
    // The version serving now: a woken connection's is the one in force.
    let (mut current, mut woken, mut gate) = (version.clone(), None, None);
    let served = loop {
        if let Some(hibernation) = hibernated.take() {
            drop(place.take());
            match hibernate(&current, serving, socket, hibernation, id, accepted).await {
                Ok(Awake {
                    version,
                    place: taken,
                    gate: pass,
                    woken: kept,
                }) => {
                    (current, place, woken, gate) = (version, Some(taken), Some(kept), Some(pass))
                }
                Err(Parting::Stopped(reason)) => break Served::new(Outcome::Stopped(reason)),
                Err(Parting::HandOver(hibernation)) => {
                    return hand_over(&current, &conn, hibernation, &counters).await;
                }
            }
        }
        current.reclaimer.connection_started();
        let instance = current
            .sandbox
            .serve(info, socket, accepted, &mut cpu, woken.take());
        let mut served = FirstSlice::new(instance, gate.take()).await;
        current.reclaimer.connection_ended();
        match served.hibernation.take() {
            Some(hibernation) => hibernated = Some(hibernation),
            None => break served,
        }
    };
    close(socket).await;
    let service = version.name();
    connection_ended(&counters, socket);
    metrics::connection_ended(service, accepted.elapsed(), served.instantiation);
    log_outcome(service, &counters, id, accepted, socket, served);
}

/// Counts a connection's end, and its bytes.
fn connection_ended(counters: &Counters, socket: &Socket) {
    counters.connection_ended();
    counters.bytes_in.fetch_add(socket.bytes_in(), Relaxed);
    counters.bytes_out.fetch_add(socket.bytes_out(), Relaxed);
}

/// Hands a hibernated connection to an upgrade's new process: its socket
/// (not closed here: the new process holds it now) and what it keeps. If
/// that fails, closes it as a drain would.
async fn hand_over(version: &Version, conn: &Conn, hibernation: Hibernation, counters: &Counters) {
    let service = version.name();
    let handed = HandedConnection {
        service: service.to_string(),
        conn: conn.id,
        peer_address: conn.info.peer_address.clone(),
        local_address: conn.info.local_address.clone(),
        proxied: conn.socket.proxied(),
        accepted_ms_ago: conn.accepted.elapsed().as_millis() as u64,
        wake_after_ms: hibernation.wake_after.map(|after| after.as_millis() as u64),
        state: BASE64.encode(&hibernation.state),
        subscriptions: hibernation
            .subscriptions
            .iter()
            .map(|subscription| HandedSubscription {
                topic: subscription.topic().to_string(),
                waiting: subscription
                    .take_waiting()
                    .iter()
                    .map(|payload| BASE64.encode(payload))
                    .collect(),
            })
            .collect(),
    };
    connection_ended(counters, &conn.socket);
    match version.handover.ship(&handed, conn.socket.tcp().as_fd()) {
        Ok(()) => {
            info!(target: "portico_host::server", service, conn = conn.id, "handed over to the new process")
        }
        Err(error) => {
            close(&conn.socket).await;
            warn!(target: "portico_host::server", service, conn = conn.id, outcome = "stopped", "closed: cannot hand it over to the new process: {error:#}");
        }
    }
}

/// Holds a connection an upgrade's old process handed over (`handed`, its
/// `socket`) as hibernated in `version`, as if it had hibernated here; it
/// goes by `id` in this process.
pub(super) async fn resume_hibernated(
    version: Arc<Version>,
    serving: watch::Receiver<Option<Arc<Version>>>,
    handed: HandedConnection,
    socket: OwnedFd,
    id: u64,
) {
    let service = version.name();
    let taken = BASE64
        .decode(&handed.state)
        .map_err(anyhow::Error::from)
        .and_then(|state| {
            let tcp = std::net::TcpStream::from(socket);
            tcp.set_nonblocking(true)?;
            Ok((state, TcpStream::from_std(tcp)?))
        });
    let (state, tcp) = match taken {
        Ok(taken) => taken,
        Err(error) => {
            return warn!(target: "portico_host::server", service, from_conn = handed.conn, "a handed-over connection, closed: {error:#}");
        }
    };
    let limits = &version.sandbox.limits;
    let wake_after = handed.wake_after_ms.map(Duration::from_millis);
    let counters = &version.sandbox.counters;
    let subscriptions = resubscribe(&version, &handed.subscriptions).await;
    let Some(hibernation) = Hibernation::handed_over(
        state,
        wake_after,
        subscriptions,
        counters,
        limits.max_hibernated,
    ) else {
        return warn!(target: "portico_host::server", service, from_conn = handed.conn, "a handed-over connection, closed: max-hibernated reached");
    };
    info!(target: "portico_host::server", service, conn = id, from_conn = handed.conn, peer = handed.peer_address, "taken over from the replaced process");
    let now = Instant::now();
    let conn = Conn {
        id,
        accepted: now
            .checked_sub(Duration::from_millis(handed.accepted_ms_ago))
            .unwrap_or(now),
        socket: Socket::new(tcp, None, handed.proxied),
        info: ConnectionInfo {
            id,
            peer_address: handed.peer_address,
            local_address: handed.local_address,
        },
        serving,
    };
    serve_in_turns(version, conn, None, Some(hibernation)).await
}

/// Logs the one `closed` line of a connection, and counts how it ended.
/// Whatever the plugin wrote into it (an error message, names in a trap's
/// backtrace) is escaped and bounded ([`Untrusted`]), so the record stays
/// one line of bounded size.
fn log_outcome(
    service: &str,
    counters: &Counters,
    id: u64,
    accepted: Instant,
    socket: &Socket,
    served: Served,
) {
    let elapsed_ms = accepted.elapsed().as_millis() as u64;
    let (bytes_in, bytes_out) = (socket.bytes_in(), socket.bytes_out());
    let unsent = served.unsent;
    if matches!(served.outcome, Outcome::Finished) {
        count(&counters.finished);
    }
    match served.outcome {
        Outcome::Finished if unsent == 0 => {
            info!(
                target: "portico_host::server",
                service,
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
                target: "portico_host::server",
                service,
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
                target: "portico_host::server",
                service, conn = id, elapsed_ms, bytes_in, bytes_out, outcome = "error", unsent,
                error = %Untrusted(&message), "closed"
            )
        }
        Outcome::Trapped(error) => {
            count(&counters.traps);
            let bytes = (bytes_in, bytes_out);
            log_trap(
                service,
                id,
                elapsed_ms,
                bytes,
                &error,
                served.uncaught_exception,
            );
        }
        Outcome::Stopped(reason) => {
            let (counter, why) = stop_counter(counters, reason);
            count(counter);
            warn!(
                target: "portico_host::server",
                service,
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

/// Logs the `closed` line of a connection whose plugin trapped: with the
/// exception its language runtime reported, if it did (the traceback is
/// in the log above, at WARN, and the wasm backtrace would show only the
/// runtime's frames), else with the trap's cause and wasm backtrace.
fn log_trap(
    service: &str,
    id: u64,
    elapsed_ms: u64,
    (bytes_in, bytes_out): (u64, u64),
    error: &wasmtime::Error,
    uncaught_exception: Option<(&'static str, String)>,
) {
    if let Some((language, exception)) = uncaught_exception {
        let cause = format!("uncaught {language} exception");
        return warn!(
            target: "portico_host::server",
            service, conn = id, elapsed_ms, bytes_in, bytes_out, outcome = "trap",
            cause = cause.as_str(),
            exception = %Untrusted(&exception),
            error = %Untrusted(&error.root_cause().to_string()), "closed"
        );
    }
    let (cause, backtrace) = trap_cause(error);
    warn!(
        target: "portico_host::server",
        service, conn = id, elapsed_ms, bytes_in, bytes_out, outcome = "trap",
        error = %Untrusted(&cause),
        wasm_backtrace = %Untrusted(backtrace.trim_end()), "closed"
    )
}

/// A trap's root cause and its wasm backtrace (empty if it has none). The
/// cause names the fix for the one trap a plugin author cannot read from
/// wasmtime's words alone.
fn trap_cause(error: &wasmtime::Error) -> (String, String) {
    let backtrace = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|backtrace| untrusted::displayed(backtrace))
        .unwrap_or_default();
    let mut cause = error.root_cause().to_string();
    if cause.contains("borrow handles still remain") {
        cause.push_str(
            ": `run` returned still holding its borrowed input or output stream; \
             drop both before returning",
        );
    }
    (cause, backtrace)
}

/// The counter a stop counts in, and the reason its `closed` line gives.
fn stop_counter(counters: &Counters, reason: StopReason) -> (&AtomicU64, &'static str) {
    match reason {
        StopReason::CpuBudget => (&counters.cpu_budget_stops, "CPU budget spent"),
        StopReason::Idle => (&counters.idle_timeouts, "idle timeout"),
        StopReason::Lifetime => (&counters.lifetime_stops, "maximum lifetime reached"),
        StopReason::Shutdown => (&counters.drain_stops, "drain timed out"),
    }
}

/// Ends the connection: sends FIN after everything written; then, unless
/// the client has closed its side already, reads and discards until it
/// does, for at most [`LINGER_TIMEOUT`].
async fn close(socket: &Socket) {
    let tcp = socket.tcp();
    if let Some(mut tls) = socket.tls() {
        tls.send_close_notify();
        while tls.wants_write() {
            if tls.write_tls(&mut socket.tcp_io()).is_err() {
                break;
            }
        }
    }
    let shutdown = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
    if shutdown.is_err() || socket.input_ended() {
        return;
    }
    let discard = async {
        // On the heap: in the future, 4 KiB would be part of every
        // connection's task for its whole life.
        let mut sink = vec![0; 4096];
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

/// A handed-over connection's subscriptions, made again in this process
/// with the messages that waited on them; one its service's grant no
/// longer allows is dropped.
async fn resubscribe(version: &Version, handed: &[HandedSubscription]) -> Vec<Subscription> {
    let Some(grant) = &version.sandbox.messaging else {
        return Vec::new();
    };
    let mut subscriptions = Vec::new();
    for subscription in handed {
        let waiting = subscription
            .waiting
            .iter()
            .filter_map(|payload| BASE64.decode(payload).ok())
            .collect();
        let counters = version.sandbox.counters.clone();
        if let Some(made) = grant
            .resubscribe(&subscription.topic, waiting, counters)
            .await
        {
            subscriptions.push(made);
        }
    }
    subscriptions
}

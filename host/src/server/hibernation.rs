//! A hibernated connection: open, with no instance and no place, until
//! something wakes it; then admitted again, as a new connection is, to the
//! version of its service in force, whose fresh instance carries on.
//!
//! What it holds meanwhile is its socket (TLS session included), the
//! plugin's state and subscriptions ([`Hibernation`]), and its CPU budget,
//! which the connection's task keeps. The idle timeout is the service's
//! `hibernated-idle-timeout`; the lifetime counts from the accept, and is
//! `hibernated-max-lifetime` if set, else `max-lifetime`, from the first
//! hibernation on.
//!
//! A woken connection takes a place as a new one does, then passes the
//! wake gate: as many connections as cores may be in the first slice of a
//! woken instance (instantiating it, and running it until it first waits)
//! at once. Having passed, it yields once, to the back of the runtime's
//! queue: the permit was handed on by the instance before it, and tokio
//! runs a task woken that way next, so without the yield the wakes of a
//! storm ran as one chain and live connections waited for its end.
//!
//! One message can wake thousands of subscribers. Measured in the load
//! suite (1,000 hibernated subscribers, 20 messages each from 2
//! publishers, an echo load beside them on 2 cores), the echo's p99 was
//! 64.7 ms with the gate alone, 5.5 ms with the yield alone, and 0.96 ms
//! with both.

use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::debug;
use wasmtime_wasi::p2::Pollable;

use crate::capabilities::hibernation::{Hibernation, WakeReason, Woken, count_wake};
use crate::capabilities::messaging::Subscription;
use crate::net::socket::{ClientEvent, Socket};
use crate::ops::counters::count;
use crate::sandbox::{StopReason, lifetime_ends};
use crate::server::service::Version;

/// A woken connection, admitted again.
pub(super) struct Awake {
    pub(super) version: Arc<Version>,
    pub(super) place: OwnedSemaphorePermit,
    /// Its pass through the wake gate, for [`FirstSlice`].
    pub(super) gate: OwnedSemaphorePermit,
    pub(super) woken: Woken,
}

/// Why a hibernated connection leaves this process without waking.
pub(super) enum Parting {
    /// The host closed it.
    Stopped(StopReason),
    /// An upgrade's new process takes it over, with the hibernation (its
    /// `wake_after` what remains of it).
    HandOver(Hibernation),
}

impl From<StopReason> for Parting {
    fn from(reason: StopReason) -> Self {
        Parting::Stopped(reason)
    }
}

/// What ends a hibernation.
enum Event {
    Wake(WakeReason),
    HandOver,
}

/// Keeps the connection until something wakes it, then waits for a place
/// in the version of its service in force (`serving`; the one it ran under
/// if the service is gone). `Err` says why it leaves instead.
pub(super) async fn hibernate(
    version: &Arc<Version>,
    serving: &watch::Receiver<Option<Arc<Version>>>,
    socket: &Socket,
    mut hibernation: Hibernation,
    conn: u64,
    accepted: Instant,
) -> Result<Awake, Parting> {
    let slept = Instant::now();
    let service = version.name();
    count(&version.sandbox.counters.hibernations);
    debug!(
        target: "portico_host::server",
        service,
        conn,
        state_bytes = hibernation.state.len(),
        subscriptions = hibernation.subscriptions.len(),
        wake_after_ms = hibernation.wake_after.map(|after| after.as_millis() as u64),
        "hibernated"
    );
    let reason = match wait_for_wake(version, socket, &mut hibernation, accepted).await? {
        Event::Wake(reason) => reason,
        Event::HandOver => {
            let remaining = |after: std::time::Duration| after.saturating_sub(slept.elapsed());
            hibernation.wake_after = hibernation.wake_after.map(remaining);
            return Err(Parting::HandOver(hibernation));
        }
    };
    let version = serving.borrow().clone().unwrap_or_else(|| version.clone());
    let reason_name = count_wake(&version.sandbox.counters, reason);
    debug!(target: "portico_host::server", service, conn, reason = reason_name, "woke");
    let place = admit_again(&version).await?;
    let gate = tokio::select! {
        gate = version.waking.clone().acquire_owned() => gate.ok(),
        () = version.sandbox.stop.cancelled() => None,
    };
    tokio::task::yield_now().await;

    Ok(Awake {
        version,
        place,
        gate: gate.ok_or(Parting::Stopped(StopReason::Shutdown))?,
        woken: hibernation.wake(reason),
    })
}

/// What wakes a hibernated connection, or what closes it. An upgrade's
/// new process takes over one without a TLS session (its keys cannot move
/// between processes); those are woken by the drain that follows, as on
/// SIGTERM.
async fn wait_for_wake(
    version: &Version,
    socket: &Socket,
    hibernation: &mut Hibernation,
    accepted: Instant,
) -> Result<Event, StopReason> {
    let limits = &version.sandbox.limits;
    let wake_after = hibernation.wake_after;
    let timer = async {
        match wake_after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    let movable = socket.tls().is_none();
    tokio::select! {
        biased;
        () = version.handover.started(), if movable => Ok(Event::HandOver),
        () = version.sandbox.draining.cancelled() => Ok(Event::Wake(WakeReason::Draining)),
        event = socket.client_event() => Ok(Event::Wake(match event {
            ClientEvent::Data => WakeReason::ClientData,
            ClientEvent::Closed => WakeReason::ClientClosed,
        })),
        () = any_message(&mut hibernation.subscriptions) => Ok(Event::Wake(WakeReason::Message)),
        () = timer => Ok(Event::Wake(WakeReason::Timer)),
        () = socket.idle(limits.hibernated_idle_timeout) => Err(StopReason::Idle),
        () = lifetime_ends(limits.lifetime(true), accepted) => Err(StopReason::Lifetime),
    }
}

/// Resolves once a message waits on any of `subscriptions`.
async fn any_message(subscriptions: &mut [Subscription]) {
    let mut waits: Vec<_> = subscriptions.iter_mut().map(|s| s.ready()).collect();
    std::future::poll_fn(|cx| {
        match waits
            .iter_mut()
            .any(|wait| wait.as_mut().poll(cx).is_ready())
        {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    })
    .await
}

/// Takes a place for a woken connection: at once if one is free, else in
/// the same queue as new connections ([`Version::wait_for_place`]). A wake is not
/// refused when the queue is full: the connection is the service's
/// already. The end of a drain closes it.
async fn admit_again(version: &Version) -> Result<OwnedSemaphorePermit, StopReason> {
    if let Ok(place) = version.places.clone().try_acquire_owned() {
        return Ok(place);
    }
    count(&version.sandbox.counters.queued);
    version
        .wait_for_place(&version.sandbox.stop)
        .await
        .ok_or(StopReason::Shutdown)
}

pin_project_lite::pin_project! {
    /// Runs a woken connection's serving, holding its pass through the wake
    /// gate until the serving first waits or ends.
    pub(super) struct FirstSlice<F> {
        #[pin]
        serving: F,
        gate: Option<OwnedSemaphorePermit>,
    }
}

impl<F> FirstSlice<F> {
    pub(super) fn new(serving: F, gate: Option<OwnedSemaphorePermit>) -> Self {
        Self { serving, gate }
    }
}

impl<F: Future> Future for FirstSlice<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let polled = this.serving.poll(cx);
        this.gate.take();
        polled
    }
}

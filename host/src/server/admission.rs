//! Admission, as POCO's `TCPServer` does it, per service: a connection is
//! served at once if one of the service's places is free; else it waits
//! in a queue of at most `max-queued`, first come first served; past that
//! it is closed at once and counted as refused. Refusals are warned of
//! sparingly, so that a flood cannot flood the log too.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::ops::counters::count;
use crate::server::connection::serve_connection;
use crate::server::front_door::Arrival;
use crate::server::service::Version;

/// Least time between two warnings about refused connections.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Admits a connection (see the module doc): serves it if a place is
/// free, else queues it if the queue has room, else closes it. Its task
/// joins `tracker`, which the drain waits on; `stop`, cancelled at the
/// end of a drain, closes it if it is still queued.
pub(super) fn admit(
    tracker: &TaskTracker,
    stop: &CancellationToken,
    version: Arc<Version>,
    arrival: Arrival,
) {
    let counters = &version.sandbox.counters;
    let max_queued = version.sandbox.limits.max_queued;
    if let Ok(place) = version.places.clone().try_acquire_owned() {
        tracker.spawn(serve_connection(version, arrival, place));
    } else if counters.queued.load(Relaxed) < u64::from(max_queued) {
        count(&counters.queued);
        info!(target: "portico_host::server", service = version.name(), conn = arrival.id, peer = %arrival.peer, "queued: all places taken");
        let stop = stop.clone();
        tracker.spawn(async move {
            if let Some(place) = version.wait_for_place(&stop).await {
                serve_connection(version, arrival, place).await;
            }
        });
    } else {
        count(&counters.refused);
        let why = format!(
            "{} connections served and {max_queued} queued",
            version.max_connections
        );
        warn_of_refusal(&version, &arrival, &why);
    }
}

/// Warns that a connection was refused, at most once a
/// [`REFUSAL_WARNING_INTERVAL`] per service version: a flood must not
/// flood the log too.
pub(super) fn warn_of_refusal(version: &Version, arrival: &Arrival, why: &str) {
    let mut last = version
        .last_refusal_warning
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if last.is_some_and(|last| last.elapsed() < REFUSAL_WARNING_INTERVAL) {
        return;
    }
    *last = Some(Instant::now());
    let counters = &version.sandbox.counters;
    let refused = counters.refused.load(Relaxed) + counters.handshakes_refused.load(Relaxed);
    warn!(target: "portico_host::server", service = version.name(), conn = arrival.id, peer = %arrival.peer, refused, "refused: {why}");
}

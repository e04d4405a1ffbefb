//! The accept loops: one per listener, each handing what it accepts to the
//! version of the service its channel names. A loop only ever sees accept
//! errors; whatever happens to a connection after that happens in the
//! connection's own task.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, error};

use crate::ops::counters::count;
use crate::server::Host;
use crate::server::admission::{admit, warn_of_refusal};
use crate::server::front_door::{Arrival, admits, front_door};
use crate::server::service::Version;

/// Pause after a failed accept (out of file descriptors, say), so that the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts connections on `listener` for the version its channel names,
/// until the drain starts or the channel says `None`, and admits each one
/// (see the module doc of [`crate::server`]).
pub(super) async fn accept_loop(
    host: Arc<Host>,
    listener: TcpListener,
    mut serving: watch::Receiver<Option<Arc<Version>>>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = host.accepting.cancelled() => return,
            changed = serving.changed() => {
                if changed.is_err() || serving.borrow().is_none() {
                    return;
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                error!(target: "portico_host::server", "accept failed: {error}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(version) = serving.borrow().clone() else {
            return;
        };
        let arrival = Arrival {
            id: host.next_id.fetch_add(1, Relaxed) + 1,
            accepted: Instant::now(),
            tcp,
            peer,
            local: None,
            proxied: false,
            tls: None,
            serving: serving.clone(),
        };
        count(&version.sandbox.counters.total);
        arrive(&host, version, arrival);
    }
}

/// Admits a connection that has no front door to go through at once; else
/// takes it through in a task of its own, which holds one of the
/// service's handshake places, so that the accept loop never waits on a
/// client.
fn arrive(host: &Arc<Host>, version: Arc<Version>, arrival: Arrival) {
    if !version.has_front_door() {
        if admits(&version, &arrival) {
            admit(&host.tracker, &host.stop, version, arrival);
        }
        return;
    }
    let Ok(handshake) = version.handshakes.clone().try_acquire_owned() else {
        count(&version.sandbox.counters.handshakes_refused);
        warn_of_refusal(&version, &arrival, "handshakes in progress");
        return;
    };
    let host = host.clone();
    host.clone().tracker.spawn(async move {
        let id = arrival.id;
        // A drain closes connections not yet admitted at once, as if
        // never accepted, rather than wait out their timeouts.
        let arrival = tokio::select! {
            arrival = front_door(&version, arrival) => arrival,
            () = host.accepting.cancelled() => {
                debug!(target: "portico_host::server", service = version.name(), conn = id, "closed before admission: draining");
                None
            }
        };
        drop(handshake);
        if let Some(arrival) = arrival
            && !host.accepting.is_cancelled()
        {
            admit(&host.tracker, &host.stop, version, arrival);
        }
    });
}

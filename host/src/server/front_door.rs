//! What a connection goes through between its accept and its admission:
//! the PROXY header, the service's peer filter, the TLS handshake. All of
//! it happens before the connection takes a place or an instance, so that
//! a client who never gets through costs no more than a socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

use crate::ops::counters::count;
use crate::server::service::Version;

/// A connection between its accept and its admission.
pub(super) struct Arrival {
    pub(super) id: u64,
    pub(super) accepted: Instant,
    pub(super) tcp: TcpStream,
    /// The client: the socket's peer, or the address a PROXY header gave.
    pub(super) peer: SocketAddr,
    /// The address the client connected to, if a PROXY header gave it.
    pub(super) local: Option<SocketAddr>,
    /// Whether `peer` and `local` came from a PROXY header.
    pub(super) proxied: bool,
    /// The TLS session, once the handshake is done (boxed, as in
    /// [`Socket`](crate::net::socket::Socket)).
    pub(super) tls: Option<Box<rustls::ServerConnection>>,
    /// The version of its service in force, which a hibernated connection
    /// wakes into.
    pub(super) serving: watch::Receiver<Option<Arc<Version>>>,
}

/// Whether the service's filter admits the client; if not, counts it.
pub(super) fn admits(version: &Version, arrival: &Arrival) -> bool {
    if version.spec.peers.admits(arrival.peer.ip()) {
        return true;
    }
    count(&version.sandbox.counters.filtered);
    debug!(target: "portico_host::server", service = version.name(), conn = arrival.id, peer = %arrival.peer, "refused: filtered");
    false
}

/// Takes a connection through what comes before admission: the PROXY
/// header, the filter, the TLS handshake. `None` if it was closed there
/// (counted, and logged at debug level: a client can cause these at will).
pub(super) async fn front_door(version: &Version, mut arrival: Arrival) -> Option<Arrival> {
    let (service, counters) = (version.name(), &version.sandbox.counters);
    if let Some(proxy) = &version.spec.proxy_protocol {
        let header = if proxy.trusts(arrival.peer.ip()) {
            proxy.read_header(&mut arrival.tcp).await
        } else {
            Err(anyhow::anyhow!("the peer is not a trusted proxy"))
        };
        match header {
            Ok(Some(addresses)) => {
                arrival.peer = addresses.source;
                arrival.local = Some(addresses.destination);
                arrival.proxied = true;
            }
            Ok(None) => {}
            Err(error) => {
                count(&counters.proxy_header_refusals);
                debug!(target: "portico_host::server", service, conn = arrival.id, socket_peer = %arrival.peer, "refused: PROXY header: {error:#}");
                return None;
            }
        }
    }
    if !admits(version, &arrival) {
        return None;
    }
    if let Some(tls) = &version.tls {
        match tls.accept(arrival.tcp).await {
            Ok((tcp, session)) => {
                arrival.tcp = tcp;
                arrival.tls = Some(Box::new(session));
            }
            Err(error) => {
                count(&counters.tls_handshake_failures);
                debug!(target: "portico_host::server", service, conn = arrival.id, peer = %arrival.peer, "closed: TLS {error:#}");
                return None;
            }
        }
    }
    Some(arrival)
}

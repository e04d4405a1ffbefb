//! What moves from an upgrade's old process to its new one besides the
//! listeners: hibernated connections, each its socket and what it keeps
//! (see [`super::upgrade`]). Apart from the upgrade itself, so that a
//! version and a connection reach the hand-over without reaching it.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::net::handover;

/// Where hibernated connections go once an upgrade's new process listens.
#[derive(Default)]
pub struct Handover {
    started: CancellationToken,
    to: std::sync::Mutex<Option<UnixStream>>,
}

impl Handover {
    /// Resolves once hibernated connections are to be handed over.
    pub async fn started(&self) {
        self.started.cancelled().await
    }

    /// Starts handing over: hibernated connections go to `to`.
    pub(super) fn begin(&self, to: UnixStream) {
        *self.to.lock().unwrap_or_else(|p| p.into_inner()) = Some(to);
        self.started.cancel();
    }

    /// Sends one hibernated connection, `socket` and `connection`, to the
    /// new process.
    pub fn ship(&self, connection: &HandedConnection, socket: BorrowedFd<'_>) -> Result<()> {
        let to = self.to.lock().unwrap_or_else(|p| p.into_inner());
        let to = to.as_ref().context("no upgrade is under way")?;
        handover::send_connection(to, &serde_json::to_vec(connection)?, socket)
    }
}

/// What a hibernated connection keeps, as handed to the new process.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct HandedConnection {
    pub service: String,
    /// Its id in the old process, for the log.
    pub conn: u64,
    pub peer_address: String,
    pub local_address: String,
    /// Whether its addresses came from a PROXY protocol header.
    pub proxied: bool,
    /// How long ago it was accepted, for its lifetime.
    pub accepted_ms_ago: u64,
    /// When its timer wakes it, from now, if it set one.
    pub wake_after_ms: Option<u64>,
    /// The plugin's state, base64.
    pub state: String,
    /// Its subscriptions, oldest first.
    pub subscriptions: Vec<HandedSubscription>,
}

/// A hibernated connection's subscription, as handed over.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct HandedSubscription {
    pub topic: String,
    /// The messages waiting on it, oldest first, base64.
    pub waiting: Vec<String>,
}

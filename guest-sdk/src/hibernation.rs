//! Hibernation: a connection with nothing to do until its client sends, a
//! message arrives or a timer fires gives its instance back, and the host
//! keeps the connection open without it. A fresh instance carries on when
//! something happens.
//!
//! Call [`hibernate`] with what the next instance needs to know, then
//! return `Ok(())` from [`Handler::run`](crate::Handler::run). The next
//! instance's `run` starts as a new connection's does; [`woken`] tells it
//! that it woke, why, and hands it the state and the subscriptions the
//! connection held:
//!
//! ```no_run
//! use portico_guest_sdk::hibernation::{self, WakeReason};
//! use portico_guest_sdk::{Connection, Handler};
//! use std::io::{Read, Write};
//!
//! /// The first byte of every state: a later build that changes the
//! /// format can tell an older build's state from its own.
//! const FORMAT: u8 = 1;
//!
//! struct Counter;
//!
//! impl Handler for Counter {
//!     fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
//!         let mut lines = 0u64;
//!         if let Some(wake) = hibernation::woken() {
//!             if wake.reason == WakeReason::Draining {
//!                 return Ok(());
//!             }
//!             if let [FORMAT, rest @ ..] = &wake.state[..] {
//!                 lines = u64::from_le_bytes(rest.try_into().unwrap_or_default());
//!             }
//!         }
//!         let mut buf = [0; 512];
//!         let n = conn.read(&mut buf)?;
//!         if n == 0 {
//!             return Ok(());
//!         }
//!         lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
//!         writeln!(conn, "{lines}")?;
//!         let mut state = vec![FORMAT];
//!         state.extend(lines.to_le_bytes());
//!         hibernation::hibernate(&state, None)?;
//!         Ok(())
//!     }
//! }
//! # portico_guest_sdk::export!(Counter);
//! ```
//!
//! The rules:
//! - Hibernate only when nothing is half done: bytes already read but not
//!   handled are lost with the instance unless they are in the state. The
//!   bytes the client sends next stay in the socket for the next instance.
//! - The state is yours, at most the service's `max-hibernation-state`
//!   (64 KiB unless the operator says). After a reload, the connection
//!   wakes into the new build of the plugin: start the state with a format
//!   byte, and treat a state you cannot read as a new connection would.
//! - Every wake runs the plugin and costs CPU from the connection's budget,
//!   which refills slowly over its life. A connection that wakes without
//!   pause is stopped when the budget is spent.
//! - When the host drains, a hibernated connection wakes with
//!   [`WakeReason::Draining`]: say goodbye and return. Hibernating is
//!   refused from then on.

use std::time::Duration;

pub use crate::bindings::portico::plugin::hibernation::WakeReason;
use crate::bindings::portico::plugin::hibernation::{self, Error};
use crate::pubsub::Subscription;

/// What an instance of a woken connection is handed.
pub struct Wake {
    /// Why the connection woke.
    pub reason: WakeReason,
    /// The state the last instance passed to [`hibernate`].
    pub state: Vec<u8>,
    /// The subscriptions the connection held when it hibernated, in the
    /// order they were made, with the messages that arrived since.
    pub subscriptions: Vec<Subscription>,
}

/// Asks the host to hibernate the connection once `run` returns `Ok`,
/// keeping `state` and every [`Subscription`] for the next instance, and
/// to wake it after `wake_after` if nothing else has first. Return from
/// `run` once it succeeds. It fails if the state is too large, the service
/// holds as many hibernated connections as it may, or the host is
/// draining: the connection then stays as it is, and `run` may carry on
/// serving it.
pub fn hibernate(state: &[u8], wake_after: Option<Duration>) -> crate::Result {
    let wake_after = wake_after.map(|after| u64::try_from(after.as_nanos()).unwrap_or(u64::MAX));
    let granted = hibernation::hibernate(state, wake_after);
    crate::pubsub::keep_subscriptions(granted.is_ok());
    granted.map_err(|error| match error {
        Error::StateTooLarge(limit) => format!("cannot hibernate: {limit}").into(),
        Error::TooManyHibernated => {
            "cannot hibernate: the service holds as many hibernated connections as it may".into()
        }
        Error::Draining => "cannot hibernate: the host is shutting down".into(),
    })
}

/// Why this instance was started, with what the connection kept, if it
/// was started for a hibernated connection that woke; `None` for a new
/// connection. Only the first call answers.
pub fn woken() -> Option<Wake> {
    let wake = hibernation::woken()?;
    Some(Wake {
        reason: wake.reason,
        state: wake.state,
        subscriptions: wake
            .subscriptions
            .into_iter()
            .map(Subscription::new)
            .collect(),
    })
}

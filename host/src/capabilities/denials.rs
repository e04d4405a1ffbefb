//! One connection's refusals and limit hits, whichever capability made
//! them. Each is counted in full, but only the first [`MAX_LOGGED`] of a
//! connection are logged: a plugin retrying in a loop cannot flood the log.
//! The budget is the connection's, shared by every capability, so a plugin
//! that is refused by several of them still gets that many lines in all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::ops::counters::{Counters, count};

/// Log lines per connection about denials and limits.
const MAX_LOGGED: u32 = 8;

/// The target every denial is logged under: operators filter on it, and it
/// predates the capabilities' own modules (outbound's kept them all).
pub const TARGET: &str = "portico_host::outbound";

/// One connection's denials: who it is, for the log, and its counters.
pub struct Denials {
    service: Arc<str>,
    conn: u64,
    counters: Arc<Counters>,
    logged: AtomicU32,
}

/// The connection a denial is logged for.
pub struct Logged<'a> {
    pub service: &'a str,
    pub conn: u64,
}

impl Denials {
    pub fn new(service: Arc<str>, conn: u64, counters: Arc<Counters>) -> Self {
        Self {
            service,
            conn,
            counters,
            logged: AtomicU32::new(0),
        }
    }

    /// The service's counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Counts one denial in the counter `which` picks, and gives what to
    /// log it with while the connection's log budget lasts.
    pub fn count(&self, which: impl FnOnce(&Counters) -> &AtomicU64) -> Option<Logged<'_>> {
        count(which(&self.counters));
        let within_budget = self
            .logged
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |logged| {
                (logged < MAX_LOGGED).then_some(logged + 1)
            })
            .is_ok();
        within_budget.then_some(Logged {
            service: &self.service,
            conn: self.conn,
        })
    }
}

//! Load tests: hostile plugins and abusive clients, each while an echo load
//! runs on the same host. The host must stay up, close only the offending
//! connection with a log line naming the cause, and serve the echo load
//! with no errors and a p99 latency close to its quiet value.
//!
//! The scenarios take turns (one lock for the whole binary) so that their
//! latency figures are not each other's noise. Each prints its figures;
//! `cargo xtask test -- --nocapture` shows them.

#[allow(dead_code)]
#[path = "../e2e/util.rs"]
mod util;

/// Abusive clients under load.
mod clients;
/// Hostile plugins under load.
mod hostile;

use std::sync::{Mutex, MutexGuard};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Held for the whole of a scenario.
fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

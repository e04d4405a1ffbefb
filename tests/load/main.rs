//! Load tests: hostile plugins and abusive clients, each while an echo load
//! runs on the same host. The host must stay up, close only the offending
//! connection with a log line naming the cause, and serve the echo load
//! with no errors and a latency close to its quiet value.
//!
//! Attacks come one at a time and, where it matters, as many at once as
//! the machine has cores and then twice that. The scenarios take turns (one
//! lock for the whole binary) so that their latency figures are not each
//! other's noise. Each prints its figures; `cargo xtask test --
//! --nocapture` shows them.

#[allow(dead_code)]
#[path = "../e2e/util.rs"]
mod util;

/// Abusive clients under load.
mod clients;
/// Busy plugins beside an echo load: fair scheduling.
mod fairness;
/// Abusive clients at the front door: TLS handshake floods, slowloris
/// handshakes, garbage ClientHellos, bad PROXY headers.
mod front_door;
/// Hibernation abused: wake loops, byte-by-byte wakes, wake storms.
mod hibernation;
/// Hostile plugins under load.
mod hostile;
/// Code that runs when an instance is created, before `run`.
mod instantiation;
/// Plugins granted a key-value bucket, filling it.
mod keyvalue;
/// Plugin text in the host's log: escaped and bounded.
mod logs;
/// Plugins granted messaging, flooding it.
mod messaging;
/// Plugins granted outbound TCP, abusing it.
mod outbound;
/// The instance pool: bursts at the limit, memory given back.
mod pool;
/// Hostile plugins written in WAT.
mod wat;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use util::{EchoLoad, Host, LoadReport};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Held for the whole of a scenario.
fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Connections in the echo load.
const LOAD_CONNECTIONS: usize = 8;

/// The latency the echo load must keep under attack: the p99 of its round
/// trips.
const LATENCY_BOUND: Duration = Duration::from_millis(10);

/// The machine's cores: the number of attackers it takes to occupy every
/// worker thread of the host.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The shortest time an echo load is measured, so that its p99 is not the
/// maximum of a handful of samples.
const MIN_LOAD: Duration = Duration::from_secs(2);

/// Runs `attack` while an echo load runs on `host` (for at least
/// [`MIN_LOAD`]), then [`check`]s the load. Returns what `attack` returns.
fn under_load<T>(host: &Host, scenario: &str, attack: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let load = EchoLoad::start(host, LOAD_CONNECTIONS);
    let attacked = attack();
    std::thread::sleep(MIN_LOAD.saturating_sub(started.elapsed()));
    check(scenario, &load.stop());
    attacked
}

/// Prints what the echo load saw during `scenario`, and asserts it made
/// progress, had no error, and kept its p99 under [`LATENCY_BOUND`].
fn check(scenario: &str, report: &LoadReport) {
    println!(
        "{scenario}: {} round trips, p50 {:?}, p99 {:?}, max {:?}, {} errors",
        report.round_trips,
        report.p50,
        report.p99,
        report.max,
        report.errors.len()
    );
    assert!(
        report.round_trips > 0,
        "{scenario}: the load made no progress"
    );
    assert!(
        report.errors.is_empty(),
        "{scenario}: load errors {:?}",
        report.errors
    );
    assert!(
        report.p99 < LATENCY_BOUND,
        "{scenario}: p99 {:?} over {LATENCY_BOUND:?}",
        report.p99
    );
}

//! Stopping on SIGINT and SIGTERM, whatever the plugins are doing;
//! reloading on SIGHUP, upgrading on SIGUSR2.
//!
//! The signals are watched by a thread of their own, not by the async
//! runtime, so that no amount of plugin work can delay them:
//! - SIGHUP asks for a reload, SIGUSR2 for an upgrade;
//! - the first signal asks the server to stop accepting and drain, and
//!   starts a deadline: if the process is still running the drain timeout
//!   plus [`DRAIN_MARGIN`] later, it exits with status 1;
//! - a second signal exits at once, with status 1.
//!
//! [`watch`] is called before any plugin code runs, so a plugin whose
//! start-up code never returns cannot outlive a SIGTERM either.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;
use tokio::sync::{mpsc, watch};
use tracing::{error, warn};

/// How long past the drain timeout the process may take to exit after the
/// first signal: enough for the connections stopped at the end of the
/// drain to close and for the counters to be logged.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(3);

/// Resolves once a stop has been asked for.
pub struct Shutdown {
    requested: watch::Receiver<Option<&'static str>>,
}

impl Shutdown {
    /// Waits for the first SIGINT or SIGTERM; returns its name.
    pub async fn requested(&mut self) -> &'static str {
        match self.requested.wait_for(Option::is_some).await {
            Ok(name) => name.unwrap_or("signal"),
            // The watching thread never ends while the process runs.
            Err(_) => std::future::pending().await,
        }
    }
}

/// The drain timeout in force: set at start and by reloads, read when the
/// first stop signal starts the exit deadline.
pub struct DrainTimeout(std::sync::atomic::AtomicU64);

impl DrainTimeout {
    pub fn new(timeout: Duration) -> Self {
        Self(std::sync::atomic::AtomicU64::new(millis(timeout)))
    }

    pub fn set(&self, timeout: Duration) {
        self.0
            .store(millis(timeout), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What a signal asks of the host besides stopping.
pub enum Request {
    /// SIGHUP: read the configuration again.
    Reload,
    /// SIGUSR2: start the binary again and hand it the listeners.
    Upgrade,
}

/// Requests, one per SIGHUP or SIGUSR2.
pub type Requests = mpsc::UnboundedReceiver<Request>;

/// Starts watching SIGINT, SIGTERM and SIGHUP. `drain_timeout` is how long
/// the drain that the first stop signal starts may take.
pub fn watch(drain_timeout: Arc<DrainTimeout>) -> Result<(Shutdown, Requests)> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])
        .context("cannot watch SIGINT, SIGTERM, SIGHUP and SIGUSR2")?;
    let (request, requested) = watch::channel(None);
    let (asks, requests) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut first = true;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    let _ = asks.send(Request::Reload);
                    continue;
                }
                if signal == SIGUSR2 {
                    let _ = asks.send(Request::Upgrade);
                    continue;
                }
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                if first {
                    first = false;
                    let _ = request.send(Some(name));
                    exit_after(drain_timeout.get().saturating_add(DRAIN_MARGIN));
                } else {
                    warn!(target: "portico_host::signals", "{name} again: exiting without draining");
                    std::process::exit(1);
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok((Shutdown { requested }, requests))
}

/// Exits the process with status 1 if it is still running `deadline` from
/// now.
fn exit_after(deadline: Duration) {
    let started = std::thread::Builder::new()
        .name("exit-deadline".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            error!(target: "portico_host::signals",
                "still running {} after the stop signal: exiting",
                humantime::format_duration(deadline)
            );
            std::process::exit(1);
        });
    if let Err(error) = started {
        error!(target: "portico_host::signals", "cannot start the exit deadline: {error}");
    }
}

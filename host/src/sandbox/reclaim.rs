//! Giving memory back to the system once connections stop ending.
//!
//! Two caches hold on to memory that closed connections freed:
//! - wasmtime's instance pool decommits freed slots in batches (one system
//!   call per batch rather than per connection, see [`crate::sandbox::engine`]).
//!   Until its batch is full, a freed slot keeps every page its plugin
//!   touched: up to `--max-memory` each, for up to a batch of slots per
//!   queue (one queue per core). (What a slot keeps on purpose, the pages
//!   of its first 32 KiB reset for the next instance, is not queued and
//!   stays; see the engine.)
//! - glibc keeps freed heap in its per-thread arenas, fragmented: after a
//!   peak of 10,000 connections, over 100 MiB.
//!
//! So once no connection has started or ended for [`QUIET_PERIOD`],
//! [`Reclaimer`] empties both. wasmtime flushes its queues only when an
//! allocation finds the pool full, so the reclaimer makes it so: it
//! instantiates an empty probe module into every memory slot not held by a
//! live connection, which flushes every queued slot on the way, and drops
//! the probes. That costs a few microseconds per slot, once per quiet
//! period. A connection that arrives meanwhile finds the pool full for
//! that long, and its instantiation is retried until a slot is free (see
//! [`crate::sandbox`]), as for any other momentary shortage.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Engine, Instance, Module, Store};

/// How long no connection must have ended before memory is reclaimed.
pub const QUIET_PERIOD: Duration = Duration::from_secs(2);

/// The probe: `(module (memory 0))`, a module whose only content is an
/// empty memory, so that instantiating it takes a memory slot and nothing
/// else.
const PROBE: &[u8] = b"\0asm\x01\0\0\0\x05\x03\x01\x00\x00";

/// Probe instances per store: a store holds at most 10,000 instances.
const PROBES_PER_STORE: usize = 1000;

/// Reclaims freed memory once the host is quiet; see the module doc.
pub struct Reclaimer {
    engine: Engine,
    probe: Module,
    /// Memory slots in the pool.
    memory_slots: usize,
    /// When a connection last started or ended.
    last_activity: Mutex<Instant>,
    /// A connection has ended since the last reclaim.
    pending: AtomicBool,
}

impl Reclaimer {
    pub fn new(engine: &Engine, memory_slots: usize) -> wasmtime::Result<Self> {
        Ok(Self {
            engine: engine.clone(),
            probe: Module::new(engine, PROBE)?,
            memory_slots,
            last_activity: Mutex::new(Instant::now()),
            pending: AtomicBool::new(false),
        })
    }

    /// Records that a connection has started.
    pub fn connection_started(&self) {
        self.touch();
    }

    /// Records that a connection has ended.
    pub fn connection_ended(&self) {
        self.touch();
        self.pending.store(true, Relaxed);
    }

    fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Starts reclaiming memory whenever the host has been quiet for
    /// [`QUIET_PERIOD`] after a connection ended, for as long as this
    /// reclaimer (and so its engine) is in use.
    pub fn spawn(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(QUIET_PERIOD / 4);
            loop {
                ticks.tick().await;
                let Some(this) = this.upgrade() else { return };
                let quiet_for = this
                    .last_activity
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .elapsed();
                if quiet_for >= QUIET_PERIOD && this.pending.swap(false, Relaxed) {
                    this.reclaim().await;
                }
            }
        });
    }

    async fn reclaim(&self) {
        let (engine, probe) = (self.engine.clone(), self.probe.clone());
        let memory_slots = self.memory_slots;
        let reclaimed = tokio::task::spawn_blocking(move || {
            let flushed = flush_decommit_queues(&engine, &probe, memory_slots);
            // SAFETY: malloc_trim only returns free memory to the system.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            unsafe {
                libc::malloc_trim(0);
            }
            flushed
        })
        .await;
        match reclaimed {
            Ok(Ok(probes)) => {
                tracing::debug!(target: "portico_host::reclaim", probes, "memory reclaimed")
            }
            // A connection that arrived meanwhile took the last slot.
            Ok(Err(error)) => {
                tracing::debug!(target: "portico_host::reclaim", "instance pool partly flushed: {error:#}")
            }
            Err(error) => {
                tracing::warn!(target: "portico_host::reclaim", "cannot reclaim memory: {error}")
            }
        }
    }
}

/// Fills every memory slot no live instance holds with a probe, so that
/// wasmtime flushes its decommit queues to find room, then frees them.
/// Returns how many probes it took.
fn flush_decommit_queues(
    engine: &Engine,
    probe: &Module,
    memory_slots: usize,
) -> wasmtime::Result<usize> {
    let live = engine
        .pooling_allocator_metrics()
        .map_or(0, |metrics| metrics.memories());
    let probes = memory_slots.saturating_sub(live);
    let mut stores = Vec::new();
    let mut left = probes;
    while left > 0 {
        let mut store = Store::new(engine, ());
        for _ in 0..left.min(PROBES_PER_STORE) {
            Instance::new(&mut store, probe, &[])?;
        }
        left = left.saturating_sub(PROBES_PER_STORE);
        stores.push(store);
    }
    Ok(probes)
}

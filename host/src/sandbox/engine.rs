//! The engine every connection of a service shares: its pooling allocator,
//! sized so that every admitted connection finds a slot, how memories get
//! their initial data, and the epoch ticker that interrupts running plugins.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use wasmtime::error::Context;
use wasmtime::{
    Config, Enabled, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig,
    Result,
};

use super::meter::YIELD_INTERVAL;
use crate::config::Limits;

/// Most core instances, memories and tables one plugin instance may have.
/// A Rust or C plugin has three or four core instances, one memory and two
/// tables; componentize-js's has four, componentize-py's fourteen (more
/// with native extensions), each with one memory and its largest table
/// under 8,000 elements. The pool reserves this much per connection, so
/// that every admitted connection is sure to find room; a plugin that
/// needs more is refused at start. Core instances cost nothing until used.
const CORE_INSTANCES_PER_PLUGIN: u32 = 32;
const MEMORIES_PER_PLUGIN: u32 = 1;
const TABLES_PER_PLUGIN: u32 = 8;
/// Largest table of a plugin instance, in elements.
pub(super) const MAX_TABLE_ELEMENTS: usize = 20_000;

/// The guard after each memory when the pool reserves only `max-memory`
/// per slot (`explicit-bounds-checks`): plugin code checks every access
/// then, and the guard only catches what a check lets a little past.
const EXPLICIT_CHECKS_GUARD: u64 = 64 * 1024;

/// Freed slots decommitted together; see [`engine`].
const DECOMMIT_BATCH: usize = 32;

/// Bytes at the bottom of a freed slot's memory and of each of its tables
/// whose dirty pages are reset by hand and kept rather than given back; see
/// [`engine`]. 32 KiB holds all that the Rust echo dirties: from 32 KiB to
/// 1 MiB the figures were the same.
const KEEP_RESIDENT: usize = 32 * 1024;

/// How a connection's linear memory gets the plugin's initial data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryInit {
    /// Copied from the data segments at every instantiation: for a small
    /// image, cheaper than mapping it, and the memory stays one mapping
    /// (two per live connection rather than four; see the server's
    /// capacity).
    Copy,
    /// Mapped copy-on-write from one image that every instance shares: a
    /// Python or JavaScript plugin starts with megabytes of data, which
    /// copying would cost every connection.
    Map,
}

/// Largest initial data a plugin's memory is given by copying.
const LARGEST_COPIED_DATA: u64 = 256 * 1024;

impl MemoryInit {
    /// Picks by the size of the plugin's data segments. A plugin that
    /// cannot be parsed gets [`MemoryInit::Map`]; loading it reports what
    /// is wrong.
    pub fn of(wasm: &[u8]) -> MemoryInit {
        match data_segment_bytes(wasm) {
            Ok(total) if total <= LARGEST_COPIED_DATA => MemoryInit::Copy,
            _ => MemoryInit::Map,
        }
    }
}

/// Bytes of data segments in `wasm`, nested modules included.
fn data_segment_bytes(wasm: &[u8]) -> wasmparser::Result<u64> {
    let mut total = 0;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::DataSection(segments) = payload? {
            for segment in segments {
                total += segment?.data.len() as u64;
            }
        }
    }
    Ok(total)
}

/// Builds the engine shared by every connection: a pooling allocator sized
/// for `limits`, memories initialised as `init` says, and epoch
/// interruption.
pub fn engine(limits: &Limits, init: MemoryInit) -> Result<Engine> {
    let n = limits.max_connections;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_PLUGIN))
        .max_core_instances_per_component(CORE_INSTANCES_PER_PLUGIN)
        .total_memories(n.saturating_mul(MEMORIES_PER_PLUGIN))
        .max_memories_per_component(MEMORIES_PER_PLUGIN)
        .total_tables(n.saturating_mul(TABLES_PER_PLUGIN))
        .max_tables_per_component(TABLES_PER_PLUGIN)
        .table_elements(MAX_TABLE_ELEMENTS)
        .total_stacks(n)
        .max_memory_size(limits.memory_bytes)
        // A freed slot goes back to the system at once rather than staying
        // warm (but for what keep-resident keeps, below): otherwise a peak
        // of N connections keeps ~150 KiB resident per slot for ever
        // (measured at 10,000 connections: 1.5 GiB).
        .max_unused_warm_slots(0)
        // Decommitting is an madvise per freed slot, and each one interrupts
        // every core to flush its TLB (18% of host CPU under connection
        // churn). Batched, 32 freed slots share one call (process_madvise).
        // An allocation that finds the pool full flushes the batch first, so
        // an admitted connection still always gets its slot.
        .decommit_batch_size(DECOMMIT_BATCH);
    // Where the kernel can list a slot's dirty pages (PAGEMAP_SCAN, Linux
    // 6.7+), a freed slot resets just those in its first KEEP_RESIDENT
    // bytes with memset, and keeps them: the next instance in the slot
    // takes no page faults there, and no madvise has to shoot down TLBs for
    // them. On the Rust echo: kernel CPU per connection 48 -> 29 us, page
    // faults 9 -> 1. The price: those pages stay resident in every slot a
    // peak used (35 KiB each for the echo; see BENCHMARKS.md). Without the
    // scan, all KEEP_RESIDENT bytes would be memset at every free, which
    // costs more than it saves, so nothing is kept.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
    }

    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(init == MemoryInit::Map)
        .epoch_interruption(true)
        // A fiber stack is only decommitted when freed if zeroing is on;
        // without it every stack ever used stays resident.
        .async_stack_zeroing(true)
        .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
    // By default each slot reserves 4 GiB of address space, so that
    // compiled code needs no bounds checks; that caps a process near 28,000
    // live connections. Reserving `max-memory` instead lifts the cap and
    // costs memory-bound plugin code its checks (sorting 2^20 numbers: 31.8
    // ms against 55.8), and nothing per connection (61.0 us against 61.2).
    if limits.explicit_bounds_checks {
        config
            .memory_reservation(limits.memory_bytes as u64)
            .memory_guard_size(EXPLICIT_CHECKS_GUARD);
    }
    Engine::new(&config).with_context(|| {
        format!("cannot set up the WebAssembly engine for {n} connections (--max-connections)")
    })
}

/// How many linear memories the engine's pool holds.
pub fn memory_slots(limits: &Limits) -> usize {
    limits.max_connections as usize * MEMORIES_PER_PLUGIN as usize
}

/// Advances the epoch of every engine it is given every [`YIELD_INTERVAL`],
/// on a thread of its own; the thread stops when this is dropped. (One
/// engine per service, one thread for all.)
pub struct EpochTicker {
    engines: Arc<Mutex<Vec<EngineWeak>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start() -> Result<Self> {
        let engines: Arc<Mutex<Vec<EngineWeak>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn({
                let (engines, stop) = (engines.clone(), stop.clone());
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(YIELD_INTERVAL);
                        let mut engines = engines.lock().unwrap_or_else(|p| p.into_inner());
                        // An engine no version uses any more is dropped.
                        engines.retain(|engine| match engine.upgrade() {
                            Some(engine) => {
                                engine.increment_epoch();
                                true
                            }
                            None => false,
                        });
                    }
                }
            })
            .context("cannot start the epoch thread")?;
        Ok(Self {
            engines,
            stop,
            thread: Some(thread),
        })
    }

    /// Ticks `engine` too, from now on.
    pub fn add(&self, engine: &Engine) {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(engine.weak());
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What to do about a plugin the pool has no room for, from wasmtime's
/// words for it (at compile time for a memory, at instantiation for the
/// rest).
pub fn pool_hint(cause: &str) -> Option<String> {
    if cause.contains("minimum byte size") && cause.contains("exceeds the limit of") {
        return Some(
            ": its initial memory is larger than a connection may use; raise --max-memory \
             (max-memory in the config file)"
                .to_string(),
        );
    }
    if cause.contains("exceeds the configured maximum of")
        && cause.contains("in the pooling allocator")
    {
        return Some(format!(
            ": this host gives each plugin at most {CORE_INSTANCES_PER_PLUGIN} core \
             instances, {MEMORIES_PER_PLUGIN} memory and {TABLES_PER_PLUGIN} tables"
        ));
    }
    None
}

/// Whether instantiation failed because the pool had no free slot.
pub(super) fn is_pool_full(error: &wasmtime::Error) -> bool {
    error.is::<wasmtime::PoolConcurrencyLimitError>()
}

//! The sandbox each connection runs in: the engine's settings, one store
//! per connection with its own WASI context, and the call to `run`.
//!
//! What a plugin is granted is decided here, and it is deny-by-default:
//! - no preopened directories, so no files;
//! - TCP, UDP and name lookups disabled, so no sockets of its own;
//! - no environment variables, no arguments, stdin closed;
//! - stdout and stderr go to the host's log ([`crate::stdio`]);
//! - settings only through `wasi:config/store`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::error::Context;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Result, Store,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfigVariables;

use crate::bindings::ConnectionInfo;
use crate::plugin::Plugin;
use crate::socket::{Socket, SocketInput, SocketOutput};
use crate::stdio::PluginLog;

/// How often a running plugin is made to yield its thread, so that a plugin
/// that computes without pause cannot hold a worker from other connections.
pub const YIELD_INTERVAL: Duration = Duration::from_millis(10);

/// Most core instances, memories and tables one plugin instance may have.
/// A Rust plugin has about three core instances, one memory and two
/// tables; the pool reserves these per connection, so that every admitted
/// connection is sure to find room.
const CORE_INSTANCES_PER_PLUGIN: u32 = 16;
const MEMORIES_PER_PLUGIN: u32 = 2;
const TABLES_PER_PLUGIN: u32 = 8;

/// Most resources (streams, pollables, ...) one plugin instance may hold.
const MAX_RESOURCES: usize = 1024;

/// The limits that shape the engine.
#[derive(Clone, Copy, Debug)]
pub struct EngineLimits {
    /// Instances that may exist at once: one per live connection.
    pub instances: u32,
    /// Largest linear memory of an instance, in bytes.
    pub memory_bytes: usize,
}

/// Builds the engine shared by every connection: a pooling allocator sized
/// for `limits`, copy-on-write memory images and epoch interruption.
pub fn engine(limits: EngineLimits) -> Result<Engine> {
    let n = limits.instances;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_PLUGIN))
        .max_core_instances_per_component(CORE_INSTANCES_PER_PLUGIN)
        .total_memories(n.saturating_mul(MEMORIES_PER_PLUGIN))
        .max_memories_per_component(MEMORIES_PER_PLUGIN)
        .total_tables(n.saturating_mul(TABLES_PER_PLUGIN))
        .max_tables_per_component(TABLES_PER_PLUGIN)
        .total_stacks(n)
        .max_memory_size(limits.memory_bytes);

    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(true)
        .epoch_interruption(true)
        .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
    Engine::new(&config).context("cannot set up the WebAssembly engine")
}

/// Advances the engine's epoch every [`YIELD_INTERVAL`] on a thread of its
/// own; the thread stops when this is dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn({
                let engine = engine.weak();
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(YIELD_INTERVAL);
                        match engine.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                    }
                }
            })
            .context("cannot start the epoch thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
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

/// What one connection's store holds.
pub struct ConnState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) config: Arc<WasiConfigVariables>,
}

impl WasiView for ConnState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ConnState {
    fn new(conn: u64, config: Arc<WasiConfigVariables>) -> Self {
        let wasi = WasiCtx::builder()
            .stdout(PluginLog {
                conn,
                stream: "stdout",
            })
            .stderr(PluginLog {
                conn,
                stream: "stderr",
            })
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi,
            table,
            config,
        }
    }
}

/// How a connection's plugin finished.
pub enum Outcome {
    /// `run` returned `ok`, or the plugin exited with status 0.
    Finished,
    /// `run` returned `err`, or the plugin exited with a non-zero status.
    Failed(String),
    /// The plugin trapped (a panic, `unreachable`, a stack overflow...) or
    /// the host stopped it.
    Trapped(wasmtime::Error),
}

/// Serves one connection: a fresh store and instance of `plugin`, its `run`
/// called once with the socket's streams, then any output still pending
/// flushed to the client (for at most `flush_timeout`). `accepted` is when
/// the connection was accepted; the debug log gives the time from then to
/// `run` starting.
pub async fn serve(
    plugin: &Plugin,
    info: ConnectionInfo,
    socket: &Arc<Socket>,
    accepted: Instant,
    flush_timeout: Duration,
) -> Outcome {
    let conn = info.id;
    let mut store = Store::new(
        plugin.pre.engine(),
        ConnState::new(conn, plugin.config.clone()),
    );
    store.epoch_deadline_async_yield_and_update(1);

    let result = async {
        let table = &mut store.data_mut().table;
        let input: DynInputStream = Box::new(SocketInput::new(socket.clone()));
        let output: DynOutputStream = Box::new(SocketOutput::new(socket.clone()));
        let input = table.push(input)?;
        let output = table.push(output)?;
        let handler = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .context("cannot instantiate the plugin")?;
        tracing::debug!(
            conn,
            startup_us = accepted.elapsed().as_micros() as u64,
            "instantiated; calling run"
        );
        let returned = handler
            .call_run(&mut store, &info, borrow(&input), borrow(&output))
            .await;
        Ok::<_, wasmtime::Error>((returned, output))
    }
    .await;

    let (returned, output) = match result {
        Ok(done) => done,
        Err(error) => return Outcome::Trapped(error),
    };
    let outcome = match returned {
        Ok(Ok(())) => Outcome::Finished,
        Ok(Err(message)) => Outcome::Failed(message),
        Err(error) => match error.downcast_ref::<I32Exit>() {
            Some(I32Exit(0)) => Outcome::Finished,
            Some(I32Exit(status)) => Outcome::Failed(format!("exited with status {status}")),
            None => return Outcome::Trapped(error),
        },
    };
    if let Ok(mut output) = store.data_mut().table.delete(output) {
        let _ = tokio::time::timeout(flush_timeout, output.ready()).await;
    }
    outcome
}

/// A borrowed handle to a resource the host keeps owning, to lend to `run`.
fn borrow<T: 'static>(resource: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(resource.rep())
}

//! The sandbox each connection runs in: the engine's settings, one store
//! per connection with its own WASI context and limits, and the call to
//! `run` under those limits.
//!
//! What a plugin is granted is decided here, and it is deny-by-default:
//! - no preopened directories, so no files;
//! - no sockets of its own: UDP never, TCP connects and name lookups only
//!   where the service's `grants.outbound` lists ([`crate::capabilities::outbound`]);
//! - no environment variables, no arguments, stdin closed;
//! - stdout and stderr go to the host's log ([`crate::sandbox::stdio`]);
//! - settings only through `wasi:config/store`.
//!
//! And what it may use is bounded: linear memory (`memory.grow` fails past
//! the limit), CPU (it yields its thread every [`YIELD_INTERVAL`], and is
//! stopped once it has run for its budget), idle time, lifetime, and the
//! resources it may hold.

pub mod bindings;
pub mod cache;
pub mod plugin;
pub mod reclaim;
pub mod stdio;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::error::Context;
use wasmtime::{
    Config, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig,
    ResourceLimiter, Result, Store, UpdateDeadline, bail,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfigVariables;

use crate::capabilities::connects::Connects;
use crate::capabilities::keyvalue::Granted;
use crate::capabilities::messaging::{self, ConnMessaging};
use crate::capabilities::outbound::{ConnOutbound, Policy};
use crate::config::Limits;
use crate::net::socket::{SharedOutput, Socket, SocketInput, SocketOutput, SocketStdio};
use crate::ops::counters::{Counters, count};
use crate::ops::untrusted::Untrusted;
use crate::sandbox::bindings::ConnectionInfo;
use crate::sandbox::plugin::{Instance, MemoryInit, Plugin};
use crate::sandbox::stdio::{PluginLog, Stream};

/// How often a running plugin is made to yield its thread, so that plugins
/// that compute without pause, even one per core or more, cannot hold the
/// workers from other connections: those wait at most about this long per
/// busy plugin sharing their worker. (Measured beside 4 busy plugins on 2
/// cores: echo p99 7 ms at 1 ms, 14 ms at 2 ms, over 30 ms at 10 ms.)
pub const YIELD_INTERVAL: Duration = Duration::from_millis(1);

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
const MAX_TABLE_ELEMENTS: usize = 20_000;

/// Freed slots decommitted together; see [`engine`].
const DECOMMIT_BATCH: usize = 32;

/// Most resources (streams, pollables, ...) one plugin instance may hold.
pub const MAX_RESOURCES: usize = 1024;

/// Longest the start-up check may take to instantiate the plugin.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(10);

/// Most random bytes one `get-random-bytes` call may ask for; a larger
/// request traps rather than make the host allocate and fill it.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// How often, and after how long a pause, an instantiation that found the
/// pool full is retried (see [`Sandbox::instantiate`]).
const POOL_RETRIES: u32 = 1000;
const POOL_RETRY_PAUSE: Duration = Duration::from_millis(1);

/// Longest wait, once `run` has returned, for pending output to reach the
/// client (never longer than the idle timeout).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

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
        // warm: otherwise a peak of N connections keeps ~150 KiB resident
        // per slot for ever (measured at 10,000 connections: 1.5 GiB).
        .max_unused_warm_slots(0)
        // Decommitting is an madvise per freed slot, and each one interrupts
        // every core to flush its TLB (18% of host CPU under connection
        // churn). Batched, 32 freed slots share one call (process_madvise).
        // An allocation that finds the pool full flushes the batch first, so
        // an admitted connection still always gets its slot.
        .decommit_batch_size(DECOMMIT_BATCH);

    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(init == MemoryInit::Map)
        .epoch_interruption(true)
        // A fiber stack is only decommitted when freed if zeroing is on;
        // without it every stack ever used stays resident.
        .async_stack_zeroing(true)
        .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
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

/// What one connection's store holds.
pub struct ConnState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) config: Arc<WasiConfigVariables>,
    /// The same settings, for the `wasi:config` versions the host answers
    /// itself.
    pub(crate) settings: Arc<BTreeMap<String, String>>,
    pub(crate) outbound: Arc<ConnOutbound>,
    pub(crate) connects: Connects,
    /// The key-value buckets the plugin may open.
    pub(crate) buckets: Arc<Granted>,
    pub(crate) messaging: ConnMessaging,
    /// The client's socket; `None` in the instance that checks a plugin
    /// at load, which serves no one.
    pub(crate) socket: Option<Arc<Socket>>,
    /// A command's stdout, which every handle it opens shares.
    pub(crate) stdout: Option<SharedOutput>,
    memory: MemoryLimit,
}

impl WasiView for ConnState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses memory growth past the limit, and logs and counts the first
/// refusal of each connection.
struct MemoryLimit {
    service: Arc<str>,
    conn: u64,
    max_bytes: usize,
    hit: bool,
    counters: Arc<Counters>,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, current: usize, desired: usize, _: Option<usize>) -> Result<bool> {
        if desired <= self.max_bytes {
            return Ok(true);
        }
        if !self.hit {
            self.hit = true;
            count(&self.counters.memory_limit_hits);
            tracing::warn!(
                service = %self.service,
                conn = self.conn,
                current,
                desired,
                limit = self.max_bytes,
                "memory limit reached: growth refused"
            );
        }
        Ok(false)
    }

    fn table_growing(&mut self, _: usize, desired: usize, _: Option<usize>) -> Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// How a connection's plugin finished.
pub enum Outcome {
    /// `run` returned `ok`, or the plugin exited with status 0.
    Finished,
    /// `run` returned `err`, or the plugin exited with a failure status.
    Failed(String),
    /// The plugin trapped: a panic, `unreachable`, a stack overflow...
    Trapped(wasmtime::Error),
    /// The host stopped it.
    Stopped(StopReason),
}

/// Why the host stopped a plugin.
#[derive(Clone, Copy, Debug)]
pub enum StopReason {
    CpuBudget,
    Idle,
    Lifetime,
    Shutdown,
}

/// Everything a connection needs from the host: the plugin, the limits,
/// the counters, and the signal to stop at the end of a drain.
pub struct Sandbox {
    /// The service's name, for the log.
    pub service: Arc<str>,
    pub plugin: Plugin,
    pub limits: Limits,
    pub counters: Arc<Counters>,
    pub stop: CancellationToken,
    /// Where the plugin may connect; `None` when nowhere.
    pub outbound: Option<Arc<Policy>>,
    /// The key-value buckets the plugin may open.
    pub buckets: Arc<Granted>,
    /// The topics the plugin may use; `None` when none.
    pub messaging: Option<Arc<messaging::Grant>>,
}

impl Sandbox {
    /// A fresh store for connection `conn`; a command's also gets the
    /// `client`'s socket as its stdin and stdout, and its details in its
    /// environment.
    fn new_store(
        &self,
        conn: u64,
        client: Option<(&Arc<Socket>, &ConnectionInfo)>,
    ) -> Store<ConnState> {
        let log = PluginLog::new(
            self.service.clone(),
            conn,
            self.limits.log_lines_per_second,
            self.counters.clone(),
        );
        let outbound = Arc::new(ConnOutbound::new(
            self.outbound.clone(),
            self.service.clone(),
            conn,
            self.counters.clone(),
        ));
        let check = outbound.clone();
        let mut wasi = WasiCtx::builder();
        let mut stdout = None;
        if let (true, Some((socket, info))) = (self.plugin.is_command(), client) {
            let stdio = SocketStdio::new(socket.clone());
            stdout = Some(stdio.output());
            wasi.stdin(stdio.clone())
                .stdout(stdio)
                .args(&self.plugin.arguments)
                .envs(&client_environment(info));
            for (name, value) in self.plugin.settings.iter() {
                if is_free_environment_name(name) {
                    wasi.env(name, value);
                }
            }
        } else {
            wasi.stdout(log.stream(Stream::Stdout));
        }
        let wasi = wasi
            .stderr(log.stream(Stream::Stderr))
            .allow_tcp(self.outbound.is_some())
            .allow_udp(false)
            .allow_ip_name_lookup(
                self.outbound
                    .as_ref()
                    .is_some_and(|policy| policy.has_names()),
            )
            .socket_addr_check(move |addr, usage| {
                let allowed = check.allows(addr, usage);
                Box::pin(async move { allowed })
            })
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let state = ConnState {
            wasi,
            table,
            config: self.plugin.config.clone(),
            settings: self.plugin.settings.clone(),
            outbound,
            connects: Connects::new(self.limits.connect_timeout),
            buckets: self.buckets.clone(),
            messaging: ConnMessaging::new(self.messaging.clone(), self.counters.clone()),
            socket: None,
            stdout,
            memory: MemoryLimit {
                service: self.service.clone(),
                conn,
                max_bytes: self.limits.memory_bytes,
                hit: false,
                counters: self.counters.clone(),
            },
        };
        let mut store = Store::new(self.plugin.engine(), state);
        store.limiter(|state| &mut state.memory);
        // A store's deadline starts at the current epoch, which would make a
        // fresh instance yield at its first instruction: one needless trip
        // through the scheduler per connection.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(at_epoch_tick()));
        store
    }

    /// Instantiates the plugin once, under the CPU budget and within
    /// [`CHECK_DEADLINE`], so that a plugin that cannot be instantiated (it
    /// needs more instances, memories or tables than the pool gives each
    /// connection, or its start-up code fails, spins or waits) is refused
    /// at start, with one line saying why.
    ///
    /// On a reload, the new version may share its pool with the running
    /// one: if every slot is taken, the check waits for one to be freed.
    pub async fn check(&self) -> Result<()> {
        let budget = self.limits.cpu_budget;
        let instantiate = async {
            loop {
                let mut store = self.new_store(0, None);
                match self.plugin.instantiate(&mut store).await {
                    Err(error) if is_pool_full(&error) => {
                        tokio::time::sleep(POOL_RETRY_PAUSE).await;
                    }
                    instantiated => return instantiated.map(drop),
                }
            }
        };
        let instantiate = CpuMeter::new(instantiate, budget);
        match tokio::time::timeout(CHECK_DEADLINE, instantiate).await {
            Ok(Some(instantiated)) => instantiated.map_err(|error| {
                let cause = error.root_cause().to_string();
                let hint = pool_hint(&cause).unwrap_or_default();
                let cause = Untrusted(&cause).to_string();
                wasmtime::format_err!("{cause}{hint}")
            }),
            Ok(None) => bail!(
                "its start-up code ran for longer than the CPU budget ({}, --cpu-budget)",
                humantime::format_duration(budget)
            ),
            Err(_) => bail!(
                "its start-up code did not finish within {}",
                humantime::format_duration(CHECK_DEADLINE)
            ),
        }
    }

    /// Serves one connection: a fresh store and instance of the plugin, its
    /// `run` called once with the socket's streams, all of it (start-up
    /// code included) under the limits; then any output still pending
    /// flushed to the client. `accepted` is when the connection was
    /// accepted; the debug log gives the time from then to `run` starting.
    pub async fn serve(
        &self,
        info: &ConnectionInfo,
        socket: &Arc<Socket>,
        accepted: Instant,
    ) -> Served {
        let mut conn = match self.connection_store(info, socket) {
            Ok(conn) => conn,
            Err(error) => return Served::new(Outcome::Trapped(error)),
        };
        let mut instantiation = None;
        // Boxed: held inline, this future and its copies in the futures
        // that wait on it made each connection's task 31 KB, 24 KiB more
        // resident memory per idle connection; boxed, it is allocated
        // once, at its own 3 KB.
        let work = Box::pin(async {
            let started = Instant::now();
            let instance = self.instantiate(&mut conn, info, socket).await?;
            instantiation = Some(started.elapsed());
            tracing::debug!(
                service = %self.service,
                conn = info.id,
                startup_us = accepted.elapsed().as_micros() as u64,
                "calling run"
            );
            match instance {
                Instance::Handler(handler) => {
                    let (input, output) = (borrow(&conn.input), borrow(&conn.output));
                    handler.call_run(&mut conn.store, info, input, output).await
                }
                Instance::Command(command) => Ok(command
                    .wasi_cli_run()
                    .call_run(&mut conn.store)
                    .await?
                    .map_err(|()| "exited with a failure status".to_string())),
            }
        });
        let outcome = self.under_limits(work, socket, accepted).await;

        let mut served = Served::new(outcome);
        served.instantiation = instantiation;
        if matches!(served.outcome, Outcome::Finished | Outcome::Failed(_))
            && let Ok(output) = conn.store.data_mut().table.get_mut(&conn.output)
        {
            let timeout = FLUSH_TIMEOUT.min(self.limits.idle_timeout);
            let _ = tokio::time::timeout(timeout, output.ready()).await;
            served.unsent = socket.unsent();
        }
        served
    }

    /// A fresh store for connection `id`, holding the socket's two streams.
    fn connection_store(&self, info: &ConnectionInfo, socket: &Arc<Socket>) -> Result<ConnStore> {
        let mut store = self.new_store(info.id, Some((socket, info)));
        store.data_mut().socket = Some(socket.clone());
        let input: DynInputStream = Box::new(SocketInput::new(socket.clone()));
        // A command writes through its stdout; the handle kept here is the
        // same, so that what it leaves unsent is flushed as a handler's is.
        let output: DynOutputStream = match store.data().stdout.clone() {
            Some(stdout) => Box::new(stdout),
            None => Box::new(SocketOutput::new(socket.clone())),
        };
        let table = &mut store.data_mut().table;
        let input = table.push(input)?;
        let output = table.push(output)?;
        Ok(ConnStore {
            store,
            input,
            output,
        })
    }

    /// Instantiates the plugin in `conn`'s store. The pool holds a slot for
    /// every admitted connection, but a slot freed by a connection that
    /// just ended can be in the middle of being handed back by another
    /// thread (wasmtime flushes its decommit queue before it refills the
    /// free list): an allocation that loses that race fails although a
    /// slot is free a moment later. So that an admitted connection always
    /// gets its instance, such a failure is retried, in a fresh store: the
    /// failed one may hold the core instances created before the failure.
    async fn instantiate(
        &self,
        conn: &mut ConnStore,
        info: &ConnectionInfo,
        socket: &Arc<Socket>,
    ) -> Result<Instance> {
        let mut retries = 0;
        loop {
            match self.plugin.instantiate(&mut conn.store).await {
                Err(error) if is_pool_full(&error) && retries < POOL_RETRIES => {
                    retries += 1;
                    *conn = self.connection_store(info, socket)?;
                    tokio::time::sleep(POOL_RETRY_PAUSE).await;
                }
                instantiated => {
                    return instantiated.context("cannot instantiate the plugin");
                }
            }
        }
    }

    /// Runs `work` (a connection's instantiation and `run`) until it
    /// finishes or a limit stops it: its CPU budget, the idle timeout, its
    /// lifetime, or the end of a drain.
    async fn under_limits(
        &self,
        work: impl Future<Output = Result<Result<(), String>>>,
        socket: &Socket,
        accepted: Instant,
    ) -> Outcome {
        let lifetime = async {
            match self.limits.max_lifetime {
                Some(lifetime) => {
                    tokio::time::sleep(lifetime.saturating_sub(accepted.elapsed())).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            returned = CpuMeter::new(work, self.limits.cpu_budget) => match returned {
                Some(returned) => classify(returned),
                None => Outcome::Stopped(StopReason::CpuBudget),
            },
            () = socket.idle(self.limits.idle_timeout) => Outcome::Stopped(StopReason::Idle),
            () = lifetime => Outcome::Stopped(StopReason::Lifetime),
            () = self.stop.cancelled() => Outcome::Stopped(StopReason::Shutdown),
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

/// The environment variables [`client_environment`] sets.
const CLIENT_VARIABLES: &[&str] = &[
    "PROTO",
    "PORTICO_CONN",
    "TCPREMOTEIP",
    "TCPREMOTEPORT",
    "TCPLOCALIP",
    "TCPLOCALPORT",
];

/// Whether a setting called `name` may join a command's environment: not
/// one of the connection's own variables (those stay the host's), and a
/// name the environment can hold.
fn is_free_environment_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0']) && !CLIENT_VARIABLES.contains(&name)
}

/// A connection's details as UCSPI-TCP names them (what `tcpserver` and
/// its kin set for the programs they run), for a command's environment.
fn client_environment(info: &ConnectionInfo) -> Vec<(String, String)> {
    let mut environment = vec![
        ("PROTO".to_string(), "TCP".to_string()),
        ("PORTICO_CONN".to_string(), info.id.to_string()),
    ];
    for (prefix, address) in [
        ("TCPREMOTE", &info.peer_address),
        ("TCPLOCAL", &info.local_address),
    ] {
        if let Ok(address) = address.parse::<std::net::SocketAddr>() {
            environment.push((format!("{prefix}IP"), address.ip().to_string()));
            environment.push((format!("{prefix}PORT"), address.port().to_string()));
        }
    }
    environment
}

/// A connection's store, and the handles of the socket's streams in it.
struct ConnStore {
    store: Store<ConnState>,
    input: Resource<DynInputStream>,
    output: Resource<DynOutputStream>,
}

/// How a connection was served: how its plugin finished, and how many
/// bytes of what it wrote could not be delivered to the client.
pub struct Served {
    pub outcome: Outcome,
    pub unsent: usize,
    /// How long the plugin took to instantiate, if it got that far.
    pub instantiation: Option<Duration>,
}

impl Served {
    fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            unsent: 0,
            instantiation: None,
        }
    }
}

/// Whether instantiation failed because the pool had no free slot.
fn is_pool_full(error: &wasmtime::Error) -> bool {
    error.is::<wasmtime::PoolConcurrencyLimitError>()
}

/// What a running plugin does when an epoch tick finds it running: it
/// yields if it has been running without pause for [`YIELD_INTERVAL`] or
/// longer, and carries on if not (a tick that happens to land in a short
/// run is no reason to send it to the back of the queue).
///
/// It yields through tokio's `yield_now` rather than wasmtime's plain
/// yield: tokio then defers the task until its worker has polled for I/O,
/// so connections waiting for input are woken between the slices of busy
/// plugins. With a plain yield, a worker whose queue holds only busy
/// plugins polls for I/O every 61 slices, and everyone else waits that
/// long (measured: echo p99 450 ms beside 2 busy plugins on 2 cores).
fn at_epoch_tick() -> UpdateDeadline {
    let busy = RUNNING_SINCE
        .get()
        .is_some_and(|since| since.elapsed() >= YIELD_INTERVAL);
    if busy {
        UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
    } else {
        UpdateDeadline::Continue(1)
    }
}

/// Sorts what `run` returned into an [`Outcome`].
fn classify(returned: Result<Result<(), String>>) -> Outcome {
    match returned {
        Ok(Ok(())) => Outcome::Finished,
        Ok(Err(message)) => Outcome::Failed(message),
        Err(error) => match error.downcast_ref::<I32Exit>() {
            Some(I32Exit(0)) => Outcome::Finished,
            Some(I32Exit(status)) => Outcome::Failed(format!("exited with status {status}")),
            None => Outcome::Trapped(error),
        },
    }
}

/// A borrowed handle to a resource the host keeps owning, to lend to `run`.
fn borrow<T: 'static>(resource: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(resource.rep())
}

pin_project_lite::pin_project! {
    /// Runs a future, adding up the time spent inside its `poll` calls: for
    /// a call into the plugin, that is the time the plugin spends running,
    /// not waiting. Resolves to `None` once that passes `budget`. Epoch
    /// interruption makes the plugin yield every [`YIELD_INTERVAL`], so no
    /// single poll overshoots by more than that.
    ///
    /// A plugin can also make the host work between its polls: a loop on a
    /// zero-length timer yields to the runtime at every turn, and the
    /// runtime's turnaround (polling for I/O, rescheduling) cost as much
    /// again as the plugin's own time. So when the same worker thread comes
    /// back to this future within [`TURNAROUND`] and polled nothing else of
    /// the kind meanwhile, that gap is charged too.
    struct CpuMeter<F> {
        #[pin]
        future: F,
        id: u64,
        spent: Duration,
        budget: Duration,
    }
}

/// Longest gap between two polls of one [`CpuMeter`] that is charged to it
/// as the runtime's turnaround; a longer one was a wait.
const TURNAROUND: Duration = Duration::from_micros(100);

std::thread_local! {
    /// The meter this thread polled last, and when that poll ended.
    static LAST_POLL: std::cell::Cell<Option<(u64, Instant)>> =
        const { std::cell::Cell::new(None) };
    /// When the poll of a plugin running on this thread began.
    static RUNNING_SINCE: std::cell::Cell<Option<Instant>> =
        const { std::cell::Cell::new(None) };
}

impl<F> CpuMeter<F> {
    fn new(future: F, budget: Duration) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            future,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            spent: Duration::ZERO,
            budget,
        }
    }
}

impl<F: Future> Future for CpuMeter<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let started = Instant::now();
        if let Some((last, ended)) = LAST_POLL.get()
            && last == *this.id
        {
            let gap = started.saturating_duration_since(ended);
            if gap < TURNAROUND {
                *this.spent += gap;
            }
        }
        RUNNING_SINCE.set(Some(started));
        let polled = this.future.poll(cx);
        RUNNING_SINCE.set(None);
        let ended = Instant::now();
        *this.spent += ended - started;
        LAST_POLL.set(Some((*this.id, ended)));
        match polled {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if *this.spent >= *this.budget => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

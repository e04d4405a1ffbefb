//! The sandbox each connection runs in: the engine's settings
//! ([`engine`]), the plugin loaded once ([`plugin`]), one store per
//! connection with its own WASI context and capabilities (`store`, which
//! lists what a plugin is granted: nothing unless the operator says), and
//! the call to `run` under the limits. A plugin named `oci://...` is pulled
//! from its registry first ([`registry`]).
//!
//! What a plugin may use is bounded: linear memory (`memory.grow` fails past
//! the limit), CPU (it yields its thread every [`YIELD_INTERVAL`], and is
//! stopped once it has spent its connection's budget), idle time, lifetime,
//! and the resources it may hold.
//!
//! A connection may be served by several instances in turn: one that
//! hibernates hands back what its connection keeps ([`Served::hibernation`]),
//! and the next is given it.

pub mod bindings;
pub mod cache;
mod engine;
mod meter;
pub mod plugin;
pub mod reclaim;
pub mod registry;
pub mod stdio;
mod store;

use self::store::ConnState;
pub use engine::{EpochTicker, MemoryInit, engine, memory_slots, pool_hint};
pub use meter::{CpuBudget, YIELD_INTERVAL};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::component::Resource;
use wasmtime::error::Context;
use wasmtime::{Result, Store, bail};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};

use self::bindings::ConnectionInfo;
use self::engine::is_pool_full;
use self::meter::CpuMeter;
use self::plugin::{Instance, Plugin};
use self::store::{StoreParts, new_store};
use crate::capabilities::hibernation::{Hibernation, Woken};
use crate::capabilities::keyvalue::Granted;
use crate::capabilities::messaging;
use crate::capabilities::outbound::Policy;
use crate::config::Limits;
use crate::net::socket::{Socket, SocketInput, SocketOutput};
use crate::ops::counters::Counters;
use crate::ops::untrusted::Untrusted;

/// Longest the start-up check may take to instantiate the plugin.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(10);

/// How often, and after how long a pause, an instantiation that found the
/// pool full is retried (see [`Sandbox::instantiate`]).
const POOL_RETRIES: u32 = 1000;
const POOL_RETRY_PAUSE: Duration = Duration::from_millis(1);

/// Longest wait, once `run` has returned, for pending output to reach the
/// client (never longer than the idle timeout).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Cancelled when the host starts to drain.
    pub draining: CancellationToken,
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
    /// environment. A woken connection's store holds what it kept.
    fn new_store(
        &self,
        conn: u64,
        client: Option<(&Arc<Socket>, &ConnectionInfo)>,
        woken: Option<Woken>,
    ) -> Store<ConnState> {
        let parts = StoreParts {
            service: &self.service,
            conn,
            limits: &self.limits,
            counters: &self.counters,
            outbound: self.outbound.as_ref(),
            buckets: &self.buckets,
            messaging: self.messaging.as_ref(),
            settings: &self.plugin.settings,
            command: self.plugin.command_arguments(),
            client,
            draining: &self.draining,
            woken,
        };
        new_store(self.plugin.engine(), parts)
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
        let mut cpu = CpuBudget::new(budget, Duration::ZERO);
        let instantiate = async {
            loop {
                let mut store = self.new_store(0, None, None);
                match self.plugin.instantiate(&mut store).await {
                    Err(error) if is_pool_full(&error) => {
                        tokio::time::sleep(POOL_RETRY_PAUSE).await;
                    }
                    instantiated => return instantiated.map(drop),
                }
            }
        };
        let instantiate = CpuMeter::new(instantiate, &mut cpu);
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
    /// code included) under the limits and charged to `cpu`; then any
    /// output still pending flushed to the client. `accepted` is when the
    /// connection was accepted; the debug log gives the time from then to
    /// `run` starting. A woken connection's instance is handed `woken`.
    pub async fn serve(
        &self,
        info: &ConnectionInfo,
        socket: &Arc<Socket>,
        accepted: Instant,
        cpu: &mut CpuBudget,
        woken: Option<Woken>,
    ) -> Served {
        let lifetime = self.limits.lifetime(woken.is_some());
        let mut conn = match self.connection_store(info, socket, woken) {
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
        let outcome = self
            .under_limits(work, socket, accepted, lifetime, cpu)
            .await;

        let mut served = Served::new(outcome);
        served.instantiation = instantiation;
        if matches!(served.outcome, Outcome::Trapped(_)) {
            served.uncaught_exception = conn.store.data().uncaught_exception();
        }
        if matches!(served.outcome, Outcome::Finished | Outcome::Failed(_))
            && let Ok(output) = conn.store.data_mut().table().get_mut(&conn.output)
        {
            let timeout = FLUSH_TIMEOUT.min(self.limits.idle_timeout);
            let _ = tokio::time::timeout(timeout, output.ready()).await;
            served.unsent = socket.unsent();
        }
        // A connection whose output did not all go out is closed, as it
        // would be had it not asked to hibernate.
        if matches!(served.outcome, Outcome::Finished) && served.unsent == 0 {
            served.hibernation = conn.store.data_mut().hibernation();
        }
        served
    }

    /// A fresh store for connection `id`, holding the socket's two streams.
    fn connection_store(
        &self,
        info: &ConnectionInfo,
        socket: &Arc<Socket>,
        woken: Option<Woken>,
    ) -> Result<ConnStore> {
        let mut store = self.new_store(info.id, Some((socket, info)), woken);
        let input: DynInputStream = Box::new(SocketInput::new(socket.clone()));
        // A command writes through its stdout; the handle kept here is the
        // same, so that what it leaves unsent is flushed as a handler's is.
        let output: DynOutputStream = match store.data().stdout().cloned() {
            Some(stdout) => Box::new(stdout),
            None => Box::new(SocketOutput::new(socket.clone())),
        };
        let table = store.data_mut().table();
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
                    let woken = conn.store.data_mut().take_woken();
                    *conn = self.connection_store(info, socket, woken)?;
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
        lifetime: Option<Duration>,
        cpu: &mut CpuBudget,
    ) -> Outcome {
        tokio::select! {
            returned = CpuMeter::new(work, cpu) => match returned {
                Some(returned) => classify(returned),
                None => Outcome::Stopped(StopReason::CpuBudget),
            },
            () = socket.idle(self.limits.idle_timeout) => Outcome::Stopped(StopReason::Idle),
            () = lifetime_ends(lifetime, accepted) => Outcome::Stopped(StopReason::Lifetime),
            () = self.stop.cancelled() => Outcome::Stopped(StopReason::Shutdown),
        }
    }
}

/// Resolves when a connection accepted at `accepted` reaches `lifetime`;
/// never, without one.
pub async fn lifetime_ends(lifetime: Option<Duration>, accepted: Instant) {
    match lifetime {
        Some(lifetime) => tokio::time::sleep(lifetime.saturating_sub(accepted.elapsed())).await,
        None => std::future::pending().await,
    }
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
    /// What the connection keeps, if the plugin finished asking to
    /// hibernate and everything it wrote was sent.
    pub hibernation: Option<Hibernation>,
    /// For a trap, the exception the plugin's language runtime reported it
    /// did not catch (the language, and the exception), if it did.
    pub uncaught_exception: Option<(&'static str, String)>,
}

impl Served {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            unsent: 0,
            instantiation: None,
            hibernation: None,
            uncaught_exception: None,
        }
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

//! The server: listen on every service's addresses, admit, give each
//! connection a task of its own, reload on request, and drain on a signal.
//!
//! A connection flows through these modules in turn:
//!
//! - [`accept`]: one accept loop per listener hands each connection to the
//!   version of the service it listens for; the loop only ever sees accept
//!   errors.
//! - [`front_door`]: the PROXY header, the service's peer filter and the
//!   TLS handshake, before the connection takes a place. A client the
//!   filter does not admit is closed at once, before any instance exists.
//! - [`admission`]: as POCO's `TCPServer` does, per service: the host
//!   always accepts, so the kernel's backlog never decides for it. An
//!   admitted connection is served at once if fewer than the service's
//!   `max-connections` are being served; else it waits in a queue of at
//!   most `max-queued`, first come first served; past that it is closed at
//!   once and counted as refused.
//! - [`connection`]: the connection served in its own task, then closed
//!   and logged. Errors of one connection stay in its task and its log
//!   lines.
//! - [`hibernation`]: a connection whose plugin hibernated, kept open
//!   without an instance or a place until something wakes it, then
//!   admitted again to the version in force.
//!
//! Beside that path: [`reload`] (SIGHUP, or `POST /reload` on the admin
//! endpoint) builds every changed service's new version ([`service`])
//! beside the running one, then swaps them in all at once, or not at all
//! if anything fails: new connections get the new version, running ones
//! finish on the one they started with. [`capacity`] caps every service at
//! what the process can hold. [`run`] starts it all, and drains on a
//! signal.

mod accept;
mod admission;
mod capacity;
mod connection;
mod front_door;
mod handed;
mod hibernation;
mod reload;
pub mod service;
mod upgrade;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

use anyhow::{Context, Result};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::capabilities::keyvalue::Bucket;
use crate::capabilities::messaging::Broker;
use crate::config::{Config, ProcessOverrides};
use crate::net::inherited;
use crate::ops::admin;
use crate::ops::counters::Counters;
use crate::ops::{metrics, signals};
use crate::sandbox::EpochTicker;
use crate::sandbox::cache::Cache;
use crate::server::capacity::Capacity;
use crate::server::service::Version;

/// Where the host's configuration comes from, for reloads.
pub enum Source {
    /// `host --plugin ...`: the flags, which a reload keeps; only the
    /// plugin file is read again.
    Flags,
    /// `host --config-file PATH`: the file, read again on every reload,
    /// and the process-wide flags given beside it, which win over it.
    File(PathBuf, Box<ProcessOverrides>),
}

/// The running host: its services, their listeners, and what every
/// connection shares.
pub struct Host {
    source: Source,
    cache: Option<Arc<Cache>>,
    ticker: EpochTicker,
    /// Carries messages between connections, across reloads.
    broker: Arc<Broker>,
    /// Hibernated connections waking at once: one per core.
    waking: Arc<tokio::sync::Semaphore>,
    /// Cancelled at the end of a drain: stops the connections left.
    stop: CancellationToken,
    /// Cancelled when a drain starts: stops every accept loop.
    accepting: CancellationToken,
    tracker: TaskTracker,
    next_id: AtomicU64,
    /// Whether every service listens and no drain has started.
    ready: AtomicBool,
    /// How many connections this process can hold, all services together.
    capacity: u64,
    /// How many hibernated connections it can hold besides.
    hibernated_capacity: u64,
    /// What is being served. A lock held across a whole reload, so that
    /// reloads happen one at a time.
    state: Mutex<State>,
    /// Counters by service name: they outlive versions, and services. Apart
    /// from `state`, so that reading them never waits for a reload.
    counters: std::sync::Mutex<HashMap<String, Arc<Counters>>>,
    /// The drain timeout in force, which a reload may change.
    drain_timeout: Arc<signals::DrainTimeout>,
    /// What an upgrade starts in this process's place.
    successor: upgrade::Successor,
    /// Held while an upgrade is under way: one at a time.
    upgrading: Mutex<()>,
    /// Cancelled once an upgrade's new process listens: this one drains.
    upgraded: CancellationToken,
    /// Where hibernated connections go in an upgrade.
    handover: Arc<handed::Handover>,
    /// The admin endpoint's address and a copy of its socket, for an
    /// upgrade to hand over.
    admin_socket: std::sync::OnceLock<(SocketAddr, OwnedFd)>,
}

#[derive(Default)]
struct State {
    config: Option<Config>,
    versions: BTreeMap<String, Arc<Version>>,
    /// The open key-value buckets, by name: kept across reloads while
    /// their declaration stays the same, so their data does too.
    buckets: HashMap<String, Arc<Bucket>>,
    /// Each listener, by the address it was configured with, and the
    /// version its accept loop hands connections to (`None` stops it).
    listeners: Listeners,
}

type Listeners = HashMap<ListenKey, Listening>;

/// A listener with its accept loop running.
struct Listening {
    /// The version the accept loop hands connections to (`None` stops it).
    version: watch::Sender<Option<Arc<Version>>>,
    /// The address it got, and a copy of its socket, for an upgrade to
    /// hand over.
    local: SocketAddr,
    socket: OwnedFd,
}

/// What identifies a listener across reloads: its configured address;
/// and, for port 0 (any free port, so a new one each time), the service.
type ListenKey = (SocketAddr, String);

fn listen_key(addr: SocketAddr, service: &str) -> ListenKey {
    match addr.port() {
        0 => (addr, service.to_string()),
        _ => (addr, String::new()),
    }
}

/// Serves `config` until SIGINT or SIGTERM, then drains. Everything that
/// can be wrong with the configuration or a plugin fails here, before the
/// host listens. (A second signal, or a drain that overruns, ends the
/// process from [`signals`] with status 1.)
pub async fn run(config: Config, source: Source) -> Result<ExitCode> {
    let drain_timeout = Arc::new(signals::DrainTimeout::new(config.drain_timeout));
    let (mut shutdown, mut requests) = signals::watch(drain_timeout.clone())?;
    let capacity = Capacity::of(&config.services);
    let host = Host::new(&config, source, drain_timeout, &capacity).await?;
    let admin = match config.admin {
        Some(addr) => {
            let token = match &config.admin_token_file {
                Some(path) => Some(admin::Token::read(path)?),
                None => None,
            };
            Some((addr, token, metrics::install()?))
        }
        None => None,
    };
    tokio::select! {
        started = host.apply(config) => { started?; }
        name = shutdown.requested() => {
            info!("{name} during start-up: stopped before listening");
            return Ok(ExitCode::SUCCESS);
        }
    }
    capacity.log();
    if let Some((addr, token, metrics)) = admin {
        host.serve_admin(addr, token, metrics)?;
    }
    for addr in inherited::close_untaken() {
        warn!(%addr, "a socket passed to this process is served by no service: closed");
    }
    host.ready.store(true, Relaxed);
    // Under systemd (Type=notify), the unit is started once every service
    // listens (after an upgrade, this process is the unit's main one);
    // elsewhere NOTIFY_SOCKET is unset and this does nothing.
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::MainPid(std::process::id()),
    ]);
    if let Some(predecessor) = inherited::tell_predecessor_ready()? {
        host.take_over_hibernated(predecessor);
    }

    tokio::spawn({
        let host = host.clone();
        async move {
            while let Some(request) = requests.recv().await {
                let _ = match request {
                    signals::Request::Reload => host.reload().await,
                    signals::Request::Upgrade => host.upgrade().await,
                };
            }
        }
    });
    let name = tokio::select! {
        name = shutdown.requested() => name,
        () = host.upgraded.cancelled() => "upgrade",
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    host.ready.store(false, Relaxed);
    host.accepting.cancel();
    // The copies kept for an upgrade would hold the sockets open: closed,
    // a new client is refused at once rather than left queued.
    host.state.lock().await.listeners.clear();
    info!("{name}: stopped accepting");
    host.drain().await;
    for (service, counters) in host.counters() {
        info!(service, %counters, "stopped");
    }
    Ok(ExitCode::SUCCESS)
}

/// Tells the service manager how the host is, if one listens
/// (`NOTIFY_SOCKET`); a manager that went away is no reason to stop.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        warn!("cannot notify the service manager (NOTIFY_SOCKET): {error}");
    }
}

impl Host {
    /// The host for `config`, from `source`, before anything listens.
    async fn new(
        config: &Config,
        source: Source,
        drain_timeout: Arc<signals::DrainTimeout>,
        capacity: &Capacity,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(Host {
            source,
            cache: config
                .cache_dir
                .as_deref()
                .map(|dir| Arc::new(Cache::new(dir))),
            ticker: EpochTicker::start()?,
            broker: Broker::new(&config.messaging).await?,
            waking: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            )),
            stop: CancellationToken::new(),
            accepting: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_id: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            capacity: capacity.connections,
            hibernated_capacity: capacity.hibernated,
            state: Mutex::new(State::default()),
            counters: Default::default(),
            drain_timeout,
            successor: upgrade::Successor::of_this_process()?,
            upgrading: Mutex::new(()),
            upgraded: CancellationToken::new(),
            handover: Arc::default(),
            admin_socket: Default::default(),
        }))
    }

    /// Serves the admin endpoint on `addr` (the socket inherited for it,
    /// if any), keeping a copy of its socket for an upgrade to hand over.
    fn serve_admin(
        self: &Arc<Self>,
        addr: SocketAddr,
        token: Option<admin::Token>,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
    ) -> Result<()> {
        let listener = match inherited::take(addr) {
            Some(listener) => listener,
            None => std::net::TcpListener::bind(addr)
                .with_context(|| format!("admin endpoint: cannot listen on {addr}"))?,
        };
        let copy = listener
            .try_clone()
            .context("cannot copy the admin socket")?;
        let local = admin::serve(listener, self.clone(), metrics, token)?;
        let _ = self.admin_socket.set((local, copy.into()));
        Ok(())
    }

    /// Every service's counters, services removed by a reload included.
    pub fn counters(&self) -> Vec<(String, Arc<Counters>)> {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters
            .iter()
            .map(|(name, counters)| (name.clone(), counters.clone()))
            .collect()
    }

    /// Lets live connections finish for up to the drain timeout, then
    /// stops the rest. Every limit covers a connection's whole life, so a
    /// stopped one ends within a millisecond or so; [`signals`] ends the
    /// process if not.
    async fn drain(&self) {
        self.tracker.close();
        let timeout = self.drain_timeout.get();
        let (live, queued) = self.totals();
        info!(
            live,
            queued,
            "draining for up to {}",
            humantime::format_duration(timeout)
        );
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            let (live, _) = self.totals();
            warn!(live, "drain timed out: stopping the connections left");
            self.stop.cancel();
            self.tracker.wait().await;
        }
    }

    /// Connections live and queued, all services together.
    fn totals(&self) -> (u64, u64) {
        self.counters()
            .iter()
            .fold((0, 0), |(live, queued), (_, c)| {
                (
                    live + c.current.load(Relaxed),
                    queued + c.queued.load(Relaxed),
                )
            })
    }
}

impl admin::Control for Host {
    fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    fn counters(&self) -> Vec<(String, Arc<Counters>)> {
        Host::counters(self)
    }

    fn reload(self: Arc<Self>) -> Pin<Box<dyn Future<Output = Result<String>> + Send>> {
        Box::pin(async move { Host::reload(&self).await })
    }

    fn upgrade(self: Arc<Self>) -> Pin<Box<dyn Future<Output = Result<String>> + Send>> {
        Box::pin(async move { Host::upgrade(&self).await })
    }
}

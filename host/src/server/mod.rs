//! The server: listen on every service's addresses, admit, give each
//! connection a task of its own, reload on request, and drain on a signal.
//!
//! Admission works as POCO's `TCPServer` does, per service: the host
//! always accepts, so the kernel's backlog never decides for it. A client
//! the service's filter does not admit is closed at once, before any
//! instance exists. An admitted connection is served at once if fewer than
//! the service's `max-connections` are being served; else it waits in a
//! queue of at most `max-queued`, first come first served; past that it is
//! closed at once and counted as refused.
//!
//! A reload (SIGHUP, or `POST /reload` on the admin endpoint) builds every
//! changed service's new version beside the running one, then swaps them
//! in all at once, or not at all if anything fails: new connections get the
//! new version, running ones finish on the one they started with.
//!
//! Errors of one connection stay in its task and its log lines; the accept
//! loops only ever see accept errors.

pub mod service;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::capabilities::keyvalue::Bucket;
use crate::capabilities::messaging::Broker;
use crate::config::{self, Config};
use crate::net::socket::Socket;
use crate::ops::admin;
use crate::ops::counters::{Counters, count};
use crate::ops::signals;
use crate::ops::untrusted::{self, Untrusted};
use crate::sandbox::MemoryInit;
use crate::sandbox::bindings::ConnectionInfo;
use crate::sandbox::cache::Cache;
use crate::sandbox::{EpochTicker, Outcome, Served, StopReason};
use crate::server::service::{HostParts, Version};

/// How long, after the host has finished sending, it keeps reading and
/// discarding what the client still sends. Closing a socket with unread
/// input makes the kernel send a reset, which can destroy the last response
/// before the client reads it.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of file descriptors, say), so that the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Least time between two warnings about refused connections.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Where the host's configuration comes from, for reloads.
pub enum Source {
    /// `host --plugin ...`: the flags, which a reload keeps; only the
    /// plugin file is read again.
    Flags,
    /// `host --config-file PATH`: the file, read again on every reload.
    File(PathBuf),
}

/// The running host: its services, their listeners, and what every
/// connection shares.
pub struct Host {
    source: Source,
    cache: Option<Arc<Cache>>,
    ticker: EpochTicker,
    /// Carries messages between connections, across reloads.
    broker: Arc<Broker>,
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
    /// What is being served. A lock held across a whole reload, so that
    /// reloads happen one at a time.
    state: Mutex<State>,
    /// Counters by service name: they outlive versions, and services. Apart
    /// from `state`, so that reading them never waits for a reload.
    counters: std::sync::Mutex<HashMap<String, Arc<Counters>>>,
    /// The drain timeout in force, which a reload may change.
    drain_timeout: Arc<signals::DrainTimeout>,
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
    listeners: HashMap<ListenKey, watch::Sender<Option<Arc<Version>>>>,
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
    let (mut shutdown, mut reloads) = signals::watch(drain_timeout.clone())?;
    let capacity = Capacity::of(&config.services);
    let host = Arc::new(Host {
        source,
        cache: config
            .cache_dir
            .as_deref()
            .map(|dir| Arc::new(Cache::new(dir))),
        ticker: EpochTicker::start()?,
        broker: Broker::new(&config.messaging).await?,
        stop: CancellationToken::new(),
        accepting: CancellationToken::new(),
        tracker: TaskTracker::new(),
        next_id: AtomicU64::new(0),
        ready: AtomicBool::new(false),
        capacity: capacity.connections,
        state: Mutex::new(State::default()),
        counters: Default::default(),
        drain_timeout,
    });
    let admin = match config.admin {
        Some(addr) => Some((addr, admin::install()?)),
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
    host.ready.store(true, Relaxed);
    if let Some((addr, metrics)) = admin {
        admin::serve(addr, host.clone(), metrics).await?;
    }

    tokio::spawn({
        let host = host.clone();
        async move {
            while reloads.recv().await.is_some() {
                let _ = host.reload().await;
            }
        }
    });
    let name = shutdown.requested().await;
    host.ready.store(false, Relaxed);
    host.accepting.cancel();
    info!("{name}: stopped accepting");
    host.drain().await;
    for (service, counters) in host.counters() {
        info!(service, %counters, "stopped");
    }
    Ok(ExitCode::SUCCESS)
}

impl Host {
    /// Whether every service listens and no drain has started.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    /// Every service's counters, services removed by a reload included.
    pub fn counters(&self) -> Vec<(String, Arc<Counters>)> {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters
            .iter()
            .map(|(name, counters)| (name.clone(), counters.clone()))
            .collect()
    }

    /// Reads the configuration again (the file, or the flags' plugin) and
    /// applies it; logs and returns what changed, or the one-line error
    /// that left everything as it was.
    pub async fn reload(self: &Arc<Self>) -> Result<String> {
        info!("reloading");
        let config = match &self.source {
            Source::File(path) => Config::load(path),
            Source::Flags => self
                .state
                .lock()
                .await
                .config
                .clone()
                .context("nothing to reload"),
        };
        let applied = match config {
            Ok(config) => self.apply(config).await,
            Err(error) => Err(error),
        };
        match &applied {
            Ok(changes) => info!("reloaded: {changes}"),
            Err(error) => error!("reload refused, nothing changed: {}", one_line(error)),
        }
        applied.map_err(|error| anyhow::anyhow!(one_line(&error)))
    }

    /// Makes `config` what the host serves: builds the version of every
    /// service that is new or changed, binds every new address, and only
    /// then swaps them all in. On any error, nothing changes.
    async fn apply(self: &Arc<Self>, config: Config) -> Result<String> {
        let mut state = self.state.lock().await;
        if let Some(running) = &state.config
            && running.messaging != config.messaging
        {
            anyhow::bail!("the [messaging] table changes only with a restart");
        }
        let mut buckets = HashMap::new();
        for bucket in config.services.iter().flat_map(|spec| &spec.keyvalue) {
            if buckets.contains_key(&bucket.name) {
                continue;
            }
            let open = match state.buckets.get(&bucket.name) {
                Some(open) if open.spec() == bucket => open.clone(),
                _ => Arc::new(
                    Bucket::open(bucket)
                        .await
                        .with_context(|| format!("key-value bucket {}", bucket.name))?,
                ),
            };
            buckets.insert(bucket.name.clone(), open);
        }
        let parts = HostParts {
            stop: self.stop.clone(),
            cache: self.cache.clone(),
            ticker: &self.ticker,
            ceiling: u32::try_from(self.capacity).unwrap_or(u32::MAX),
            broker: self.broker.clone(),
        };
        let mut versions = BTreeMap::new();
        let mut built = Vec::new();
        for spec in &config.services {
            let previous = state.versions.get(&spec.name);
            if let Some(previous) = previous
                && previous.serves(spec)
            {
                versions.insert(spec.name.clone(), previous.clone());
                continue;
            }
            let counters = self
                .counters()
                .into_iter()
                .find_map(|(name, counters)| (name == spec.name).then_some(counters))
                .unwrap_or_default();
            let version = Version::build(
                spec,
                counters,
                &parts,
                previous.map(|previous| &**previous),
                spec.keyvalue
                    .iter()
                    .map(|bucket| (bucket.name.clone(), buckets[&bucket.name].clone()))
                    .collect(),
            )
            .await
            .map_err(|error| self.in_service(error, &spec.name))?;
            built.push(spec.name.clone());
            versions.insert(spec.name.clone(), Arc::new(version));
        }

        let mut bound = Vec::new();
        for version in versions.values() {
            for addr in &version.spec.listen {
                let key = listen_key(*addr, version.name());
                if state.listeners.contains_key(&key) {
                    continue;
                }
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))
                    .map_err(|error| self.in_service(error, version.name()))?;
                bound.push((key, listener, version.clone()));
            }
        }

        // Nothing can fail from here on.
        let owner: HashMap<ListenKey, Arc<Version>> = versions
            .values()
            .flat_map(|version| {
                let name = version.name();
                version
                    .spec
                    .listen
                    .iter()
                    .map(move |addr| (listen_key(*addr, name), version.clone()))
            })
            .collect();
        let mut stopped = Vec::new();
        state.listeners.retain(|key, sender| match owner.get(key) {
            Some(version) => {
                sender.send_if_modified(|current| {
                    let changed = !current
                        .as_ref()
                        .is_some_and(|current| Arc::ptr_eq(current, version));
                    *current = Some(version.clone());
                    changed
                });
                true
            }
            None => {
                let _ = sender.send(None);
                stopped.push(key.0);
                false
            }
        });
        let shorthand = matches!(self.source, Source::Flags);
        for (key, listener, version) in bound {
            let local = listener.local_addr().unwrap_or(key.0);
            if shorthand {
                println!("listening on {local}");
            } else {
                println!("listening on {local} for service {}", version.name());
            }
            info!(service = version.name(), plugin = %version.spec.plugin.display(), %local, limits = ?version.sandbox.limits, "listening");
            let (sender, receiver) = watch::channel(Some(version));
            state.listeners.insert(key, sender);
            tokio::spawn(accept_loop(self.clone(), listener, receiver));
        }
        for name in &built {
            if let Some(version) = versions.get(name) {
                let plugin = &version.sandbox.plugin;
                info!(
                    service = name, plugin = %version.spec.plugin.display(), digest = %plugin.digest,
                    from_cache = plugin.from_cache, ms = version.loaded_in.as_millis() as u64,
                    "plugin loaded and checked"
                );
                crate::ops::admin::plugin_in_force(
                    name,
                    &version.sandbox.plugin.digest,
                    state
                        .versions
                        .get(name)
                        .map(|old| old.sandbox.plugin.digest.as_str()),
                );
                self.counters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), version.sandbox.counters.clone());
            }
        }
        let removed: Vec<String> = state
            .versions
            .keys()
            .filter(|name| !versions.contains_key(*name))
            .cloned()
            .collect();
        state.versions = versions;
        state.buckets = buckets;
        self.drain_timeout.set(config.drain_timeout);
        state.config = Some(config);
        Ok(format!(
            "services built: [{}]; removed: [{}]; addresses no longer served: [{}]",
            built.join(", "),
            removed.join(", "),
            stopped
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// `error`, saying which service it is about when there are several.
    fn in_service(&self, error: anyhow::Error, service: &str) -> anyhow::Error {
        match self.source {
            Source::Flags => error,
            Source::File(_) => error.context(format!("service {service}")),
        }
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

/// An error and its causes, on one line.
fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Memory mappings one connection costs: 2 for its fiber stack and the
/// stack's guard page, which exist from the start, and 2 more while it is
/// live (its memory, accessible and reserved), or 4 if its memory maps a
/// copy-on-write image, which splits the memory's mapping in three
/// (measured with the echo plugins by `portico-bench`). The capacity is
/// worked out before the pools exist, so both count.
fn mappings_per_connection(init: MemoryInit) -> u64 {
    match init {
        MemoryInit::Copy => 4,
        MemoryInit::Map => 6,
    }
}
/// Mappings and files kept free for everything else the process does.
const HEADROOM: u64 = 1024;

/// Address space one pool slot reserves: wasmtime's 4 GiB for the memory,
/// so that plugin code needs no bounds checks, its 32 MiB guard, and the
/// slot's fiber stack and tables, rounded up.
const ADDRESS_SPACE_PER_CONNECTION: u64 = (4 << 30) + (64 << 20);
/// A process's user address space (47 bits on x86-64, and on aarch64 with
/// 4 KiB pages), less an eighth for everything else.
const ADDRESS_SPACE: u64 = (1 << 47) - (1 << 44);

/// How many connections this process can hold: the open-file limit (raised
/// as far as the hard limit allows), the kernel's cap on memory mappings
/// (`vm.max_map_count`) and the address space the pool reserves bound it. Each service admits at most this
/// many, so that the host refuses connections at the ceiling instead of
/// failing to instantiate them.
struct Capacity {
    connections: u64,
    /// What the services' `max-connections` ask for together.
    wanted: u64,
    files: u64,
    by_files: u64,
    max_map_count: Option<u64>,
    mapped: u64,
    by_mappings: u64,
    by_address: u64,
}

impl Capacity {
    fn of(services: &[config::Service]) -> Capacity {
        let wanted: u64 = services
            .iter()
            .map(|service| u64::from(service.limits.max_connections))
            .sum();
        let queued: u64 = services
            .iter()
            .map(|service| u64::from(service.limits.max_queued))
            .sum();
        // A connection in its PROXY header or TLS handshake holds a socket
        // too, and each service lets as many be there as it serves.
        let handshaking: u64 = services
            .iter()
            .filter(|service| service.tls.is_some() || service.proxy_protocol.is_some())
            .map(|service| u64::from(service.limits.max_connections))
            .sum();
        let needed = wanted + handshaking + queued + HEADROOM;
        // A failure to raise the limit shows in the figure logged.
        let files = rlimit::increase_nofile_limit(needed).unwrap_or(needed);
        let by_files = u64::try_from(
            u128::from(files.saturating_sub(HEADROOM + queued)) * u128::from(wanted.max(1))
                / u128::from((wanted + handshaking).max(1)),
        )
        .unwrap_or(u64::MAX);
        let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok());
        let mapped = std::fs::read_to_string("/proc/self/maps")
            .map_or(0, |maps| maps.lines().count() as u64);
        // The costliest plugin's figure, for every connection. (A plugin
        // that cannot be read is counted as costly; loading it says why.)
        let per_connection = services
            .iter()
            .map(|service| {
                let bytes = std::fs::read(&service.plugin).unwrap_or_default();
                mappings_per_connection(MemoryInit::of(&bytes))
            })
            .max()
            .unwrap_or(mappings_per_connection(MemoryInit::Map));
        let by_mappings = max_map_count.map_or(u64::MAX, |max| {
            max.saturating_sub(mapped + HEADROOM) / per_connection
        });
        let by_address = ADDRESS_SPACE / ADDRESS_SPACE_PER_CONNECTION;
        Capacity {
            connections: by_files.min(by_mappings).min(by_address).max(1),
            wanted,
            files,
            by_files,
            max_map_count,
            mapped,
            by_mappings,
            by_address,
        }
    }

    /// Logs the figure and, if the services ask for more, what to raise.
    fn log(&self) {
        let capacity = self.connections;
        info!(
            ceiling = capacity.min(self.wanted), open_files = self.files,
            max_map_count = ?self.max_map_count, mappings = self.mapped,
            "connections this process can hold"
        );
        if capacity < self.wanted {
            let binding = if self.by_address < self.by_files.min(self.by_mappings) {
                format!(
                    "each connection reserves 4 GiB of address space, and the process has room \
                     for {}: run more host processes",
                    self.by_address
                )
            } else if self.by_mappings < self.by_files {
                format!(
                    "{} memory mappings in use of vm.max_map_count {}: raise it with \
                     `sysctl -w vm.max_map_count=N`",
                    self.mapped,
                    self.max_map_count.unwrap_or_default()
                )
            } else {
                format!(
                    "the open-file limit is {}: raise it with `ulimit -n`",
                    self.files
                )
            };
            warn!(
                "--max-connections {} does not fit, serving at most {capacity} at once: {binding}",
                self.wanted
            );
        }
    }
}

/// Accepts connections on `listener` for the version its channel names,
/// until the drain starts or the channel says `None`, and admits each one
/// (see the module doc).
async fn accept_loop(
    host: Arc<Host>,
    listener: TcpListener,
    mut serving: watch::Receiver<Option<Arc<Version>>>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = host.accepting.cancelled() => return,
            changed = serving.changed() => {
                if changed.is_err() || serving.borrow().is_none() {
                    return;
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                error!("accept failed: {error}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(version) = serving.borrow().clone() else {
            return;
        };
        let arrival = Arrival {
            id: host.next_id.fetch_add(1, Relaxed) + 1,
            accepted: Instant::now(),
            tcp,
            peer,
            local: None,
            proxied: false,
            tls: None,
        };
        count(&version.sandbox.counters.total);
        if !version.has_front_door() {
            if admits(&version, &arrival) {
                admit(&host, version, arrival);
            }
            continue;
        }
        let Ok(handshake) = version.handshakes.clone().try_acquire_owned() else {
            count(&version.sandbox.counters.handshakes_refused);
            warn_of_refusal(&version, &arrival, "handshakes in progress");
            continue;
        };
        let host = host.clone();
        host.clone().tracker.spawn(async move {
            let id = arrival.id;
            // A drain closes connections not yet admitted at once, as if
            // never accepted, rather than wait out their timeouts.
            let arrival = tokio::select! {
                arrival = front_door(&version, arrival) => arrival,
                () = host.accepting.cancelled() => {
                    debug!(service = version.name(), conn = id, "closed before admission: draining");
                    None
                }
            };
            drop(handshake);
            if let Some(arrival) = arrival
                && !host.accepting.is_cancelled()
            {
                admit(&host, version, arrival);
            }
        });
    }
}

/// A connection between its accept and its admission.
struct Arrival {
    id: u64,
    accepted: Instant,
    tcp: TcpStream,
    /// The client: the socket's peer, or the address a PROXY header gave.
    peer: SocketAddr,
    /// The address the client connected to, if a PROXY header gave it.
    local: Option<SocketAddr>,
    /// Whether `peer` and `local` came from a PROXY header.
    proxied: bool,
    /// The TLS session, once the handshake is done (boxed, as in
    /// [`Socket`]).
    tls: Option<Box<rustls::ServerConnection>>,
}

/// Whether the service's filter admits the client; if not, counts it.
fn admits(version: &Version, arrival: &Arrival) -> bool {
    if version.spec.peers.admits(arrival.peer.ip()) {
        return true;
    }
    count(&version.sandbox.counters.filtered);
    debug!(service = version.name(), conn = arrival.id, peer = %arrival.peer, "refused: filtered");
    false
}

/// Takes a connection through what comes before admission: the PROXY
/// header, the filter, the TLS handshake. `None` if it was closed there
/// (counted, and logged at debug level: a client can cause these at will).
async fn front_door(version: &Version, mut arrival: Arrival) -> Option<Arrival> {
    let (service, counters) = (version.name(), &version.sandbox.counters);
    if let Some(proxy) = &version.spec.proxy_protocol {
        let header = if proxy.trusts(arrival.peer.ip()) {
            proxy.read_header(&mut arrival.tcp).await
        } else {
            Err(anyhow::anyhow!("the peer is not a trusted proxy"))
        };
        match header {
            Ok(Some(addresses)) => {
                arrival.peer = addresses.source;
                arrival.local = Some(addresses.destination);
                arrival.proxied = true;
            }
            Ok(None) => {}
            Err(error) => {
                count(&counters.proxy_header_refusals);
                debug!(service, conn = arrival.id, socket_peer = %arrival.peer, "refused: PROXY header: {error:#}");
                return None;
            }
        }
    }
    if !admits(version, &arrival) {
        return None;
    }
    if let Some(tls) = &version.tls {
        match tls.accept(arrival.tcp).await {
            Ok((tcp, session)) => {
                arrival.tcp = tcp;
                arrival.tls = Some(Box::new(session));
            }
            Err(error) => {
                count(&counters.tls_handshake_failures);
                debug!(service, conn = arrival.id, peer = %arrival.peer, "closed: TLS {error:#}");
                return None;
            }
        }
    }
    Some(arrival)
}

/// Admits a connection (see the module doc): serves it if a place is
/// free, else queues it if the queue has room, else closes it.
fn admit(host: &Arc<Host>, version: Arc<Version>, arrival: Arrival) {
    let counters = version.sandbox.counters.clone();
    let places = version.places.clone();
    let max_queued = version.sandbox.limits.max_queued;
    if let Ok(place) = places.clone().try_acquire_owned() {
        host.tracker
            .spawn(serve_connection(version, arrival, place));
    } else if counters.queued.load(Relaxed) < u64::from(max_queued) {
        count(&counters.queued);
        info!(service = version.name(), conn = arrival.id, peer = %arrival.peer, "queued: all places taken");
        let stop = host.stop.clone();
        host.tracker.spawn(async move {
            let place = tokio::select! {
                place = places.acquire_owned() => place,
                () = stop.cancelled() => {
                    counters.queued.fetch_sub(1, Relaxed);
                    return;
                }
            };
            counters.queued.fetch_sub(1, Relaxed);
            // The semaphore is never closed, so acquiring cannot fail.
            if let Ok(place) = place {
                serve_connection(version, arrival, place).await;
            }
        });
    } else {
        count(&counters.refused);
        let why = format!(
            "{} connections served and {max_queued} queued",
            version.max_connections
        );
        warn_of_refusal(&version, &arrival, &why);
    }
}

/// Warns that a connection was refused, at most once a
/// [`REFUSAL_WARNING_INTERVAL`] per service version: a flood must not
/// flood the log too.
fn warn_of_refusal(version: &Version, arrival: &Arrival, why: &str) {
    let mut last = version
        .last_refusal_warning
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if last.is_some_and(|last| last.elapsed() < REFUSAL_WARNING_INTERVAL) {
        return;
    }
    *last = Some(Instant::now());
    let counters = &version.sandbox.counters;
    let refused = counters.refused.load(Relaxed) + counters.handshakes_refused.load(Relaxed);
    warn!(service = version.name(), conn = arrival.id, peer = %arrival.peer, refused, "refused: {why}");
}

/// Serves one admitted connection from start to close, and logs it. The
/// place is given back when this returns.
async fn serve_connection(version: Arc<Version>, arrival: Arrival, _place: OwnedSemaphorePermit) {
    let Arrival {
        id,
        accepted,
        tcp,
        peer,
        local,
        proxied,
        tls,
    } = arrival;
    let service = version.name();
    if proxied {
        info!(service, conn = id, %peer, proxied, "accepted");
    } else {
        info!(service, conn = id, %peer, "accepted");
    }
    let local = match local.map_or_else(|| tcp.local_addr(), Ok) {
        Ok(local) => local,
        Err(error) => {
            warn!(
                service,
                conn = id,
                "closed at once: cannot read its local address: {error}"
            );
            return;
        }
    };
    // Plugins often answer with small writes; Nagle's algorithm would hold
    // each one back for up to 40 ms waiting for the client's ACK.
    let _ = tcp.set_nodelay(true);

    let sandbox = &version.sandbox;
    let counters = &sandbox.counters;
    counters.connection_started();
    version.reclaimer.connection_started();
    let socket = Socket::new(tcp, tls, proxied);
    let info = ConnectionInfo {
        id,
        peer_address: peer.to_string(),
        local_address: local.to_string(),
    };
    let served = sandbox.serve(&info, &socket, accepted).await;
    close(&socket).await;
    counters.connection_ended();
    counters.bytes_in.fetch_add(socket.bytes_in(), Relaxed);
    counters.bytes_out.fetch_add(socket.bytes_out(), Relaxed);
    version.reclaimer.connection_ended();
    crate::ops::admin::connection_ended(service, accepted.elapsed(), served.instantiation);
    log_outcome(service, counters, id, accepted, &socket, served);
}

/// Logs the one `closed` line of a connection, and counts how it ended.
/// Whatever the plugin wrote into it (an error message, names in a trap's
/// backtrace) is escaped and bounded ([`Untrusted`]), so the record stays
/// one line of bounded size.
fn log_outcome(
    service: &str,
    counters: &Counters,
    id: u64,
    accepted: Instant,
    socket: &Socket,
    served: Served,
) {
    let elapsed_ms = accepted.elapsed().as_millis() as u64;
    let (bytes_in, bytes_out) = (socket.bytes_in(), socket.bytes_out());
    let unsent = served.unsent;
    if matches!(served.outcome, Outcome::Finished) {
        count(&counters.finished);
    }
    match served.outcome {
        Outcome::Finished if unsent == 0 => {
            info!(
                service,
                conn = id,
                elapsed_ms,
                bytes_in,
                bytes_out,
                outcome = "ok",
                "closed"
            )
        }
        Outcome::Finished => {
            warn!(
                service,
                conn = id,
                elapsed_ms,
                bytes_in,
                bytes_out,
                outcome = "ok",
                unsent,
                "closed: output not delivered, the client did not take it in time"
            )
        }
        Outcome::Failed(message) => {
            count(&counters.errors);
            warn!(
                service, conn = id, elapsed_ms, bytes_in, bytes_out, outcome = "error", unsent,
                error = %Untrusted(&message), "closed"
            )
        }
        Outcome::Trapped(error) => {
            count(&counters.traps);
            let backtrace = error
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(|backtrace| untrusted::displayed(backtrace))
                .unwrap_or_default();
            let mut cause = error.root_cause().to_string();
            if cause.contains("borrow handles still remain") {
                cause.push_str(
                    ": `run` returned still holding its borrowed input or output stream; \
                     drop both before returning",
                );
            }
            warn!(
                service, conn = id, elapsed_ms, bytes_in, bytes_out, outcome = "trap",
                error = %Untrusted(&cause),
                wasm_backtrace = %Untrusted(backtrace.trim_end()), "closed"
            )
        }
        Outcome::Stopped(reason) => {
            let (counter, why) = match reason {
                StopReason::CpuBudget => (&counters.cpu_budget_stops, "CPU budget spent"),
                StopReason::Idle => (&counters.idle_timeouts, "idle timeout"),
                StopReason::Lifetime => (&counters.lifetime_stops, "maximum lifetime reached"),
                StopReason::Shutdown => (&counters.drain_stops, "drain timed out"),
            };
            count(counter);
            warn!(
                service,
                conn = id,
                elapsed_ms,
                bytes_in,
                bytes_out,
                outcome = "stopped",
                reason = why,
                "closed"
            )
        }
    }
}

/// Ends the connection: sends FIN after everything written; then, unless
/// the client has closed its side already, reads and discards until it
/// does, for at most [`LINGER_TIMEOUT`].
async fn close(socket: &Socket) {
    let tcp = socket.tcp();
    if let Some(mut tls) = socket.tls() {
        tls.send_close_notify();
        while tls.wants_write() {
            if tls.write_tls(&mut socket.tcp_io()).is_err() {
                break;
            }
        }
    }
    let shutdown = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
    if shutdown.is_err() || socket.input_ended() {
        return;
    }
    let discard = async {
        // On the heap: in the future, 4 KiB would be part of every
        // connection's task for its whole life.
        let mut sink = vec![0; 4096];
        loop {
            if tcp.readable().await.is_err() {
                return;
            }
            match tcp.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, discard).await;
}

//! Making a configuration what the host serves, at start and on every
//! reload (SIGHUP, or `POST /reload` on the admin endpoint).
//!
//! Every step that can fail comes first: open the new key-value buckets,
//! build the version of every new or changed service beside the running
//! one, bind every new address. Only then, with nothing left to fail, are
//! the new versions swapped in, all at once: the listeners are handed
//! their service's new version (or stopped), the new addresses start
//! accepting, and the plugins built are put in force. So a reload changes
//! everything or nothing; new connections get the new version, running
//! ones finish on the one they started with.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info};

use crate::capabilities::keyvalue::Bucket;
use crate::config::Config;
use crate::net::inherited;
use crate::ops::log::{announce, error_line};
use crate::ops::metrics;
use crate::server::accept::accept_loop;
use crate::server::service::{HostParts, NextPlugin, Version, next_plugin};
use crate::server::{Host, ListenKey, Listeners, Listening, Source, listen_key};

/// The versions a configuration is served by, by service name.
type Versions = BTreeMap<String, Arc<Version>>;
/// The open key-value buckets, by name.
type Buckets = HashMap<String, Arc<Bucket>>;
/// A listener bound for a new address, and the version it will serve.
type Bound = (ListenKey, TcpListener, Arc<Version>);

impl Host {
    /// Reads the configuration again (the file, or the flags' plugin) and
    /// applies it; logs and returns what changed, or the one-line error
    /// that left everything as it was.
    pub async fn reload(self: &Arc<Self>) -> Result<String> {
        info!(target: "portico_host::server", "reloading");
        let config = match &self.source {
            Source::File(path, overrides) => {
                Config::load(path).and_then(|config| overrides.apply(config))
            }
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
            Ok(changes) => info!(target: "portico_host::server", "reloaded: {changes}"),
            Err(error) => error!(
                target: "portico_host::server",
                "reload refused, nothing changed: {}",
                error_line(error)
            ),
        }
        applied.map_err(|error| anyhow::anyhow!(error_line(&error)))
    }

    /// Makes `config` what the host serves: builds the version of every
    /// service that is new or changed, binds every new address, and only
    /// then swaps them all in. On any error, nothing changes.
    pub(super) async fn apply(self: &Arc<Self>, config: Config) -> Result<String> {
        let mut state = self.state.lock().await;
        if let Some(running) = &state.config
            && running.messaging != config.messaging
        {
            anyhow::bail!("the [messaging] table changes only with a restart");
        }
        let buckets = open_buckets(&state.buckets, &config).await?;
        let (versions, built) = self
            .build_versions(&state.versions, &config, &buckets)
            .await?;
        let bound = self.bind_new_addresses(&state.listeners, &versions, config.reuse_port)?;

        // Nothing can fail from here on.
        let stopped = hand_over(&mut state.listeners, &versions);
        self.listen(&mut state.listeners, bound);
        self.put_in_force(&state.versions, &versions, &built);
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

    /// Builds the version of every service in `config` that `running` does
    /// not serve already; keeps the running version of the others. Returns
    /// every service's version, and the names of those built.
    async fn build_versions(
        &self,
        running: &Versions,
        config: &Config,
        buckets: &Buckets,
    ) -> Result<(Versions, Vec<String>)> {
        let parts = HostParts {
            stop: self.stop.clone(),
            draining: self.accepting.clone(),
            cache: self.cache.clone(),
            ticker: &self.ticker,
            ceiling: u32::try_from(self.capacity).unwrap_or(u32::MAX),
            hibernated_ceiling: u32::try_from(self.hibernated_capacity).unwrap_or(u32::MAX),
            broker: self.broker.clone(),
            waking: self.waking.clone(),
            handover: self.handover.clone(),
        };
        let mut versions = BTreeMap::new();
        let mut built = Vec::new();
        for spec in &config.services {
            let previous = running.get(&spec.name);
            let next = next_plugin(spec, previous.map(|previous| &**previous), config)
                .await
                .map_err(|error| self.in_service(error, &spec.name))?;
            let plugin = match (next, previous) {
                (NextPlugin::Build(plugin), _) => plugin,
                (NextPlugin::Keep, Some(previous)) => {
                    versions.insert(spec.name.clone(), previous.clone());
                    continue;
                }
                (NextPlugin::Keep, None) => continue,
            };
            let counters = self
                .counters()
                .into_iter()
                .find_map(|(name, counters)| (name == spec.name).then_some(counters))
                .unwrap_or_default();
            let version = Version::build(
                spec,
                plugin,
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
        Ok((versions, built))
    }

    /// Binds every address of `versions` that has no listener yet, letting
    /// other processes bind it too if `reuse_port`.
    fn bind_new_addresses(
        &self,
        listeners: &Listeners,
        versions: &Versions,
        reuse_port: bool,
    ) -> Result<Vec<Bound>> {
        let mut bound = Vec::new();
        for version in versions.values() {
            for addr in &version.spec.listen {
                let key = listen_key(*addr, version.name());
                if listeners.contains_key(&key) {
                    continue;
                }
                let listener = bind(*addr, reuse_port)
                    .with_context(|| format!("cannot listen on {addr}"))
                    .map_err(|error| self.in_service(error, version.name()))?;
                bound.push((key, listener, version.clone()));
            }
        }
        Ok(bound)
    }

    /// Starts an accept loop on each listener just bound, and prints the
    /// address it actually got (port 0 picks one).
    fn listen(self: &Arc<Self>, listeners: &mut Listeners, bound: Vec<Bound>) {
        let shorthand = matches!(self.source, Source::Flags);
        for (key, listener, version) in bound {
            let local = listener.local_addr().unwrap_or(key.0);
            if shorthand {
                announce(format_args!("listening on {local}"));
            } else {
                announce(format_args!(
                    "listening on {local} for service {}",
                    version.name()
                ));
            }
            info!(target: "portico_host::server", service = version.name(), plugin = %version.spec.plugin.display(), %local, limits = ?version.sandbox.limits, "listening");
            let (sender, receiver) = watch::channel(Some(version));
            match listener.as_fd().try_clone_to_owned() {
                Ok(socket) => {
                    let listening = Listening {
                        version: sender,
                        local,
                        socket,
                    };
                    listeners.insert(key, listening);
                    tokio::spawn(accept_loop(self.clone(), listener, receiver));
                }
                // Out of file descriptors: the address stays unserved, and
                // the next reload tries again.
                Err(error) => {
                    error!(target: "portico_host::server", %local, "cannot serve: {error}")
                }
            }
        }
    }

    /// Logs each version built, records its plugin as the one in force in
    /// place of `running`'s, and makes its counters the service's.
    fn put_in_force(&self, running: &Versions, versions: &Versions, built: &[String]) {
        for name in built {
            if let Some(version) = versions.get(name) {
                let plugin = &version.sandbox.plugin;
                info!(
                    target: "portico_host::server",
                    service = name, plugin = %version.spec.plugin.display(), digest = %plugin.digest,
                    from_cache = plugin.from_cache, ms = version.loaded_in.as_millis() as u64,
                    "plugin loaded and checked"
                );
                metrics::plugin_in_force(
                    name,
                    &version.sandbox.plugin.digest,
                    running
                        .get(name)
                        .map(|old| old.sandbox.plugin.digest.as_str()),
                );
                self.counters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), version.sandbox.counters.clone());
            }
        }
    }

    /// `error`, saying which service it is about when there are several.
    fn in_service(&self, error: anyhow::Error, service: &str) -> anyhow::Error {
        match self.source {
            Source::Flags => error,
            Source::File(..) => error.context(format!("service {service}")),
        }
    }
}

/// Opens every bucket `config` declares, or keeps it open from `running`
/// while its declaration stays the same, so that its data does too.
async fn open_buckets(running: &Buckets, config: &Config) -> Result<Buckets> {
    let mut buckets = HashMap::new();
    for bucket in config.services.iter().flat_map(|spec| &spec.keyvalue) {
        if buckets.contains_key(&bucket.name) {
            continue;
        }
        let open = match running.get(&bucket.name) {
            Some(open) if open.spec() == bucket => open.clone(),
            _ => Arc::new(
                Bucket::open(bucket)
                    .await
                    .with_context(|| format!("key-value bucket {}", bucket.name))?,
            ),
        };
        buckets.insert(bucket.name.clone(), open);
    }
    Ok(buckets)
}

/// Hands each listener that `versions` still serves its service's version
/// (telling its accept loop only if that changed), and stops the others.
/// Returns the addresses no longer served.
fn hand_over(listeners: &mut Listeners, versions: &Versions) -> Vec<SocketAddr> {
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
    listeners.retain(|key, listening| match owner.get(key) {
        Some(version) => {
            listening.version.send_if_modified(|current| {
                let changed = !current
                    .as_ref()
                    .is_some_and(|current| Arc::ptr_eq(current, version));
                *current = Some(version.clone());
                changed
            });
            true
        }
        None => {
            let _ = listening.version.send(None);
            stopped.push(key.0);
            false
        }
    });
    stopped
}

/// How many connections the kernel queues for an accept loop: the most
/// Linux allows by default (`net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// A listener on `addr`: the one inherited for it (from systemd, or the
/// process this one replaced), else a new one; with `reuse_port`, one that
/// other processes may bind as well, the kernel spreading new connections
/// over them.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    if let Some(listener) = inherited::take(addr) {
        return TcpListener::from_std(listener);
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

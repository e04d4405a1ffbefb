//! A service: one plugin, served on its addresses under its own limits,
//! with an instance pool of its own that no other service can take from.
//!
//! What a service serves at a given moment is a [`Version`]: the plugin as
//! compiled and checked, its limits and filter, its pool and admission
//! places. A reload builds a new version beside the running one and swaps
//! it in; a connection keeps the version it was accepted under until it
//! ends, so every connection is served entirely by one version.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wasmtime::Engine;

use crate::capabilities::keyvalue::Granted;
use crate::capabilities::messaging::{self, Broker};
use crate::capabilities::outbound::Policy;
use crate::config::{self, Config, PluginSource};
use crate::net::tls::Tls;
use crate::ops::counters::Counters;
use crate::ops::log::error_line;
use crate::sandbox::MemoryInit;
use crate::sandbox::cache::Cache;
use crate::sandbox::plugin::Plugin;
use crate::sandbox::reclaim::Reclaimer;
use crate::sandbox::registry::{self, Fetched};
use crate::sandbox::{self, EpochTicker, Sandbox};
use crate::server::handed::Handover;

/// One version of a service, ready to serve.
pub struct Version {
    /// The service as configured.
    pub spec: config::Service,
    /// How long compiling (or loading from the cache) and checking took.
    pub loaded_in: std::time::Duration,
    /// The plugin, its limits and counters.
    pub sandbox: Arc<Sandbox>,
    /// One place per connection served at once.
    pub places: Arc<Semaphore>,
    /// Connections served at once: `max-connections`, or less if the
    /// process cannot hold that many.
    pub max_connections: u32,
    /// Told of every connection's end, to give memory back once they stop.
    pub reclaimer: Arc<Reclaimer>,
    /// The listeners' TLS, if the service has it.
    pub tls: Option<Arc<Tls>>,
    /// One per connection in its PROXY header or TLS handshake, which
    /// happen before it takes a place, so that slow handshakes never hold
    /// places (as many as places: `max_connections`).
    pub handshakes: Arc<Semaphore>,
    /// When a refused connection was last warned of.
    pub last_refusal_warning: std::sync::Mutex<Option<std::time::Instant>>,
    /// How its engine initialises memories, chosen for its plugin.
    pub memory_init: MemoryInit,
    /// The process's wake gate (see [`crate::server::hibernation`]).
    pub waking: Arc<Semaphore>,
    /// Where its hibernated connections go in an upgrade.
    pub handover: Arc<Handover>,
}

/// What every version gets from the host.
pub struct HostParts<'a> {
    /// Cancelled at the end of a drain: stops every connection.
    pub stop: CancellationToken,
    /// Cancelled when a drain starts: wakes hibernated connections.
    pub draining: CancellationToken,
    pub cache: Option<Arc<Cache>>,
    pub ticker: &'a EpochTicker,
    /// The most connections one service may serve at once in this process.
    pub ceiling: u32,
    /// The most connections one service may hold hibernated in this
    /// process.
    pub hibernated_ceiling: u32,
    /// Carries messages between every service's connections.
    pub broker: Arc<Broker>,
    /// The process's wake gate, shared by every service.
    pub waking: Arc<Semaphore>,
    /// Where hibernated connections go in an upgrade.
    pub handover: Arc<Handover>,
}

impl Version {
    /// Builds a version of `spec`: compiles the plugin (or loads it from
    /// the cache), checks it by instantiating it once, and sets up its pool.
    /// If `previous` has a pool of the same shape, the new version shares
    /// it (and its places), so that old and new connections together stay
    /// within `max-connections`. `plugin` is its plugin as fetched;
    /// `buckets` are the key-value buckets the service is granted.
    pub async fn build(
        spec: &config::Service,
        plugin: Fetched,
        counters: Arc<Counters>,
        host: &HostParts<'_>,
        previous: Option<&Version>,
        buckets: Granted,
    ) -> Result<Version> {
        let limits = &spec.limits;
        // The pool holds no more slots than the process can serve: past the
        // ceiling, slots would only take address space and mappings.
        let max_connections = host.ceiling.min(limits.max_connections).max(1);
        let pooled = crate::config::Limits {
            max_connections,
            ..limits.clone()
        };
        let loading = std::time::Instant::now();
        let bytes = plugin.bytes;
        let memory_init = MemoryInit::of(&bytes);
        let shared = previous.filter(|previous| {
            let old = &previous.spec.limits;
            old.max_connections == limits.max_connections
                && old.memory_bytes == limits.memory_bytes
                && old.explicit_bounds_checks == limits.explicit_bounds_checks
                && previous.memory_init == memory_init
        });
        let engine = match shared {
            Some(previous) => previous.sandbox.plugin.engine().clone(),
            None => {
                let engine = sandbox::engine(&pooled, memory_init)?;
                host.ticker.add(&engine);
                engine
            }
        };

        let tls = match &spec.tls {
            Some(tls) => Some(Arc::new(Tls::load(tls).context("TLS")?)),
            None => None,
        };
        let plugin = compile(&engine, spec, bytes, host.cache.clone()).await?;
        let limits = crate::config::Limits {
            max_hibernated: host.hibernated_ceiling.min(limits.max_hibernated),
            ..limits.clone()
        };
        let sandbox = Arc::new(sandbox_for(spec, limits, plugin, counters, host, buckets));
        sandbox
            .check()
            .await
            .map_err(anyhow::Error::from)
            .with_context(|| format!("plugin {} cannot be instantiated", spec.plugin.display()))?;
        let loaded_in = loading.elapsed();

        let (places, handshakes, max_connections, reclaimer) = match shared {
            Some(previous) => (
                previous.places.clone(),
                previous.handshakes.clone(),
                previous.max_connections,
                previous.reclaimer.clone(),
            ),
            None => {
                let (places, handshakes, reclaimer) = new_places(&engine, &pooled)?;
                (places, handshakes, max_connections, reclaimer)
            }
        };
        Ok(Version {
            spec: spec.clone(),
            loaded_in,
            sandbox,
            places,
            max_connections,
            reclaimer,
            tls,
            handshakes,
            last_refusal_warning: std::sync::Mutex::new(None),
            memory_init,
            waking: host.waking.clone(),
            handover: host.handover.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Waits in the service's queue for a place, first come first served,
    /// new connections and woken ones alike. The caller has counted the
    /// connection as queued (at once, so that the next admission sees it);
    /// it is uncounted when it leaves the queue. `None` if `stop` comes
    /// first.
    pub async fn wait_for_place(&self, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        let queued = &self.sandbox.counters.queued;
        let place = tokio::select! {
            // The semaphore is never closed, so acquiring cannot fail.
            place = self.places.clone().acquire_owned() => place.ok(),
            () = stop.cancelled() => None,
        };
        queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        place
    }

    /// Whether a connection has anything to go through (a PROXY header, a
    /// TLS handshake) before it is admitted.
    pub fn has_front_door(&self) -> bool {
        self.tls.is_some() || self.spec.proxy_protocol.is_some()
    }

    /// Whether `spec` would build this same version: same settings, the
    /// same plugin (`plugin`, as fetched for `spec`), and TLS files with the
    /// same content (so that a reload picks up renewed certificates).
    pub fn serves(&self, spec: &config::Service, plugin: &Fetched) -> bool {
        let same_tls = match (&spec.tls, &self.tls) {
            (Some(files), Some(tls)) => {
                crate::net::tls::files_digest(files).is_ok_and(|digest| digest == tls.files_digest)
            }
            (None, None) => true,
            _ => false,
        };
        self.spec == *spec && same_tls && plugin.digest() == self.sandbox.plugin.digest
    }
}

/// What a start or reload does about a service's plugin.
pub enum NextPlugin {
    /// Build a version with this plugin.
    Build(Fetched),
    /// Keep the version running: it serves this plugin already, or its
    /// registry cannot be reached.
    Keep,
}

/// Reads or pulls `spec`'s plugin, and says whether `previous` serves it
/// already. A registry that cannot be reached keeps `previous` if the
/// service is otherwise unchanged, and says why in one line; a tag that
/// now names another plugin is logged with the old and new digests.
pub async fn next_plugin(
    spec: &config::Service,
    previous: Option<&Version>,
    config: &Config,
) -> Result<NextPlugin> {
    let fetched =
        registry::fetch(&spec.plugin, &config.registry, config.cache_dir.as_deref()).await;
    let plugin = match (fetched, previous) {
        (Ok(plugin), _) => plugin,
        (Err(error), Some(previous))
            if previous.spec == *spec && registry::is_unreachable(&error) =>
        {
            warn!(
                target: "portico_host::server",
                service = spec.name, plugin = %spec.plugin.display(), digest = %previous.sandbox.plugin.digest,
                "registry unreachable, the plugin in force stays: {}", error_line(&error)
            );
            return Ok(NextPlugin::Keep);
        }
        (Err(error), _) => return Err(error),
    };
    let Some(previous) = previous else {
        return Ok(NextPlugin::Build(plugin));
    };
    if previous.serves(spec, &plugin) {
        return Ok(NextPlugin::Keep);
    }
    let digest = plugin.digest();
    if matches!(spec.plugin, PluginSource::Registry(_))
        && previous.spec.plugin == spec.plugin
        && digest != previous.sandbox.plugin.digest
    {
        info!(
            target: "portico_host::server",
            service = spec.name, plugin = %spec.plugin.display(), old = %previous.sandbox.plugin.digest, new = %digest,
            "the tag moved: old digest {}, new digest {digest}", previous.sandbox.plugin.digest
        );
    }
    Ok(NextPlugin::Build(plugin))
}

/// Compiles the plugin (or loads it from the cache) for `engine`.
async fn compile(
    engine: &Engine,
    spec: &config::Service,
    bytes: Vec<u8>,
    cache: Option<Arc<Cache>>,
) -> Result<Plugin> {
    // A pulled plugin is named by its reference in errors, and in a
    // command's first argument.
    let path = match &spec.plugin {
        PluginSource::File(path) => path.clone(),
        PluginSource::Registry(reference) => PathBuf::from(reference.to_string()),
    };
    let (engine, settings) = (engine.clone(), spec.settings.clone());
    // Compiling takes seconds for a large plugin: off the workers.
    let plugin = tokio::task::spawn_blocking(move || {
        Plugin::load(&engine, &path, &bytes, &settings, cache.as_deref())
    })
    .await
    .context("the compiler thread failed")??;
    Ok(plugin)
}

/// What a connection of `spec` is given: its plugin, limits and counters,
/// and the grants its capabilities check.
fn sandbox_for(
    spec: &config::Service,
    limits: config::Limits,
    plugin: Plugin,
    counters: Arc<Counters>,
    host: &HostParts<'_>,
    buckets: Granted,
) -> Sandbox {
    Sandbox {
        service: spec.name.as_str().into(),
        plugin,
        counters,
        stop: host.stop.clone(),
        draining: host.draining.clone(),
        outbound: (!spec.outbound.is_empty()).then(|| {
            Arc::new(Policy::new(
                spec.outbound.clone(),
                limits.max_outbound_sockets,
                limits.max_outbound_sockets_per_service,
            ))
        }),
        buckets: Arc::new(buckets),
        messaging: (!spec.messaging.is_empty()).then(|| {
            Arc::new(messaging::Grant {
                broker: host.broker.clone(),
                patterns: spec.messaging.clone(),
            })
        }),
        limits,
    }
}

/// A new pool's places, handshake places and reclaimer, for a version
/// that shares none with the one it replaces.
fn new_places(
    engine: &Engine,
    pooled: &config::Limits,
) -> Result<(Arc<Semaphore>, Arc<Semaphore>, Arc<Reclaimer>)> {
    let places = Arc::new(Semaphore::new(pooled.max_connections as usize));
    let handshakes = Arc::new(Semaphore::new(pooled.max_connections as usize));
    let reclaimer = Arc::new(
        Reclaimer::new(engine, sandbox::memory_slots(pooled))
            .map_err(anyhow::Error::from)
            .context("cannot set up memory reclaiming")?,
    );
    reclaimer.spawn();
    Ok((places, handshakes, reclaimer))
}

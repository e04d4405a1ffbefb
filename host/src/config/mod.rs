//! What the host serves: one or more services, each a plugin on its own
//! addresses with its own limits, settings and connection filter; the
//! admin endpoint; and host-wide settings.
//!
//! It comes from the config file (`host --config-file PATH`, TOML) or, for
//! one service, from the flags (`host --plugin PATH ...`, see
//! [`crate::cli`]). The file is read in two steps, as written (`file`,
//! serde's job, which refuses unknown keys and wrong types) and as meant
//! (`check`, into [`Config`]); every problem is one error that names the
//! file, the line and the key. Flags and file take their defaults and
//! bounds from one place, [`defaults`].

mod check;
pub mod defaults;
mod document;
mod file;
mod registry;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ipnet::IpNet;

use crate::capabilities::keyvalue::BucketSpec;
use crate::capabilities::messaging::{self, Pattern};
use crate::capabilities::outbound::Rule;
use crate::net::proxy_protocol::ProxySpec;
use crate::net::tls::TlsSpec;

pub use defaults::{MAX_MEMORY_MIB, default_cache_dir, default_limits};
pub use registry::{
    PluginSource, Reference, RegistryOverrides, RegistrySettings, is_sha256, parse_registry_host,
};

use document::Document;
use file::File;

/// Everything the host serves, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the admin endpoint listens, if anywhere.
    pub admin: Option<SocketAddr>,
    /// The file holding the token that `POST /reload` must present.
    pub admin_token_file: Option<PathBuf>,
    /// On shutdown, how long live connections may take to finish.
    pub drain_timeout: Duration,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Where compiled plugins are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// The services, by name.
    pub services: Vec<Service>,
    /// Where messages between connections go.
    pub messaging: messaging::Backend,
    /// Whether listeners let other processes bind the same addresses
    /// (`SO_REUSEPORT`), so that several hosts share them.
    pub reuse_port: bool,
    /// How plugins named `oci://...` are pulled.
    pub registry: RegistrySettings,
}

/// What the operator allows, from the flags or the config file.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Connections served at once; the instance pool holds this many.
    pub max_connections: u32,
    /// Accepted connections that may wait for a place.
    pub max_queued: u32,
    /// Largest linear memory of one instance.
    pub memory_bytes: usize,
    /// Time one connection's plugin may spend running.
    pub cpu_budget: Duration,
    /// Close a connection after this long without a byte either way.
    pub idle_timeout: Duration,
    /// Close a connection this long after it was accepted.
    pub max_lifetime: Option<Duration>,
    /// Plugin stdout and stderr lines logged per second and connection.
    pub log_lines_per_second: u32,
    /// On shutdown, how long live connections may take to finish.
    pub drain_timeout: Duration,
    /// Outbound sockets one connection may create over its life.
    pub max_outbound_sockets: u32,
    /// Outbound sockets the service's connections may hold at once.
    pub max_outbound_sockets_per_service: u32,
    /// How long an outbound connect may take before it fails with `timeout`.
    pub connect_timeout: Duration,
    /// CPU time given back to a connection's budget per minute of its life,
    /// up to `cpu_budget`.
    pub cpu_refill: Duration,
    /// Hibernated connections the service may hold at once.
    pub max_hibernated: u32,
    /// Largest state, in bytes, a plugin may hibernate with.
    pub max_hibernation_state: u32,
    /// Close a hibernated connection when no byte has moved for this long.
    pub hibernated_idle_timeout: Duration,
    /// Close a connection that has hibernated this long after it was
    /// accepted, in place of `max_lifetime`; `None` keeps `max_lifetime`.
    pub hibernated_max_lifetime: Option<Duration>,
    /// Reserve only `memory_bytes` of address space per instance, and have
    /// plugin code check its memory accesses, instead of reserving 4 GiB.
    pub explicit_bounds_checks: bool,
}

impl Limits {
    /// How long after its accept a connection is closed: a connection that
    /// has hibernated may be given longer than one that never did.
    pub fn lifetime(&self, has_hibernated: bool) -> Option<Duration> {
        match has_hibernated {
            true => self.hibernated_max_lifetime.or(self.max_lifetime),
            false => self.max_lifetime,
        }
    }
}

/// One service: a plugin, the addresses it serves and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub plugin: PluginSource,
    pub listen: Vec<SocketAddr>,
    pub limits: Limits,
    /// What the plugin reads through `wasi:config/store`.
    pub settings: BTreeMap<String, String>,
    pub peers: PeerFilter,
    /// Where the plugin may connect to.
    pub outbound: Vec<Rule>,
    /// The key-value buckets the plugin may open.
    pub keyvalue: Vec<BucketSpec>,
    /// The topics the plugin may publish and subscribe to.
    pub messaging: Vec<Pattern>,
    /// TLS on every listener of the service, if set.
    pub tls: Option<TlsSpec>,
    /// A PROXY protocol header before anything else, if set.
    pub proxy_protocol: Option<ProxySpec>,
}

/// How log lines are written: text for people, JSON for log shippers.
#[derive(Clone, Copy, Debug, Default, PartialEq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Which clients a service accepts, by address, as POCO's
/// `TCPServerConnectionFilter`: a client must be in an `allow` network (if
/// any are listed) and in no `deny` network.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerFilter {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl PeerFilter {
    /// Whether a client at `ip` may connect.
    pub fn admits(&self, ip: IpAddr) -> bool {
        // An IPv4 client of an IPv6 socket shows up as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        (self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip)))
            && !self.deny.iter().any(|net| net.contains(&ip))
    }
}

/// Process-wide settings given as flags beside a config file: each one
/// given wins over the file's, at start and at every reload.
#[derive(Clone, Debug, Default)]
pub struct ProcessOverrides {
    pub admin: Option<SocketAddr>,
    pub admin_token_file: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    /// `Some(None)`: `--no-cache`.
    pub cache_dir: Option<Option<PathBuf>>,
    /// `--reuse-port`; without it, the file's `reuse-port` holds.
    pub reuse_port: bool,
    pub drain_timeout: Option<Duration>,
    /// `--insecure-registry`, `--registry-timeout`, ... (boxed: rarely
    /// given, and this struct travels by value in `server::Source`).
    pub registry: Box<RegistryOverrides>,
    /// The listening sockets systemd passed, by `FileDescriptorName`: a
    /// service listens on those of its name (the one service, on all of
    /// them) instead of its `listen` addresses.
    pub sockets: BTreeMap<String, Vec<SocketAddr>>,
}

impl ProcessOverrides {
    /// `config` with every override given applied to it.
    pub fn apply(&self, mut config: Config) -> Result<Config> {
        if let Some(admin) = self.admin {
            config.admin = Some(admin);
        }
        if let Some(token_file) = &self.admin_token_file {
            config.admin_token_file = Some(token_file.clone());
        }
        if config.admin_token_file.is_some() && config.admin.is_none() {
            bail!("--admin-token-file needs the admin endpoint: give --admin ADDR too");
        }
        if let Some(log_format) = self.log_format {
            config.log_format = log_format;
        }
        if let Some(cache_dir) = &self.cache_dir {
            config.cache_dir = cache_dir.clone();
        }
        config.reuse_port |= self.reuse_port;
        if let Some(drain_timeout) = self.drain_timeout {
            config.drain_timeout = drain_timeout;
        }
        self.registry.apply(&mut config.registry);
        self.assign_sockets(&mut config)?;
        Ok(config)
    }

    /// Makes each service listen on the sockets systemd passed for it.
    fn assign_sockets(&self, config: &mut Config) -> Result<()> {
        if let [service] = &mut config.services[..] {
            if !self.sockets.is_empty() {
                service.listen = self.sockets.values().flatten().copied().collect();
            }
            return Ok(());
        }
        for (name, addrs) in &self.sockets {
            let Some(service) = config.services.iter_mut().find(|s| &s.name == name) else {
                let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
                bail!(
                    "systemd passed a socket named {name:?}, but no service has that name: give \
                     each socket FileDescriptorName=SERVICE (services: {})",
                    names.join(", ")
                );
            };
            service.listen = addrs.clone();
        }
        Ok(())
    }
}

impl Config {
    /// Reads and checks the config file at `path`. Relative paths in it are
    /// relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(path, &text)
    }

    /// Checks `text`, the config file at `path`; every problem is one
    /// error, `PATH:LINE: KEY: PROBLEM`.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let document = Document { path, text };
        let file: File = toml::from_str(text).map_err(|error| {
            let line = error.span().map_or(0, |span| document.line(span));
            anyhow!(
                "{}:{line}: {}",
                path.display(),
                error.message().trim_end().replace('\n', " ")
            )
        })?;
        let folder = path.parent().unwrap_or(Path::new("."));
        document.config(&file, folder)
    }
}

#[cfg(test)]
mod tests;

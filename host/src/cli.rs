//! Command-line flags: every setting an operator can give, with its default
//! and unit. [`Args::config`] turns them into what the host serves: the
//! config file's services, or the one service the flags describe, before
//! anything listens.
//!
//! Defaults and accepted values come from [`config::defaults`], as the
//! config file's do; a value out of bounds is refused while the flags are
//! parsed, with the same words the file's checks use.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args as FlagGroup, Parser};
use ipnet::IpNet;

use crate::capabilities::keyvalue::{BackendSpec, BucketSpec};
use crate::capabilities::messaging::Pattern;
use crate::capabilities::outbound::Rule;
use crate::config::defaults::{
    self, CONNECT_TIMEOUT, CPU_BUDGET, CPU_REFILL, DRAIN_TIMEOUT, DurationBounds,
    HIBERNATED_IDLE_TIMEOUT, IDLE_TIMEOUT, LOG_LINES_PER_SECOND, MAX_CONNECTIONS, MAX_HIBERNATED,
    MAX_HIBERNATION_STATE, MAX_LIFETIME, MAX_MEMORY, MAX_OUTBOUND_SOCKETS,
    MAX_OUTBOUND_SOCKETS_PER_SERVICE, MAX_QUEUED, REGISTRY_MAX_SIZE, REGISTRY_TIMEOUT,
    TLS_HANDSHAKE_TIMEOUT,
};
use crate::config::{
    self, Config, Limits, LogFormat, PeerFilter, PluginSource, ProcessOverrides, RegistryOverrides,
};
use crate::net::proxy_protocol::ProxySpec;
use crate::net::tls::{CertificateFiles, TlsSpec};
use crate::scaffold::Language;
use crate::server::Source;

/// Serve TCP connections with WebAssembly plugins: each connection gets a
/// fresh, sandboxed instance of its service's plugin component.
///
/// One service from the flags (`--plugin PATH ...`), or several from a
/// config file (`--config-file PATH`). Logs go to stderr; set PORTICO_LOG
/// (for example `PORTICO_LOG=debug`) to choose what is logged. Stdout gets
/// one `listening on ADDR` line per address. SIGHUP reloads. Durations are
/// written like `300ms`, `10s`, `5m` or `1h 30m`.
#[derive(Debug, Parser)]
#[command(name = "host", version, max_term_width = 100)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["plugin", "config_file"]))]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The plugin: a WebAssembly component built against the
    /// `portico:plugin/handler` world (for Rust, with the portico-guest-sdk
    /// crate and `--target wasm32-wasip2`); a file, or a wasm artifact in
    /// an OCI registry: `oci://HOST[:PORT]/NAME:TAG` or
    /// `oci://HOST[:PORT]/NAME@sha256:DIGEST`.
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PluginSource>,

    /// Serve the services of this config file (TOML; see the README)
    /// instead of one plugin from the flags.
    #[arg(long, short = 'c', value_name = "PATH", conflicts_with = "plugin")]
    pub config_file: Option<PathBuf>,

    #[command(flatten)]
    pub process: ProcessFlags,

    #[command(flatten)]
    pub service: ServiceFlags,

    #[command(flatten)]
    pub limits: LimitFlags,

    #[command(flatten)]
    pub grants: GrantFlags,

    #[command(flatten)]
    pub front_door: FrontDoorFlags,
}

/// What `host` does besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write a new plugin project, NAME/, that builds on its own: an echo
    /// handler to change, the contract and the language's SDK, a build.sh
    /// and a README naming the tools it needs.
    New(NewArgs),
}

/// `host new --lang LANG NAME`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The plugin's language: a handler in rust, python, javascript, c or
    /// go; or command, a WASI command in Rust (a `main` whose stdin and
    /// stdout are the connection).
    #[arg(long, value_name = "LANG")]
    pub lang: Language,

    /// The plugin's name: its folder, its `.wasm` file and its service's
    /// name (lower-case letters, digits, `-` and `_`).
    pub name: String,
}

/// What the whole process does besides serving: admin endpoint, logs and
/// the compile cache. Given beside `--config-file`, each wins over the
/// file's setting, at start and at every reload.
#[derive(Debug, FlagGroup)]
pub struct ProcessFlags {
    /// Serve the admin endpoint (health, readiness, metrics, reload) on
    /// this address. Off unless given; in a config file, `[admin] listen`.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// The file holding the token that `POST /reload` on the admin endpoint
    /// must present as `Authorization: Bearer TOKEN`. Without one, reload
    /// over HTTP is refused unless the endpoint is on a loopback address.
    /// In a config file, `[admin] token-file`.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,

    /// How log lines are written: `text`, or `json` for log shippers (one
    /// object per line). In a config file, the `log-format` key.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Where compiled plugins are cached. Default: $XDG_CACHE_HOME/portico,
    /// or ~/.cache/portico. In a config file, `[cache] dir`.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile plugins at every start rather than cache them. In a config
    /// file, `[cache] enabled = false`.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,

    /// Let other processes listen on the same address (SO_REUSEPORT): run
    /// several hosts with the same flags and the kernel spreads connections
    /// over them. In a config file, `reuse-port = true`.
    #[arg(long)]
    pub reuse_port: bool,

    #[command(flatten)]
    pub registry: RegistryFlags,
}

/// How plugins named `oci://...` are pulled. Beside `--config-file`, each
/// wins over the file's `[registry]` key.
#[derive(Debug, FlagGroup)]
pub struct RegistryFlags {
    /// Let the registry HOST[:PORT] speak plain HTTP (repeatable). Without
    /// it, only a registry on a loopback address may; any other needs TLS.
    /// In a config file, `[registry] insecure`.
    #[arg(long, value_name = "HOST[:PORT]", value_parser = config::parse_registry_host)]
    pub insecure_registry: Vec<String>,

    /// How long one pull from a registry may take (default 30s); then the
    /// start fails, or a reload keeps the plugin in force. In a config
    /// file, `[registry] timeout`.
    #[arg(long, value_name = "DURATION", value_parser = duration_parser(REGISTRY_TIMEOUT.bounds))]
    pub registry_timeout: Option<humantime::Duration>,

    /// The largest plugin a registry may send, in MiB (default 256). In a
    /// config file, `[registry] max-size`.
    #[arg(long, value_name = "MIB", value_parser = REGISTRY_MAX_SIZE.bounds.parser())]
    pub registry_max_size: Option<u32>,

    /// Registry credentials, in Docker's config.json format (`auths`).
    /// Default: $DOCKER_CONFIG/config.json or ~/.docker/config.json, if
    /// there is one; else pulls are anonymous. In a config file,
    /// `[registry] auth-file`.
    #[arg(long, value_name = "PATH")]
    pub registry_auth_file: Option<PathBuf>,
}

impl RegistryFlags {
    fn overrides(&self) -> RegistryOverrides {
        RegistryOverrides {
            insecure: self.insecure_registry.clone(),
            timeout: self.registry_timeout.map(Into::into),
            max_size: self.registry_max_size.map(|mib| u64::from(mib) << 20),
            auth_file: self.registry_auth_file.clone(),
        }
    }
}

/// Where the one service listens and what its plugin reads.
#[derive(Debug, FlagGroup)]
pub struct ServiceFlags {
    /// Address to listen on. Port 0 picks a free port; the address actually
    /// bound is printed as `listening on ADDR`.
    #[arg(
        long,
        value_name = "ADDR",
        default_value_t = defaults::LISTEN,
        conflicts_with = "config_file"
    )]
    pub listen: SocketAddr,

    /// A setting for the plugin, read through `wasi:config/store`. Repeat for
    /// more settings; a later value for the same key wins.
    #[arg(long = "setting", visible_alias = "config", value_name = "KEY=VALUE", value_parser = parse_setting, conflicts_with = "config_file")]
    pub settings: Vec<(String, String)>,
}

/// What one connection, and the service's connections together, may use.
#[derive(Debug, FlagGroup)]
pub struct LimitFlags {
    /// Connections served at once. The instance pool is sized for exactly
    /// this many, so an admitted connection always gets its instance.
    #[arg(long, value_name = "N", default_value_t = MAX_CONNECTIONS.default, value_parser = MAX_CONNECTIONS.bounds.parser(), conflicts_with = "config_file")]
    pub max_connections: u32,

    /// Connections held, accepted but waiting, while --max-connections are
    /// being served. Past this, a new connection is accepted and closed at
    /// once, and counted as refused.
    #[arg(long, value_name = "N", default_value_t = MAX_QUEUED.default, value_parser = MAX_QUEUED.bounds.parser(), conflicts_with = "config_file")]
    pub max_queued: u32,

    /// Largest linear memory of one plugin instance, in MiB. Growing past it
    /// fails inside the plugin, as `memory.grow` returning -1.
    #[arg(long, value_name = "MIB", default_value_t = MAX_MEMORY.default, value_parser = MAX_MEMORY.bounds.parser(), conflicts_with = "config_file")]
    pub max_memory: u32,

    /// Time a connection's plugin may spend running (computing, not waiting
    /// for input); then it is stopped and the connection closed.
    #[arg(long, value_name = "DURATION", default_value_t = CPU_BUDGET.default.into(), value_parser = duration_parser(CPU_BUDGET.bounds), conflicts_with = "config_file")]
    pub cpu_budget: humantime::Duration,

    /// Close a connection when no byte has moved in either direction for
    /// this long.
    #[arg(long, value_name = "DURATION", default_value_t = IDLE_TIMEOUT.default.into(), value_parser = duration_parser(IDLE_TIMEOUT.bounds), conflicts_with = "config_file")]
    pub idle_timeout: humantime::Duration,

    /// Close a connection this long after it was accepted, whatever it is
    /// doing. Off unless given.
    #[arg(long, value_name = "DURATION", value_parser = duration_parser(MAX_LIFETIME), conflicts_with = "config_file")]
    pub max_lifetime: Option<humantime::Duration>,

    /// On SIGINT or SIGTERM, how long live connections may take to finish
    /// before they are stopped (default 30s). A second signal stops them at
    /// once. Beside --config-file, wins over its `drain-timeout`.
    #[arg(long, value_name = "DURATION", value_parser = duration_parser(DRAIN_TIMEOUT.bounds))]
    pub drain_timeout: Option<humantime::Duration>,

    /// Lines per second one connection's plugin may write to stdout and
    /// stderr together; the rest are dropped and counted in the log.
    #[arg(long, value_name = "N", default_value_t = LOG_LINES_PER_SECOND.default, value_parser = LOG_LINES_PER_SECOND.bounds.parser(), conflicts_with = "config_file")]
    pub log_lines_per_second: u32,

    /// Outbound sockets one connection's plugin may open over its life.
    #[arg(long, value_name = "N", default_value_t = MAX_OUTBOUND_SOCKETS.default, value_parser = MAX_OUTBOUND_SOCKETS.bounds.parser(), conflicts_with = "config_file")]
    pub max_outbound_sockets: u32,

    /// Outbound sockets the service's connections may hold at once (each
    /// held until its connection ends).
    #[arg(long, value_name = "N", default_value_t = MAX_OUTBOUND_SOCKETS_PER_SERVICE.default, value_parser = MAX_OUTBOUND_SOCKETS_PER_SERVICE.bounds.parser(), conflicts_with = "config_file")]
    pub max_outbound_sockets_per_service: u32,

    /// How long a plugin's outbound connect may take; then it fails with
    /// `timeout`.
    #[arg(long, value_name = "DURATION", default_value_t = CONNECT_TIMEOUT.default.into(), value_parser = duration_parser(CONNECT_TIMEOUT.bounds), conflicts_with = "config_file")]
    pub connect_timeout: humantime::Duration,

    /// CPU time given back to a connection's --cpu-budget per minute of its
    /// life, up to the budget; 0s never gives any back.
    #[arg(long, value_name = "DURATION", default_value_t = CPU_REFILL.default.into(), value_parser = duration_parser(CPU_REFILL.bounds), conflicts_with = "config_file")]
    pub cpu_refill: humantime::Duration,

    /// Hibernated connections (kept open without an instance) the service
    /// may hold at once; past it, `hibernate` is refused. 0 turns
    /// hibernation off.
    #[arg(long, value_name = "N", default_value_t = MAX_HIBERNATED.default, value_parser = MAX_HIBERNATED.bounds.parser(), conflicts_with = "config_file")]
    pub max_hibernated: u32,

    /// Largest state, in bytes, a plugin may hibernate with.
    #[arg(long, value_name = "BYTES", default_value_t = MAX_HIBERNATION_STATE.default, value_parser = MAX_HIBERNATION_STATE.bounds.parser(), conflicts_with = "config_file")]
    pub max_hibernation_state: u32,

    /// Close a hibernated connection when no byte has moved in either
    /// direction for this long.
    #[arg(long, value_name = "DURATION", default_value_t = HIBERNATED_IDLE_TIMEOUT.default.into(), value_parser = duration_parser(HIBERNATED_IDLE_TIMEOUT.bounds), conflicts_with = "config_file")]
    pub hibernated_idle_timeout: humantime::Duration,

    /// Close a connection that has hibernated this long after it was
    /// accepted, in place of --max-lifetime (connections that hibernate
    /// tend to live long). Off unless given: --max-lifetime applies.
    #[arg(long, value_name = "DURATION", value_parser = duration_parser(MAX_LIFETIME), conflicts_with = "config_file")]
    pub hibernated_max_lifetime: Option<humantime::Duration>,

    /// Reserve only --max-memory of address space per instance, not 4 GiB,
    /// so that one process can hold far more live connections; plugin code
    /// then checks its memory accesses, which makes memory-bound code
    /// slower (sorting: 1.75x).
    #[arg(long, conflicts_with = "config_file")]
    pub explicit_bounds_checks: bool,
}

/// What the plugin may reach beyond its connection: nothing unless granted.
#[derive(Debug, FlagGroup)]
pub struct GrantFlags {
    /// Let the plugin connect to HOST:PORT, where HOST is an IP address
    /// ([IPv6]), a CIDR network, a name or *.domain. Repeat for more. Nothing
    /// is reachable unless granted. In a config file, `grants.outbound`.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "config_file")]
    pub allow_outbound: Vec<Rule>,

    /// Let the plugin open the key-value bucket NAME, kept in memory and
    /// shared by its connections. Repeat for more. In a config file,
    /// `grants.keyvalue` and `[keyvalue.NAME]`, which also offer buckets in
    /// a file or in Redis.
    #[arg(long, value_name = "NAME", conflicts_with = "config_file")]
    pub allow_keyvalue: Vec<String>,

    /// Let the plugin publish and subscribe to the topics PATTERN matches
    /// (`*` for any one word, a final `>` for the rest). Repeat for more.
    /// In a config file, `grants.messaging`.
    #[arg(long, value_name = "PATTERN", conflicts_with = "config_file")]
    pub allow_messaging: Vec<Pattern>,
}

/// What happens on a connection before the plugin sees it: TLS, and a
/// PROXY protocol header.
#[derive(Debug, FlagGroup)]
pub struct FrontDoorFlags {
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls_key",
        conflicts_with = "config_file"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls_cert",
        conflicts_with = "config_file"
    )]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates issued by this CA (PEM).
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls_cert",
        conflicts_with = "config_file"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// A protocol to offer by ALPN (repeatable, most preferred first).
    #[arg(
        long,
        value_name = "PROTOCOL",
        requires = "tls_cert",
        conflicts_with = "config_file"
    )]
    pub tls_alpn: Vec<String>,

    /// How long a client may take over its TLS handshake.
    #[arg(long, value_name = "DURATION", default_value_t = TLS_HANDSHAKE_TIMEOUT.default.into(), value_parser = duration_parser(TLS_HANDSHAKE_TIMEOUT.bounds), conflicts_with = "config_file")]
    pub tls_handshake_timeout: humantime::Duration,

    /// Expect a PROXY protocol header (version 1 or 2) at the start of
    /// every connection, sent by a proxy in this network (CIDR or address;
    /// repeatable). Connections from anywhere else are refused.
    #[arg(long, value_name = "NETWORK", value_parser = parse_network, conflicts_with = "config_file")]
    pub proxy_protocol_from: Vec<IpNet>,
}

impl Args {
    /// What the flags ask the host to serve, checked, and where it comes
    /// from (for reloads); `sockets` are those systemd passed, by name.
    pub fn config(&self, sockets: BTreeMap<String, Vec<SocketAddr>>) -> Result<(Config, Source)> {
        let overrides = ProcessOverrides {
            drain_timeout: self.limits.drain_timeout.map(Into::into),
            sockets,
            ..self.process.overrides()
        };
        if let Some(path) = &self.config_file {
            let config = overrides.apply(Config::load(path)?)?;
            return Ok((config, Source::File(path.clone(), Box::new(overrides))));
        }
        let Some(plugin) = &self.plugin else {
            bail!("give --plugin PATH or --config-file PATH");
        };
        let limits = self.limits.limits()?;
        let config = Config {
            admin: None,
            admin_token_file: None,
            drain_timeout: limits.drain_timeout,
            log_format: LogFormat::default(),
            cache_dir: config::default_cache_dir(),
            reuse_port: false,
            services: vec![config::Service {
                name: service_name(plugin),
                plugin: plugin.clone(),
                listen: vec![self.service.listen],
                limits,
                settings: self.service.settings.iter().cloned().collect(),
                peers: PeerFilter::default(),
                outbound: self.grants.allow_outbound.clone(),
                keyvalue: self.grants.buckets(),
                messaging: self.grants.allow_messaging.clone(),
                tls: self.front_door.tls(),
                proxy_protocol: self.front_door.proxy_protocol(),
            }],
            messaging: Default::default(),
            registry: Default::default(),
        };
        Ok((overrides.apply(config)?, Source::Flags))
    }
}

impl ProcessFlags {
    /// The flags given, to apply over a config file's settings.
    fn overrides(&self) -> ProcessOverrides {
        ProcessOverrides {
            admin: self.admin,
            admin_token_file: self.admin_token_file.clone(),
            log_format: self.log_format,
            cache_dir: match (&self.cache_dir, self.no_cache) {
                (_, true) => Some(None),
                (Some(dir), false) => Some(Some(dir.clone())),
                (None, false) => None,
            },
            reuse_port: self.reuse_port,
            drain_timeout: None,
            registry: Box::new(self.registry.overrides()),
            sockets: BTreeMap::new(),
        }
    }
}

impl LimitFlags {
    /// The limits the flags ask for; each was checked as it was parsed.
    fn limits(&self) -> Result<Limits> {
        Ok(Limits {
            max_connections: self.max_connections,
            max_queued: self.max_queued,
            memory_bytes: defaults::memory_bytes(self.max_memory)?,
            cpu_budget: *self.cpu_budget,
            idle_timeout: *self.idle_timeout,
            max_lifetime: self.max_lifetime.map(Into::into),
            log_lines_per_second: self.log_lines_per_second,
            drain_timeout: self.drain_timeout.map_or(DRAIN_TIMEOUT.default, Into::into),
            max_outbound_sockets: self.max_outbound_sockets,
            max_outbound_sockets_per_service: self.max_outbound_sockets_per_service,
            connect_timeout: *self.connect_timeout,
            cpu_refill: *self.cpu_refill,
            max_hibernated: self.max_hibernated,
            max_hibernation_state: self.max_hibernation_state,
            hibernated_idle_timeout: *self.hibernated_idle_timeout,
            hibernated_max_lifetime: self.hibernated_max_lifetime.map(Into::into),
            explicit_bounds_checks: self.explicit_bounds_checks,
        })
    }
}

impl GrantFlags {
    /// The buckets `--allow-keyvalue` names: in memory, with the defaults
    /// of a `[keyvalue.NAME]` table that gives nothing else.
    fn buckets(&self) -> Vec<BucketSpec> {
        self.allow_keyvalue
            .iter()
            .map(|name| BucketSpec {
                name: name.clone(),
                backend: BackendSpec::Memory,
                max_keys: defaults::BUCKET_MAX_KEYS,
                max_bytes: defaults::BUCKET_MAX_BYTES,
            })
            .collect()
    }
}

impl FrontDoorFlags {
    /// The TLS the flags ask for: `--tls-cert` and `--tls-key` make the
    /// listener a TLS one.
    fn tls(&self) -> Option<TlsSpec> {
        let (cert, key) = (self.tls_cert.clone()?, self.tls_key.clone()?);
        Some(TlsSpec {
            certificates: vec![CertificateFiles { cert, key }],
            client_ca: self.tls_client_ca.clone(),
            alpn: self.tls_alpn.clone(),
            handshake_timeout: *self.tls_handshake_timeout,
        })
    }

    /// A PROXY protocol header of either version, if `--proxy-protocol-from`
    /// names who may send it.
    fn proxy_protocol(&self) -> Option<ProxySpec> {
        (!self.proxy_protocol_from.is_empty()).then(|| ProxySpec {
            v1: true,
            v2: true,
            trusted: self.proxy_protocol_from.clone(),
            timeout: defaults::PROXY_PROTOCOL_TIMEOUT.default,
        })
    }
}

/// The service's name in logs and metrics: the plugin file's name without
/// `.wasm` (or the reference's repository's last part), with anything but
/// letters, digits and `-` made `_`.
fn service_name(plugin: &PluginSource) -> String {
    let stem = match plugin {
        PluginSource::File(path) => path.file_stem().map(|stem| stem.to_string_lossy()),
        PluginSource::Registry(reference) => Some(reference.name().into()),
    };
    stem.map(|stem| stem.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"))
        .unwrap_or_else(|| "default".into())
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// A clap value parser for a duration flag that accepts `bounds`.
fn duration_parser(
    bounds: DurationBounds,
) -> impl Fn(&str) -> Result<humantime::Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let duration = humantime::parse_duration(text)
            .map_err(|error| format!("{error} (write durations like 500ms, 10s or 5m)"))?;
        bounds.check(duration).map(Into::into)
    }
}

fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a network: write it as CIDR, like 10.0.0.0/8"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_flags_are_consistent() {
        Args::command().debug_assert();
    }

    /// With no limit flag, the service gets the limits of a config file
    /// with no limit key.
    #[test]
    fn flags_default_to_the_files_defaults() {
        let args = Args::try_parse_from(["host", "--plugin", "echo.wasm"]).unwrap();
        let (config, _) = args.config(BTreeMap::new()).unwrap();
        assert_eq!(config.services[0].limits, config::default_limits());
        assert_eq!(config.services[0].listen, [defaults::LISTEN]);
        assert_eq!(config.drain_timeout, DRAIN_TIMEOUT.default);
    }

    /// A flag out of bounds is refused as it is parsed, in the words a
    /// config file's checks use.
    #[test]
    fn flags_are_held_to_the_files_bounds() {
        let error = Args::try_parse_from(["host", "--plugin", "p.wasm", "--max-memory", "5000"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("5000 is out of range (1 to 4096)"),
            "{error}"
        );
        let error = Args::try_parse_from(["host", "--plugin", "p.wasm", "--cpu-budget", "0s"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("must be longer than zero"), "{error}");
    }
}

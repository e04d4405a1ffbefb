//! Command-line flags: every setting an operator can give, with its default
//! and unit. [`Args::config`] checks them and turns them into what the
//! host serves: the config file's services, or the one service the flags
//! describe, before anything listens.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use ipnet::IpNet;

use crate::capabilities::keyvalue::{self, BackendSpec, BucketSpec};
use crate::capabilities::messaging::Pattern;
use crate::capabilities::outbound::Rule;
use crate::config::Limits;
use crate::config::{self, Config, LogFormat, PeerFilter};
use crate::net::proxy_protocol::{self, ProxySpec};
use crate::net::tls::{CertificateFiles, TlsSpec};
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
pub struct Args {
    /// The plugin: a WebAssembly component built against the
    /// `portico:plugin/handler` world (for Rust, with the portico-guest-sdk
    /// crate and `--target wasm32-wasip2`).
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PathBuf>,

    /// Serve the services of this config file (TOML; see the README)
    /// instead of one plugin from the flags.
    #[arg(long, short = 'c', value_name = "PATH", conflicts_with = "plugin")]
    pub config_file: Option<PathBuf>,

    /// Serve the admin endpoint (health, readiness, metrics, reload) on
    /// this address. Off unless given; in a config file, `[admin] listen`.
    #[arg(long, value_name = "ADDR", conflicts_with = "config_file")]
    pub admin: Option<SocketAddr>,

    /// How log lines are written: `text`, or `json` for log shippers (one
    /// object per line). In a config file, the `log-format` key.
    #[arg(long, value_name = "FORMAT", conflicts_with = "config_file")]
    pub log_format: Option<LogFormat>,

    /// Where compiled plugins are cached. Default: $XDG_CACHE_HOME/portico,
    /// or ~/.cache/portico. In a config file, `[cache] dir`.
    #[arg(long, value_name = "DIR", conflicts_with = "config_file")]
    pub cache_dir: Option<PathBuf>,

    /// Compile plugins at every start rather than cache them. In a config
    /// file, `[cache] enabled = false`.
    #[arg(long, conflicts_with_all = ["config_file", "cache_dir"])]
    pub no_cache: bool,

    /// Address to listen on. Port 0 picks a free port; the address actually
    /// bound is printed as `listening on ADDR`.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9000",
        conflicts_with = "config_file"
    )]
    pub listen: SocketAddr,

    /// A setting for the plugin, read through `wasi:config/store`. Repeat for
    /// more settings; a later value for the same key wins.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_setting, conflicts_with = "config_file")]
    pub config: Vec<(String, String)>,

    /// Connections served at once. The instance pool is sized for exactly
    /// this many, so an admitted connection always gets its instance.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1000,
        conflicts_with = "config_file"
    )]
    pub max_connections: u32,

    /// Connections held, accepted but waiting, while --max-connections are
    /// being served. Past this, a new connection is accepted and closed at
    /// once, and counted as refused.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1000,
        conflicts_with = "config_file"
    )]
    pub max_queued: u32,

    /// Largest linear memory of one plugin instance, in MiB. Growing past it
    /// fails inside the plugin, as `memory.grow` returning -1.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 64,
        conflicts_with = "config_file"
    )]
    pub max_memory: u32,

    /// Time a connection's plugin may spend running (computing, not waiting
    /// for input); then it is stopped and the connection closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, conflicts_with = "config_file")]
    pub cpu_budget: Duration,

    /// Close a connection when no byte has moved in either direction for
    /// this long.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration, conflicts_with = "config_file")]
    pub idle_timeout: Duration,

    /// Close a connection this long after it was accepted, whatever it is
    /// doing. Off unless given.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "config_file")]
    pub max_lifetime: Option<Duration>,

    /// On SIGINT or SIGTERM, how long live connections may take to finish
    /// before they are stopped. A second signal stops them at once.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, conflicts_with = "config_file")]
    pub drain_timeout: Duration,

    /// Lines per second one connection's plugin may write to stdout and
    /// stderr together; the rest are dropped and counted in the log.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        conflicts_with = "config_file"
    )]
    pub log_lines_per_second: u32,

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

    /// Outbound sockets one connection's plugin may open over its life.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 8,
        conflicts_with = "config_file"
    )]
    pub max_outbound_sockets: u32,

    /// Outbound sockets the service's connections may hold at once (each
    /// held until its connection ends).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1024,
        conflicts_with = "config_file"
    )]
    pub max_outbound_sockets_per_service: u32,

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
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, conflicts_with = "config_file")]
    pub tls_handshake_timeout: Duration,

    /// Expect a PROXY protocol header (version 1 or 2) at the start of
    /// every connection, sent by a proxy in this network (CIDR or address;
    /// repeatable). Connections from anywhere else are refused.
    #[arg(long, value_name = "NETWORK", value_parser = parse_network, conflicts_with = "config_file")]
    pub proxy_protocol_from: Vec<IpNet>,

    /// How long a plugin's outbound connect may take; then it fails with
    /// `timeout`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, conflicts_with = "config_file")]
    pub connect_timeout: Duration,
}

impl Args {
    /// What the flags ask the host to serve, checked, and where it comes
    /// from (for reloads).
    pub fn config(&self) -> Result<(Config, Source)> {
        if let Some(path) = &self.config_file {
            return Ok((Config::load(path)?, Source::File(path.clone())));
        }
        let Some(plugin) = &self.plugin else {
            bail!("give --plugin PATH or --config-file PATH");
        };
        let limits = self.limits()?;
        let name = plugin
            .file_stem()
            .map(|stem| {
                stem.to_string_lossy()
                    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
            })
            .unwrap_or_else(|| "default".into());
        let cache_dir = match (&self.cache_dir, self.no_cache) {
            (_, true) => None,
            (Some(dir), false) => Some(dir.clone()),
            (None, false) => config::default_cache_dir(),
        };
        let config = Config {
            admin: self.admin,
            drain_timeout: limits.drain_timeout,
            log_format: self.log_format.unwrap_or_default(),
            cache_dir,
            services: vec![config::Service {
                name,
                plugin: plugin.clone(),
                listen: vec![self.listen],
                limits,
                settings: self.config.iter().cloned().collect(),
                peers: PeerFilter::default(),
                outbound: self.allow_outbound.clone(),
                keyvalue: self
                    .allow_keyvalue
                    .iter()
                    .map(|name| BucketSpec {
                        name: name.clone(),
                        backend: BackendSpec::Memory,
                        max_keys: keyvalue::DEFAULT_MAX_KEYS,
                        max_bytes: keyvalue::DEFAULT_MAX_BYTES,
                    })
                    .collect(),
                messaging: self.allow_messaging.clone(),
                tls: self.tls(),
                proxy_protocol: (!self.proxy_protocol_from.is_empty()).then(|| ProxySpec {
                    v1: true,
                    v2: true,
                    trusted: self.proxy_protocol_from.clone(),
                    timeout: proxy_protocol::DEFAULT_TIMEOUT,
                }),
            }],
            messaging: Default::default(),
        };
        Ok((config, Source::Flags))
    }

    /// The TLS the flags ask for: `--tls-cert` and `--tls-key` make the
    /// listener a TLS one.
    fn tls(&self) -> Option<TlsSpec> {
        let (cert, key) = (self.tls_cert.clone()?, self.tls_key.clone()?);
        Some(TlsSpec {
            certificates: vec![CertificateFiles { cert, key }],
            client_ca: self.tls_client_ca.clone(),
            alpn: self.tls_alpn.clone(),
            handshake_timeout: self.tls_handshake_timeout,
        })
    }

    /// The limits the flags ask for, once checked to make sense together.
    fn limits(&self) -> Result<Limits> {
        if self.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if self.max_memory == 0 {
            bail!("--max-memory must be at least 1 (MiB)");
        }
        if self.max_memory > config::MAX_MEMORY_MIB {
            bail!(
                "--max-memory must be at most {} (MiB): a wasm32 memory is no larger",
                config::MAX_MEMORY_MIB
            );
        }
        if self.cpu_budget.is_zero()
            || self.idle_timeout.is_zero()
            || self.connect_timeout.is_zero()
        {
            bail!("--cpu-budget, --idle-timeout and --connect-timeout must be longer than zero");
        }
        Ok(Limits {
            max_connections: self.max_connections,
            max_queued: self.max_queued,
            memory_bytes: usize::try_from(u64::from(self.max_memory) << 20)?,
            cpu_budget: self.cpu_budget,
            idle_timeout: self.idle_timeout,
            max_lifetime: self.max_lifetime,
            log_lines_per_second: self.log_lines_per_second,
            drain_timeout: self.drain_timeout,
            max_outbound_sockets: self.max_outbound_sockets,
            max_outbound_sockets_per_service: self.max_outbound_sockets_per_service,
            connect_timeout: self.connect_timeout,
        })
    }
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{error} (write durations like 500ms, 10s or 5m)"))
}

fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a network: write it as CIDR, like 10.0.0.0/8"))
}

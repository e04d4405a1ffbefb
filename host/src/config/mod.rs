//! What the host serves: one or more services, each a plugin on its own
//! addresses with its own limits, settings and connection filter; the
//! admin endpoint; and host-wide settings.
//!
//! It comes from the config file (`host --config-file PATH`, TOML) or, for
//! one service, from the flags (`host --plugin PATH ...`, see
//! [`crate::cli`]). The file is read in two steps, as written ([`File`],
//! serde's job, which refuses unknown keys and wrong types) and as meant
//! ([`Config`], checked here); every problem is one error that names the
//! file, the line and the key.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::capabilities::keyvalue::{self, BackendSpec, BucketSpec};
use crate::capabilities::messaging::{self, Pattern};
use crate::capabilities::outbound::Rule;
use crate::net::proxy_protocol::ProxySpec;
use crate::net::tls::{CertificateFiles, TlsSpec};

/// Largest `max-memory`, in MiB: a wasm32 memory cannot be larger.
pub const MAX_MEMORY_MIB: u32 = 4096;

/// Everything the host serves, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the admin endpoint listens, if anywhere.
    pub admin: Option<SocketAddr>,
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
}

/// One service: a plugin, the addresses it serves and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub plugin: PathBuf,
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

/// The default place for compiled plugins: `$XDG_CACHE_HOME/portico`, or
/// `~/.cache/portico`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
    Some(base.join("portico"))
}

/// The defaults of every limit, as `host --help` gives them.
pub fn default_limits() -> Limits {
    Limits {
        max_connections: 1000,
        max_queued: 1000,
        memory_bytes: 64 << 20,
        cpu_budget: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(300),
        max_lifetime: None,
        log_lines_per_second: 100,
        drain_timeout: Duration::from_secs(30),
        max_outbound_sockets: 8,
        max_outbound_sockets_per_service: 1024,
        connect_timeout: Duration::from_secs(10),
    }
}

/// The file as written. serde refuses unknown keys and wrong types; the
/// meaning is checked in [`Config::load`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    admin: Option<AdminTable>,
    defaults: Option<LimitTable>,
    #[serde(default)]
    services: BTreeMap<String, Spanned<ServiceTable>>,
    drain_timeout: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
    cache: Option<CacheTable>,
    #[serde(default)]
    keyvalue: BTreeMap<String, Spanned<BucketTable>>,
    messaging: Option<MessagingTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MessagingTable {
    backend: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BucketTable {
    backend: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    max_keys: Option<Spanned<i64>>,
    max_bytes: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct AdminTable {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CacheTable {
    dir: Option<Spanned<String>>,
    enabled: Option<bool>,
}

/// Declares a table with the given fields and one optional key per
/// per-connection limit flag, of the same name.
macro_rules! with_limit_keys {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        struct $name {
            $($field: $ty,)*
            max_connections: Option<Spanned<i64>>,
            max_queued: Option<Spanned<i64>>,
            max_memory: Option<Spanned<i64>>,
            cpu_budget: Option<Spanned<String>>,
            idle_timeout: Option<Spanned<String>>,
            max_lifetime: Option<Spanned<String>>,
            log_lines_per_second: Option<Spanned<i64>>,
            max_outbound_sockets: Option<Spanned<i64>>,
            max_outbound_sockets_per_service: Option<Spanned<i64>>,
            connect_timeout: Option<Spanned<String>>,
        }

        impl $name {
            fn limits(&self) -> LimitKeys<'_> {
                LimitKeys {
                    max_connections: self.max_connections.as_ref(),
                    max_queued: self.max_queued.as_ref(),
                    max_memory: self.max_memory.as_ref(),
                    cpu_budget: self.cpu_budget.as_ref(),
                    idle_timeout: self.idle_timeout.as_ref(),
                    max_lifetime: self.max_lifetime.as_ref(),
                    log_lines_per_second: self.log_lines_per_second.as_ref(),
                    max_outbound_sockets: self.max_outbound_sockets.as_ref(),
                    max_outbound_sockets_per_service: self
                        .max_outbound_sockets_per_service
                        .as_ref(),
                    connect_timeout: self.connect_timeout.as_ref(),
                }
            }
        }
    };
}

with_limit_keys!(LimitTable {});
with_limit_keys!(ServiceTable {
    plugin: Spanned<String>,
    listen: Spanned<Vec<Spanned<String>>>,
    settings: Option<BTreeMap<String, String>>,
    peers: Option<PeersTable>,
    grants: Option<GrantsTable>,
    tls: Option<Spanned<TlsTable>>,
    proxy_protocol: Option<Spanned<ProxyTable>>,
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ProxyTable {
    versions: Option<Vec<Spanned<String>>>,
    trusted: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TlsTable {
    certificates: Vec<CertificateTable>,
    client_ca: Option<String>,
    #[serde(default)]
    alpn: Vec<String>,
    handshake_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateTable {
    cert: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct GrantsTable {
    #[serde(default)]
    outbound: Vec<Spanned<String>>,
    #[serde(default)]
    keyvalue: Vec<Spanned<String>>,
    #[serde(default)]
    messaging: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PeersTable {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
}

/// The limit keys of one table, wherever they were written.
struct LimitKeys<'a> {
    max_connections: Option<&'a Spanned<i64>>,
    max_queued: Option<&'a Spanned<i64>>,
    max_memory: Option<&'a Spanned<i64>>,
    cpu_budget: Option<&'a Spanned<String>>,
    idle_timeout: Option<&'a Spanned<String>>,
    max_lifetime: Option<&'a Spanned<String>>,
    log_lines_per_second: Option<&'a Spanned<i64>>,
    max_outbound_sockets: Option<&'a Spanned<i64>>,
    max_outbound_sockets_per_service: Option<&'a Spanned<i64>>,
    connect_timeout: Option<&'a Spanned<String>>,
}

/// Turns spans of the file into `PATH:LINE: KEY: PROBLEM` errors.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        let start = span.start.min(self.text.len());
        self.text[..start].matches('\n').count() + 1
    }

    fn error(
        &self,
        span: Range<usize>,
        key: &str,
        problem: impl std::fmt::Display,
    ) -> anyhow::Error {
        anyhow!(
            "{}:{}: {key}: {problem}",
            self.path.display(),
            self.line(span)
        )
    }
}

impl Config {
    /// Reads and checks the config file at `path`. Relative paths in it are
    /// relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let source = Source { path, text: &text };
        let file: File = toml::from_str(&text).map_err(|error| {
            let line = error.span().map_or(0, |span| source.line(span));
            anyhow!(
                "{}:{line}: {}",
                path.display(),
                error.message().trim_end().replace('\n', " ")
            )
        })?;
        let folder = path.parent().unwrap_or(Path::new("."));
        source.check(&file, folder)
    }
}

impl Source<'_> {
    fn check(&self, file: &File, folder: &Path) -> Result<Config> {
        let mut base = default_limits();
        if let Some(drain) = &file.drain_timeout {
            base.drain_timeout = self.duration(drain, "drain-timeout")?;
        }
        if let Some(defaults) = &file.defaults {
            base = self.limits(&defaults.limits(), base, "defaults")?;
        }
        let admin = match &file.admin {
            Some(admin) => Some(self.address(&admin.listen, "admin.listen")?),
            None => None,
        };
        let log_format = match &file.log_format {
            None => LogFormat::default(),
            Some(format) => match format.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(self.error(
                        format.span(),
                        "log-format",
                        format!("{other:?} is not a log format: write \"text\" or \"json\""),
                    ));
                }
            },
        };
        let cache_dir = match &file.cache {
            Some(CacheTable {
                enabled: Some(false),
                ..
            }) => None,
            Some(CacheTable { dir: Some(dir), .. }) => Some(folder.join(dir.get_ref())),
            _ => default_cache_dir(),
        };

        if file.services.is_empty() {
            bail!(
                "{}: no services: add a [services.NAME] table with `plugin` and `listen`",
                self.path.display()
            );
        }
        let buckets = self.buckets(file, folder)?;
        let messaging = self.messaging(file.messaging.as_ref())?;
        let mut services = Vec::new();
        let mut bound: HashMap<SocketAddr, &str> = HashMap::new();
        for (name, table) in &file.services {
            let key = |field: &str| format!("services.{name}.{field}");
            let span = table.span();
            let table = table.get_ref();
            if !is_service_name(name) {
                return Err(self.error(
                    span,
                    &format!("services.{name}"),
                    "a service name is letters, digits, `-` and `_`",
                ));
            }
            let limits = self.limits(&table.limits(), base.clone(), &format!("services.{name}"))?;
            if table.listen.get_ref().is_empty() {
                return Err(self.error(
                    table.listen.span(),
                    &key("listen"),
                    "no address to listen on",
                ));
            }
            let mut listen = Vec::new();
            for address in table.listen.get_ref() {
                let addr = self.address(address, &key("listen"))?;
                if addr.port() != 0
                    && let Some(other) = bound.insert(addr, name)
                {
                    return Err(self.error(
                        address.span(),
                        &key("listen"),
                        format!("{addr} is already the address of service {other}"),
                    ));
                }
                listen.push(addr);
            }
            let peers = match &table.peers {
                Some(peers) => PeerFilter {
                    allow: self.networks(&peers.allow, &key("peers.allow"))?,
                    deny: self.networks(&peers.deny, &key("peers.deny"))?,
                },
                None => PeerFilter::default(),
            };
            let outbound = match &table.grants {
                Some(grants) => grants
                    .outbound
                    .iter()
                    .map(|rule| {
                        rule.get_ref().parse().map_err(|problem| {
                            self.error(rule.span(), &key("grants.outbound"), problem)
                        })
                    })
                    .collect::<Result<_>>()?,
                None => Vec::new(),
            };
            let mut granted = Vec::new();
            for bucket in table.grants.iter().flat_map(|grants| &grants.keyvalue) {
                let spec = buckets.get(bucket.get_ref()).ok_or_else(|| {
                    self.error(
                        bucket.span(),
                        &key("grants.keyvalue"),
                        format!(
                            "no bucket {:?}: declare it as [keyvalue.{}]",
                            bucket.get_ref(),
                            bucket.get_ref()
                        ),
                    )
                })?;
                granted.push(spec.clone());
            }
            let messaging = table
                .grants
                .iter()
                .flat_map(|grants| &grants.messaging)
                .map(|pattern| {
                    pattern.get_ref().parse().map_err(|problem| {
                        self.error(pattern.span(), &key("grants.messaging"), problem)
                    })
                })
                .collect::<Result<_>>()?;
            let tls = match &table.tls {
                Some(tls) => Some(self.tls(tls, folder, &key("tls"))?),
                None => None,
            };
            let proxy_protocol = match &table.proxy_protocol {
                Some(proxy) => Some(self.proxy_protocol(proxy, &key("proxy-protocol"))?),
                None => None,
            };
            services.push(Service {
                name: name.clone(),
                plugin: folder.join(table.plugin.get_ref()),
                listen,
                limits,
                settings: table.settings.clone().unwrap_or_default(),
                peers,
                outbound,
                keyvalue: granted,
                messaging,
                tls,
                proxy_protocol,
            });
        }
        Ok(Config {
            admin,
            drain_timeout: base.drain_timeout,
            log_format,
            cache_dir,
            services,
            messaging,
        })
    }

    /// The `[messaging]` table's backend.
    fn messaging(&self, table: Option<&MessagingTable>) -> Result<messaging::Backend> {
        let Some(table) = table else {
            return Ok(messaging::Backend::Memory);
        };
        let backend = table.backend.as_ref();
        match backend.map(|backend| backend.get_ref().as_str()) {
            None | Some("memory") => Ok(messaging::Backend::Memory),
            Some("nats") => {
                let url = table.url.as_ref().ok_or_else(|| {
                    anyhow!(
                        "{}: messaging.url: the nats backend needs a url, like nats://127.0.0.1:4222",
                        self.path.display()
                    )
                })?;
                if !url.get_ref().starts_with("nats://") {
                    return Err(self.error(
                        url.span(),
                        "messaging.url",
                        format!("{:?} is not a nats:// URL", url.get_ref()),
                    ));
                }
                Ok(messaging::Backend::Nats(url.get_ref().clone()))
            }
            Some(other) => Err(self.error(
                backend.map_or(0..0, |backend| backend.span()),
                "messaging.backend",
                format!("{other:?} is not a messaging backend: write \"memory\" or \"nats\""),
            )),
        }
    }

    /// The `[keyvalue.NAME]` buckets, by name.
    fn buckets(&self, file: &File, folder: &Path) -> Result<HashMap<String, BucketSpec>> {
        let mut buckets = HashMap::new();
        for (name, table) in &file.keyvalue {
            let key = |field: &str| format!("keyvalue.{name}.{field}");
            let (span, table) = (table.span(), table.get_ref());
            // Names become part of Redis keys (`portico:NAME:KEY`) and
            // patterns: `:` or `*` in one could reach another bucket's keys.
            if !is_service_name(name) {
                return Err(self.error(
                    span,
                    &format!("keyvalue.{name}"),
                    "a bucket name is letters, digits, `-` and `_`",
                ));
            }
            let backend = table.backend.as_ref();
            let backend = match backend.map(|backend| backend.get_ref().as_str()) {
                None | Some("memory") => BackendSpec::Memory,
                Some("file") => {
                    let path = table.path.as_ref().ok_or_else(|| {
                        self.error(span.clone(), &key("path"), "the file backend needs a path")
                    })?;
                    BackendSpec::File(folder.join(path.get_ref()))
                }
                Some("redis") => {
                    let url = table.url.as_ref().ok_or_else(|| {
                        self.error(
                            span.clone(),
                            &key("url"),
                            "the redis backend needs a url, like redis://127.0.0.1:6379",
                        )
                    })?;
                    if !url.get_ref().starts_with("redis://") {
                        return Err(self.error(
                            url.span(),
                            &key("url"),
                            format!("{:?} is not a redis:// URL", url.get_ref()),
                        ));
                    }
                    BackendSpec::Redis(url.get_ref().clone())
                }
                Some(other) => {
                    let span = backend.map_or(span.clone(), |backend| backend.span());
                    return Err(self.error(
                        span,
                        &key("backend"),
                        format!(
                            "{other:?} is not a backend: write \"memory\", \"file\" or \"redis\""
                        ),
                    ));
                }
            };
            let max_keys = match &table.max_keys {
                Some(n) => self.count(n, &key("max-keys"), 1..=u32::MAX)?.into(),
                None => keyvalue::DEFAULT_MAX_KEYS,
            };
            let max_bytes = match &table.max_bytes {
                Some(n) => self.count(n, &key("max-bytes"), 1..=u32::MAX)?.into(),
                None => keyvalue::DEFAULT_MAX_BYTES,
            };
            let spec = BucketSpec {
                name: name.clone(),
                backend,
                max_keys,
                max_bytes,
            };
            buckets.insert(name.clone(), spec);
        }
        Ok(buckets)
    }

    /// A service's `tls` table, its paths taken from `folder`.
    fn tls(&self, table: &Spanned<TlsTable>, folder: &Path, key: &str) -> Result<TlsSpec> {
        let tls = table.get_ref();
        if tls.certificates.is_empty() {
            return Err(self.error(
                table.span(),
                &format!("{key}.certificates"),
                "no certificate: list at least one { cert = \"...\", key = \"...\" }",
            ));
        }
        let handshake_timeout = match &tls.handshake_timeout {
            Some(text) => self.positive_duration(text, &format!("{key}.handshake-timeout"))?,
            None => crate::net::tls::DEFAULT_HANDSHAKE_TIMEOUT,
        };
        Ok(TlsSpec {
            certificates: tls
                .certificates
                .iter()
                .map(|pair| CertificateFiles {
                    cert: folder.join(&pair.cert),
                    key: folder.join(&pair.key),
                })
                .collect(),
            client_ca: tls.client_ca.as_ref().map(|ca| folder.join(ca)),
            alpn: tls.alpn.clone(),
            handshake_timeout,
        })
    }

    /// A service's `proxy-protocol` table.
    fn proxy_protocol(&self, table: &Spanned<ProxyTable>, key: &str) -> Result<ProxySpec> {
        let proxy = table.get_ref();
        let mut spec = ProxySpec {
            v1: true,
            v2: true,
            trusted: self.networks(&proxy.trusted, &format!("{key}.trusted"))?,
            timeout: crate::net::proxy_protocol::DEFAULT_TIMEOUT,
        };
        if spec.trusted.is_empty() {
            return Err(self.error(
                table.span(),
                &format!("{key}.trusted"),
                "no trusted proxy: list the networks of the proxies that send the header",
            ));
        }
        if let Some(versions) = &proxy.versions {
            (spec.v1, spec.v2) = (false, false);
            for version in versions {
                match version.get_ref().as_str() {
                    "v1" => spec.v1 = true,
                    "v2" => spec.v2 = true,
                    other => {
                        return Err(self.error(
                            version.span(),
                            &format!("{key}.versions"),
                            format!(
                                "{other:?} is not a PROXY protocol version: use \"v1\" or \"v2\""
                            ),
                        ));
                    }
                }
            }
            if versions.is_empty() {
                return Err(self.error(
                    table.span(),
                    &format!("{key}.versions"),
                    "no version: list \"v1\", \"v2\" or both",
                ));
            }
        }
        if let Some(timeout) = &proxy.timeout {
            spec.timeout = self.positive_duration(timeout, &format!("{key}.timeout"))?;
        }
        Ok(spec)
    }

    /// `base` with every limit given in `keys` (written in table `table`)
    /// applied, each checked.
    fn limits(&self, keys: &LimitKeys<'_>, mut base: Limits, table: &str) -> Result<Limits> {
        let key = |name: &str| format!("{table}.{name}");
        if let Some(n) = keys.max_connections {
            base.max_connections = self.count(n, &key("max-connections"), 1..=1_000_000)?;
        }
        if let Some(n) = keys.max_queued {
            base.max_queued = self.count(n, &key("max-queued"), 0..=1_000_000)?;
        }
        if let Some(n) = keys.max_memory {
            let mib = self.count(n, &key("max-memory"), 1..=MAX_MEMORY_MIB)?;
            base.memory_bytes = usize::try_from(u64::from(mib) << 20)?;
        }
        if let Some(text) = keys.cpu_budget {
            base.cpu_budget = self.positive_duration(text, &key("cpu-budget"))?;
        }
        if let Some(text) = keys.idle_timeout {
            base.idle_timeout = self.positive_duration(text, &key("idle-timeout"))?;
        }
        if let Some(text) = keys.max_lifetime {
            base.max_lifetime = Some(self.positive_duration(text, &key("max-lifetime"))?);
        }
        if let Some(n) = keys.log_lines_per_second {
            base.log_lines_per_second =
                self.count(n, &key("log-lines-per-second"), 0..=u32::MAX)?;
        }
        if let Some(n) = keys.max_outbound_sockets {
            base.max_outbound_sockets = self.count(n, &key("max-outbound-sockets"), 0..=1000)?;
        }
        if let Some(n) = keys.max_outbound_sockets_per_service {
            base.max_outbound_sockets_per_service =
                self.count(n, &key("max-outbound-sockets-per-service"), 0..=1_000_000)?;
        }
        if let Some(text) = keys.connect_timeout {
            base.connect_timeout = self.positive_duration(text, &key("connect-timeout"))?;
        }
        Ok(base)
    }

    fn count(
        &self,
        value: &Spanned<i64>,
        key: &str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<u32> {
        u32::try_from(*value.get_ref())
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                self.error(
                    value.span(),
                    key,
                    format!(
                        "{} is out of range ({} to {})",
                        value.get_ref(),
                        range.start(),
                        range.end()
                    ),
                )
            })
    }

    fn duration(&self, text: &Spanned<String>, key: &str) -> Result<Duration> {
        humantime::parse_duration(text.get_ref()).map_err(|error| {
            self.error(
                text.span(),
                key,
                format!(
                    "{:?} is not a duration: {error} (write durations like 500ms, 10s or 5m)",
                    text.get_ref()
                ),
            )
        })
    }

    fn positive_duration(&self, text: &Spanned<String>, key: &str) -> Result<Duration> {
        let duration = self.duration(text, key)?;
        if duration.is_zero() {
            return Err(self.error(text.span(), key, "must be longer than zero"));
        }
        Ok(duration)
    }

    fn address(&self, text: &Spanned<String>, key: &str) -> Result<SocketAddr> {
        text.get_ref().parse().map_err(|_| {
            self.error(
                text.span(),
                key,
                format!(
                    "{:?} is not an address: write IP:PORT, or [IPv6]:PORT",
                    text.get_ref()
                ),
            )
        })
    }

    fn networks(&self, texts: &[Spanned<String>], key: &str) -> Result<Vec<IpNet>> {
        texts
            .iter()
            .map(|text| {
                let written = text.get_ref();
                // A bare address is a network of one.
                written
                    .parse::<IpNet>()
                    .or_else(|_| written.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        self.error(
                            text.span(),
                            key,
                            format!(
                                "{written:?} is not a network: write it as CIDR, like 10.0.0.0/8"
                            ),
                        )
                    })
            })
            .collect()
    }
}

fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config> {
        let file: File = toml::from_str(text)?;
        Source {
            path: Path::new("portico.toml"),
            text,
        }
        .check(&file, Path::new("/srv"))
    }

    /// The README's example file uses every key, and means what it says.
    #[test]
    fn the_example_file_is_valid() {
        let config = check(include_str!("../../../examples/portico.toml")).unwrap();
        assert_eq!(config.admin, Some("127.0.0.1:9900".parse().unwrap()));
        assert_eq!(config.services.len(), 3);
        let greeter = &config.services[1];
        assert_eq!(greeter.settings["banner"], "welcome");
        assert!(!greeter.peers.admits("127.0.0.66".parse().unwrap()));
        assert_eq!(greeter.outbound.len(), 3);
        assert_eq!(greeter.messaging, vec!["rooms.*".parse().unwrap()]);
        assert_eq!(
            greeter.keyvalue[0].backend,
            BackendSpec::File("/srv/../target/portico-state/sessions.db".into())
        );
        let web = &config.services[2];
        let tls = web.tls.as_ref().unwrap();
        assert_eq!(tls.alpn, ["http/1.1"]);
        let proxy = web.proxy_protocol.as_ref().unwrap();
        assert!(proxy.v1 && proxy.v2 && proxy.trusts("10.0.3.7".parse().unwrap()));
        assert!(!proxy.trusts("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn services_inherit_defaults_and_override_them() {
        let config = check(
            r#"
            [defaults]
            idle-timeout = "20s"
            max-connections = 50
            [services.a]
            plugin = "a.wasm"
            listen = ["127.0.0.1:1"]
            max-connections = 7
            "#,
        )
        .unwrap();
        let service = &config.services[0];
        assert_eq!(service.plugin, Path::new("/srv/a.wasm"));
        assert_eq!(service.limits.max_connections, 7);
        assert_eq!(service.limits.idle_timeout, Duration::from_secs(20));
        assert_eq!(service.limits.cpu_budget, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let error = check(
            "[services.a]\nplugin = \"a.wasm\"\nlisten = [\"127.0.0.1:1\"]\ncpu-budget = \"2x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("portico.toml:4: services.a.cpu-budget: \"2x\""),
            "{error}"
        );
    }

    #[test]
    fn the_filter_allows_then_denies() {
        let filter = PeerFilter {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            deny: vec!["127.0.0.66/32".parse().unwrap()],
        };
        assert!(filter.admits("127.0.0.1".parse().unwrap()));
        assert!(filter.admits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!filter.admits("127.0.0.66".parse().unwrap()));
        assert!(!filter.admits("10.0.0.1".parse().unwrap()));
    }
}

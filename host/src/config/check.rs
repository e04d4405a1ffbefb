//! The config file as meant: each table of [`super::file`] checked and
//! turned into the model ([`Config`]), one function per table.
//!
//! Apart from the tables as written so that serde's job (syntax, unknown
//! keys, types) and ours (ranges, names, references between tables) can be
//! read one at a time. Every problem is one error naming the file, the line
//! and the key.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Result, anyhow};
use toml::Spanned;

use super::defaults::{self, default_cache_dir, default_limits};
use super::document::Document;
use super::file::{
    BucketTable, CacheTable, File, GrantsTable, LimitKeys, MessagingTable, PeersTable, ProxyTable,
    ServiceTable, TlsTable,
};
use super::{Config, Limits, LogFormat, PeerFilter, Service};
use crate::capabilities::keyvalue::{BackendSpec, BucketSpec};
use crate::capabilities::messaging::{self, Pattern};
use crate::capabilities::outbound::Rule;
use crate::net::proxy_protocol::ProxySpec;
use crate::net::tls::{CertificateFiles, TlsSpec};

/// What a service's `grants` table lets its plugin reach.
struct Grants {
    outbound: Vec<Rule>,
    keyvalue: Vec<BucketSpec>,
    messaging: Vec<Pattern>,
}

impl Document<'_> {
    /// The whole file, checked. Relative paths in it are taken from `folder`.
    pub(super) fn config(&self, file: &File, folder: &Path) -> Result<Config> {
        let mut base = default_limits();
        if let Some(drain) = &file.drain_timeout {
            base.drain_timeout =
                self.duration(drain, "drain-timeout", defaults::DRAIN_TIMEOUT.bounds)?;
        }
        if let Some(defaults) = &file.defaults {
            base = self.limits(&defaults.limits(), base, "defaults")?;
        }
        let admin = match &file.admin {
            Some(admin) => Some(self.address(&admin.listen, "admin.listen")?),
            None => None,
        };
        let admin_token_file = file
            .admin
            .as_ref()
            .and_then(|admin| admin.token_file.as_ref())
            .map(|path| folder.join(path.get_ref()));
        let log_format = self.log_format(file.log_format.as_ref())?;
        let cache_dir = cache_dir(file.cache.as_ref(), folder);
        let registry = self.registry(file.registry.as_ref(), folder)?;
        if file.services.is_empty() {
            // Every problem names a line (the `config` fuzz target checks
            // it); for a file with no services, the first stands for all.
            return Err(self.error(
                0..0,
                "services",
                "no services: add a [services.NAME] table with `plugin` and `listen`",
            ));
        }
        let buckets = self.buckets(&file.keyvalue, folder)?;
        let messaging = self.messaging(file.messaging.as_ref())?;
        let mut services = Vec::new();
        let mut bound = HashMap::new();
        for (name, table) in &file.services {
            services.push(self.service(name, table, &base, &buckets, folder, &mut bound)?);
        }
        Ok(Config {
            admin,
            admin_token_file,
            drain_timeout: base.drain_timeout,
            log_format,
            cache_dir,
            services,
            messaging,
            reuse_port: file.reuse_port.unwrap_or(false),
            registry,
        })
    }

    /// The `log-format` key.
    fn log_format(&self, format: Option<&Spanned<String>>) -> Result<LogFormat> {
        let Some(format) = format else {
            return Ok(LogFormat::default());
        };
        match format.get_ref().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(self.error(
                format.span(),
                "log-format",
                format!("{other:?} is not a log format: write \"text\" or \"json\""),
            )),
        }
    }

    /// One `[services.NAME]` table. `bound` holds the addresses of the
    /// services before it, so that two services cannot share one.
    fn service<'a>(
        &self,
        name: &'a str,
        table: &Spanned<ServiceTable>,
        base: &Limits,
        buckets: &HashMap<String, BucketSpec>,
        folder: &Path,
        bound: &mut HashMap<SocketAddr, &'a str>,
    ) -> Result<Service> {
        let key = |field: &str| format!("services.{name}.{field}");
        let span = table.span();
        let table = table.get_ref();
        if !is_plain_name(name) {
            return Err(self.error(
                span,
                &format!("services.{name}"),
                "a service name is letters, digits, `-` and `_`",
            ));
        }
        let limits = self.limits(&table.limits(), base.clone(), &format!("services.{name}"))?;
        let listen = self.listen(name, &table.listen, bound)?;
        let peers = match &table.peers {
            Some(peers) => self.peers(peers, &key("peers"))?,
            None => PeerFilter::default(),
        };
        let grants = self.grants(table.grants.as_ref(), buckets, &key("grants"))?;
        let tls = match &table.tls {
            Some(tls) => Some(self.tls(tls, folder, &key("tls"))?),
            None => None,
        };
        let proxy_protocol = match &table.proxy_protocol {
            Some(proxy) => Some(self.proxy_protocol(proxy, &key("proxy-protocol"))?),
            None => None,
        };
        Ok(Service {
            name: name.to_owned(),
            plugin: self.plugin(&table.plugin, &key("plugin"), folder)?,
            listen,
            limits,
            settings: table.settings.clone().unwrap_or_default(),
            peers,
            outbound: grants.outbound,
            keyvalue: grants.keyvalue,
            messaging: grants.messaging,
            tls,
            proxy_protocol,
        })
    }

    /// A service's `listen` addresses, each new to `bound` unless its port
    /// is 0 (a free port, so never another service's).
    fn listen<'a>(
        &self,
        name: &'a str,
        addresses: &Spanned<Vec<Spanned<String>>>,
        bound: &mut HashMap<SocketAddr, &'a str>,
    ) -> Result<Vec<SocketAddr>> {
        let key = format!("services.{name}.listen");
        if addresses.get_ref().is_empty() {
            return Err(self.error(addresses.span(), &key, "no address to listen on"));
        }
        let mut listen = Vec::new();
        for address in addresses.get_ref() {
            let addr = self.address(address, &key)?;
            if addr.port() != 0
                && let Some(other) = bound.insert(addr, name)
            {
                return Err(self.error(
                    address.span(),
                    &key,
                    format!("{addr} is already the address of service {other}"),
                ));
            }
            listen.push(addr);
        }
        Ok(listen)
    }

    /// A service's `peers` table (at `key`).
    fn peers(&self, peers: &PeersTable, key: &str) -> Result<PeerFilter> {
        Ok(PeerFilter {
            allow: self.networks(&peers.allow, &format!("{key}.allow"))?,
            deny: self.networks(&peers.deny, &format!("{key}.deny"))?,
        })
    }

    /// A service's `grants` table (at `key`); the buckets it names must be
    /// among `buckets`.
    fn grants(
        &self,
        grants: Option<&GrantsTable>,
        buckets: &HashMap<String, BucketSpec>,
        key: &str,
    ) -> Result<Grants> {
        let Some(grants) = grants else {
            return Ok(Grants {
                outbound: Vec::new(),
                keyvalue: Vec::new(),
                messaging: Vec::new(),
            });
        };
        let outbound = grants
            .outbound
            .iter()
            .map(|rule| {
                rule.get_ref()
                    .parse()
                    .map_err(|problem| self.error(rule.span(), &format!("{key}.outbound"), problem))
            })
            .collect::<Result<_>>()?;
        let mut keyvalue = Vec::new();
        for bucket in &grants.keyvalue {
            let spec = buckets.get(bucket.get_ref()).ok_or_else(|| {
                self.error(
                    bucket.span(),
                    &format!("{key}.keyvalue"),
                    format!(
                        "no bucket {:?}: declare it as [keyvalue.{}]",
                        bucket.get_ref(),
                        bucket.get_ref()
                    ),
                )
            })?;
            keyvalue.push(spec.clone());
        }
        let messaging = grants
            .messaging
            .iter()
            .map(|pattern| {
                pattern.get_ref().parse().map_err(|problem| {
                    self.error(pattern.span(), &format!("{key}.messaging"), problem)
                })
            })
            .collect::<Result<_>>()?;
        Ok(Grants {
            outbound,
            keyvalue,
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
    fn buckets(
        &self,
        tables: &BTreeMap<String, Spanned<BucketTable>>,
        folder: &Path,
    ) -> Result<HashMap<String, BucketSpec>> {
        tables
            .iter()
            .map(|(name, table)| Ok((name.clone(), self.bucket(name, table, folder)?)))
            .collect()
    }

    /// One `[keyvalue.NAME]` table.
    fn bucket(
        &self,
        name: &str,
        table: &Spanned<BucketTable>,
        folder: &Path,
    ) -> Result<BucketSpec> {
        let key = |field: &str| format!("keyvalue.{name}.{field}");
        // Names become part of Redis keys (`portico:NAME:KEY`) and
        // patterns: `:` or `*` in one could reach another bucket's keys.
        if !is_plain_name(name) {
            return Err(self.error(
                table.span(),
                &format!("keyvalue.{name}"),
                "a bucket name is letters, digits, `-` and `_`",
            ));
        }
        let backend = self.bucket_backend(table, folder, &format!("keyvalue.{name}"))?;
        let table = table.get_ref();
        let max_keys = match &table.max_keys {
            Some(n) => self
                .count(n, &key("max-keys"), defaults::BUCKET_SIZE)?
                .into(),
            None => defaults::BUCKET_MAX_KEYS,
        };
        let max_bytes = match &table.max_bytes {
            Some(n) => self
                .count(n, &key("max-bytes"), defaults::BUCKET_SIZE)?
                .into(),
            None => defaults::BUCKET_MAX_BYTES,
        };
        Ok(BucketSpec {
            name: name.to_owned(),
            backend,
            max_keys,
            max_bytes,
        })
    }

    /// Where a bucket (the table at `key`) keeps its entries.
    fn bucket_backend(
        &self,
        table: &Spanned<BucketTable>,
        folder: &Path,
        key: &str,
    ) -> Result<BackendSpec> {
        let span = table.span();
        let table = table.get_ref();
        let backend = table.backend.as_ref();
        match backend.map(|backend| backend.get_ref().as_str()) {
            None | Some("memory") => Ok(BackendSpec::Memory),
            Some("file") => {
                let path = table.path.as_ref().ok_or_else(|| {
                    self.error(
                        span.clone(),
                        &format!("{key}.path"),
                        "the file backend needs a path",
                    )
                })?;
                Ok(BackendSpec::File(folder.join(path.get_ref())))
            }
            Some("redis") => {
                let url = table.url.as_ref().ok_or_else(|| {
                    self.error(
                        span.clone(),
                        &format!("{key}.url"),
                        "the redis backend needs a url, like redis://127.0.0.1:6379",
                    )
                })?;
                if !url.get_ref().starts_with("redis://") {
                    return Err(self.error(
                        url.span(),
                        &format!("{key}.url"),
                        format!("{:?} is not a redis:// URL", url.get_ref()),
                    ));
                }
                Ok(BackendSpec::Redis(url.get_ref().clone()))
            }
            Some(other) => Err(self.error(
                backend.map_or(span, |backend| backend.span()),
                &format!("{key}.backend"),
                format!("{other:?} is not a backend: write \"memory\", \"file\" or \"redis\""),
            )),
        }
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
            Some(text) => self.duration(
                text,
                &format!("{key}.handshake-timeout"),
                defaults::TLS_HANDSHAKE_TIMEOUT.bounds,
            )?,
            None => defaults::TLS_HANDSHAKE_TIMEOUT.default,
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
            timeout: defaults::PROXY_PROTOCOL_TIMEOUT.default,
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
            spec.timeout = self.duration(
                timeout,
                &format!("{key}.timeout"),
                defaults::PROXY_PROTOCOL_TIMEOUT.bounds,
            )?;
        }
        Ok(spec)
    }

    /// `base` with every limit given in `keys` (written in table `table`)
    /// applied, each checked.
    fn limits(&self, keys: &LimitKeys<'_>, mut base: Limits, table: &str) -> Result<Limits> {
        use defaults::{
            CONNECT_TIMEOUT, CPU_BUDGET, CPU_REFILL, HIBERNATED_IDLE_TIMEOUT, IDLE_TIMEOUT,
            LOG_LINES_PER_SECOND, MAX_CONNECTIONS, MAX_HIBERNATED, MAX_HIBERNATION_STATE,
            MAX_LIFETIME, MAX_MEMORY, MAX_OUTBOUND_SOCKETS, MAX_OUTBOUND_SOCKETS_PER_SERVICE,
            MAX_QUEUED, memory_bytes,
        };
        let key = |name: &str| format!("{table}.{name}");
        if let Some(n) = keys.max_connections {
            base.max_connections =
                self.count(n, &key("max-connections"), MAX_CONNECTIONS.bounds)?;
        }
        if let Some(n) = keys.max_queued {
            base.max_queued = self.count(n, &key("max-queued"), MAX_QUEUED.bounds)?;
        }
        if let Some(n) = keys.max_memory {
            base.memory_bytes =
                memory_bytes(self.count(n, &key("max-memory"), MAX_MEMORY.bounds)?)?;
        }
        if let Some(text) = keys.cpu_budget {
            base.cpu_budget = self.duration(text, &key("cpu-budget"), CPU_BUDGET.bounds)?;
        }
        if let Some(text) = keys.idle_timeout {
            base.idle_timeout = self.duration(text, &key("idle-timeout"), IDLE_TIMEOUT.bounds)?;
        }
        if let Some(text) = keys.max_lifetime {
            base.max_lifetime = Some(self.duration(text, &key("max-lifetime"), MAX_LIFETIME)?);
        }
        if let Some(n) = keys.log_lines_per_second {
            base.log_lines_per_second =
                self.count(n, &key("log-lines-per-second"), LOG_LINES_PER_SECOND.bounds)?;
        }
        if let Some(n) = keys.max_outbound_sockets {
            base.max_outbound_sockets =
                self.count(n, &key("max-outbound-sockets"), MAX_OUTBOUND_SOCKETS.bounds)?;
        }
        if let Some(n) = keys.max_outbound_sockets_per_service {
            base.max_outbound_sockets_per_service = self.count(
                n,
                &key("max-outbound-sockets-per-service"),
                MAX_OUTBOUND_SOCKETS_PER_SERVICE.bounds,
            )?;
        }
        if let Some(text) = keys.connect_timeout {
            base.connect_timeout =
                self.duration(text, &key("connect-timeout"), CONNECT_TIMEOUT.bounds)?;
        }
        if let Some(text) = keys.cpu_refill {
            base.cpu_refill = self.duration(text, &key("cpu-refill"), CPU_REFILL.bounds)?;
        }
        if let Some(n) = keys.max_hibernated {
            base.max_hibernated = self.count(n, &key("max-hibernated"), MAX_HIBERNATED.bounds)?;
        }
        if let Some(n) = keys.max_hibernation_state {
            base.max_hibernation_state = self.count(
                n,
                &key("max-hibernation-state"),
                MAX_HIBERNATION_STATE.bounds,
            )?;
        }
        if let Some(text) = keys.hibernated_idle_timeout {
            base.hibernated_idle_timeout = self.duration(
                text,
                &key("hibernated-idle-timeout"),
                HIBERNATED_IDLE_TIMEOUT.bounds,
            )?;
        }
        if let Some(text) = keys.hibernated_max_lifetime {
            base.hibernated_max_lifetime =
                Some(self.duration(text, &key("hibernated-max-lifetime"), MAX_LIFETIME)?);
        }
        if let Some(explicit) = keys.explicit_bounds_checks {
            base.explicit_bounds_checks = explicit;
        }
        Ok(base)
    }
}

/// Where the `[cache]` table puts compiled plugins; `None` when it is off.
fn cache_dir(table: Option<&CacheTable>, folder: &Path) -> Option<std::path::PathBuf> {
    match table {
        Some(CacheTable {
            enabled: Some(false),
            ..
        }) => None,
        Some(CacheTable { dir: Some(dir), .. }) => Some(folder.join(dir.get_ref())),
        _ => default_cache_dir(),
    }
}

/// Whether `name` can name a service or a bucket: letters, digits, `-` and
/// `_`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

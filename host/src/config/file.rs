//! The config file as written: serde's tables, one per TOML table.
//!
//! Apart from the meaning ([`super::check`]) so that serde alone answers
//! for syntax, unknown keys and wrong types, and keeps each value's span for
//! the checks to name its line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The file as written. serde refuses unknown keys and wrong types; the
/// meaning is checked in [`super::check`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct File {
    pub(super) admin: Option<AdminTable>,
    pub(super) defaults: Option<LimitTable>,
    #[serde(default)]
    pub(super) services: BTreeMap<String, Spanned<ServiceTable>>,
    pub(super) drain_timeout: Option<Spanned<String>>,
    pub(super) log_format: Option<Spanned<String>>,
    pub(super) cache: Option<CacheTable>,
    #[serde(default)]
    pub(super) keyvalue: BTreeMap<String, Spanned<BucketTable>>,
    pub(super) messaging: Option<MessagingTable>,
    pub(super) reuse_port: Option<bool>,
    pub(super) registry: Option<RegistryTable>,
}

/// `[registry]`: how plugins named `oci://...` are pulled.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RegistryTable {
    #[serde(default)]
    pub(super) insecure: Vec<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) max_size: Option<Spanned<i64>>,
    pub(super) auth_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct MessagingTable {
    pub(super) backend: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct BucketTable {
    pub(super) backend: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) max_keys: Option<Spanned<i64>>,
    pub(super) max_bytes: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct AdminTable {
    pub(super) listen: Spanned<String>,
    pub(super) token_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct CacheTable {
    pub(super) dir: Option<Spanned<String>>,
    pub(super) enabled: Option<bool>,
}

/// Declares a table with the given fields and one optional key per
/// per-connection limit flag, of the same name.
macro_rules! with_limit_keys {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub(super) struct $name {
            $(pub(super) $field: $ty,)*
            pub(super) max_connections: Option<Spanned<i64>>,
            pub(super) max_queued: Option<Spanned<i64>>,
            pub(super) max_memory: Option<Spanned<i64>>,
            pub(super) cpu_budget: Option<Spanned<String>>,
            pub(super) idle_timeout: Option<Spanned<String>>,
            pub(super) max_lifetime: Option<Spanned<String>>,
            pub(super) log_lines_per_second: Option<Spanned<i64>>,
            pub(super) max_outbound_sockets: Option<Spanned<i64>>,
            pub(super) max_outbound_sockets_per_service: Option<Spanned<i64>>,
            pub(super) connect_timeout: Option<Spanned<String>>,
            pub(super) cpu_refill: Option<Spanned<String>>,
            pub(super) max_hibernated: Option<Spanned<i64>>,
            pub(super) max_hibernation_state: Option<Spanned<i64>>,
            pub(super) hibernated_idle_timeout: Option<Spanned<String>>,
            pub(super) hibernated_max_lifetime: Option<Spanned<String>>,
            pub(super) explicit_bounds_checks: Option<bool>,
        }

        impl $name {
            pub(super) fn limits(&self) -> LimitKeys<'_> {
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
                    cpu_refill: self.cpu_refill.as_ref(),
                    max_hibernated: self.max_hibernated.as_ref(),
                    max_hibernation_state: self.max_hibernation_state.as_ref(),
                    hibernated_idle_timeout: self.hibernated_idle_timeout.as_ref(),
                    hibernated_max_lifetime: self.hibernated_max_lifetime.as_ref(),
                    explicit_bounds_checks: self.explicit_bounds_checks,
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
pub(super) struct ProxyTable {
    pub(super) versions: Option<Vec<Spanned<String>>>,
    pub(super) trusted: Vec<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct TlsTable {
    pub(super) certificates: Vec<CertificateTable>,
    pub(super) client_ca: Option<String>,
    #[serde(default)]
    pub(super) alpn: Vec<String>,
    pub(super) handshake_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertificateTable {
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct GrantsTable {
    #[serde(default)]
    pub(super) outbound: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) keyvalue: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) messaging: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct PeersTable {
    #[serde(default)]
    pub(super) allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) deny: Vec<Spanned<String>>,
}

/// The limit keys of one table, wherever they were written.
pub(super) struct LimitKeys<'a> {
    pub(super) max_connections: Option<&'a Spanned<i64>>,
    pub(super) max_queued: Option<&'a Spanned<i64>>,
    pub(super) max_memory: Option<&'a Spanned<i64>>,
    pub(super) cpu_budget: Option<&'a Spanned<String>>,
    pub(super) idle_timeout: Option<&'a Spanned<String>>,
    pub(super) max_lifetime: Option<&'a Spanned<String>>,
    pub(super) log_lines_per_second: Option<&'a Spanned<i64>>,
    pub(super) max_outbound_sockets: Option<&'a Spanned<i64>>,
    pub(super) max_outbound_sockets_per_service: Option<&'a Spanned<i64>>,
    pub(super) connect_timeout: Option<&'a Spanned<String>>,
    pub(super) cpu_refill: Option<&'a Spanned<String>>,
    pub(super) max_hibernated: Option<&'a Spanned<i64>>,
    pub(super) max_hibernation_state: Option<&'a Spanned<i64>>,
    pub(super) hibernated_idle_timeout: Option<&'a Spanned<String>>,
    pub(super) hibernated_max_lifetime: Option<&'a Spanned<String>>,
    pub(super) explicit_bounds_checks: Option<bool>,
}

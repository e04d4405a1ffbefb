//! A connection's store: WASI's context, each capability's state, and the
//! limits, built fresh for every connection. This is the one place that
//! knows every capability: each owns its state and links its own imports
//! ([`add_to_linker`] composes them), and reaches that state through a view
//! that [`ConnState`] implements.
//!
//! What a plugin is granted is deny-by-default:
//! - no preopened directories, so no files;
//! - no sockets of its own: UDP never, TCP connects and name lookups only
//!   where the service's `grants.outbound` lists ([`outbound`]);
//! - no environment variables, no arguments, stdin closed (a command gets
//!   the connection as its stdio, its settings and the connection's
//!   details as its environment);
//! - stdout and stderr go to the host's log ([`crate::sandbox::stdio`]);
//! - settings only through `wasi:config/store` ([`settings`]).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Result, Store};
use wasmtime_wasi::sockets::WasiSocketsCtxView;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::engine::MAX_TABLE_ELEMENTS;
use super::meter::at_epoch_tick;
use crate::capabilities::connection::{self, ConnectionCtx, ConnectionView};
use crate::capabilities::denials::Denials;
use crate::capabilities::hibernation::{
    self, Hibernation, HibernationCtx, HibernationCtxView, HibernationView, Rules, Woken,
};
use crate::capabilities::keyvalue::{self, Granted, KeyValueCtx, KeyValueCtxView, KeyValueView};
use crate::capabilities::messaging::{self, Grant, MessagingCtx, MessagingCtxView, MessagingView};
use crate::capabilities::outbound::{
    self, ConnOutbound, Connects, OutboundCtx, OutboundCtxView, OutboundView, Policy,
};
use crate::capabilities::settings::{self, SettingsCtx, SettingsView};
use crate::config::Limits;
use crate::net::socket::{SharedOutput, Socket, SocketStdio};
use crate::ops::counters::{Counters, count};
use crate::sandbox::bindings::ConnectionInfo;
use crate::sandbox::stdio::{PluginLog, Stream};

/// Most resources (streams, pollables, ...) one plugin instance may hold.
pub const MAX_RESOURCES: usize = 1024;

/// Most random bytes one `get-random-bytes` call may ask for; a larger
/// request traps rather than make the host allocate and fill it.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// What one connection's store holds.
pub struct ConnState {
    wasi: WasiCtx,
    table: ResourceTable,
    settings: SettingsCtx,
    outbound: OutboundCtx,
    keyvalue: KeyValueCtx,
    messaging: MessagingCtx,
    connection: ConnectionCtx,
    hibernation: HibernationCtx,
    /// A command's stdout, which every handle it opens shares.
    stdout: Option<SharedOutput>,
    /// Where its stdout and stderr go, line by line.
    log: Arc<PluginLog>,
    memory: MemoryLimit,
}

/// What a connection's store is built from: its service's grants and
/// limits, and the connection.
pub struct StoreParts<'a> {
    pub service: &'a Arc<str>,
    pub conn: u64,
    pub limits: &'a Limits,
    pub counters: &'a Arc<Counters>,
    /// Where the plugin may connect; `None` when nowhere.
    pub outbound: Option<&'a Arc<Policy>>,
    pub buckets: &'a Arc<Granted>,
    /// The topics the plugin may use; `None` when none.
    pub messaging: Option<&'a Arc<Grant>>,
    pub settings: &'a SettingsCtx,
    /// A command's arguments; `None` for a handler.
    pub command: Option<&'a [String]>,
    /// The client; `None` in the instance that checks a plugin at load.
    pub client: Option<(&'a Arc<Socket>, &'a ConnectionInfo)>,
    /// Cancelled when the host starts to drain.
    pub draining: &'a CancellationToken,
    /// What a woken connection kept for its next instance.
    pub woken: Option<Woken>,
}

/// A fresh store for one connection.
pub fn new_store(engine: &Engine, parts: StoreParts<'_>) -> Store<ConnState> {
    let denials = Arc::new(Denials::new(
        parts.service.clone(),
        parts.conn,
        parts.counters.clone(),
    ));
    let grant = Arc::new(ConnOutbound::new(parts.outbound.cloned(), denials.clone()));
    let (wasi, stdout, log) = wasi_ctx(&parts, grant.clone());
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    let state = ConnState {
        wasi,
        table,
        settings: parts.settings.clone(),
        outbound: OutboundCtx {
            grant,
            connects: Connects::new(parts.limits.connect_timeout),
        },
        keyvalue: KeyValueCtx::new(parts.buckets.clone(), denials.clone()),
        messaging: MessagingCtx::new(parts.messaging.cloned(), denials),
        connection: ConnectionCtx::new(parts.client.map(|(socket, _)| socket.clone())),
        hibernation: HibernationCtx::new(
            Rules {
                max_state: parts.limits.max_hibernation_state,
                max_hibernated: parts.limits.max_hibernated,
                counters: parts.counters,
                draining: parts.draining,
            },
            parts.woken,
        ),
        stdout,
        log,
        memory: MemoryLimit {
            service: parts.service.clone(),
            conn: parts.conn,
            max_bytes: parts.limits.memory_bytes,
            hit: false,
            counters: parts.counters.clone(),
        },
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.memory);
    // A store's deadline starts at the current epoch, which would make a
    // fresh instance yield at its first instruction: one needless trip
    // through the scheduler per connection.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(at_epoch_tick()));
    store
}

/// The connection's WASI context, and a command's stdout: a command's
/// stdio is the client's socket, a handler's stdout goes to the log.
fn wasi_ctx(
    parts: &StoreParts<'_>,
    grant: Arc<ConnOutbound>,
) -> (WasiCtx, Option<SharedOutput>, Arc<PluginLog>) {
    let log = PluginLog::new(
        parts.service.clone(),
        parts.conn,
        parts.limits.log_lines_per_second,
        parts.counters.clone(),
    );
    let mut wasi = WasiCtx::builder();
    let mut stdout = None;
    if let (Some(arguments), Some((socket, info))) = (parts.command, parts.client) {
        let stdio = SocketStdio::new(socket.clone());
        stdout = Some(stdio.output());
        wasi.stdin(stdio.clone())
            .stdout(stdio)
            .args(arguments)
            .envs(&client_environment(info));
        for (name, value) in parts.settings.settings() {
            if is_free_environment_name(name) {
                wasi.env(name, value);
            }
        }
    } else {
        wasi.stdout(log.stream(Stream::Stdout));
    }
    let wasi = wasi
        .stderr(log.stream(Stream::Stderr))
        .allow_tcp(parts.outbound.is_some())
        .allow_udp(false)
        .allow_ip_name_lookup(parts.outbound.is_some_and(|policy| policy.has_names()))
        .socket_addr_check(move |addr, usage| {
            let allowed = grant.allows(addr, usage);
            Box::pin(async move { allowed })
        })
        .max_random_size(MAX_RANDOM_BYTES)
        .build();
    (wasi, stdout, log)
}

/// Links everything a plugin may import: WASI 0.2 from wasmtime-wasi, then
/// each capability, whose calls shadow some of WASI's.
pub fn add_to_linker(linker: &mut Linker<ConnState>) -> Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    outbound::add_to_linker(linker, MAX_RESOURCES)?;
    keyvalue::add_to_linker(linker)?;
    messaging::add_to_linker(linker)?;
    connection::add_to_linker(linker)?;
    hibernation::add_to_linker(linker)?;
    settings::add_to_linker(linker)
}

/// The interfaces the host provides, by package, with the versions it
/// links: what a plugin importing another version is told. Kept beside
/// [`add_to_linker`], which it describes.
pub(super) const PROVIDED: &[(&str, &str)] = &[
    ("wasi:io", "0.2.0 to 0.2.12"),
    ("wasi:clocks", "0.2.0 to 0.2.12"),
    ("wasi:random", "0.2.0 to 0.2.12"),
    ("wasi:cli", "0.2.0 to 0.2.12"),
    (
        "wasi:filesystem",
        "0.2.0 to 0.2.12 (no directories are preopened)",
    ),
    ("wasi:sockets", "0.2.0 to 0.2.12 (outbound TCP as granted)"),
    ("wasi:keyvalue", "0.2.0-draft (store, atomics, batch)"),
    ("wasi:config", "0.2.0-rc.1 and 0.2.0-draft-2024-09-27"),
    (
        "portico:plugin",
        "0.4.0 (and 0.3.0's pubsub and connection, 0.2.0's pubsub)",
    ),
];

impl ConnState {
    /// The resource table, where the socket's streams are put for `run`.
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// A command's stdout, which every handle it opens shares.
    pub fn stdout(&self) -> Option<&SharedOutput> {
        self.stdout.as_ref()
    }

    /// The exception the plugin's language runtime reported it did not
    /// catch, if it did: the language, and the exception.
    pub fn uncaught_exception(&self) -> Option<(&'static str, String)> {
        self.log.uncaught_exception()
    }

    /// What the connection keeps if its instance asked to hibernate: the
    /// plugin's state, and the subscriptions, taken out of the table.
    pub fn hibernation(&mut self) -> Option<Hibernation> {
        let mut hibernation = self.hibernation.take_request()?;
        let made = self.messaging.take_subscriptions(&mut self.table);
        hibernation.subscriptions.extend(made);
        Some(hibernation)
    }

    /// What a woken connection was to hand its instance, if the instance
    /// never asked.
    pub fn take_woken(&mut self) -> Option<Woken> {
        self.hibernation.take_woken()
    }
}

impl WasiView for ConnState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl OutboundView for ConnState {
    fn outbound(&mut self) -> OutboundCtxView<'_> {
        OutboundCtxView {
            ctx: &mut self.outbound,
            sockets: WasiSocketsCtxView {
                ctx: self.wasi.sockets(),
                table: &mut self.table,
            },
        }
    }
}

impl KeyValueView for ConnState {
    fn keyvalue(&mut self) -> KeyValueCtxView<'_> {
        KeyValueCtxView {
            ctx: &self.keyvalue,
            table: &mut self.table,
        }
    }
}

impl MessagingView for ConnState {
    fn messaging(&mut self) -> MessagingCtxView<'_> {
        MessagingCtxView {
            ctx: &mut self.messaging,
            table: &mut self.table,
        }
    }
}

impl ConnectionView for ConnState {
    fn connection(&mut self) -> &ConnectionCtx {
        &self.connection
    }
}

impl HibernationView for ConnState {
    fn hibernation(&mut self) -> HibernationCtxView<'_> {
        HibernationCtxView {
            ctx: &mut self.hibernation,
            messaging: &mut self.messaging,
            table: &mut self.table,
        }
    }
}

impl SettingsView for ConnState {
    fn settings(&mut self) -> &SettingsCtx {
        &self.settings
    }
}

/// Refuses memory growth past the limit, and logs and counts the first
/// refusal of each connection.
struct MemoryLimit {
    service: Arc<str>,
    conn: u64,
    max_bytes: usize,
    hit: bool,
    counters: Arc<Counters>,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, current: usize, desired: usize, _: Option<usize>) -> Result<bool> {
        if desired <= self.max_bytes {
            return Ok(true);
        }
        if !self.hit {
            self.hit = true;
            count(&self.counters.memory_limit_hits);
            tracing::warn!(
                service = %self.service,
                conn = self.conn,
                current,
                desired,
                limit = self.max_bytes,
                "memory limit reached: growth refused"
            );
        }
        Ok(false)
    }

    fn table_growing(&mut self, _: usize, desired: usize, _: Option<usize>) -> Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The environment variables [`client_environment`] sets.
const CLIENT_VARIABLES: &[&str] = &[
    "PROTO",
    "PORTICO_CONN",
    "TCPREMOTEIP",
    "TCPREMOTEPORT",
    "TCPLOCALIP",
    "TCPLOCALPORT",
];

/// Whether a setting called `name` may join a command's environment: not
/// one of the connection's own variables (those stay the host's), and a
/// name the environment can hold.
fn is_free_environment_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0']) && !CLIENT_VARIABLES.contains(&name)
}

/// A connection's details as UCSPI-TCP names them (what `tcpserver` and
/// its kin set for the programs they run), for a command's environment.
fn client_environment(info: &ConnectionInfo) -> Vec<(String, String)> {
    let mut environment = vec![
        ("PROTO".to_string(), "TCP".to_string()),
        ("PORTICO_CONN".to_string(), info.id.to_string()),
    ];
    for (prefix, address) in [
        ("TCPREMOTE", &info.peer_address),
        ("TCPLOCAL", &info.local_address),
    ] {
        if let Ok(address) = address.parse::<std::net::SocketAddr>() {
            environment.push((format!("{prefix}IP"), address.ip().to_string()));
            environment.push((format!("{prefix}PORT"), address.port().to_string()));
        }
    }
    environment
}

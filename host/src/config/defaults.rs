//! The default and the accepted values of every setting, each written once.
//!
//! A setting can come from a flag ([`crate::cli`]) or from a key of the
//! config file (`config::check`); both read their defaults and their
//! bounds here, so the two cannot drift apart (they had: the file refused
//! `max-connections = 2000000`, the flag took it).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::Limits;

/// Where the host listens when `--listen` is not given.
pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9000));

/// Largest `max-memory`, in MiB: a wasm32 memory cannot be larger.
pub const MAX_MEMORY_MIB: u32 = 4096;

/// A bucket's size defaults live with the key-value capability; named here
/// so that every default of the config can be found in one place.
pub use crate::capabilities::keyvalue::{
    DEFAULT_MAX_BYTES as BUCKET_MAX_BYTES, DEFAULT_MAX_KEYS as BUCKET_MAX_KEYS,
};

/// The defaults of every limit, as `host --help` gives them.
pub fn default_limits() -> Limits {
    Limits {
        max_connections: MAX_CONNECTIONS.default,
        max_queued: MAX_QUEUED.default,
        // u32 to usize widens on every target wasmtime runs on.
        memory_bytes: (MAX_MEMORY.default as usize) << 20,
        cpu_budget: CPU_BUDGET.default,
        idle_timeout: IDLE_TIMEOUT.default,
        max_lifetime: None,
        log_lines_per_second: LOG_LINES_PER_SECOND.default,
        drain_timeout: DRAIN_TIMEOUT.default,
        max_outbound_sockets: MAX_OUTBOUND_SOCKETS.default,
        max_outbound_sockets_per_service: MAX_OUTBOUND_SOCKETS_PER_SERVICE.default,
        connect_timeout: CONNECT_TIMEOUT.default,
        cpu_refill: CPU_REFILL.default,
        max_hibernated: MAX_HIBERNATED.default,
        max_hibernation_state: MAX_HIBERNATION_STATE.default,
        hibernated_idle_timeout: HIBERNATED_IDLE_TIMEOUT.default,
        hibernated_max_lifetime: None,
        explicit_bounds_checks: false,
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

/// `mib` MiB in bytes, as [`Limits::memory_bytes`] holds a memory size.
pub fn memory_bytes(mib: u32) -> Result<usize> {
    usize::try_from(u64::from(mib) << 20)
        .with_context(|| format!("{mib} MiB does not fit this machine's address space"))
}

/// The whole numbers a setting accepts, from its flag and its file key alike.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
}

impl Bounds {
    /// `value` if it is in bounds, or the problem as an error says it.
    pub fn check(self, value: i64) -> Result<u32, String> {
        u32::try_from(value)
            .ok()
            .filter(|n| (self.min..=self.max).contains(n))
            .ok_or_else(|| format!("{value} is out of range ({} to {})", self.min, self.max))
    }

    /// A clap value parser that reads a number and checks it.
    pub fn parser(self) -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync + 'static {
        move |text| {
            let value: i64 = text.parse().map_err(|error| format!("{error}"))?;
            self.check(value)
        }
    }
}

/// The durations a setting accepts, from its flag and its file key alike.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DurationBounds {
    /// Zero too. A drain of zero stops live connections at once; a
    /// lifetime or handshake timeout of zero closes each connection as it
    /// comes, which the flags always allowed and the file now does too.
    AnyLength,
    /// Zero would stop every connection's plugin, or every outbound connect,
    /// before it starts.
    LongerThanZero,
}

impl DurationBounds {
    /// `value` if it is in bounds, or the problem as an error says it.
    pub fn check(self, value: Duration) -> Result<Duration, String> {
        match self {
            DurationBounds::LongerThanZero if value.is_zero() => {
                Err("must be longer than zero".into())
            }
            _ => Ok(value),
        }
    }
}

/// A whole-number setting: its default and the values it accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CountSetting {
    pub default: u32,
    pub bounds: Bounds,
}

impl CountSetting {
    const fn new(default: u32, min: u32, max: u32) -> Self {
        Self {
            default,
            bounds: Bounds { min, max },
        }
    }
}

/// A duration setting: its default and the values it accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DurationSetting {
    pub default: Duration,
    pub bounds: DurationBounds,
}

impl DurationSetting {
    const fn new(default: Duration, bounds: DurationBounds) -> Self {
        Self { default, bounds }
    }
}

/// Up to what a u32 holds: the server serves at most what its address
/// space allows and says so, whatever is asked.
pub const MAX_CONNECTIONS: CountSetting = CountSetting::new(1000, 1, u32::MAX);
pub const MAX_QUEUED: CountSetting = CountSetting::new(1000, 0, u32::MAX);
/// In MiB.
pub const MAX_MEMORY: CountSetting = CountSetting::new(64, 1, MAX_MEMORY_MIB);
pub const LOG_LINES_PER_SECOND: CountSetting = CountSetting::new(100, 0, u32::MAX);
pub const MAX_OUTBOUND_SOCKETS: CountSetting = CountSetting::new(8, 0, u32::MAX);
pub const MAX_OUTBOUND_SOCKETS_PER_SERVICE: CountSetting = CountSetting::new(1024, 0, u32::MAX);
/// Zero turns hibernation off: every `hibernate` call is refused. The
/// real bound is open files, which the host checks at start.
pub const MAX_HIBERNATED: CountSetting = CountSetting::new(10_000, 0, u32::MAX);
/// In bytes: 64 KiB by default, 16 MiB at most.
pub const MAX_HIBERNATION_STATE: CountSetting = CountSetting::new(64 << 10, 0, 16 << 20);
/// A bucket's `max-keys` and `max-bytes` (their defaults are
/// [`BUCKET_MAX_KEYS`] and [`BUCKET_MAX_BYTES`]): a bucket with no room is
/// refused.
pub const BUCKET_SIZE: Bounds = Bounds {
    min: 1,
    max: u32::MAX,
};

pub const CPU_BUDGET: DurationSetting =
    DurationSetting::new(Duration::from_secs(10), DurationBounds::LongerThanZero);
pub const IDLE_TIMEOUT: DurationSetting =
    DurationSetting::new(Duration::from_secs(300), DurationBounds::LongerThanZero);
/// Off unless given, so it has no default.
pub const MAX_LIFETIME: DurationBounds = DurationBounds::AnyLength;
pub const DRAIN_TIMEOUT: DurationSetting =
    DurationSetting::new(Duration::from_secs(30), DurationBounds::AnyLength);
/// Per minute of a connection's life: 1 s, a sixtieth of a core. Zero
/// gives a connection its budget once, for its whole life.
pub const CPU_REFILL: DurationSetting =
    DurationSetting::new(Duration::from_secs(1), DurationBounds::AnyLength);
pub const HIBERNATED_IDLE_TIMEOUT: DurationSetting =
    DurationSetting::new(Duration::from_secs(3600), DurationBounds::LongerThanZero);
pub const CONNECT_TIMEOUT: DurationSetting =
    DurationSetting::new(Duration::from_secs(10), DurationBounds::LongerThanZero);
pub const TLS_HANDSHAKE_TIMEOUT: DurationSetting = DurationSetting::new(
    crate::net::tls::DEFAULT_HANDSHAKE_TIMEOUT,
    DurationBounds::AnyLength,
);
/// One pull from a registry: token, manifest and layer together.
pub const REGISTRY_TIMEOUT: DurationSetting =
    DurationSetting::new(Duration::from_secs(30), DurationBounds::LongerThanZero);
/// In MiB: the largest plugin a registry may send. 4 GiB, a wasm32
/// memory's size, is more than any plugin needs.
pub const REGISTRY_MAX_SIZE: CountSetting = CountSetting::new(256, 1, MAX_MEMORY_MIB);
pub const PROXY_PROTOCOL_TIMEOUT: DurationSetting = DurationSetting::new(
    crate::net::proxy_protocol::DEFAULT_TIMEOUT,
    DurationBounds::LongerThanZero,
);

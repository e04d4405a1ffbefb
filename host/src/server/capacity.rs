//! How many connections this process can hold, worked out once at start
//! from the open-file limit, `vm.max_map_count` and the address space the
//! instance pools reserve: past that figure the host would fail to
//! instantiate connections, so every service is capped at it and refuses
//! the rest, and the log says what to raise. Hibernated connections hold
//! only a socket each: they are bounded by the open files live ones leave.

use tracing::{info, warn};

use crate::config;
use crate::sandbox::MemoryInit;

/// Memory mappings one connection costs: 2 for its fiber stack and the
/// stack's guard page, which exist from the start, and 2 more while it is
/// live (its memory, accessible and reserved), or 4 if its memory maps a
/// copy-on-write image, which splits the memory's mapping in three
/// (measured with the echo plugins by `portico-bench`). The capacity is
/// worked out before the pools exist, so both count.
fn mappings_per_connection(init: MemoryInit) -> u64 {
    match init {
        MemoryInit::Copy => 4,
        MemoryInit::Map => 6,
    }
}
/// Mappings and files kept free for everything else the process does.
const HEADROOM: u64 = 1024;

/// Address space one pool slot reserves: for the memory, wasmtime's 4 GiB
/// and 32 MiB guard, so that plugin code needs no bounds checks, or, with
/// `explicit-bounds-checks`, `max-memory` and a 64 KiB guard; then 32 MiB
/// for the slot's fiber stack and tables, rounded up.
fn address_space_per_connection(limits: &config::Limits) -> u64 {
    let memory = match limits.explicit_bounds_checks {
        true => limits.memory_bytes as u64 + (64 << 10),
        false => (4 << 30) + (32 << 20),
    };
    memory + (32 << 20)
}
/// A process's user address space (47 bits on x86-64, and on aarch64 with
/// 4 KiB pages), less an eighth for everything else.
const ADDRESS_SPACE: u64 = (1 << 47) - (1 << 44);

/// How many connections this process can hold: the open-file limit (raised
/// as far as the hard limit allows), the kernel's cap on memory mappings
/// (`vm.max_map_count`) and the address space the pool reserves bound it. Each service admits at most this
/// many, so that the host refuses connections at the ceiling instead of
/// failing to instantiate them.
pub(super) struct Capacity {
    pub(super) connections: u64,
    /// Hibernated connections the open files leave room for, all services
    /// together.
    pub(super) hibernated: u64,
    /// What the services' `max-hibernated` ask for together.
    hibernated_wanted: u64,
    /// What the services' `max-connections` ask for together.
    wanted: u64,
    files: u64,
    by_files: u64,
    max_map_count: Option<u64>,
    mapped: u64,
    by_mappings: u64,
    by_address: u64,
}

impl Capacity {
    pub(super) fn of(services: &[config::Service]) -> Capacity {
        let wanted: u64 = services
            .iter()
            .map(|service| u64::from(service.limits.max_connections))
            .sum();
        let queued: u64 = services
            .iter()
            .map(|service| u64::from(service.limits.max_queued))
            .sum();
        // A connection in its PROXY header or TLS handshake holds a socket
        // too, and each service lets as many be there as it serves.
        let handshaking: u64 = services
            .iter()
            .filter(|service| service.tls.is_some() || service.proxy_protocol.is_some())
            .map(|service| u64::from(service.limits.max_connections))
            .sum();
        let hibernated_wanted: u64 = services
            .iter()
            .map(|service| u64::from(service.limits.max_hibernated))
            .sum();
        let needed = wanted + handshaking + queued + hibernated_wanted + HEADROOM;
        // A failure to raise the limit shows in the figure logged.
        let files = rlimit::increase_nofile_limit(needed).unwrap_or(needed);
        let by_files = u64::try_from(
            u128::from(files.saturating_sub(HEADROOM + queued)) * u128::from(wanted.max(1))
                / u128::from((wanted + handshaking).max(1)),
        )
        .unwrap_or(u64::MAX);
        let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok());
        let mapped = std::fs::read_to_string("/proc/self/maps")
            .map_or(0, |maps| maps.lines().count() as u64);
        // The costliest plugin's figure, for every connection. (A plugin
        // that cannot be read is counted as costly; loading it says why.)
        let per_connection = services
            .iter()
            .map(|service| {
                let bytes = (service.plugin.file())
                    .and_then(|path| std::fs::read(path).ok())
                    .unwrap_or_default();
                mappings_per_connection(MemoryInit::of(&bytes))
            })
            .max()
            .unwrap_or(mappings_per_connection(MemoryInit::Map));
        let by_mappings = max_map_count.map_or(u64::MAX, |max| {
            max.saturating_sub(mapped + HEADROOM) / per_connection
        });
        let by_address = services
            .iter()
            .map(|service| ADDRESS_SPACE / address_space_per_connection(&service.limits))
            .min()
            .unwrap_or(u64::MAX);
        let connections = by_files.min(by_mappings).min(by_address).max(1);
        // Live connections come first; hibernated ones get the files left.
        let live = connections.min(wanted);
        let hibernated = files
            .saturating_sub(HEADROOM + queued + live + handshaking.min(live))
            .min(hibernated_wanted);
        Capacity {
            connections,
            hibernated,
            hibernated_wanted,
            wanted,
            files,
            by_files,
            max_map_count,
            mapped,
            by_mappings,
            by_address,
        }
    }

    /// Logs the figure and, if the services ask for more, what to raise.
    pub(super) fn log(&self) {
        let capacity = self.connections;
        info!(
            target: "portico_host::server",
            ceiling = capacity.min(self.wanted), hibernated = self.hibernated,
            open_files = self.files, max_map_count = ?self.max_map_count, mappings = self.mapped,
            "connections this process can hold"
        );
        if self.hibernated < self.hibernated_wanted {
            warn!(
                target: "portico_host::server",
                "max-hibernated ({} for all services together) does not fit, at most {} \
                 hibernate at once: the open-file limit is {}: raise it with `ulimit -n`",
                self.hibernated_wanted,
                self.hibernated,
                self.files
            );
        }
        if capacity < self.wanted {
            let binding = if self.by_address < self.by_files.min(self.by_mappings) {
                format!(
                    "each connection reserves 4 GiB of address space, and the process has room \
                     for {}: set explicit-bounds-checks (--explicit-bounds-checks), which \
                     reserves only max-memory, or run more host processes (--reuse-port)",
                    self.by_address
                )
            } else if self.by_mappings < self.by_files {
                format!(
                    "{} memory mappings in use of vm.max_map_count {}: raise it with \
                     `sysctl -w vm.max_map_count=N`",
                    self.mapped,
                    self.max_map_count.unwrap_or_default()
                )
            } else {
                format!(
                    "the open-file limit is {}: raise it with `ulimit -n`",
                    self.files
                )
            };
            warn!(
                target: "portico_host::server",
                "--max-connections {} does not fit, serving at most {capacity} at once: {binding}",
                self.wanted
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process holds about 28,000 live connections by address space with
    /// 4 GiB per slot, and about 1.2 million with explicit bounds checks
    /// and 64 MiB of memory each.
    #[test]
    fn explicit_bounds_checks_lift_the_address_space_cap() {
        let mut limits = config::defaults::default_limits();
        assert_eq!(
            ADDRESS_SPACE / address_space_per_connection(&limits),
            28_230
        );
        limits.explicit_bounds_checks = true;
        assert_eq!(
            ADDRESS_SPACE / address_space_per_connection(&limits),
            1_222_542
        );
    }
}

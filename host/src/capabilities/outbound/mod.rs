//! Outbound TCP: where a service's plugin may connect, and how many
//! sockets it may hold.
//!
//! Plugins reach the network through standard `wasi:sockets`, which
//! wasmtime-wasi implements; this module decides what it allows. Nothing
//! is allowed unless the operator listed it in the service's
//! `grants.outbound`. wasmtime-wasi asks [`ConnOutbound::allows`] before
//! every connect; the rest (socket creation, name lookups, bind and listen)
//! is guarded by the host functions that [`host`] puts in front of
//! wasmtime-wasi's own.
//!
//! Names are resolved by the host, and only names a rule lists may be
//! looked up: a plugin cannot use DNS to probe the network or smuggle data
//! out. An address that a listed name resolved to is reachable on that
//! rule's port, unless it is loopback, private or otherwise not public
//! (a name whose DNS an attacker controls could point anywhere): such
//! addresses must be listed by IP or CIDR.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::capabilities::denials::{Denials, Logged, TARGET};
use crate::ops::untrusted::Untrusted;

mod connects;
mod host;
mod rule;

pub use connects::Connects;
pub use host::{OutboundCtx, OutboundCtxView, OutboundView, add_to_linker};
pub use rule::Rule;
use rule::{Target, domain_name, is_public};

/// Name lookups one connection may make; each may send DNS queries.
const MAX_LOOKUPS: u32 = 16;

/// A service's outbound grant and limits, shared by its connections.
pub struct Policy {
    rules: Vec<Rule>,
    /// Sockets one connection may create over its life.
    per_connection: u32,
    /// Sockets the service's connections may hold at once, each held until
    /// its connection ends.
    service_sockets: Arc<Semaphore>,
    per_service: u32,
}

impl Policy {
    pub fn new(rules: Vec<Rule>, per_connection: u32, per_service: u32) -> Self {
        Self {
            rules,
            per_connection,
            service_sockets: Arc::new(Semaphore::new(per_service as usize)),
            per_service,
        }
    }

    fn allows_listed(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.rules.iter().any(|rule| {
            rule.port == addr.port()
                && matches!(&rule.host, Target::Network(net) if net.contains(&ip))
        })
    }

    /// The ports the rules give a name, if any rule names it.
    fn ports_of(&self, name: &str) -> BTreeSet<u16> {
        let Some(name) = domain_name(name) else {
            return BTreeSet::new();
        };
        self.rules
            .iter()
            .filter(|rule| match &rule.host {
                Target::Name(listed) => *listed == name,
                Target::Under(suffix) => name.ends_with(suffix.as_str()),
                Target::Network(_) => false,
            })
            .map(|rule| rule.port)
            .collect()
    }

    /// Whether any rule is a name, so that lookups are needed at all.
    pub fn has_names(&self) -> bool {
        self.rules
            .iter()
            .any(|rule| !matches!(rule.host, Target::Network(_)))
    }
}

/// One connection's use of outbound TCP.
pub struct ConnOutbound {
    /// `None` when the service has no outbound grant.
    policy: Option<Arc<Policy>>,
    denials: Arc<Denials>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sockets: u32,
    permits: Option<OwnedSemaphorePermit>,
    lookups: u32,
    /// Ports each address resolved from a listed name may be reached on.
    resolved: HashMap<IpAddr, BTreeSet<u16>>,
    /// The ports of the name each open lookup is for, by resource id.
    lookups_open: HashMap<u32, BTreeSet<u16>>,
}

/// Why an outbound operation was refused, for the log.
enum Denied<'a> {
    NotGranted,
    Connect(SocketAddr),
    Lookup(&'a str),
    TooManyLookups,
    SocketLimit(u32),
    ServiceSocketLimit(u32),
    Listen(&'static str),
    ConnectTimeout,
}

impl ConnOutbound {
    pub fn new(policy: Option<Arc<Policy>>, denials: Arc<Denials>) -> Self {
        Self {
            policy,
            denials,
            state: Mutex::default(),
        }
    }

    pub fn granted(&self) -> Option<&Policy> {
        self.policy.as_deref()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // change is a single insert or increment.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn deny(&self, why: Denied<'_>) -> bool {
        let counted = self.denials.count(|counters| match why {
            Denied::ConnectTimeout => &counters.outbound_connect_timeouts,
            _ => &counters.outbound_denied,
        });
        let Some(Logged { service, conn }) = counted else {
            return false;
        };
        match why {
            Denied::NotGranted => tracing::warn!(target: TARGET,
                service,
                conn,
                "outbound TCP denied: the service has no outbound grant"
            ),
            Denied::Connect(address) => tracing::warn!(target: TARGET,
                service,
                conn,
                %address,
                "outbound connect denied: the address is not in the service's grant"
            ),
            Denied::Lookup(name) => tracing::warn!(target: TARGET,
                service,
                conn,
                name = %Untrusted(name),
                "name lookup denied: the name is not in the service's grant"
            ),
            Denied::TooManyLookups => tracing::warn!(target: TARGET,
                service,
                conn,
                "name lookup denied: the connection made {MAX_LOOKUPS} already"
            ),
            Denied::SocketLimit(limit) => tracing::warn!(target: TARGET,
                service,
                conn,
                "outbound socket denied: the connection opened {limit} already"
            ),
            Denied::Listen(what) => tracing::warn!(target: TARGET,
                service,
                conn,
                "outbound {what} denied: plugins may not accept connections of their own"
            ),
            Denied::ConnectTimeout => tracing::warn!(target: TARGET,
                service,
                conn,
                "outbound connect timed out: no answer within the connect timeout"
            ),
            Denied::ServiceSocketLimit(limit) => tracing::warn!(target: TARGET,
                service,
                conn,
                "outbound socket denied: the service's connections hold {limit} already"
            ),
        }
        false
    }

    /// Whether the plugin may create one more socket; if so, it is counted
    /// against the connection's and the service's limits.
    pub fn open_socket(&self) -> bool {
        let Some(policy) = &self.policy else {
            return self.deny(Denied::NotGranted);
        };
        let mut state = self.state();
        if state.sockets >= policy.per_connection {
            drop(state);
            return self.deny(Denied::SocketLimit(policy.per_connection));
        }
        let Ok(permit) = policy.service_sockets.clone().try_acquire_owned() else {
            drop(state);
            return self.deny(Denied::ServiceSocketLimit(policy.per_service));
        };
        state.sockets += 1;
        match &mut state.permits {
            Some(held) => held.merge(permit),
            None => state.permits = Some(permit),
        }
        true
    }

    /// Refuses an explicit `bind` or `listen`.
    pub fn refuse(&self, what: &'static str) {
        self.deny(Denied::Listen(what));
    }

    /// Records that a connect took longer than the connect timeout.
    pub fn connect_timed_out(&self) {
        self.deny(Denied::ConnectTimeout);
    }

    /// Whether the plugin may look `name` up.
    pub fn lookup(&self, name: &str) -> bool {
        let Some(policy) = &self.policy else {
            return self.deny(Denied::NotGranted);
        };
        // An address written as a name resolves to itself without a query;
        // the connect decides whether it may be reached.
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let ports = policy.ports_of(name);
        if ports.is_empty() {
            return self.deny(Denied::Lookup(name));
        }
        let mut state = self.state();
        if state.lookups >= MAX_LOOKUPS {
            drop(state);
            return self.deny(Denied::TooManyLookups);
        }
        state.lookups += 1;
        true
    }

    /// Notes that lookup stream `stream` is for `name`.
    pub fn lookup_started(&self, stream: u32, name: &str) {
        // An address looked up as a name opens nothing: the connect
        // decides whether it may be reached. (Its stream may have the id of
        // an earlier lookup's, whose ports must not carry over.)
        if name.parse::<IpAddr>().is_ok() {
            self.state().lookups_open.remove(&stream);
            return;
        }
        if let Some(policy) = &self.policy {
            let ports = policy.ports_of(name);
            self.state().lookups_open.insert(stream, ports);
        }
    }

    /// Notes that lookup stream `stream` gave `ip`.
    pub fn resolved(&self, stream: u32, ip: IpAddr) {
        let mut state = self.state();
        if let Some(ports) = state.lookups_open.get(&stream).cloned() {
            state
                .resolved
                .entry(ip.to_canonical())
                .or_default()
                .extend(ports);
        }
    }

    /// The check wasmtime-wasi makes before each socket operation.
    pub fn allows(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        let Some(policy) = &self.policy else {
            return self.deny(Denied::NotGranted);
        };
        match usage {
            SocketAddrUse::TcpConnect => {
                let ip = addr.ip().to_canonical();
                let resolved = || {
                    is_public(ip)
                        && self
                            .state()
                            .resolved
                            .get(&ip)
                            .is_some_and(|ports| ports.contains(&addr.port()))
                };
                policy.allows_listed(addr) || resolved() || self.deny(Denied::Connect(addr))
            }
            // Before an unbound socket connects, wasmtime-wasi checks the
            // implicit bind to an ephemeral port; explicit binds never get
            // here (see [`host`]).
            SocketAddrUse::TcpBind => {
                addr.port() == 0
                    && (addr.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                        || addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED))
            }
            SocketAddrUse::TcpListen
            | SocketAddrUse::TcpAccept
            | SocketAddrUse::UdpBind
            | SocketAddrUse::UdpSend
            | SocketAddrUse::UdpReceive => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> Arc<Policy> {
        let rules = rules.iter().map(|rule| rule.parse().unwrap()).collect();
        Arc::new(Policy::new(rules, 2, 3))
    }

    fn conn(policy: &Arc<Policy>) -> ConnOutbound {
        ConnOutbound::new(Some(policy.clone()), denials())
    }

    fn denials() -> Arc<Denials> {
        Arc::new(Denials::new("test".into(), 1, Default::default()))
    }

    fn connect(conn: &ConnOutbound, addr: &str) -> bool {
        conn.allows(addr.parse().unwrap(), SocketAddrUse::TcpConnect)
    }

    #[test]
    fn rules_parse_and_print_back() {
        for text in [
            "127.0.0.1:6379",
            "[::1]:80",
            "10.1.0.0/16:80",
            "db.internal:5432",
            "*.example.com:443",
        ] {
            assert_eq!(text.parse::<Rule>().unwrap().to_string(), text);
        }
        for bad in ["127.0.0.1", "x:0", "x:70000", "a b:1", "*.:1", ":80"] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_listed_addresses_and_ports_connect() {
        let policy = policy(&["127.0.0.1:6379", "10.1.0.0/16:80", "[::1]:80"]);
        let conn = conn(&policy);
        assert!(connect(&conn, "127.0.0.1:6379"));
        assert!(connect(&conn, "10.1.200.3:80"));
        assert!(connect(&conn, "[::1]:80"));
        assert!(connect(&conn, "[::ffff:127.0.0.1]:6379"));
        assert!(!connect(&conn, "127.0.0.1:6380"));
        assert!(!connect(&conn, "127.0.0.2:6379"));
        assert!(!connect(&conn, "10.2.0.1:80"));
        assert_eq!(conn.denials.counters().outbound_denied.load(Relaxed), 3);
    }

    #[test]
    fn names_reach_their_public_addresses_on_their_ports() {
        let policy = policy(&["*.example.com:443", "db.internal:5432"]);
        let conn = conn(&policy);
        assert!(conn.lookup("api.example.com"));
        assert!(conn.lookup("DB.Internal."));
        assert!(!conn.lookup("example.com"));
        assert!(!conn.lookup("evil.com"));
        conn.lookup_started(7, "api.example.com");
        conn.resolved(7, "93.184.215.14".parse().unwrap());
        conn.resolved(7, "127.0.0.1".parse().unwrap());
        assert!(connect(&conn, "93.184.215.14:443"));
        assert!(!connect(&conn, "93.184.215.14:80"));
        // A name pointed at a private address does not open it.
        assert!(!connect(&conn, "127.0.0.1:443"));
        // An address looked up as a name, on a reused stream id, gets
        // nothing from the name looked up before.
        conn.lookup_started(7, "8.8.8.8");
        conn.resolved(7, "8.8.8.8".parse().unwrap());
        assert!(!connect(&conn, "8.8.8.8:443"));
        assert!(!connect(&conn, "93.184.215.15:443"));
    }

    #[test]
    fn sockets_are_limited_per_connection_and_per_service() {
        let policy = policy(&["127.0.0.1:1"]);
        let (first, second) = (conn(&policy), conn(&policy));
        assert!(first.open_socket());
        assert!(first.open_socket());
        assert!(!first.open_socket(), "two per connection");
        assert!(second.open_socket());
        assert!(!second.open_socket(), "three per service");
        drop(first);
        assert!(second.open_socket(), "a connection's end frees its sockets");
    }

    #[test]
    fn gateways_to_private_networks_are_not_public() {
        for ip in [
            "64:ff9b::a00:5",
            "2002:a00:5::1",
            "2001:0:a00:5::1",
            "fec0::1",
            "192.0.0.8",
            "198.19.0.1",
            "10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn binds_and_udp_are_refused() {
        let policy = policy(&["127.0.0.1:1"]);
        let conn = conn(&policy);
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(conn.allows(any, SocketAddrUse::TcpBind));
        assert!(!conn.allows("0.0.0.0:8080".parse().unwrap(), SocketAddrUse::TcpBind));
        assert!(!conn.allows("127.0.0.1:1".parse().unwrap(), SocketAddrUse::UdpSend));
        let ungranted = ConnOutbound::new(None, denials());
        assert!(!ungranted.open_socket());
    }

    use std::sync::atomic::Ordering::Relaxed;
}

//! The rules of `grants.outbound`, as the operator writes them
//! (`HOST:PORT`), and what a name may resolve to without being listed.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// One entry of `grants.outbound`: a host (an address, a network, a name,
/// or every name under a domain) and a port.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub(super) host: Target,
    pub(super) port: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Target {
    Network(IpNet),
    Name(String),
    /// `*.example.com`, kept as `.example.com`.
    Under(String),
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Rule, String> {
        let problem = || {
            format!(
                "{text:?} is not an outbound grant: write HOST:PORT, where HOST is an IP address \
                 ([IPv6]), a CIDR network, a name or *.domain"
            )
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(problem)?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(problem)?;
        let host = host
            .strip_prefix('[')
            .and_then(|host| host.strip_suffix(']'))
            .unwrap_or(host);
        let target = if let Ok(net) = host.parse::<IpNet>() {
            Target::Network(net)
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            Target::Network(IpNet::from(ip))
        } else if let Some(domain) = host.strip_prefix("*.") {
            Target::Under(format!(".{}", domain_name(domain).ok_or_else(problem)?))
        } else {
            Target::Name(domain_name(host).ok_or_else(problem)?)
        };
        Ok(Rule { host: target, port })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Target::Network(net) if net.prefix_len() == net.max_prefix_len() => match net.addr() {
                IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
                IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
            },
            Target::Network(net) => write!(f, "{net}:{}", self.port),
            Target::Name(name) => write!(f, "{name}:{}", self.port),
            Target::Under(suffix) => write!(f, "*{suffix}:{}", self.port),
        }
    }
}

/// A DNS name in the form lookups are compared in (lower case, no final
/// dot), if `text` is one.
pub(super) fn domain_name(text: &str) -> Option<String> {
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    (name.len() <= 253 && name.split('.').all(label_ok)).then_some(name)
}

/// Whether `ip` is an address of the public internet: what a name may
/// resolve to without the operator listing the address itself.
pub(super) fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(ip) => {
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_documentation()
                || ip.is_multicast()
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (ip.octets()[0] == 100 && ip.octets()[1] & 0xc0 == 64)
                // IETF protocol assignments (192.0.0.0/24) and benchmarking
                // (198.18.0.0/15).
                || ip.octets()[..3] == [192, 0, 0]
                || (ip.octets()[0] == 198 && ip.octets()[1] & 0xfe == 18)
                || ip.octets()[0] == 0
                || ip.octets()[0] >= 240)
        }
        IpAddr::V6(ip) => {
            let [first, second, ..] = ip.segments();
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || ip.is_unique_local()
                || ip.is_unicast_link_local()
                // Site-local (fec0::/10, deprecated), documentation
                // (2001:db8::/32), and the prefixes that carry an IPv4
                // address to a gateway that may reach private networks:
                // NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16)
                // and Teredo (2001::/32).
                || first & 0xffc0 == 0xfec0
                || (first == 0x2001 && (second == 0xdb8 || second == 0))
                || (first == 0x64 && second == 0xff9b)
                || first == 0x2002)
        }
    }
}

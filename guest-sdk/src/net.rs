//! Outbound TCP connections, and waiting on several connections at once.
//!
//! A plugin may connect only where the operator granted its service
//! (`grants.outbound` in the host's config file, `--allow-outbound` on its
//! command line); anywhere else, [`TcpStream::connect`] fails with
//! `io::ErrorKind::PermissionDenied` and the host logs the attempt.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::time::Duration;

use crate::Connection;
use crate::bindings::wasi::clocks::monotonic_clock;
use crate::bindings::wasi::io::poll::{self, Pollable};
use crate::bindings::wasi::io::streams::{InputStream, OutputStream};
use crate::bindings::wasi::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress,
};
use crate::bindings::wasi::sockets::tcp::{ShutdownType, TcpSocket};
use crate::bindings::wasi::sockets::{instance_network, ip_name_lookup, tcp_create_socket};
use crate::connection::{Input, io_error, read_stream, try_read_stream, write_stream};

/// A TCP connection the plugin opened, as `std::net::TcpStream`: read and
/// write it with `std::io`, and wait on it beside the client with
/// [`wait_readable`].
pub struct TcpStream {
    // Declared before the socket: the streams are its children, and must
    // be dropped first.
    input: InputStream,
    output: OutputStream,
    socket: TcpSocket,
}

impl TcpStream {
    /// Connects to `address`, written `host:port` (`host` a name, an IPv4
    /// address or a bracketed IPv6 one), trying each address a name
    /// resolves to and waiting at most `timeout` for each.
    pub fn connect(address: &str, timeout: Duration) -> io::Result<TcpStream> {
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{address:?} is not HOST:PORT"),
                )
            })?;
        let host = host
            .strip_prefix('[')
            .and_then(|host| host.strip_suffix(']'))
            .unwrap_or(host);
        let network = instance_network::instance_network();
        let mut last_error =
            io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
        for ip in resolve(&network, host)? {
            match connect_to(&network, ip, port, timeout) {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    /// Reads what the peer has sent without waiting: `Ok(0)` at its end, an
    /// error of kind `WouldBlock` if nothing is there yet. For use after
    /// [`wait_readable`], which may wake early.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        try_read_stream(&self.input, buf)
    }

    /// Tells the peer nothing more will be sent (a TCP half-close); reading
    /// goes on.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.output.blocking_flush().map_err(io_error)?;
        self.socket
            .shutdown(ShutdownType::Send)
            .map_err(socket_error)
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        read_stream(&self.input, buf)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_stream(&self.output, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.output.blocking_flush().map_err(io_error)
    }
}

/// Something [`wait_readable`] can wait on: the client [`Connection`], its
/// [`Input`], a [`TcpStream`], or a
/// [`Subscription`](crate::pubsub::Subscription).
pub trait Readable {
    /// A pollable that is ready when a read would not wait.
    #[doc(hidden)]
    fn readable(&self) -> Pollable;
}

impl Readable for TcpStream {
    fn readable(&self) -> Pollable {
        self.input.subscribe()
    }
}

impl Readable for Input<'_> {
    fn readable(&self) -> Pollable {
        self.wasi_stream().subscribe()
    }
}

impl Readable for Connection<'_> {
    fn readable(&self) -> Pollable {
        self.input().readable()
    }
}

/// Waits until at least one of `sources` may have something to read (data,
/// or its end), and returns the positions in `sources` of those that may.
/// This is how one plugin serves its client and a backend at once, as
/// `select` or `poll` would. As with `poll`, a wake-up can be early: read
/// the sources it names with `try_read`, which says `WouldBlock` then.
pub fn wait_readable(sources: &[&dyn Readable]) -> Vec<usize> {
    let pollables: Vec<Pollable> = sources.iter().map(|source| source.readable()).collect();
    let pollables: Vec<&Pollable> = pollables.iter().collect();
    poll::poll(&pollables)
        .into_iter()
        .map(|index| index as usize)
        .collect()
}

/// The addresses `host` stands for.
fn resolve(network: &instance_network::Network, host: &str) -> io::Result<Vec<IpAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let lookup = ip_name_lookup::resolve_addresses(network, host).map_err(socket_error)?;
    let mut addresses = Vec::new();
    loop {
        match lookup.resolve_next_address() {
            Ok(Some(IpAddress::Ipv4((a, b, c, d)))) => addresses.push(IpAddr::from([a, b, c, d])),
            Ok(Some(IpAddress::Ipv6((a, b, c, d, e, f, g, h)))) => {
                addresses.push(IpAddr::from([a, b, c, d, e, f, g, h]))
            }
            Ok(None) => return Ok(addresses),
            Err(ErrorCode::WouldBlock) => lookup.subscribe().block(),
            Err(code) => return Err(socket_error(code)),
        }
    }
}

fn connect_to(
    network: &instance_network::Network,
    ip: IpAddr,
    port: u16,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let (family, address) = match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            (
                IpAddressFamily::Ipv4,
                IpSocketAddress::Ipv4(Ipv4SocketAddress {
                    port,
                    address: (a, b, c, d),
                }),
            )
        }
        IpAddr::V6(ip) => {
            let [a, b, c, d, e, f, g, h] = ip.segments();
            (
                IpAddressFamily::Ipv6,
                IpSocketAddress::Ipv6(Ipv6SocketAddress {
                    port,
                    address: (a, b, c, d, e, f, g, h),
                    flow_info: 0,
                    scope_id: 0,
                }),
            )
        }
    };
    let socket = tcp_create_socket::create_tcp_socket(family).map_err(socket_error)?;
    socket
        .start_connect(network, address)
        .map_err(socket_error)?;
    let connected = socket.subscribe();
    let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let deadline = monotonic_clock::subscribe_duration(nanos);
    let (input, output) = loop {
        match socket.finish_connect() {
            Ok(streams) => break streams,
            Err(ErrorCode::WouldBlock) => {
                if !poll::poll(&[&connected, &deadline]).contains(&0) {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {ip} port {port} timed out"),
                    ));
                }
            }
            Err(code) => return Err(socket_error(code)),
        }
    };
    drop((connected, deadline));
    Ok(TcpStream {
        input,
        output,
        socket,
    })
}

fn socket_error(code: ErrorCode) -> io::Error {
    let kind = match code {
        ErrorCode::AccessDenied => io::ErrorKind::PermissionDenied,
        ErrorCode::ConnectionRefused => io::ErrorKind::ConnectionRefused,
        ErrorCode::ConnectionReset => io::ErrorKind::ConnectionReset,
        ErrorCode::Timeout => io::ErrorKind::TimedOut,
        ErrorCode::NameUnresolvable => io::ErrorKind::NotFound,
        ErrorCode::NewSocketLimit => io::ErrorKind::QuotaExceeded,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, code.name())
}

//! The PROXY protocol (versions 1 and 2): a load balancer in front of the
//! host starts each connection with a header giving the client's address,
//! which then stands for the socket's peer address everywhere.
//!
//! Only peers the service trusts may send one, and on a listener that
//! expects it every connection must: a header from anyone else could forge
//! any address. The header is read under a timeout before anything else
//! (before TLS), and exactly to its end, so that what follows it is left
//! for the TLS handshake or the plugin. Parsing is the `ppp` crate's.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use ipnet::IpNet;
use ppp::v1;
use ppp::v2;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// A listener's PROXY protocol settings, as the config gives them.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySpec {
    pub v1: bool,
    pub v2: bool,
    /// The peers that may send a header: the proxies.
    pub trusted: Vec<IpNet>,
    /// How long a proxy may take to send the whole header.
    pub timeout: Duration,
}

/// How long a proxy may take to send its header, unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The signature that starts every version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A version 2 header's fixed part: signature, version and command,
/// family and protocol, and the length of what follows.
const V2_FIXED_BYTES: usize = 16;
/// Most bytes of addresses and TLVs accepted after the fixed part.
/// HAProxy's own (addresses, unique id, TLS details) fit in far less; a
/// longer one is refused rather than buffered.
const V2_MAX_VARIABLE_BYTES: usize = 2048;
/// The shortest version 1 header, `PROXY UNKNOWN\r\n`: this much can be
/// read at once without reading past the end of any header.
const V1_SHORTEST: usize = 15;
/// The longest version 1 header the specification allows.
const V1_LONGEST: usize = 107;

/// The addresses a header gave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Addresses {
    /// The client.
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
}

/// Where a header is read from: the client's socket, or (in the fuzz
/// tests) bytes that arrive in pieces.
pub trait HeaderSource: AsyncRead + Unpin + Send {
    /// Copies into `buf` what has arrived and not been read, leaving it to
    /// be read; waits for at least one byte (0 at the end).
    fn peek(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
}

impl HeaderSource for TcpStream {
    fn peek(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send {
        TcpStream::peek(self, buf)
    }
}

impl ProxySpec {
    /// Whether `peer` may send a header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|net| net.contains(&peer))
    }

    /// Reads the header that starts `tcp`, and nothing after it. `None`
    /// when it gives no addresses: a proxy's own health check (v2 `LOCAL`)
    /// or `UNKNOWN`, for which the socket's addresses stand.
    pub async fn read_header(&self, tcp: &mut impl HeaderSource) -> Result<Option<Addresses>> {
        tokio::time::timeout(self.timeout, self.read(tcp))
            .await
            .map_err(|_| anyhow!("no complete header within {:?}", self.timeout))?
    }

    async fn read(&self, tcp: &mut impl HeaderSource) -> Result<Option<Addresses>> {
        let mut header = vec![0; V1_SHORTEST];
        read_exact(tcp, &mut header).await?;
        if header.starts_with(V2_SIGNATURE) {
            if !self.v2 {
                bail!("a version 2 header, and the listener takes only version 1");
            }
            header.resize(V2_FIXED_BYTES, 0);
            read_exact(tcp, &mut header[V1_SHORTEST..]).await?;
            let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
            if length > V2_MAX_VARIABLE_BYTES {
                bail!(
                    "a version 2 header of {length} bytes after its fixed part, more than the {V2_MAX_VARIABLE_BYTES} accepted"
                );
            }
            header.resize(V2_FIXED_BYTES + length, 0);
            read_exact(tcp, &mut header[V2_FIXED_BYTES..]).await?;
            let parsed = v2::Header::try_from(&header[..])
                .map_err(|error| anyhow!("a malformed version 2 header: {error}"))?;
            Ok(v2_addresses(&parsed))
        } else if header.starts_with(b"PROXY ") {
            if !self.v1 {
                bail!("a version 1 header, and the listener takes only version 2");
            }
            read_line_end(tcp, &mut header).await?;
            let parsed = v1::Header::try_from(&header[..])
                .map_err(|error| anyhow!("a malformed version 1 header: {error}"))?;
            Ok(v1_addresses(&parsed))
        } else {
            bail!("no PROXY protocol header")
        }
    }
}

async fn read_exact(tcp: &mut impl HeaderSource, buf: &mut [u8]) -> Result<()> {
    match tcp.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            bail!("the connection ended inside the header")
        }
        Err(error) => Err(anyhow!("reading the header: {error}")),
    }
}

/// Reads the rest of a version 1 header, up to and including its CRLF.
/// Where the end is already in the socket's buffer (as when the proxy sent
/// the header in one piece, as proxies do), one read takes it; otherwise
/// bytes are read one at a time, so that none past the end is taken.
async fn read_line_end(tcp: &mut impl HeaderSource, header: &mut Vec<u8>) -> Result<()> {
    if header.ends_with(b"\r\n") {
        return Ok(());
    }
    let mut peeked = [0; V1_LONGEST - V1_SHORTEST];
    let available = tcp.peek(&mut peeked).await?;
    let mut rest = &peeked[..available];
    if header.ends_with(b"\r") && rest.first() == Some(&b'\n') {
        rest = &rest[..1];
    } else if let Some(end) = rest.windows(2).position(|pair| pair == b"\r\n") {
        rest = &rest[..end + 2];
    } else {
        rest = &[];
    }
    if !rest.is_empty() {
        let start = header.len();
        header.resize(start + rest.len(), 0);
        return read_exact(tcp, &mut header[start..]).await;
    }
    while !header.ends_with(b"\r\n") {
        if header.len() >= V1_LONGEST {
            bail!("a version 1 header longer than {V1_LONGEST} bytes");
        }
        let mut byte = [0];
        read_exact(tcp, &mut byte).await?;
        header.push(byte[0]);
    }
    Ok(())
}

fn v1_addresses(header: &v1::Header<'_>) -> Option<Addresses> {
    match header.addresses {
        v1::Addresses::Tcp4(ip) => Some(Addresses {
            source: (ip.source_address, ip.source_port).into(),
            destination: (ip.destination_address, ip.destination_port).into(),
        }),
        v1::Addresses::Tcp6(ip) => Some(Addresses {
            source: (ip.source_address, ip.source_port).into(),
            destination: (ip.destination_address, ip.destination_port).into(),
        }),
        v1::Addresses::Unknown => None,
    }
}

fn v2_addresses(header: &v2::Header<'_>) -> Option<Addresses> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(ip) => Some(Addresses {
            source: (ip.source_address, ip.source_port).into(),
            destination: (ip.destination_address, ip.destination_port).into(),
        }),
        v2::Addresses::IPv6(ip) => Some(Addresses {
            source: (ip.source_address, ip.source_port).into(),
            destination: (ip.destination_address, ip.destination_port).into(),
        }),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    fn spec() -> ProxySpec {
        ProxySpec {
            v1: true,
            v2: true,
            trusted: vec!["127.0.0.1/32".parse().unwrap()],
            timeout: Duration::from_secs(2),
        }
    }

    /// Sends `sent` (in pieces, split where `splits` say) on a real socket,
    /// reads a header off the other end, and returns it with the bytes
    /// left after it.
    async fn received(sent: &[u8], splits: &[usize]) -> (Result<Option<Addresses>>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let sent = sent.to_vec();
        let splits = splits.to_vec();
        let writer = tokio::spawn(async move {
            let mut from = 0;
            for at in splits.into_iter().chain([sent.len()]) {
                client.write_all(&sent[from..at]).await.unwrap();
                from = at;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client.shutdown().await.unwrap();
        });
        let header = spec().read_header(&mut server).await;
        let mut rest = Vec::new();
        if header.is_ok() {
            server.read_to_end(&mut rest).await.unwrap();
        }
        writer.await.unwrap();
        (header, rest)
    }

    #[tokio::test]
    async fn a_v1_header_gives_the_client_and_leaves_what_follows() {
        let sent = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 7000\r\nhello";
        for splits in [&[][..], &[20], &[42], &[5, 30]] {
            let (header, rest) = received(sent, splits).await;
            let addresses = header.unwrap().unwrap();
            assert_eq!(addresses.source, "192.0.2.7:40000".parse().unwrap());
            assert_eq!(addresses.destination, "127.0.0.1:7000".parse().unwrap());
            assert_eq!(rest, b"hello", "split at {splits:?}");
        }
    }

    #[tokio::test]
    async fn a_v2_header_gives_the_client_and_leaves_what_follows() {
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "[2001:db8::1]:5000".parse::<SocketAddr>().unwrap(),
                "[::1]:7000".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut sent = header.clone();
        sent.extend_from_slice(b"\x16\x03\x01");
        let (parsed, rest) = received(&sent, &[10]).await;
        let addresses = parsed.unwrap().unwrap();
        assert_eq!(addresses.source, "[2001:db8::1]:5000".parse().unwrap());
        assert_eq!(rest, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn local_and_unknown_headers_give_no_address() {
        let (header, rest) = received(b"PROXY UNKNOWN\r\nx", &[]).await;
        assert_eq!(header.unwrap(), None);
        assert_eq!(rest, b"x");
        let local = v2::Builder::new(
            v2::Version::Two | v2::Command::Local,
            v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(received(&local, &[]).await.0.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_headers_are_refused() {
        let mut oversized = V2_SIGNATURE.to_vec();
        oversized.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        oversized.extend(vec![0; 100]);
        let cases: [(&[u8], &str); 5] = [
            (b"GET / HTTP/1.1\r\n\r\n", "no PROXY protocol header"),
            (b"PROXY TCP4 1.2.3.4\r\n", "malformed version 1"),
            (
                &[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(30),
                "longer than 107",
            ),
            (&oversized, "more than the 2048 accepted"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", "ended inside the header"),
        ];
        for (sent, expected) in cases {
            let (header, _) = received(sent, &[]).await;
            let error = format!("{:#}", header.unwrap_err());
            assert!(error.contains(expected), "{error:?} for {sent:?}");
        }
    }

    #[test]
    fn only_trusted_peers_may_send_one() {
        assert!(spec().trusts("127.0.0.1".parse().unwrap()));
        assert!(spec().trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!spec().trusts("127.0.0.2".parse().unwrap()));
    }
}

//! The PROXY protocol reader, on bytes of any length that arrive split at
//! any points, as a proxy's (or an attacker's) packets would.
//!
//! Properties: it never takes a byte past the header it accepts (what it
//! read is exactly one version 1 line or one version 2 header), and what
//! it accepts comes back the same through the `ppp` crate's encoder.

#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portico_host::net::proxy_protocol::{Addresses, HeaderSource, ProxySpec};
use ppp::{v1, v2};
use tokio::io::{AsyncRead, ReadBuf};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Where the bytes are split into the pieces that arrive one by one.
    splits: Vec<u16>,
    v1: bool,
    v2: bool,
    bytes: Vec<u8>,
}

/// The version 2 signature, which starts every version 2 header.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
});

fuzz_target!(|input: Input| {
    let spec = ProxySpec {
        v1: input.v1,
        v2: input.v2,
        trusted: Vec::new(),
        timeout: Duration::from_secs(5),
    };
    let mut ends: Vec<usize> = input.splits.iter().map(|&at| usize::from(at)).collect();
    ends.sort_unstable();
    let mut source = Pieces::new(&input.bytes, ends);
    let Ok(addresses) = RUNTIME.block_on(spec.read_header(&mut source)) else {
        return;
    };
    let taken = source.taken;
    assert_eq!(
        taken,
        header_length(&input.bytes).expect("an accepted header has an end"),
        "read past (or short of) the header's end in {:?}",
        input.bytes
    );
    if let Some(addresses) = addresses {
        round_trip(&spec, addresses, &input.bytes[..taken]);
    }
});

/// Where the header that starts `bytes` ends, found independently of the
/// reader: a version 2 header's length field, or a version 1 line's CRLF.
fn header_length(bytes: &[u8]) -> Option<usize> {
    if bytes.starts_with(V2_SIGNATURE) {
        let length = u16::from_be_bytes([*bytes.get(14)?, *bytes.get(15)?]);
        return Some(16 + usize::from(length));
    }
    bytes
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|at| at + 2)
}

/// Encodes `addresses` with `ppp`, in the version `header` used, reads it
/// back, and checks the same addresses come out of exactly that many bytes.
fn round_trip(spec: &ProxySpec, addresses: Addresses, header: &[u8]) {
    let (source, destination) = (addresses.source, addresses.destination);
    let encoded = if header.starts_with(V2_SIGNATURE) {
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (source, destination),
        )
        .build()
        .expect("ppp encodes what it parsed")
    } else {
        let addresses = v1::Addresses::from((source, destination));
        assert_ne!(
            addresses,
            v1::Addresses::Unknown,
            "mixed families in {header:?}"
        );
        addresses.to_string().into_bytes()
    };
    let mut again = Pieces::new(&encoded, Vec::new());
    let reread = RUNTIME
        .block_on(spec.read_header(&mut again))
        .unwrap_or_else(|error| panic!("ppp's encoding {encoded:?} is refused: {error:#}"));
    assert_eq!(reread, Some(addresses), "{header:?} against {encoded:?}");
    assert_eq!(again.taken, encoded.len());
}

/// Bytes that arrive in pieces: a read or peek sees what has arrived; once
/// all of it is read, the next piece arrives.
struct Pieces<'a> {
    bytes: &'a [u8],
    /// Where each piece ends, in order.
    ends: Vec<usize>,
    arrived: usize,
    taken: usize,
}

impl<'a> Pieces<'a> {
    fn new(bytes: &'a [u8], ends: Vec<usize>) -> Self {
        Self {
            bytes,
            ends,
            arrived: 0,
            taken: 0,
        }
    }

    /// Lets the next piece arrive if everything that had is read.
    fn arrive(&mut self) {
        if self.taken == self.arrived {
            self.arrived = self
                .ends
                .iter()
                .copied()
                .find(|&end| end > self.arrived && end < self.bytes.len())
                .unwrap_or(self.bytes.len());
        }
    }

    fn waiting(&self) -> &[u8] {
        &self.bytes[self.taken..self.arrived]
    }
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.arrive();
        let n = self.waiting().len().min(buf.remaining());
        buf.put_slice(&self.waiting()[..n]);
        self.taken += n;
        Poll::Ready(Ok(()))
    }
}

impl HeaderSource for Pieces<'_> {
    async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arrive();
        let n = self.waiting().len().min(buf.len());
        buf[..n].copy_from_slice(&self.waiting()[..n]);
        Ok(n)
    }
}

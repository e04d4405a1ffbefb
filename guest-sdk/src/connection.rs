//! The client connection a plugin serves, as `std::io` types.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::bindings::portico::plugin::connection;
pub use crate::bindings::portico::plugin::connection::{ClientCertificate, TlsSession};
use crate::bindings::portico::plugin::types::ConnectionInfo;
use crate::bindings::wasi::clocks::monotonic_clock;
use crate::bindings::wasi::io::poll;
use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};

/// One TCP connection, lent to the plugin for the duration of
/// [`Handler::run`](crate::Handler::run).
///
/// It reads and writes like a `std::net::TcpStream`: wrap it in a
/// `BufReader`, hand it to `io::copy`, or [`split`](Connection::split) it to
/// read and write through separate handles. Reading returns `Ok(0)` once the
/// client has finished sending; writing fails with `BrokenPipe` once the
/// client has gone.
pub struct Connection<'a> {
    info: ConnectionInfo,
    input: Input<'a>,
    output: Output<'a>,
}

/// The reading half of a [`Connection`].
pub struct Input<'a> {
    stream: &'a InputStream,
    timeout: Option<Duration>,
}

/// The writing half of a [`Connection`].
pub struct Output<'a> {
    stream: &'a OutputStream,
}

impl<'a> Connection<'a> {
    pub(crate) fn new(
        info: ConnectionInfo,
        input: &'a InputStream,
        output: &'a OutputStream,
    ) -> Self {
        Self {
            info,
            input: Input {
                stream: input,
                timeout: None,
            },
            output: Output { stream: output },
        }
    }

    /// The host's number for this connection; its log lines about the
    /// connection carry it as `conn=ID`.
    pub fn id(&self) -> u64 {
        self.info.id
    }

    /// The client's address (behind a trusted proxy that sends a PROXY
    /// protocol header, the one the header gives).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        parse_addr(&self.info.peer_address)
    }

    /// The host's address that the client connected to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        parse_addr(&self.info.local_address)
    }

    /// What the TLS handshake established (server name, ALPN protocol,
    /// client certificate...), on a TLS listener; `None` on a plain one.
    /// The host needs contract 0.3.0 or later.
    pub fn tls(&self) -> Option<TlsSession> {
        connection::tls()
    }

    /// Whether [`peer_addr`](Self::peer_addr) and
    /// [`local_addr`](Self::local_addr) came from a PROXY protocol header
    /// that a trusted proxy sent, rather than from the socket. The host
    /// needs contract 0.3.0 or later.
    pub fn proxied(&self) -> bool {
        connection::proxied()
    }

    /// Makes reads wait at most `timeout` for data, then fail with
    /// `io::ErrorKind::TimedOut`; `None` (the default) waits for ever. As
    /// with `TcpStream::set_read_timeout`, this is how a plugin stops waiting
    /// for a client that has gone quiet.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.input.timeout = timeout;
    }

    pub(crate) fn input(&self) -> &Input<'a> {
        &self.input
    }

    /// The reading and the writing half, to use both at once (as
    /// `io::copy(input, output)` does).
    pub fn split(&mut self) -> (&mut Input<'a>, &mut Output<'a>) {
        (&mut self.input, &mut self.output)
    }
}

impl Read for Connection<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Connection<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.output.flush()
    }
}

impl Input<'_> {
    /// The `wasi:io` stream underneath. Not a stable API: the test plugins
    /// use it to misuse the stream as a hostile plugin would.
    #[doc(hidden)]
    pub fn wasi_stream(&self) -> &InputStream {
        self.stream
    }

    /// Waits until input is ready or `timeout` has passed.
    fn wait(&self, timeout: Duration) -> io::Result<()> {
        let readable = self.stream.subscribe();
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let timer = monotonic_clock::subscribe_duration(nanos);
        if poll::poll(&[&readable, &timer]).contains(&0) {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
        }
    }
}

impl Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(timeout) = self.timeout {
            self.wait(timeout)?;
        }
        read_stream(self.stream, buf)
    }
}

impl Input<'_> {
    /// Reads what the client has sent without waiting: `Ok(0)` at its end,
    /// an error of kind `WouldBlock` if nothing is there yet. For use after
    /// [`wait_readable`](crate::net::wait_readable), which may wake early.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        try_read_stream(self.stream, buf)
    }
}

/// Reads what `stream` has without waiting; `Ok(0)` at its end.
pub(crate) fn try_read_stream(stream: &InputStream, buf: &mut [u8]) -> io::Result<usize> {
    let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
    match stream.read(len) {
        Ok(bytes) if bytes.is_empty() && !buf.is_empty() => {
            Err(io::Error::from(io::ErrorKind::WouldBlock))
        }
        Ok(bytes) => {
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }
        Err(StreamError::Closed) => Ok(0),
        Err(error) => Err(io_error(error)),
    }
}

/// Reads what `stream` has, waiting for at least a byte; `Ok(0)` at its end.
pub(crate) fn read_stream(stream: &InputStream, buf: &mut [u8]) -> io::Result<usize> {
    let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
    match stream.blocking_read(len) {
        Ok(bytes) => {
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }
        Err(StreamError::Closed) => Ok(0),
        Err(error) => Err(io_error(error)),
    }
}

impl Output<'_> {
    /// The `wasi:io` stream underneath. Not a stable API: the test plugins
    /// use it to misuse the stream as a hostile plugin would.
    #[doc(hidden)]
    pub fn wasi_stream(&self) -> &OutputStream {
        self.stream
    }
}

impl Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_stream(self.stream, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.blocking_flush().map_err(io_error)
    }
}

/// Writes as much of `buf` as `stream` takes now, waiting until it takes
/// at least a byte.
pub(crate) fn write_stream(stream: &OutputStream, buf: &[u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let permit = loop {
        match stream.check_write().map_err(io_error)? {
            0 => stream.subscribe().block(),
            permit => break permit,
        }
    };
    let len = buf.len().min(usize::try_from(permit).unwrap_or(usize::MAX));
    stream.write(&buf[..len]).map_err(io_error)?;
    Ok(len)
}

pub(crate) fn io_error(error: StreamError) -> io::Error {
    match error {
        StreamError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"),
        StreamError::LastOperationFailed(error) => io::Error::other(error.to_debug_string()),
    }
}

fn parse_addr(text: &str) -> io::Result<SocketAddr> {
    text.parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad address {text:?}")))
}

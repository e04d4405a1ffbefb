//! The client socket as the `wasi:io/streams` a plugin's `run` borrows.
//!
//! These stream types sit directly on tokio's readiness API (`readable` and
//! `try_read`, `writable` and `try_write`): no task per stream, no buffer
//! beyond what one read or one pending write needs. wasmtime-wasi's generic
//! `AsyncReadStream`/`AsyncWriteStream` spawn a task per stream and
//! allocate 64 KiB per read, which a per-connection server cannot afford.
//!
//! On a TLS listener the same streams carry plaintext: rustls decrypts what
//! the socket has and encrypts what the plugin writes, in the calls
//! themselves, on the same readiness.

use std::io;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use rustls::ServerConnection;
use tokio::net::TcpStream;
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// Most bytes handed to the plugin by one read, whatever size it asks for.
const MAX_READ_BYTES: usize = 64 * 1024;

/// Most bytes the host holds for a client that is not reading: one write's
/// worth. A plugin may not write again until they have reached the socket.
pub const MAX_PENDING_BYTES: usize = 64 * 1024;

/// One accepted connection, shared by its two streams and the host task
/// that serves it.
pub struct Socket {
    tcp: TcpStream,
    /// The TLS session, on a TLS listener. Boxed: a session is 1.2 KB,
    /// which a plain TCP connection would otherwise carry for nothing.
    tls: Option<Mutex<Box<ServerConnection>>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// The client has finished sending (end-of-file or reset was read).
    input_ended: AtomicBool,
    /// When the socket was accepted; activity is timed from here.
    accepted: Instant,
    /// Milliseconds from `accepted` to the last byte moved either way.
    last_activity_ms: AtomicU64,
    /// Bytes the plugin wrote that have not reached the socket yet.
    unsent: AtomicUsize,
    /// Whether the client's address came from a PROXY protocol header.
    proxied: bool,
}

impl Socket {
    pub fn new(tcp: TcpStream, tls: Option<Box<ServerConnection>>, proxied: bool) -> Arc<Self> {
        Arc::new(Self {
            tcp,
            tls: tls.map(Mutex::new),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            input_ended: AtomicBool::new(false),
            accepted: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            unsent: AtomicUsize::new(0),
            proxied,
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether the client's address came from a PROXY protocol header.
    pub fn proxied(&self) -> bool {
        self.proxied
    }

    /// Bytes received from the client so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes sent to the client so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Bytes the plugin wrote that have not reached the socket yet.
    pub fn unsent(&self) -> usize {
        self.unsent.load(Ordering::Relaxed)
    }

    /// Whether the client has finished sending.
    pub fn input_ended(&self) -> bool {
        self.input_ended.load(Ordering::Relaxed)
    }

    /// Resolves once no byte has moved either way for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
            let quiet_for = self.accepted.elapsed().saturating_sub(last);
            if quiet_for >= timeout {
                return;
            }
            tokio::time::sleep(timeout - quiet_for).await;
        }
    }

    fn moved(&self, counter: &AtomicU64, bytes: usize) {
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
        let now = self.accepted.elapsed().as_millis() as u64;
        self.last_activity_ms.store(now, Ordering::Relaxed);
    }

    /// Reads what the client has sent into `chunk`, without waiting. A read
    /// that returns less than `size` has emptied TCP's receive queue, and
    /// the socket is then marked not readable. Otherwise tokio believes it
    /// readable until a read fails with `WouldBlock`, and the plugin's next
    /// `blocking-read` would make that read (a system call) before it
    /// waits: one per request of every request-response exchange. The mark
    /// is made as the read's own `WouldBlock`, inside `try_io`, so that
    /// bytes tokio learns of after the read began leave the socket readable.
    fn read_marking_drained(&self, chunk: &mut BytesMut, size: usize) -> io::Result<usize> {
        let mut short_read = None;
        let read = self.tcp.try_io(tokio::io::Interest::READABLE, || {
            let n = self.tcp.try_read_buf(chunk)?;
            if n > 0 && n < size {
                short_read = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match (read, short_read) {
            (Err(error), Some(n)) if error.kind() == io::ErrorKind::WouldBlock => Ok(n),
            (read, _) => read,
        }
    }

    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.tcp.try_write(bytes)?;
        self.moved(&self.bytes_out, written);
        Ok(written)
    }

    /// The TLS session, if any. Its lock is never held across an await.
    pub fn tls(&self) -> Option<MutexGuard<'_, Box<ServerConnection>>> {
        let tls = self.tls.as_ref()?;
        Some(tls.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The socket as `Read` and `Write` that never wait.
    pub fn tcp_io(&self) -> TcpIo<'_> {
        TcpIo(&self.tcp)
    }

    /// Reads plaintext into `chunk`: what rustls holds decrypted, else what
    /// the socket has, decrypted. `Ok(0)` at the end of the client's data.
    fn tls_read(
        &self,
        tls: &mut ServerConnection,
        chunk: &mut BytesMut,
        size: usize,
    ) -> io::Result<usize> {
        chunk.resize(size, 0);
        loop {
            match tls.reader().read(chunk) {
                Ok(n) => {
                    chunk.truncate(n);
                    self.moved(&self.bytes_in, n);
                    return Ok(n);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The client closed the TCP connection without TLS's
                // close_notify: the end of its data all the same.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    chunk.clear();
                    return Ok(0);
                }
                Err(error) => {
                    chunk.clear();
                    return Err(error);
                }
            }
            let read = tls
                .read_tls(&mut TcpIo(&self.tcp))
                .inspect_err(|_| chunk.clear())?;
            let processed = tls.process_new_packets();
            // Alerts and key updates the session owes the client.
            let _ = self.tls_send(tls);
            processed.map_err(io::Error::other)?;
            if read == 0 {
                // The next `reader().read` reports how the client ended.
                continue;
            }
        }
    }

    /// Sends what rustls has encrypted, as far as the socket takes it now.
    fn tls_send(&self, tls: &mut ServerConnection) -> io::Result<()> {
        while tls.wants_write() {
            tls.write_tls(&mut TcpIo(&self.tcp))?;
        }
        Ok(())
    }

    /// Whether rustls holds decrypted bytes, or the client's end, to read.
    fn tls_readable(tls: &mut ServerConnection) -> bool {
        tls.process_new_packets().map_or(true, |state| {
            state.plaintext_bytes_to_read() > 0 || state.peer_has_closed()
        })
    }
}

/// What a client did to a connection that nobody was reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClientEvent {
    /// It sent bytes.
    Data,
    /// It half-closed or closed the connection, or the connection failed.
    Closed,
}

impl Socket {
    /// Waits until the client sends bytes or closes, and takes nothing: the
    /// bytes stay for the next reader. On TLS, records that carry no
    /// plaintext (key updates, say) are processed and do not count.
    pub async fn client_event(&self) -> ClientEvent {
        if self.input_ended() {
            return ClientEvent::Closed;
        }
        if self.tls.is_none() {
            return match self.tcp.peek(&mut [0]).await {
                Ok(0) | Err(_) => ClientEvent::Closed,
                Ok(_) => ClientEvent::Data,
            };
        }
        loop {
            if let Some(event) = self.tls_event() {
                return event;
            }
            if self.tcp.readable().await.is_err() {
                return ClientEvent::Closed;
            }
            let Some(mut tls) = self.tls() else {
                return ClientEvent::Closed;
            };
            match tls.read_tls(&mut TcpIo(&self.tcp)) {
                Ok(0) => return ClientEvent::Closed,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return ClientEvent::Closed,
            }
        }
    }

    /// What the TLS session holds for a reader: plaintext, the client's
    /// end, or nothing yet (`None`).
    fn tls_event(&self) -> Option<ClientEvent> {
        let mut tls = self.tls()?;
        let state = tls.process_new_packets();
        // Alerts and key updates the session owes the client.
        let _ = self.tls_send(&mut tls);
        match state {
            Err(_) => Some(ClientEvent::Closed),
            Ok(state) if state.plaintext_bytes_to_read() > 0 => Some(ClientEvent::Data),
            Ok(state) if state.peer_has_closed() => Some(ClientEvent::Closed),
            Ok(_) => None,
        }
    }
}

/// The socket as blocking-style `Read` and `Write` for rustls, on tokio's
/// non-blocking `try_read` and `try_write` (which say `WouldBlock`).
pub struct TcpIo<'a>(&'a TcpStream);

impl Read for TcpIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TcpIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether an I/O error means the client is gone, which a plugin sees as
/// the stream being closed rather than as a failure.
fn is_disconnect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

fn stream_error(error: io::Error) -> StreamError {
    if is_disconnect(&error) {
        StreamError::Closed
    } else {
        StreamError::LastOperationFailed(error.into())
    }
}

/// The socket as a WASI command's stdin and stdout. Every stdout handle
/// the command opens writes through one [`SocketOutput`]: however many it
/// opens, the host holds at most one write's worth for the client, bytes
/// leave in the order written, and the host flushes what is left when the
/// command ends ([`SocketStdio::output`]).
#[derive(Clone)]
pub struct SocketStdio {
    socket: Arc<Socket>,
    output: SharedOutput,
}

impl SocketStdio {
    pub fn new(socket: Arc<Socket>) -> Self {
        let output = SharedOutput(Arc::new(Mutex::new(SocketOutput::new(socket.clone()))));
        Self { socket, output }
    }

    /// The stdout every handle shares.
    pub fn output(&self) -> SharedOutput {
        self.output.clone()
    }
}

impl IsTerminal for SocketStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for SocketStdio {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(SocketInput::new(self.socket.clone()))
    }

    /// Only WASI 0.3's stdin reads this, and the host links WASI 0.2 alone.
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        Box::new(tokio::io::empty())
    }
}

impl StdoutStream for SocketStdio {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.output())
    }

    /// Only WASI 0.3's stdout writes this, and the host links WASI 0.2 alone.
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

/// One [`SocketOutput`] behind several stream handles.
#[derive(Clone)]
pub struct SharedOutput(Arc<Mutex<SocketOutput>>);

impl SharedOutput {
    fn lock(&self) -> MutexGuard<'_, SocketOutput> {
        // Each call leaves the output consistent before anything that could
        // panic, so a poisoned lock holds good data.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for SharedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.lock().write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.lock().flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.lock().check_write()
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SharedOutput {
    /// As [`SocketOutput`]'s, without holding the lock while it waits.
    async fn ready(&mut self) {
        loop {
            let socket = {
                let mut output = self.lock();
                if output.closed || !output.has_unsent() {
                    return;
                }
                output.socket.clone()
            };
            if socket.tcp.writable().await.is_err() {
                return;
            }
            // An error closes the stream, which the next call reports.
            let _ = self.lock().send_pending();
        }
    }
}

/// The `input-stream` a plugin reads the client's bytes from.
pub struct SocketInput {
    socket: Arc<Socket>,
    closed: bool,
}

impl SocketInput {
    pub fn new(socket: Arc<Socket>) -> Self {
        Self {
            socket,
            closed: false,
        }
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for SocketInput {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        let size = size.min(MAX_READ_BYTES);
        // Uninitialised capacity: tokio reads into it without zeroing first.
        let mut chunk = BytesMut::with_capacity(size);
        let read = match self.socket.tls() {
            Some(mut tls) => self.socket.tls_read(&mut tls, &mut chunk, size),
            None => self
                .socket
                .read_marking_drained(&mut chunk, size)
                .inspect(|&n| self.socket.moved(&self.socket.bytes_in, n)),
        };
        match read {
            Ok(0) if size > 0 => {
                self.closed = true;
                self.socket.input_ended.store(true, Ordering::Relaxed);
                Err(StreamError::Closed)
            }
            Ok(_) => Ok(chunk.freeze()),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(Bytes::new()),
            Err(error) => {
                self.closed = true;
                self.socket.input_ended.store(true, Ordering::Relaxed);
                Err(stream_error(error))
            }
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SocketInput {
    async fn ready(&mut self) {
        if self.closed {
            return;
        }
        if let Some(mut tls) = self.socket.tls()
            && Socket::tls_readable(&mut tls)
        {
            return;
        }
        // An error here shows up again on the next read, which reports it.
        let _ = self.socket.tcp.readable().await;
    }
}

/// The `output-stream` a plugin writes to the client with.
///
/// A write goes straight to the socket; what the socket does not take at
/// once is kept (at most [`MAX_PENDING_BYTES`]) and `check-write` grants
/// nothing more until it has been sent. So a client that stops reading
/// holds the plugin up through flow control and never grows the host's
/// memory.
pub struct SocketOutput {
    socket: Arc<Socket>,
    pending: Bytes,
    closed: bool,
}

impl SocketOutput {
    pub fn new(socket: Arc<Socket>) -> Self {
        Self {
            socket,
            pending: Bytes::new(),
            closed: false,
        }
    }

    /// Whether bytes the plugin wrote wait for the socket (in `pending`, or
    /// encrypted in the TLS session).
    fn has_unsent(&mut self) -> bool {
        !self.pending.is_empty() || self.socket.tls().is_some_and(|tls| tls.wants_write())
    }

    /// Sends as much of the pending bytes as the socket takes now.
    fn send_pending(&mut self) -> StreamResult<()> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        if let Some(mut tls) = self.socket.tls() {
            if !self.pending.is_empty() {
                let n = self.pending.len();
                // rustls encrypts it all into its own buffer at once.
                tls.writer()
                    .write_all(&self.pending)
                    .map_err(stream_error)?;
                self.pending.clear();
                self.socket.moved(&self.socket.bytes_out, n);
            }
            let sent = self.socket.tls_send(&mut tls);
            let unsent = tls.wants_write();
            drop(tls);
            self.socket
                .unsent
                .store(usize::from(unsent), Ordering::Relaxed);
            return match sent {
                Err(error) if error.kind() != io::ErrorKind::WouldBlock => {
                    self.closed = true;
                    Err(stream_error(error))
                }
                _ => Ok(()),
            };
        }
        let mut result = Ok(());
        while !self.pending.is_empty() {
            match self.socket.try_write(&self.pending) {
                Ok(n) => self.pending.advance(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    self.closed = true;
                    self.pending.clear();
                    result = Err(stream_error(error));
                }
            }
        }
        self.socket
            .unsent
            .store(self.pending.len(), Ordering::Relaxed);
        result
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for SocketOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        // Nothing is within any permit, even none.
        if bytes.is_empty() {
            return Ok(());
        }
        if !self.pending.is_empty() || bytes.len() > MAX_PENDING_BYTES {
            return Err(StreamError::trap(
                "write exceeded the permit from check-write",
            ));
        }
        self.pending = bytes;
        self.send_pending()
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.send_pending()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.send_pending()?;
        Ok(if self.has_unsent() {
            0
        } else {
            MAX_PENDING_BYTES
        })
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SocketOutput {
    async fn ready(&mut self) {
        while !self.closed && self.has_unsent() {
            if self.socket.tcp.writable().await.is_err() {
                return;
            }
            // An error closes the stream, which the next call reports.
            let _ = self.send_pending();
        }
    }
}

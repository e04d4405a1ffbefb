//! The load generator: each scenario drives one server for a while,
//! checks every echoed byte, and counts errors. A scenario with errors is
//! not a result.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

/// The byte at `offset` of a verifiable stream.
fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn fill(buf: &mut [u8], offset: u64) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte = pattern_byte(offset + i as u64);
    }
}

fn check(buf: &[u8], offset: u64) -> bool {
    buf.iter()
        .enumerate()
        .all(|(i, &byte)| byte == pattern_byte(offset + i as u64))
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens `count` connections, one after the other.
async fn connect_all(addr: SocketAddr, count: usize) -> std::io::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        streams.push(connect(addr).await?);
    }
    Ok(streams)
}

/// Fresh connections: connect, echo 64 bytes, close.
pub struct ConnRate {
    pub per_second: f64,
    /// Each connection's time from connect to its echo received, sorted.
    pub latencies: Vec<Duration>,
}

pub async fn conn_rate(addr: SocketAddr, clients: usize, duration: Duration) -> Result<ConnRate> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut out = [0u8; 64];
                fill(&mut out, 0);
                while Instant::now() < deadline {
                    let began = Instant::now();
                    let mut stream = connect(addr).await?;
                    stream.write_all(&out).await?;
                    let mut back = [0u8; 64];
                    stream.read_exact(&mut back).await?;
                    if back != out {
                        bail!("wrong bytes echoed");
                    }
                    latencies.push(began.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok(ConnRate {
        per_second: latencies.len() as f64 / elapsed,
        latencies,
    })
}

/// Long-lived connections: throughput, and how fair it is.
pub struct Throughput {
    pub mib_per_second: f64,
    /// The slowest connection's progress over the mean's.
    pub slowest_over_mean: f64,
    /// The longest time any one connection went without an echoed byte.
    pub longest_stall: Duration,
}

impl Throughput {
    fn from(progress: &[Arc<Progress>], started: Instant) -> Self {
        let elapsed = started.elapsed();
        let bytes: Vec<u64> = progress.iter().map(|p| p.bytes.load(Relaxed)).collect();
        let total: u64 = bytes.iter().sum();
        let mean = total as f64 / bytes.len() as f64;
        let slowest = bytes.iter().copied().min().unwrap_or(0) as f64;
        let longest_stall = progress
            .iter()
            .map(|p| p.longest_stall(elapsed))
            .max()
            .unwrap_or_default();
        Throughput {
            mib_per_second: total as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
            slowest_over_mean: if mean > 0.0 { slowest / mean } else { 0.0 },
            longest_stall,
        }
    }
}

/// One connection's echoed bytes so far, and the longest wait between two
/// of its echoes, updated as they arrive.
struct Progress {
    started: Instant,
    bytes: AtomicU64,
    last_us: AtomicU64,
    longest_gap_us: AtomicU64,
}

impl Progress {
    fn new(started: Instant) -> Arc<Self> {
        Arc::new(Self {
            started,
            bytes: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            longest_gap_us: AtomicU64::new(0),
        })
    }

    fn echoed(&self, total_bytes: u64) {
        let now_us = self.started.elapsed().as_micros() as u64;
        let gap = now_us.saturating_sub(self.last_us.swap(now_us, Relaxed));
        self.longest_gap_us.fetch_max(gap, Relaxed);
        self.bytes.store(total_bytes, Relaxed);
    }

    /// Counting the wait from the last echo to `elapsed`, the end of the run.
    fn longest_stall(&self, elapsed: Duration) -> Duration {
        let since_last = elapsed
            .saturating_sub(Duration::from_micros(self.last_us.load(Relaxed)))
            .as_micros() as u64;
        Duration::from_micros(self.longest_gap_us.load(Relaxed).max(since_last))
    }
}

/// Each connection sends `size` bytes and waits for them back, repeatedly.
pub async fn ping_pong(
    addr: SocketAddr,
    connections: usize,
    size: usize,
    duration: Duration,
) -> Result<Throughput> {
    let streams = connect_all(addr, connections).await?;
    let started = Instant::now();
    let deadline = started + duration;
    let progress: Vec<_> = (0..connections).map(|_| Progress::new(started)).collect();
    let tasks: Vec<_> = streams
        .into_iter()
        .zip(progress.iter().cloned())
        .map(|(mut stream, progress)| {
            tokio::spawn(async move {
                let (mut out, mut back) = (vec![0u8; size], vec![0u8; size]);
                let mut offset = 0u64;
                while Instant::now() < deadline {
                    fill(&mut out, offset);
                    stream.write_all(&out).await?;
                    stream.read_exact(&mut back).await?;
                    if !check(&back, offset) {
                        bail!("wrong bytes echoed");
                    }
                    offset += size as u64;
                    progress.echoed(offset);
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(Throughput::from(&progress, started))
}

/// Each connection writes `chunk`-sized writes as fast as its echo comes
/// back, with at most `window` bytes in flight; progress is what came back
/// by the deadline. ([`streaming_threads`] is the same without the bound.)
///
/// The window matters on loopback: a client that writes without bound
/// fills the kernel's socket buffers, the kernel then prunes receive
/// queues and drops segments, and the connections hit then wait out
/// retransmission timeouts of 200 ms and more. Any server looks unfair
/// then, the native baseline included (see BENCHMARKS.md).
pub async fn streaming(
    addr: SocketAddr,
    connections: usize,
    chunk: usize,
    window: u64,
    duration: Duration,
) -> Result<Throughput> {
    let streams = connect_all(addr, connections).await?;
    let started = Instant::now();
    let progress: Vec<_> = (0..connections).map(|_| Progress::new(started)).collect();
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (stream, progress) in streams.into_iter().zip(progress.iter().cloned()) {
        let (input, output) = stream.into_split();
        let (echoed_tx, echoed) = watch::channel(0u64);
        writers.push(tokio::spawn(write_ahead(output, chunk, window, echoed)));
        readers.push(tokio::spawn(read_echo(input, progress, echoed_tx)));
    }
    tokio::time::sleep(duration).await;
    let throughput = Throughput::from(&progress, started);
    for writer in writers {
        writer.abort();
    }
    for reader in readers {
        if reader.is_finished() {
            reader.await??;
        } else {
            reader.abort();
        }
    }
    Ok(throughput)
}

/// Bulk transfer paced by TCP alone: on each connection one thread writes
/// `chunk`-sized writes as fast as the socket takes them while another
/// reads and checks the echo, both with blocking I/O, as a plain threaded
/// client would. (Threads rather than the async runtime, so that a busy
/// client runtime cannot be what makes a connection slow.)
pub fn streaming_threads(
    addr: SocketAddr,
    connections: usize,
    chunk: usize,
    duration: Duration,
) -> Result<Throughput> {
    let streams: Vec<std::net::TcpStream> = (0..connections)
        .map(|_| {
            let stream = std::net::TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
        .collect::<std::io::Result<_>>()?;
    let started = Instant::now();
    let progress: Vec<_> = (0..connections).map(|_| Progress::new(started)).collect();
    let mut threads = Vec::new();
    for (stream, progress) in streams.iter().zip(progress.iter().cloned()) {
        let mut output = stream.try_clone()?;
        let mut input = stream.try_clone()?;
        threads.push(std::thread::spawn(move || {
            use std::io::Write;
            let mut buf = vec![0u8; chunk];
            let mut offset = 0u64;
            loop {
                fill(&mut buf, offset);
                if output.write_all(&buf).is_err() {
                    return Ok(());
                }
                offset += chunk as u64;
            }
        }));
        threads.push(std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = vec![0u8; 64 * 1024];
            let mut offset = 0u64;
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(n) => n,
                };
                if !check(&buf[..n], offset) {
                    bail!("wrong bytes echoed");
                }
                offset += n as u64;
                progress.echoed(offset);
            }
        }));
    }
    std::thread::sleep(duration);
    let throughput = Throughput::from(&progress, started);
    for stream in &streams {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => bail!("a streaming thread panicked"),
        }
    }
    Ok(throughput)
}

/// Writes `chunk`-sized writes while fewer than `window` bytes are waiting
/// to be echoed, until the connection or the reader ends.
async fn write_ahead(
    mut output: OwnedWriteHalf,
    chunk: usize,
    window: u64,
    mut echoed: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; chunk];
    let mut offset = 0u64;
    loop {
        let room = |echoed: &u64| offset + chunk as u64 - echoed <= window;
        if echoed.wait_for(room).await.is_err() {
            return;
        }
        fill(&mut buf, offset);
        if output.write_all(&buf).await.is_err() {
            return;
        }
        offset += chunk as u64;
    }
}

/// Reads and checks the echo, telling the writer how far it has come.
async fn read_echo(
    mut input: OwnedReadHalf,
    progress: Arc<Progress>,
    echoed: watch::Sender<u64>,
) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = input.read(&mut buf).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        if !check(&buf[..n], offset) {
            bail!("wrong bytes echoed");
        }
        offset += n as u64;
        progress.echoed(offset);
        echoed.send_replace(offset);
    }
}

/// Opens `count` connections, echoes one byte on each, and keeps them open
/// until the returned connections are dropped.
pub async fn open_idle(addr: SocketAddr, count: usize) -> Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = connect(addr).await?;
        stream.write_all(b"x").await?;
        let mut back = [0u8; 1];
        stream.read_exact(&mut back).await?;
        if back != *b"x" {
            bail!("wrong byte echoed");
        }
        streams.push(stream);
    }
    Ok(streams)
}

/// The quantile `q` (0 to 1) of sorted `values`.
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Runs one scenario against `addr` and prints its rate.
pub fn drive(addr: SocketAddr, scenario: &str, duration: Duration) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let rate = match scenario {
        "conn" => runtime.block_on(conn_rate(addr, 32, duration))?.per_second,
        "ping-pong" => {
            runtime
                .block_on(ping_pong(addr, 64, 4096, duration))?
                .mib_per_second
        }
        "streaming" => streaming_threads(addr, 16, 64 * 1024, duration)?.mib_per_second,
        _ => bail!("unknown scenario {scenario:?}: conn, ping-pong or streaming"),
    };
    println!("{rate:.1}");
    Ok(())
}

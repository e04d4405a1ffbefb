//! The load generator: each scenario drives one server for a while,
//! checks every echoed byte, and counts errors. A scenario with errors is
//! not a result.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
}

impl Throughput {
    fn from(bytes: &[u64], elapsed: Duration) -> Self {
        let total: u64 = bytes.iter().sum();
        let mean = total as f64 / bytes.len() as f64;
        let slowest = bytes.iter().copied().min().unwrap_or(0) as f64;
        Throughput {
            mib_per_second: total as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
            slowest_over_mean: if mean > 0.0 { slowest / mean } else { 0.0 },
        }
    }
}

/// Each connection sends `size` bytes and waits for them back, repeatedly.
pub async fn ping_pong(
    addr: SocketAddr,
    connections: usize,
    size: usize,
    duration: Duration,
) -> Result<Throughput> {
    let mut streams = Vec::new();
    for _ in 0..connections {
        streams.push(connect(addr).await?);
    }
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
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
                }
                Ok(offset)
            })
        })
        .collect();
    let mut bytes = Vec::new();
    for task in tasks {
        bytes.push(task.await??);
    }
    Ok(Throughput::from(&bytes, started.elapsed()))
}

/// Each connection writes `chunk`-sized writes as fast as it can while
/// reading the echo; progress is what came back by the deadline.
pub async fn streaming(
    addr: SocketAddr,
    connections: usize,
    chunk: usize,
    duration: Duration,
) -> Result<Throughput> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..connections {
        let (mut input, mut output) = connect(addr).await?.into_split();
        let received = Arc::new(AtomicU64::new(0));
        let stop_writing = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; chunk];
            let mut offset = 0u64;
            while !stop_writing.load(Relaxed) {
                fill(&mut buf, offset);
                if output.write_all(&buf).await.is_err() {
                    break;
                }
                offset += chunk as u64;
            }
            output
        }));
        let counted = received.clone();
        readers.push((
            received,
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut offset = 0u64;
                loop {
                    let n = input.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, anyhow::Error>(());
                    }
                    if !check(&buf[..n], offset) {
                        bail!("wrong bytes echoed");
                    }
                    offset += n as u64;
                    counted.store(offset, Relaxed);
                }
            }),
        ));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let elapsed = started.elapsed();
    let bytes: Vec<u64> = readers
        .iter()
        .map(|(received, _)| received.load(Relaxed))
        .collect();
    stop.store(true, Relaxed);
    for (_, reader) in readers {
        reader.abort();
        match reader.await {
            Ok(result) => result?,
            Err(error) if error.is_cancelled() => {}
            Err(error) => return Err(error.into()),
        }
    }
    for writer in writers {
        writer.abort();
    }
    Ok(Throughput::from(&bytes, elapsed))
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

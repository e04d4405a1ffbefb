//! Our own echo clients, the soak's latency probe: a few connections doing
//! ping-pong round trips of 64-byte lines with a 2 ms pause, as the load
//! suite's echo load does (`tests/e2e/util.rs`, `EchoLoad`), so that its
//! 10 ms bound applies. Some connections are held for the whole run, so
//! that every reload leaves an old version of the echo service alive;
//! others reconnect every few hundred round trips, so that new versions
//! and the connection limit are met all the time.
//!
//! Also the echo service's abusive clients: the burst at the connection
//! limit, and the two ways a client vanishes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::record::{Part, Record};

/// Connections held from start to end.
pub const HELD_CONNECTIONS: usize = 2;
/// Connections that reconnect every [`ROUND_TRIPS_PER_CONNECTION`].
pub const CYCLING_CONNECTIONS: usize = 4;
const ROUND_TRIPS_PER_CONNECTION: u64 = 250;
const PAUSE: Duration = Duration::from_millis(2);
const LINE: usize = 64;
/// Longest a round trip may take before it counts as an error.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one echo client until `stop`: held for the whole run if `held`,
/// else reconnecting. Every round trip's time goes to `record`; every
/// failure is an error there, and the client connects again.
pub async fn client(
    addr: SocketAddr,
    index: usize,
    held: bool,
    record: Arc<Record>,
    stop: CancellationToken,
) {
    let line = format!("{index:0width$}\n", width = LINE - 1);
    while !stop.is_cancelled() {
        let limit = if held {
            u64::MAX
        } else {
            ROUND_TRIPS_PER_CONNECTION
        };
        let served = tokio::select! {
            served = one_connection(addr, line.as_bytes(), limit, &record) => served,
            () = stop.cancelled() => return,
        };
        if let Err(error) = served {
            let kind = if held { "held" } else { "cycling" };
            record.error(Part::Echo, format!("{kind} echo client {index}: {error:#}"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One connection doing up to `limit` round trips.
async fn one_connection(addr: SocketAddr, line: &[u8], limit: u64, record: &Record) -> Result<()> {
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let mut echoed = vec![0; line.len()];
    for _ in 0..limit {
        let started = Instant::now();
        let round_trip = async {
            stream.write_all(line).await?;
            stream.read_exact(&mut echoed).await
        };
        match tokio::time::timeout(ROUND_TRIP_TIMEOUT, round_trip).await {
            Err(_) => bail!("no echo within {ROUND_TRIP_TIMEOUT:?}"),
            Ok(Err(error)) => bail!("round trip: {error}"),
            Ok(Ok(_)) if echoed != line => bail!("wrong bytes echoed"),
            Ok(Ok(_)) => record.echo_round_trip(started.elapsed()),
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(())
}

/// One echo on a fresh connection: the check that a reload left the echo
/// service serving.
pub async fn fresh_echo(addr: SocketAddr) -> Result<()> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"reloaded?\n").await?;
        let mut back = [0; 10];
        stream.read_exact(&mut back).await?;
        if &back != b"reloaded?\n" {
            bail!("wrong bytes echoed");
        }
        Ok(())
    };
    tokio::time::timeout(ROUND_TRIP_TIMEOUT, exchange)
        .await
        .context("no echo within the timeout")?
}

/// Opens `count` connections at once and holds them for `hold`; returns
/// how many the host refused (closed at once, before any byte).
pub async fn burst(addr: SocketAddr, count: usize, hold: Duration) -> Result<usize> {
    let opened: Vec<_> = (0..count).map(|_| TcpStream::connect(addr)).collect();
    let mut streams = Vec::with_capacity(count);
    for stream in opened {
        streams.push(stream.await.context("a burst connection")?);
    }
    tokio::time::sleep(hold).await;
    let mut refused = 0;
    let mut buf = [0; 1];
    for stream in &mut streams {
        // A refused connection has been closed: its read ends at once.
        let read = tokio::time::timeout(Duration::from_millis(5), stream.read(&mut buf)).await;
        if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            refused += 1;
        }
    }
    Ok(refused)
}

/// A client that sends and then stops reading, and is never heard from
/// again: returns its socket, to be held unread and open. To the host this
/// is a peer that vanished without FIN (a machine unplugged, a NAT entry
/// gone): the echo's writes fill the socket buffers both ways and wait,
/// and no byte moves again. Only the idle timeout can end it; a client
/// whose process dies instead would be closed by its kernel, with a FIN
/// or a reset, which [`vanish_with_reset`] covers.
pub async fn stall(addr: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let chunk = vec![b'v'; 64 * 1024];
    // Writes until the buffers are full and a write waits.
    let fill = async {
        loop {
            if let Err(error) = stream.write_all(&chunk).await {
                return error;
            }
        }
    };
    if let Ok(error) = tokio::time::timeout(Duration::from_secs(2), fill).await {
        bail!("writing to the echo service: {error}");
    }
    Ok(stream)
}

/// A client that resets its connection (SO_LINGER 0) with the host's
/// echo unread.
pub async fn vanish_with_reset(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&[b'r'; 4096]).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.set_zero_linger()?;
    drop(stream);
    Ok(())
}

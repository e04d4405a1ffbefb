//! Hibernation: what an idle connection costs, and what waking one costs.
//! Native tokio, POCO, Portico's echo (its connections live) and Portico's
//! sleepy echo (hibernating whenever its client pauses), in the same run,
//! server pinned to one core and load generator to another:
//! - memory and mappings per idle connection, `idle` of them, each having
//!   echoed a byte;
//! - the round trip of a message on a connection that was quiet for a
//!   while (a hibernated one, for the sleepy echo) against a live one's;
//! - wakes per second per core: back-to-back round trips, each of which
//!   wakes the sleepy echo, against the server's CPU.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::echo::{Cpu, Figures, first_echo};
use crate::load;
use crate::pin::Layout;
use crate::server::{Kind, Launch, Server};

/// Connections that each send a message now and then.
const QUIET_CONNECTIONS: usize = 64;
/// How long each stays quiet between two messages: long enough for the
/// sleepy echo to hibernate.
const QUIET_FOR: Duration = Duration::from_millis(20);
const MESSAGE: &[u8; 64] = &[b'h'; 64];

/// The servers, in the order of the report.
const SERVERS: [&str; 4] = ["native", "POCO", "Portico, live", "Portico, hibernated"];

/// Each server's figures.
pub struct Results(Vec<Figures>);

/// Measures every server, one after another, in one run.
pub fn measure(launch: &Launch, sleepy: &Path, idle: usize, duration: Duration) -> Result<Results> {
    let layout = Layout::all()
        .into_iter()
        .find(|layout| matches!(layout, Layout::Pinned { .. }))
        .unwrap_or(Layout::Shared);
    let runtime = layout.client_runtime()?;
    // The sleepy echo's connections hibernate: its files go to them rather
    // than to live connections, of which it needs few. (With room for
    // 10,256 live ones, the open-file limit here leaves room for only
    // 8,700 hibernated, and the rest stay live.)
    let sleepy_launch = Launch {
        plugin: sleepy.to_path_buf(),
        max_connections: 1024,
        max_hibernated: launch.max_connections,
        ..launch.clone()
    };
    let servers = [
        (Kind::Native, launch),
        (Kind::Poco, launch),
        (Kind::Portico, launch),
        (Kind::Portico, &sleepy_launch),
    ];
    let mut results = Vec::new();
    for ((kind, launch), name) in servers.into_iter().zip(SERVERS) {
        eprintln!("hibernation: {name}");
        let server = Server::start(kind, launch, layout.server_cpu())?;
        let figures = runtime
            .block_on(measure_one(&server, idle, duration))
            .with_context(|| format!("hibernation, {name}"))?;
        results.push(figures);
    }
    Ok(Results(results))
}

async fn measure_one(server: &Server, idle: usize, duration: Duration) -> Result<Figures> {
    let mut figures = Figures::new();
    first_echo(server.addr).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, maps) = (server.rss_kib()?, server.mappings()?);
    let open = load::open_idle(server.addr, idle).await?;
    // Time for the sleepy echo's instances to be gone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_connection = |now: u64, before: u64| now.saturating_sub(before) as f64 / idle as f64;
    figures.insert("idle_rss".into(), per_connection(server.rss_kib()?, rss));
    figures.insert(
        "idle_maps".into(),
        per_connection(server.mappings()? as u64, maps as u64),
    );
    drop(open);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let latencies = quiet_round_trips(server.addr, duration).await?;
    figures.insert("quiet_p50".into(), us(load::quantile(&latencies, 0.5)));
    figures.insert("quiet_p99".into(), us(load::quantile(&latencies, 0.99)));

    let cpu = Cpu::start(server)?;
    let started = Instant::now();
    let pp = load::ping_pong(server.addr, QUIET_CONNECTIONS, MESSAGE.len(), duration).await?;
    let round_trips = pp.mib_per_second * (1 << 20) as f64 / MESSAGE.len() as f64
        * started.elapsed().as_secs_f64();
    cpu.record(server, round_trips, 1e6, "rt", &mut figures)?;
    // Round trips per second of the server's CPU: one core's worth.
    let per_core = 1e6 / figures["rt_total"].max(f64::MIN_POSITIVE);
    figures.insert("per_core".into(), per_core);
    Ok(figures)
}

/// Each connection sends a message, waits for it back, and stays quiet for
/// [`QUIET_FOR`], until `duration` has passed; the round trips' times.
async fn quiet_round_trips(addr: SocketAddr, duration: Duration) -> Result<Vec<Duration>> {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..QUIET_CONNECTIONS)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let mut latencies = Vec::new();
                let mut back = [0; MESSAGE.len()];
                while Instant::now() < deadline {
                    tokio::time::sleep(QUIET_FOR).await;
                    let sent = Instant::now();
                    stream.write_all(MESSAGE).await?;
                    stream.read_exact(&mut back).await?;
                    latencies.push(sent.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    latencies.sort();
    Ok(latencies)
}

fn us(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Prints the table, with the targets: a hibernated connection's host
/// memory at most 4 KiB and below native's idle connection; its round
/// trip's p50 at most 3 times a live connection's.
pub fn report(results: &Results, idle: usize) {
    println!();
    println!(
        "Hibernation: {idle} idle connections; {QUIET_CONNECTIONS} connections sending 64 bytes \
         after {} ms quiet; back-to-back 64-byte round trips (server pinned)",
        QUIET_FOR.as_millis()
    );
    println!(
        "{:<22} {:>14} {:>10} {:>14} {:>14} {:>16} {:>18} {:>12}",
        "server",
        "KiB/idle conn",
        "maps/conn",
        "quiet RT p50",
        "quiet RT p99",
        "CPU/RT (u+k) us",
        "RT per CPU-second",
        "client CPU"
    );
    for (name, figures) in SERVERS.iter().zip(&results.0) {
        let get = |key: &str| figures.get(key).copied().unwrap_or(f64::NAN);
        println!(
            "{name:<22} {:>14.1} {:>10.3} {:>11.0} us {:>11.0} us {:>7.1} ({:.1} + {:.1}) {:>18.0} {:>11.0}%",
            get("idle_rss"),
            get("idle_maps"),
            get("quiet_p50"),
            get("quiet_p99"),
            get("rt_total"),
            get("rt_user"),
            get("rt_kernel"),
            get("per_core"),
            get("rt_client"),
        );
    }
    let [native, _, live, hibernated] = &results.0[..] else {
        return;
    };
    let memory = hibernated["idle_rss"];
    let ratio = hibernated["quiet_p50"] / live["quiet_p50"];
    println!(
        "target: hibernated memory at most 4 KiB and below native's {:.1}: {memory:.1} KiB, {}",
        native["idle_rss"],
        met(memory <= 4.0 && memory < native["idle_rss"])
    );
    println!(
        "target: hibernated round trip p50 at most 3x a live one's: {ratio:.2}x, {}",
        met(ratio <= 3.0)
    );
}

fn met(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

//! `portico-bench`: Portico's echo plugin against a native tokio echo
//! server, in the same run, on the same machine, with the same load
//! generator. Rounds alternate which server goes first; every figure is
//! the median over rounds, with the ratio Portico/native beside it.
//!
//! Then the capabilities against real Redis (`capabilities`), and TLS
//! termination against a native tokio-rustls server (`tls`).
//!
//! Run it with `cargo xtask bench`; BENCHMARKS.md holds the latest results.

mod capabilities;
mod inproc;
mod load;
mod native;
mod server;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::{Kind, Launch, Server};

#[derive(Parser)]
#[command(about = "Benchmark Portico against a native tokio echo server")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The `host` binary to benchmark (built with --release).
    #[arg(long, default_value = "target/release/host")]
    host: PathBuf,
    /// The echo plugin.
    #[arg(long, default_value = "target/wasm32-wasip2/release/echo.wasm")]
    plugin: PathBuf,
    /// Rounds; each runs every scenario on both servers.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// How long each load scenario runs, in seconds.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Idle connections held open for the memory figures.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Requests per redis-benchmark test, against the redis-kv and
    /// tcp-proxy plugins and a real redis-server.
    #[arg(long, default_value_t = 100_000)]
    redis_requests: u64,
    /// Run only the TLS comparison.
    #[arg(long)]
    tls_only: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the native baseline server (the benchmark starts it itself).
    NativeEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Run the native TLS baseline server (the benchmark starts it itself).
    NativeTlsEcho {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Run the TLS load generator (the benchmark starts it itself): prints
    /// handshakes per second, or MiB per second.
    TlsClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        mode: String,
        #[arg(long)]
        seconds: u64,
    },
}

/// Bytes each bounded streaming connection may have in flight: four 64 KiB
/// writes. See [`load::streaming`] for why there is a bound; the
/// flow-controlled variant has none, and is paced by TCP alone.
const STREAMING_WINDOW: u64 = 256 * 1024;

/// What one round measured on one server.
#[derive(Default)]
struct Figures {
    conn_per_second: f64,
    fresh_p50_us: f64,
    fresh_p99_us: f64,
    fresh_p999_us: f64,
    conn_cpu_user_us: f64,
    conn_cpu_system_us: f64,
    ping_pong_mib: f64,
    ping_pong_fairness: f64,
    ping_pong_stall_ms: f64,
    streaming_mib: f64,
    streaming_fairness: f64,
    streaming_stall_ms: f64,
    streaming_cpu_ms_per_mib: f64,
    flow_mib: f64,
    flow_fairness: f64,
    flow_stall_ms: f64,
    idle_kib_per_connection: f64,
    idle_private_kib_per_connection: f64,
    rss_growth_after_close_mib: f64,
    mappings_at_peak: f64,
    startup_ms: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    match &args.command {
        Some(Command::NativeEcho { listen }) => return native::serve(*listen),
        Some(Command::NativeTlsEcho { listen, cert, key }) => {
            return tls::serve(*listen, cert, key);
        }
        Some(Command::TlsClient {
            addr,
            mode,
            seconds,
        }) => return tls::client(*addr, mode, *seconds),
        None => {}
    }
    rlimit::increase_nofile_limit(args.idle_connections as u64 * 2 + 1024)?;
    let plugin_dir = args.plugin.parent().unwrap_or(std::path::Path::new("."));
    if args.tls_only {
        let (portico, native) = tls::measure(&args.host, plugin_dir, args.rounds, args.seconds)?;
        tls::report(&portico, &native);
        return Ok(());
    }
    let launch = Launch {
        host: args.host.clone(),
        plugin: args.plugin.clone(),
        max_connections: args.idle_connections as u32 + 256,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let duration = Duration::from_secs(args.seconds);

    let mut portico = Vec::new();
    let mut native = Vec::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [Kind::Portico, Kind::Native]
        } else {
            [Kind::Native, Kind::Portico]
        };
        for kind in order {
            eprintln!("round {} of {}: {kind:?}", round + 1, args.rounds);
            let figures = runtime
                .block_on(measure(kind, &launch, duration, args.idle_connections))
                .with_context(|| format!("{kind:?}, round {}", round + 1))?;
            match kind {
                Kind::Portico => portico.push(figures),
                Kind::Native => native.push(figures),
            }
        }
    }
    let inproc = runtime.block_on(inproc::measure(&args.plugin, 2000))?;
    let startup = server::startup_times(&launch)?;
    report(&portico, &native, &inproc, startup, &args);
    let redis = capabilities::measure(&args.host, plugin_dir, args.redis_requests)?;
    capabilities::report(&redis, args.redis_requests);
    let (portico_tls, native_tls) =
        tls::measure(&args.host, plugin_dir, args.rounds, args.seconds)?;
    tls::report(&portico_tls, &native_tls);
    Ok(())
}

async fn measure(kind: Kind, launch: &Launch, duration: Duration, idle: usize) -> Result<Figures> {
    let spawned = Instant::now();
    let server = Server::start(kind, launch)?;
    first_echo(server.addr).await?;
    let startup_ms = spawned.elapsed().as_secs_f64() * 1e3;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let per_connection = |peak: u64, before: u64| peak.saturating_sub(before) as f64 / idle as f64;

    let cpu_before = server.cpu()?;
    let fresh = load::conn_rate(server.addr, 32, duration)
        .await
        .context("connection rate")?;
    let conn_cpu = server.cpu()? - cpu_before;
    let per_conn_us = |seconds: f64| seconds * 1e6 / fresh.latencies.len().max(1) as f64;
    let ping_pong = load::ping_pong(server.addr, 64, 4096, duration)
        .await
        .context("ping-pong")?;
    let cpu_before = server.cpu()?;
    let streaming = load::streaming(server.addr, 16, 64 * 1024, STREAMING_WINDOW, duration)
        .await
        .context("streaming")?;
    let streaming_cpu = server.cpu()? - cpu_before;
    let streamed_mib = streaming.mib_per_second * duration.as_secs_f64();
    let addr = server.addr;
    let flow =
        tokio::task::spawn_blocking(move || load::streaming_threads(addr, 16, 64 * 1024, duration))
            .await?
            .context("flow-controlled streaming")?;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib()?;
    let private_before = server.private_kib()?;
    let open = load::open_idle(server.addr, idle)
        .await
        .context("idle connections")?;
    let at_peak = server.rss_kib()?;
    let private_at_peak = server.private_kib()?;
    let mappings_at_peak = server.mappings()? as f64;
    drop(open);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = server.rss_kib()?;

    Ok(Figures {
        conn_per_second: fresh.per_second,
        fresh_p50_us: us(load::quantile(&fresh.latencies, 0.5)),
        fresh_p99_us: us(load::quantile(&fresh.latencies, 0.99)),
        fresh_p999_us: us(load::quantile(&fresh.latencies, 0.999)),
        conn_cpu_user_us: per_conn_us(conn_cpu.user_s),
        conn_cpu_system_us: per_conn_us(conn_cpu.system_s),
        ping_pong_mib: ping_pong.mib_per_second,
        ping_pong_fairness: ping_pong.slowest_over_mean,
        ping_pong_stall_ms: us(ping_pong.longest_stall) / 1e3,
        streaming_mib: streaming.mib_per_second,
        streaming_fairness: streaming.slowest_over_mean,
        streaming_stall_ms: us(streaming.longest_stall) / 1e3,
        streaming_cpu_ms_per_mib: (streaming_cpu.user_s + streaming_cpu.system_s) * 1e3
            / streamed_mib.max(f64::MIN_POSITIVE),
        flow_mib: flow.mib_per_second,
        flow_fairness: flow.slowest_over_mean,
        flow_stall_ms: us(flow.longest_stall) / 1e3,
        idle_kib_per_connection: per_connection(at_peak, before),
        idle_private_kib_per_connection: per_connection(private_at_peak, private_before),
        rss_growth_after_close_mib: after as f64 / 1024.0 - before as f64 / 1024.0,
        mappings_at_peak,
        startup_ms,
    })
}

/// Waits until the server echoes on a fresh connection.
async fn first_echo(addr: SocketAddr) -> Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"!").await?;
    let mut back = [0u8; 1];
    stream.read_exact(&mut back).await?;
    Ok(())
}

fn median(figures: &[Figures], metric: fn(&Figures) -> f64) -> f64 {
    let mut values: Vec<f64> = figures.iter().map(metric).collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn report(
    portico: &[Figures],
    native: &[Figures],
    inproc: &inproc::Instantiation,
    (cold, warm): (Duration, Duration),
    args: &Args,
) {
    type Metric = (&'static str, fn(&Figures) -> f64, &'static str);
    let metrics: [Metric; 21] = [
        (
            "connection rate, conn/s (32 clients)",
            |f| f.conn_per_second,
            "ratio >= 0.7",
        ),
        ("fresh connection p50, us", |f| f.fresh_p50_us, ""),
        ("fresh connection p99, us", |f| f.fresh_p99_us, "ratio <= 2"),
        ("fresh connection p99.9, us", |f| f.fresh_p999_us, ""),
        (
            "server CPU per connection, user, us",
            |f| f.conn_cpu_user_us,
            "",
        ),
        (
            "server CPU per connection, kernel, us",
            |f| f.conn_cpu_system_us,
            "",
        ),
        (
            "ping-pong 4 KiB x64, MiB/s",
            |f| f.ping_pong_mib,
            "ratio >= 0.85",
        ),
        ("ping-pong slowest/mean", |f| f.ping_pong_fairness, ">= 0.5"),
        ("ping-pong longest stall, ms", |f| f.ping_pong_stall_ms, ""),
        (
            "streaming 64 KiB x16, MiB/s",
            |f| f.streaming_mib,
            "ratio >= 0.9",
        ),
        ("streaming slowest/mean", |f| f.streaming_fairness, ">= 0.5"),
        ("streaming longest stall, ms", |f| f.streaming_stall_ms, ""),
        (
            "server CPU per MiB streamed, ms",
            |f| f.streaming_cpu_ms_per_mib,
            "",
        ),
        (
            "streaming flow-controlled 64 KiB x16, MiB/s",
            |f| f.flow_mib,
            "ratio >= 0.95",
        ),
        (
            "streaming flow-controlled slowest/mean",
            |f| f.flow_fairness,
            ">= 0.8",
        ),
        (
            "streaming flow-controlled longest stall, ms",
            |f| f.flow_stall_ms,
            "",
        ),
        (
            "RSS per idle connection, KiB",
            |f| f.idle_kib_per_connection,
            "<= 24",
        ),
        (
            "private memory per idle connection, KiB",
            |f| f.idle_private_kib_per_connection,
            "",
        ),
        (
            "RSS 5 s after close - before, MiB",
            |f| f.rss_growth_after_close_mib,
            "<= 20",
        ),
        ("memory mappings at peak", |f| f.mappings_at_peak, ""),
        ("start-up to first echo, ms", |f| f.startup_ms, ""),
    ];
    println!(
        "portico-bench: {} rounds, {} s per scenario, {} idle connections; medians",
        args.rounds, args.seconds, args.idle_connections
    );
    println!("| metric | Portico | native | Portico/native | target |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for (name, metric, target) in metrics {
        let (p, n) = (median(portico, metric), median(native, metric));
        let ratio = if n != 0.0 {
            format!("{:.2}", p / n)
        } else {
            "-".into()
        };
        println!("| {name} | {p:.2} | {n:.2} | {ratio} | {target} |");
    }
    println!(
        "| instantiate (store + WASI context + instance), us | {:.1} | - | - | <= 15 |",
        inproc.instantiate_us
    );
    println!(
        "| empty connection served in-process, us | {:.1} | - | - | |",
        inproc.empty_run_us
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| start-up to `listening on`, compile cache empty, ms | {:.1} | - | - | |",
        ms(cold)
    );
    println!(
        "| start-up to `listening on`, compile cache warm, ms | {:.1} | - | - | <= 20 |",
        ms(warm)
    );
}

//! The echo comparison: Portico's echo plugin against the native tokio
//! echo and POCO's TCPServer echo, every scenario on each in the same
//! round, in each core layout ([`Layout`]). Rounds rotate which server goes
//! first; figures are medians over rounds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::load;
use crate::pin::Layout;
use crate::server::{CpuTime, Kind, Launch, Server, process_cpu};

/// Bytes each bounded streaming connection may have in flight: four 64 KiB
/// writes. See [`load::streaming`] for why there is a bound; the
/// flow-controlled variant has none, and is paced by TCP alone.
const STREAMING_WINDOW: u64 = 256 * 1024;
const PING_PONG_SIZE: usize = 4096;

/// One server's figures in one round, by metric key (see [`ROWS`]).
pub type Figures = BTreeMap<String, f64>;

/// Every round's figures, by layout and server.
#[derive(Default)]
pub struct Results {
    rounds: BTreeMap<(Layout, Kind), Vec<Figures>>,
}

impl Results {
    fn push(&mut self, layout: Layout, kind: Kind, figures: Figures) {
        self.rounds.entry((layout, kind)).or_default().push(figures);
    }

    fn median(&self, layout: Layout, kind: Kind, key: &str) -> Option<f64> {
        let rounds = self.rounds.get(&(layout, kind))?;
        let mut values: Vec<f64> = rounds.iter().filter_map(|f| f.get(key).copied()).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    }
}

/// What the scenarios measure besides throughput: the server's CPU per
/// operation, split into user space and kernel, and the load generator's
/// own CPU, which shows when the client rather than the server set the
/// pace.
pub struct Cpu {
    server: CpuTime,
    client: CpuTime,
    started: Instant,
}

impl Cpu {
    pub fn start(server: &Server) -> Result<Cpu> {
        Ok(Cpu {
            server: server.cpu()?,
            client: process_cpu(std::process::id())?,
            started: Instant::now(),
        })
    }

    /// Records, under `prefix`, the server's user and kernel CPU per
    /// operation in `unit` (seconds times `unit`), and the client's share
    /// of one core.
    pub fn record(
        self,
        server: &Server,
        operations: f64,
        unit: f64,
        prefix: &str,
        figures: &mut Figures,
    ) -> Result<()> {
        let used = server.cpu()? - self.server;
        let client = process_cpu(std::process::id())? - self.client;
        let per = |seconds: f64| seconds * unit / operations.max(f64::MIN_POSITIVE);
        let key = |what: &str| format!("{prefix}_{what}");
        figures.insert(key("user"), per(used.user_s));
        figures.insert(key("kernel"), per(used.system_s));
        figures.insert(key("total"), per(used.total_s()));
        figures.insert(
            key("client"),
            100.0 * client.total_s() / self.started.elapsed().as_secs_f64(),
        );
        Ok(())
    }
}

/// Runs every scenario on every server, `rounds` times in each layout.
pub fn measure(launch: &Launch, rounds: usize, duration: Duration, idle: usize) -> Result<Results> {
    let mut results = Results::default();
    for layout in Layout::all() {
        let runtime = layout.client_runtime()?;
        crate::pin::pin_current_thread(match layout {
            Layout::Pinned { client, .. } => Some(client),
            Layout::Shared => None,
        })?;
        for round in 0..rounds {
            let mut order = Kind::ALL;
            order.rotate_left(round % Kind::ALL.len());
            for kind in order {
                eprintln!(
                    "{}, round {} of {rounds}: {kind:?}",
                    layout.name(),
                    round + 1
                );
                // Memory does not depend on where the client runs: it is
                // measured once, with shared cores.
                let idle = if layout == Layout::Shared { idle } else { 0 };
                let figures = runtime
                    .block_on(measure_one(kind, launch, layout, duration, idle))
                    .with_context(|| format!("{kind:?}, {}, round {}", layout.name(), round + 1))?;
                results.push(layout, kind, figures);
            }
        }
    }
    crate::pin::pin_current_thread(None)?;
    Ok(results)
}

async fn measure_one(
    kind: Kind,
    launch: &Launch,
    layout: Layout,
    duration: Duration,
    idle: usize,
) -> Result<Figures> {
    let mut figures = Figures::new();
    let spawned = Instant::now();
    let server = Server::start(kind, launch, layout.server_cpu())?;
    first_echo(server.addr).await?;
    figures.insert("startup_ms".into(), spawned.elapsed().as_secs_f64() * 1e3);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let seconds = duration.as_secs_f64();

    let cpu = Cpu::start(&server)?;
    let fresh = load::conn_rate(server.addr, 32, duration)
        .await
        .context("connection rate")?;
    cpu.record(
        &server,
        fresh.latencies.len() as f64,
        1e6,
        "conn",
        &mut figures,
    )?;
    figures.insert("conn_rate".into(), fresh.per_second);
    figures.insert(
        "fresh_p50".into(),
        us(load::quantile(&fresh.latencies, 0.5)),
    );
    figures.insert(
        "fresh_p99".into(),
        us(load::quantile(&fresh.latencies, 0.99)),
    );
    figures.insert(
        "fresh_p999".into(),
        us(load::quantile(&fresh.latencies, 0.999)),
    );

    let cpu = Cpu::start(&server)?;
    let ping_pong = load::ping_pong(server.addr, 64, PING_PONG_SIZE, duration)
        .await
        .context("ping-pong")?;
    let round_trips = ping_pong.mib_per_second * (1 << 20) as f64 / PING_PONG_SIZE as f64;
    cpu.record(&server, round_trips * seconds, 1e6, "pp", &mut figures)?;
    figures.insert("pp_rate".into(), round_trips);
    figures.insert("pp_fair".into(), ping_pong.slowest_over_mean);
    figures.insert("pp_stall".into(), us(ping_pong.longest_stall) / 1e3);

    let cpu = Cpu::start(&server)?;
    let addr = server.addr;
    let flow =
        tokio::task::spawn_blocking(move || load::streaming_threads(addr, 16, 64 * 1024, duration))
            .await?
            .context("flow-controlled streaming")?;
    cpu.record(
        &server,
        flow.mib_per_second * seconds,
        1e3,
        "flow",
        &mut figures,
    )?;
    figures.insert("flow_mib".into(), flow.mib_per_second);
    figures.insert("flow_fair".into(), flow.slowest_over_mean);
    figures.insert("flow_stall".into(), us(flow.longest_stall) / 1e3);

    let cpu = Cpu::start(&server)?;
    let streaming = load::streaming(server.addr, 16, 64 * 1024, STREAMING_WINDOW, duration)
        .await
        .context("bounded streaming")?;
    cpu.record(
        &server,
        streaming.mib_per_second * seconds,
        1e3,
        "st",
        &mut figures,
    )?;
    figures.insert("st_mib".into(), streaming.mib_per_second);
    figures.insert("st_fair".into(), streaming.slowest_over_mean);

    if idle > 0 {
        measure_idle(&server, idle, &mut figures).await?;
    }
    Ok(figures)
}

/// Memory and mappings per idle connection: `idle` connections opened,
/// each echoed a byte (so Portico's instance is running), then held.
pub async fn measure_idle(server: &Server, idle: usize, figures: &mut Figures) -> Result<()> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, private_before, maps_before) =
        (server.rss_kib()?, server.private_kib()?, server.mappings()?);
    let open = load::open_idle(server.addr, idle)
        .await
        .context("idle connections")?;
    let per_connection = |peak: u64, before: u64| peak.saturating_sub(before) as f64 / idle as f64;
    let maps_at_peak = server.mappings()?;
    figures.insert("idle_rss".into(), per_connection(server.rss_kib()?, before));
    figures.insert(
        "idle_private".into(),
        per_connection(server.private_kib()?, private_before),
    );
    figures.insert(
        "idle_maps".into(),
        per_connection(maps_at_peak as u64, maps_before as u64),
    );
    figures.insert("maps_peak".into(), maps_at_peak as f64);
    drop(open);
    tokio::time::sleep(Duration::from_secs(5)).await;
    figures.insert(
        "after_close".into(),
        (server.rss_kib()? as f64 - before as f64) / 1024.0,
    );
    Ok(())
}

/// Waits until the server echoes on a fresh connection.
pub async fn first_echo(addr: SocketAddr) -> Result<()> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"!").await?;
    let mut back = [0u8; 1];
    stream.read_exact(&mut back).await?;
    Ok(())
}

/// A target on Portico's figure: against native's in the same run, against
/// POCO's, or on its own.
#[derive(Clone, Copy)]
enum Target {
    RatioAtLeast(f64),
    RatioAtMost(f64),
    AbovePoco,
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    fn met(self, portico: f64, native: f64, poco: f64) -> bool {
        match self {
            Target::RatioAtLeast(bound) => portico / native >= bound,
            Target::RatioAtMost(bound) => portico / native <= bound,
            Target::AbovePoco => portico > poco,
            Target::AtLeast(bound) => portico >= bound,
            Target::AtMost(bound) => portico <= bound,
        }
    }

    fn text(self) -> String {
        match self {
            Target::RatioAtLeast(bound) => format!("ratio >= {bound}"),
            Target::RatioAtMost(bound) => format!("ratio <= {bound}"),
            Target::AbovePoco => "above POCO".into(),
            Target::AtLeast(bound) => format!(">= {bound}"),
            Target::AtMost(bound) => format!("<= {bound}"),
        }
    }
}

/// The report's rows: label, metric key, and the targets from the
/// performance issue.
const ROWS: &[(&str, &str, &[Target])] = &[
    (
        "connection rate, conn/s (32 clients, 64 B echoed, close)",
        "conn_rate",
        &[Target::RatioAtLeast(0.9), Target::AbovePoco],
    ),
    (
        "fresh connection p50, us",
        "fresh_p50",
        &[Target::RatioAtMost(1.3)],
    ),
    ("fresh connection p99, us", "fresh_p99", &[]),
    ("fresh connection p99.9, us", "fresh_p999", &[]),
    (
        "server CPU per connection, us",
        "conn_total",
        &[Target::RatioAtMost(2.0)],
    ),
    (
        "  of which user space, us",
        "conn_user",
        &[Target::AtMost(15.0)],
    ),
    ("  of which kernel, us", "conn_kernel", &[]),
    ("load generator CPU, % of a core", "conn_client", &[]),
    (
        "ping-pong 4 KiB x 64 connections, round trips/s",
        "pp_rate",
        &[Target::RatioAtLeast(0.9)],
    ),
    ("ping-pong slowest / mean connection", "pp_fair", &[]),
    ("ping-pong longest stall, ms", "pp_stall", &[]),
    ("server CPU per round trip, user, us", "pp_user", &[]),
    ("server CPU per round trip, kernel, us", "pp_kernel", &[]),
    ("load generator CPU, % of a core", "pp_client", &[]),
    (
        "streaming 16 x 64 KiB, flow-controlled clients, MiB/s",
        "flow_mib",
        &[Target::RatioAtLeast(0.95)],
    ),
    (
        "streaming slowest / mean connection",
        "flow_fair",
        &[Target::AtLeast(0.8)],
    ),
    ("streaming longest stall, ms", "flow_stall", &[]),
    ("server CPU per MiB, user, ms", "flow_user", &[]),
    ("server CPU per MiB, kernel, ms", "flow_kernel", &[]),
    ("load generator CPU, % of a core", "flow_client", &[]),
    (
        "streaming 16 x 64 KiB, at most 256 KiB in flight, MiB/s",
        "st_mib",
        &[],
    ),
    ("bounded streaming slowest / mean", "st_fair", &[]),
    ("server CPU per MiB, total, ms", "st_total", &[]),
    ("load generator CPU, % of a core", "st_client", &[]),
    (
        "RSS per idle connection, KiB",
        "idle_rss",
        &[Target::AtMost(32.0)],
    ),
    (
        "private memory per idle connection, KiB",
        "idle_private",
        &[],
    ),
    ("memory mappings per idle connection", "idle_maps", &[]),
    ("memory mappings at peak", "maps_peak", &[]),
    (
        "RSS 5 s after they close, minus before, MiB",
        "after_close",
        &[],
    ),
    ("start-up to first echo, ms", "startup_ms", &[]),
];

/// Prints a table per layout: each server's medians, the ratios to native,
/// and whether Portico meets each target.
pub fn report(results: &Results, rounds: usize, seconds: u64, idle: usize) {
    for layout in Layout::all() {
        println!();
        println!(
            "Echo, {}: {rounds} rounds, {seconds} s per scenario, {idle} idle connections; medians",
            layout.name()
        );
        println!(
            "| metric | native | POCO | Portico | POCO/native | Portico/native | target | met |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |");
        for (label, key, targets) in ROWS {
            let figure = |kind| results.median(layout, kind, key);
            let (Some(native), Some(poco), Some(portico)) = (
                figure(Kind::Native),
                figure(Kind::Poco),
                figure(Kind::Portico),
            ) else {
                continue;
            };
            let ratio = |value: f64| {
                if native != 0.0 {
                    format!("{:.2}", value / native)
                } else {
                    "-".into()
                }
            };
            let target = targets
                .iter()
                .map(|t| t.text())
                .collect::<Vec<_>>()
                .join(", ");
            let met = match targets.is_empty() {
                true => "",
                false if targets.iter().all(|t| t.met(portico, native, poco)) => "yes",
                false => "**no**",
            };
            println!(
                "| {label} | {} | {} | {} | {} | {} | {target} | {met} |",
                figure_text(native),
                figure_text(poco),
                figure_text(portico),
                ratio(poco),
                ratio(portico)
            );
        }
    }
}

/// A figure with as many decimals as its size deserves.
fn figure_text(value: f64) -> String {
    match value.abs() {
        v if v >= 1000.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

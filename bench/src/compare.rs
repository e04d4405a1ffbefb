//! Builds of the host side by side: the before-and-after figures of one
//! change, measured in one run. Wall-clock figures on these machines move
//! by a third from day to day, so a change is only judged against the
//! build it changes, in the same run, with native tokio beside both as the
//! yardstick.
//!
//! Each variant is a `host` binary (and environment variables for it). Every
//! round starts each server in turn, in a rotated order, pinned to CPU 0,
//! with the load generator on CPU 1, and drives it with fresh connections
//! and then 4 KiB ping-pong. The host logs at its default level, `info`, to
//! a file, as operators run it. Figures are medians over rounds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::load;
use crate::pin::{Layout, pin_current_thread};
use crate::server::{CpuTime, Server, command_on, process_cpu};

/// Concurrent clients of the connection-rate scenario, as `cargo xtask
/// bench` drives it.
const CLIENTS: usize = 32;
/// Connections and bytes of the ping-pong scenario, as `cargo xtask bench`.
const PING_PONG_CONNECTIONS: usize = 64;
const PING_PONG_BYTES: usize = 4096;

/// One server to measure: a host binary with its environment, or the
/// native baseline.
#[derive(Clone, Debug)]
pub struct Variant {
    pub name: String,
    /// `None`: the benchmark's own native tokio echo server.
    pub host: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

impl Variant {
    /// Parses `NAME=PATH[,KEY=VALUE...]`.
    pub fn parse(spec: &str) -> Result<Variant> {
        let mut parts = spec.split(',');
        let (name, host) = parts
            .next()
            .and_then(|first| first.split_once('='))
            .with_context(|| format!("{spec:?}: expected NAME=PATH[,KEY=VALUE...]"))?;
        let env = parts
            .map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("{pair:?} in {spec:?}: expected KEY=VALUE"))
            })
            .collect::<Result<_>>()?;
        Ok(Variant {
            name: name.to_string(),
            host: Some(PathBuf::from(host)),
            env,
        })
    }

    fn native() -> Variant {
        Variant {
            name: "native".into(),
            host: None,
            env: Vec::new(),
        }
    }
}

/// One variant's figures in one round.
#[derive(Clone, Copy, Debug, Default)]
struct Round {
    conn_user_us: f64,
    conn_kernel_us: f64,
    conn_rate: f64,
    fresh_p50_us: f64,
    /// Minor page faults per connection.
    conn_faults: f64,
    conn_client_pct: f64,
    pp_user_us: f64,
    pp_kernel_us: f64,
    pp_rate: f64,
    pp_client_pct: f64,
    /// Resident KiB per idle connection, and MiB still resident 5 s after
    /// they closed (see `echo::measure_idle`); 0 without `--idle`.
    idle_kib: f64,
    after_close_mib: f64,
}

/// Measures the native baseline and every variant, `rounds` times each,
/// `seconds` per scenario, and prints a table of medians.
pub fn run(
    plugin: &Path,
    variants: &[Variant],
    rounds: usize,
    seconds: u64,
    idle: usize,
) -> Result<()> {
    let Some(Layout::Pinned { server, client }) = Layout::all().pop() else {
        bail!("comparing builds needs two cores: the server pinned to one, the client to another");
    };
    let runtime = Layout::Pinned { server, client }.client_runtime()?;
    pin_current_thread(Some(client))?;
    let logs = std::env::temp_dir().join(format!("portico-compare-{}", std::process::id()));
    std::fs::create_dir_all(&logs).context("cannot make a folder for the hosts' logs")?;
    let mut all = vec![Variant::native()];
    all.extend_from_slice(variants);
    let mut measured: BTreeMap<usize, Vec<Round>> = BTreeMap::new();
    let duration = Duration::from_secs(seconds);
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.rotate_left(round % all.len());
        for index in order {
            let variant = &all[index];
            eprintln!("round {} of {rounds}: {}", round + 1, variant.name);
            let server = start(variant, plugin, server, &logs, idle)?;
            let figures = runtime
                .block_on(measure(&server, duration, idle))
                .with_context(|| format!("{}, round {}", variant.name, round + 1))?;
            measured.entry(index).or_default().push(figures);
        }
    }
    pin_current_thread(None)?;
    let _ = std::fs::remove_dir_all(&logs);
    report(&all, &measured, rounds, seconds);
    Ok(())
}

fn start(variant: &Variant, plugin: &Path, cpu: usize, logs: &Path, idle: usize) -> Result<Server> {
    let Some(host) = &variant.host else {
        let mut command = command_on(&std::env::current_exe()?, Some(cpu));
        command.args(["native-echo", "--listen", "127.0.0.1:0"]);
        return Server::spawn(command, "the native server");
    };
    let log = std::fs::File::create(logs.join(format!("{}.log", variant.name)))
        .context("cannot create the host's log file")?;
    let mut command = command_on(host, Some(cpu));
    command
        .arg("--plugin")
        .arg(plugin)
        .args(["--listen", "127.0.0.1:0", "--max-connections"])
        .arg((idle + 1024).to_string())
        .args(["--max-queued", "0"])
        .env("PORTICO_LOG", "info")
        .envs(variant.env.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::from(log));
    Server::spawn(command, &variant.name)
}

async fn measure(server: &Server, duration: Duration, idle: usize) -> Result<Round> {
    first_echo(server.addr).await?;
    let mut round = Round::default();

    let before = Sample::take(server)?;
    let fresh = load::conn_rate(server.addr, CLIENTS, duration).await?;
    let after = Sample::take(server)?;
    let connections = fresh.latencies.len() as f64;
    let (user, kernel, client) = before.per_operation(&after, connections);
    round.conn_user_us = user;
    round.conn_kernel_us = kernel;
    round.conn_client_pct = client;
    round.conn_faults = (after.faults - before.faults) / connections;
    round.conn_rate = fresh.per_second;
    round.fresh_p50_us = load::quantile(&fresh.latencies, 0.5).as_secs_f64() * 1e6;

    let before = Sample::take(server)?;
    let pp = load::ping_pong(
        server.addr,
        PING_PONG_CONNECTIONS,
        PING_PONG_BYTES,
        duration,
    )
    .await?;
    let after = Sample::take(server)?;
    let round_trips = pp.mib_per_second * (1 << 20) as f64 / PING_PONG_BYTES as f64;
    let (user, kernel, client) = before.per_operation(&after, round_trips * duration.as_secs_f64());
    round.pp_user_us = user;
    round.pp_kernel_us = kernel;
    round.pp_client_pct = client;
    round.pp_rate = round_trips;

    if idle > 0 {
        let mut figures = crate::echo::Figures::new();
        crate::echo::measure_idle(server, idle, &mut figures).await?;
        round.idle_kib = figures["idle_rss"];
        round.after_close_mib = figures["after_close"];
    }
    Ok(round)
}

/// The server's and the client's CPU, and the server's minor page faults,
/// at one moment.
struct Sample {
    server: CpuTime,
    client: CpuTime,
    faults: f64,
    at: Instant,
}

impl Sample {
    fn take(server: &Server) -> Result<Sample> {
        Ok(Sample {
            server: server.cpu()?,
            client: process_cpu(std::process::id())?,
            faults: minor_faults(server.child.id())?,
            at: Instant::now(),
        })
    }

    /// The server's user and kernel CPU per operation, in µs, and the
    /// client's share of its core, in percent, from `self` to `after`.
    fn per_operation(&self, after: &Sample, operations: f64) -> (f64, f64, f64) {
        let server = after.server - self.server;
        let client = after.client - self.client;
        let per = |seconds: f64| seconds * 1e6 / operations.max(f64::MIN_POSITIVE);
        let share = 100.0 * client.total_s() / (after.at - self.at).as_secs_f64();
        (per(server.user_s), per(server.system_s), share)
    }
}

/// Minor page faults process `pid` has taken so far (`minflt` in
/// `/proc/PID/stat`).
fn minor_faults(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    let field = after_name.split_whitespace().nth(7).context("short stat")?;
    Ok(field.parse()?)
}

/// One connection and echo, so that the server is warm before it is
/// measured.
async fn first_echo(addr: SocketAddr) -> Result<()> {
    load::conn_rate(addr, 1, Duration::from_millis(100))
        .await
        .map(drop)
}

fn report(all: &[Variant], measured: &BTreeMap<usize, Vec<Round>>, rounds: usize, seconds: u64) {
    println!(
        "Builds compared: pinned (server CPU 0, client CPU 1), medians of {rounds} rounds, \
         {seconds} s per scenario"
    );
    println!(
        "| server | CPU/conn, us (user + kernel) | faults/conn | conn/s | x native | fresh p50, us \
         | client CPU | CPU/round trip, us (user + kernel) | round trips/s | x native | client CPU \
         | KiB/idle conn | MiB after close |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let median = |index: usize, figure: fn(&Round) -> f64| -> f64 {
        let mut values: Vec<f64> = measured[&index].iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    // Each column is its own median, so user and kernel need not add up
    // to the total exactly.
    let native_conn = median(0, |r| r.conn_rate);
    let native_pp = median(0, |r| r.pp_rate);
    for (index, variant) in all.iter().enumerate() {
        let m = |figure: fn(&Round) -> f64| median(index, figure);
        let (cu, ck) = (m(|r| r.conn_user_us), m(|r| r.conn_kernel_us));
        let (pu, pk) = (m(|r| r.pp_user_us), m(|r| r.pp_kernel_us));
        println!(
            "| {} | {:.1} ({:.1} + {:.1}) | {:.1} | {:.0} | {:.2} | {:.0} | {:.0}% | {:.2} ({:.2} + {:.2}) | {:.0} | {:.2} | {:.0}% | {:.1} | {:+.1} |",
            variant.name,
            m(|r| r.conn_user_us + r.conn_kernel_us),
            cu,
            ck,
            m(|r| r.conn_faults),
            m(|r| r.conn_rate),
            m(|r| r.conn_rate) / native_conn,
            m(|r| r.fresh_p50_us),
            m(|r| r.conn_client_pct),
            m(|r| r.pp_user_us + r.pp_kernel_us),
            pu,
            pk,
            m(|r| r.pp_rate),
            m(|r| r.pp_rate) / native_pp,
            m(|r| r.pp_client_pct),
            m(|r| r.idle_kib),
            m(|r| r.after_close_mib),
        );
    }
}

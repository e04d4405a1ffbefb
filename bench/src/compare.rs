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
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::echo::{Cpu, Figures, first_echo, measure_idle};
use crate::load;
use crate::pin::{Layout, pin_current_thread};
use crate::server::{Server, command_on, minor_faults};

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
    let mut measured: BTreeMap<usize, Vec<Figures>> = BTreeMap::new();
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

/// One round on `server`: the figures under the keys `cargo xtask bench`
/// gives them (`conn_user`, `pp_kernel`, `conn_rate`, ...), and `faults`.
async fn measure(server: &Server, duration: Duration, idle: usize) -> Result<Figures> {
    first_echo(server.addr).await?;
    let mut figures = Figures::new();
    let pid = server.child.id();

    let (cpu, faults) = (Cpu::start(server)?, minor_faults(pid)?);
    let fresh = load::conn_rate(server.addr, CLIENTS, duration).await?;
    let connections = fresh.latencies.len() as f64;
    cpu.record(server, connections, 1e6, "conn", &mut figures)?;
    figures.insert(
        "faults".into(),
        (minor_faults(pid)? - faults) / connections.max(1.0),
    );
    figures.insert("conn_rate".into(), fresh.per_second);
    figures.insert(
        "fresh_p50".into(),
        load::quantile(&fresh.latencies, 0.5).as_secs_f64() * 1e6,
    );

    let cpu = Cpu::start(server)?;
    let pp = load::ping_pong(
        server.addr,
        PING_PONG_CONNECTIONS,
        PING_PONG_BYTES,
        duration,
    )
    .await?;
    let round_trips = pp.mib_per_second * (1 << 20) as f64 / PING_PONG_BYTES as f64;
    cpu.record(
        server,
        round_trips * duration.as_secs_f64(),
        1e6,
        "pp",
        &mut figures,
    )?;
    figures.insert("pp_rate".into(), round_trips);

    if idle > 0 {
        measure_idle(server, idle, &mut figures).await?;
    }
    Ok(figures)
}

fn report(all: &[Variant], measured: &BTreeMap<usize, Vec<Figures>>, rounds: usize, seconds: u64) {
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
    // Each column is its own median, so user and kernel need not add up
    // to the total exactly. A figure a round did not measure (memory
    // without `--idle`) shows as 0.
    let median = |index: usize, key: &str| -> f64 {
        let mut values: Vec<f64> = measured[&index]
            .iter()
            .map(|figures| figures.get(key).copied().unwrap_or(0.0))
            .collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (native_conn, native_pp) = (median(0, "conn_rate"), median(0, "pp_rate"));
    for (index, variant) in all.iter().enumerate() {
        let m = |key: &str| median(index, key);
        println!(
            "| {} | {:.1} ({:.1} + {:.1}) | {:.1} | {:.0} | {:.2} | {:.0} | {:.0}% | {:.2} ({:.2} + {:.2}) | {:.0} | {:.2} | {:.0}% | {:.1} | {:+.1} |",
            variant.name,
            m("conn_total"),
            m("conn_user"),
            m("conn_kernel"),
            m("faults"),
            m("conn_rate"),
            m("conn_rate") / native_conn,
            m("fresh_p50"),
            m("conn_client"),
            m("pp_total"),
            m("pp_user"),
            m("pp_kernel"),
            m("pp_rate"),
            m("pp_rate") / native_pp,
            m("pp_client"),
            m("idle_rss"),
            m("after_close"),
        );
    }
}

//! The plugin runtimes: the same echo written in Rust, C, Go, Python and
//! JavaScript, each served by the host in turn. What a language costs the
//! operator: memory at start, connection rate, CPU per connection, the
//! time from accept to the plugin's `run`, and memory per live connection.
//!
//! Accept-to-`run` comes from the host's own debug line ("calling run",
//! `startup_us`), so the host runs with that one line enabled throughout.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::load;
use crate::pin::Layout;
use crate::server::{Server, command_on};

/// The echo plugin of each language, as `cargo xtask plugins` names it.
pub const ECHOES: &[(&str, &str)] = &[
    ("rust", "echo.wasm"),
    ("c", "c-echo.wasm"),
    ("go", "go-echo.wasm"),
    ("python", "py-echo.wasm"),
    ("javascript", "js-echo.wasm"),
];

/// Connections held open for the memory figure.
const LIVE: usize = 200;

/// One plugin's figures.
pub struct Runtime {
    language: &'static str,
    wasm_kib: f64,
    start_rss_mib: f64,
    conn_rate: f64,
    conn_cpu_us: f64,
    accept_to_run_p50_us: f64,
    accept_to_run_p99_us: f64,
    live_kib: f64,
    live_private_kib: f64,
}

/// Measures the echo of each of `languages` (names from [`ECHOES`]).
pub fn measure(
    host: &Path,
    plugin_dir: &Path,
    languages: &[String],
    duration: Duration,
) -> Result<Vec<Runtime>> {
    // The pinned layout where the machine allows it: the client's CPU
    // does not count against the host's.
    let layout = *Layout::all().last().context("no layout")?;
    let runtime = layout.client_runtime()?;
    let cache = std::env::temp_dir().join(format!("portico-bench-runtimes-{}", std::process::id()));
    let mut figures = Vec::new();
    for language in languages {
        let (language, file) = ECHOES
            .iter()
            .find(|(name, _)| name == language)
            .with_context(|| format!("no echo plugin for the language {language:?}"))?;
        let plugin = plugin_dir.join(file);
        eprintln!("plugin runtimes: {language}");
        let measured = runtime
            .block_on(measure_one(
                language, host, &plugin, &cache, layout, duration,
            ))
            .with_context(|| format!("the {language} echo ({})", plugin.display()))?;
        figures.push(measured);
    }
    let _ = std::fs::remove_dir_all(&cache);
    Ok(figures)
}

async fn measure_one(
    language: &'static str,
    host: &Path,
    plugin: &Path,
    cache: &Path,
    layout: Layout,
    duration: Duration,
) -> Result<Runtime> {
    let wasm_kib = std::fs::metadata(plugin)
        .with_context(|| format!("cannot read {}", plugin.display()))?
        .len() as f64
        / 1024.0;
    // Compiling a large plugin takes seconds; that is start-up's figure,
    // not this one's. The first start fills the cache.
    drop(start(host, plugin, cache, None)?);
    let (server, startups) = start(host, plugin, cache, layout.server_cpu())?;
    load::open_idle(server.addr, 1)
        .await
        .context("first echo")?;
    let start_rss_kib = server.rss_kib()?;

    let cpu_before = server.cpu()?;
    let fresh = load::conn_rate(server.addr, 32, duration)
        .await
        .context("connection rate")?;
    let cpu = server.cpu()? - cpu_before;
    let connections = fresh.latencies.len().max(1) as f64;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, private_before) = (server.rss_kib()?, server.private_kib()?);
    lock(&startups).clear();
    let live = load::open_idle(server.addr, LIVE)
        .await
        .context("live connections")?;
    let live_kib = server.rss_kib()?.saturating_sub(before) as f64 / LIVE as f64;
    let live_private_kib =
        server.private_kib()?.saturating_sub(private_before) as f64 / LIVE as f64;
    let mut accept_to_run = std::mem::take(&mut *lock(&startups));
    drop(live);
    if accept_to_run.len() < LIVE {
        bail!(
            "{} of {LIVE} connections logged their start-up",
            accept_to_run.len()
        );
    }
    accept_to_run.sort();
    let quantile = |q: f64| accept_to_run[((accept_to_run.len() - 1) as f64 * q) as usize] as f64;
    Ok(Runtime {
        language,
        wasm_kib,
        start_rss_mib: start_rss_kib as f64 / 1024.0,
        conn_rate: fresh.per_second,
        conn_cpu_us: cpu.total_s() * 1e6 / connections,
        accept_to_run_p50_us: quantile(0.5),
        accept_to_run_p99_us: quantile(0.99),
        live_kib,
        live_private_kib,
    })
}

type Startups = Arc<Mutex<Vec<u64>>>;

fn lock(startups: &Startups) -> std::sync::MutexGuard<'_, Vec<u64>> {
    startups
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the host with `plugin` and its debug line for `run` starting,
/// and collects each connection's accept-to-`run` time in microseconds.
fn start(
    host: &Path,
    plugin: &Path,
    cache: &Path,
    cpu: Option<usize>,
) -> Result<(Server, Startups)> {
    let mut command = command_on(host, cpu);
    command
        .arg("--plugin")
        .arg(plugin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--max-queued",
            "0",
            "--cache-dir",
        ])
        .arg(cache)
        .args(["--max-connections", &(LIVE + 64).to_string()])
        .env("PORTICO_LOG", "warn,portico_host::sandbox=debug")
        .stderr(Stdio::piped());
    let mut server = Server::spawn(command, "the host")?;
    let stderr = server.child.stderr.take().context("stderr")?;
    let startups = Startups::default();
    let collected = startups.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            match line.split_once("startup_us=") {
                Some((_, rest)) => {
                    let digits = rest.split(|c: char| !c.is_ascii_digit()).next();
                    if let Some(us) = digits.and_then(|d| d.parse().ok()) {
                        lock(&collected).push(us);
                    }
                }
                // Anything else the host says (a warning) is shown.
                None => eprintln!("{line}"),
            }
        }
    });
    Ok((server, startups))
}

/// Prints a row per language, with the ratio to the Rust echo's connection
/// rate and the targets the performance issue sets for Python and
/// JavaScript. Memory per connection is given twice: RSS counts every page
/// of the plugin's memory image that an instance has touched, although all
/// instances share the same pages until they write them; private memory is
/// what each connection costs the machine. The target is checked on the
/// latter.
pub fn report(runtimes: &[Runtime], seconds: u64) {
    println!();
    println!(
        "Plugin runtimes (echo; server pinned where the machine allows; {seconds} s of 32 clients, then {LIVE} live connections)"
    );
    println!(
        "| plugin | .wasm, KiB | host RSS at start, MiB | conn/s | of Rust's | server CPU per conn, us | accept-to-run p50, us | p99, us | RSS per live conn, KiB | private memory per live conn, KiB | targets (Python, JavaScript) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    let rust = runtimes.iter().find(|r| r.language == "rust");
    for r in runtimes {
        let of_rust = rust.map_or("-".into(), |rust| {
            format!("{:.2}", r.conn_rate / rust.conn_rate)
        });
        let targets = match (r.language, rust) {
            ("python" | "javascript", Some(rust)) => {
                let misses: Vec<&str> = [
                    (r.accept_to_run_p50_us <= 150.0, "accept-to-run <= 150 us"),
                    (r.live_private_kib <= 512.0, "<= 512 KiB per conn"),
                    (
                        r.start_rss_mib - rust.start_rss_mib <= 64.0,
                        "start <= Rust's + 64 MB",
                    ),
                ]
                .into_iter()
                .filter(|(met, _)| !met)
                .map(|(_, target)| target)
                .collect();
                match misses.is_empty() {
                    true => "met".to_string(),
                    false => format!("**not met**: {}", misses.join("; ")),
                }
            }
            _ => String::new(),
        };
        println!(
            "| {} | {:.0} | {:.1} | {:.0} | {of_rust} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {targets} |",
            r.language,
            r.wasm_kib,
            r.start_rss_mib,
            r.conn_rate,
            r.conn_cpu_us,
            r.accept_to_run_p50_us,
            r.accept_to_run_p99_us,
            r.live_kib,
            r.live_private_kib,
        );
    }
}

//! The capabilities against the real thing, with a client nobody here
//! wrote: `redis-benchmark` against the redis-kv plugin (memory bucket) and
//! against a real `redis-server`; and through the tcp-proxy plugin to that
//! `redis-server` against straight to it. Same run, same client settings;
//! the client is pinned to one core and the servers to the other, so that
//! they do not take turns on the same one.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::server::{children_cpu, process_cpu};

/// The redis-benchmark tests run, as it names them in its report.
const TESTS: &str = "ping,set,get,incr";

/// One redis-benchmark run: requests per second of each test, by its
/// name, and how busy the client and the server(s) were, as shares of
/// one core over the run.
pub struct Run {
    rates: Vec<(String, f64)>,
    client_cpu: f64,
    server_cpu: f64,
}

pub struct Figures {
    pub redis: Run,
    pub redis_kv: Run,
    pub via_proxy: Run,
}

/// Runs every comparison with `requests` requests per test.
pub fn measure(host: &Path, plugin_dir: &Path, requests: u64) -> Result<Figures> {
    let redis_addr = free_addr()?;
    let port = redis_addr.port().to_string();
    let redis = Background::start(
        redis_addr,
        "redis-server".as_ref(),
        &[
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
        ],
    )
    .context("starting redis-server (Debian's redis-server package)")?;
    let redis_rates = benchmark(redis.addr, requests, &[&redis])?;

    let plugin = |name: &str| plugin_dir.join(name).display().to_string();
    let addr = free_addr()?.to_string();
    let redis_kv = Background::start(
        addr.parse()?,
        host,
        &[
            "--plugin",
            &plugin("redis_kv.wasm"),
            "--allow-keyvalue",
            "cache",
            "--listen",
            &addr,
        ],
    )?;
    let redis_kv_rates = benchmark(redis_kv.addr, requests, &[&redis_kv])?;
    drop(redis_kv);

    let addr = free_addr()?.to_string();
    let upstream = redis.addr.to_string();
    let proxy = Background::start(
        addr.parse()?,
        host,
        &[
            "--plugin",
            &plugin("tcp_proxy.wasm"),
            "--config",
            &format!("upstream={upstream}"),
            "--allow-outbound",
            &upstream,
            "--listen",
            &addr,
        ],
    )?;
    let proxy_rates = benchmark(proxy.addr, requests, &[&proxy, &redis])?;
    Ok(Figures {
        redis: redis_rates,
        redis_kv: redis_kv_rates,
        via_proxy: proxy_rates,
    })
}

pub fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Prints the table: each test's rates and ratios, then how busy the
/// client and the servers were in each run.
pub fn report(figures: &Figures, requests: u64) {
    println!();
    println!(
        "redis-benchmark -t {TESTS} -n {requests} -c 50 (requests/s; client on CPU 1, servers on CPU 0)"
    );
    println!(
        "{:<14} {:>14} {:>14} {:>7} {:>14} {:>7}",
        "test", "redis-server", "redis-kv", "ratio", "via tcp-proxy", "ratio"
    );
    for (test, redis) in &figures.redis.rates {
        let rate = |run: &Run| {
            run.rates
                .iter()
                .find(|(name, _)| name == test)
                .map_or(f64::NAN, |(_, rate)| *rate)
        };
        let (kv, proxy) = (rate(&figures.redis_kv), rate(&figures.via_proxy));
        println!(
            "{test:<14} {redis:>14.0} {kv:>14.0} {:>7.2} {proxy:>14.0} {:>7.2}",
            kv / redis,
            proxy / redis
        );
    }
    let busy = |run: &Run| {
        format!(
            "client {:.0}%, server {:.0}%",
            run.client_cpu * 100.0,
            run.server_cpu * 100.0
        )
    };
    println!(
        "CPU (of one core): redis-server: {}; redis-kv: {}; via tcp-proxy: {} (proxy and redis-server together)",
        busy(&figures.redis),
        busy(&figures.redis_kv),
        busy(&figures.via_proxy)
    );
}

/// Runs redis-benchmark against `addr`, pinned to CPU 1, while `servers`
/// serve it; fails on any error it reports.
fn benchmark(addr: SocketAddr, requests: u64, servers: &[&Background]) -> Result<Run> {
    let servers_cpu = || -> Result<f64> {
        servers
            .iter()
            .map(|server| Ok(process_cpu(server.child.id())?.total_s()))
            .sum()
    };
    let (client_before, servers_before, started) = (children_cpu(), servers_cpu()?, Instant::now());
    let output = Command::new("taskset")
        .args(["-c", "1", "redis-benchmark", "-h", &addr.ip().to_string()])
        .args(["-p", &addr.port().to_string(), "-t", TESTS])
        .args(["-n", &requests.to_string(), "-c", "50", "-q"])
        .output()
        .context("running redis-benchmark (Debian's redis-tools package)")?;
    let elapsed = started.elapsed().as_secs_f64();
    let client_cpu = (children_cpu() - client_before).total_s() / elapsed;
    let server_cpu = (servers_cpu()? - servers_before) / elapsed;
    let stdout = String::from_utf8_lossy(&output.stdout).replace('\r', "\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || stdout.to_lowercase().contains("error") || !stderr.is_empty() {
        bail!("redis-benchmark against {addr} failed: {stdout}{stderr}");
    }
    let rates: Vec<(String, f64)> = stdout
        .lines()
        .filter_map(|line| {
            let (test, rest) = line.split_once(": ")?;
            let rate = rest.split_whitespace().next()?.parse().ok()?;
            rest.contains("requests per second")
                .then(|| (test.trim().to_string(), rate))
        })
        .collect();
    if rates.len() != 5 {
        bail!("redis-benchmark against {addr} reported {rates:?}");
    }
    Ok(Run {
        rates,
        client_cpu,
        server_cpu,
    })
}

/// A server process pinned to CPU 0, on a free loopback port, killed when
/// dropped.
pub struct Background {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Background {
    /// Starts `program` with `args`, which make it listen on `addr`.
    pub fn start(addr: SocketAddr, program: &Path, args: &[&str]) -> Result<Background> {
        let child = Command::new("taskset")
            .args(["-c", "0"])
            .arg(program)
            .args(args)
            .env("PORTICO_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{} did not start listening on {addr}", program.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Background { child, addr })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

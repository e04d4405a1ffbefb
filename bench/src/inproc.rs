//! In-process figures, through the host's own library: what creating a
//! connection's sandbox costs, without any network in the way.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use portico_host::config::Limits;
use portico_host::net::socket::Socket;
use portico_host::ops::counters::Counters;
use portico_host::sandbox::MemoryInit;
use portico_host::sandbox::bindings::ConnectionInfo;
use portico_host::sandbox::plugin::Plugin;
use portico_host::sandbox::{self, CpuBudget, EpochTicker, Outcome, Sandbox};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Microseconds per (store + WASI context + instantiate), and per whole
/// connection served by a plugin whose `run` returns at once (the client
/// has already closed, so echo's first read ends it).
pub struct Instantiation {
    pub instantiate_us: f64,
    pub empty_run_us: f64,
}

pub async fn measure(plugin_path: &Path, iterations: u32) -> Result<Instantiation> {
    // The pool is sized as the host's default: a small pool runs dry of
    // freed slots between decommit batches and measures the flushes.
    let limits = Limits {
        max_queued: 0,
        ..portico_host::config::default_limits()
    };
    let bytes = Plugin::read(plugin_path)?;
    let engine = sandbox::engine(&limits, MemoryInit::of(&bytes))?;
    let ticker = EpochTicker::start()?;
    ticker.add(&engine);
    let plugin = Plugin::load(&engine, plugin_path, &bytes, &Default::default(), None)?;
    let sandbox = Sandbox {
        service: "echo".into(),
        plugin,
        limits,
        counters: Arc::new(Counters::default()),
        stop: CancellationToken::new(),
        draining: CancellationToken::new(),
        outbound: None,
        buckets: Default::default(),
        messaging: None,
    };

    for _ in 0..iterations / 10 {
        sandbox.check().await?;
    }
    let started = Instant::now();
    for _ in 0..iterations {
        sandbox.check().await?;
    }
    let instantiate_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut spent = Duration::ZERO;
    for id in 0..u64::from(iterations) {
        let client = TcpStream::connect(addr).await?;
        let (server, peer) = listener.accept().await?;
        drop(client);
        let socket = Socket::new(server, None, false);
        let info = ConnectionInfo {
            id,
            peer_address: peer.to_string(),
            local_address: addr.to_string(),
        };
        let began = Instant::now();
        let mut cpu = CpuBudget::new(sandbox.limits.cpu_budget, Duration::ZERO);
        let served = sandbox.serve(&info, &socket, began, &mut cpu, None).await;
        spent += began.elapsed();
        if !matches!(served.outcome, Outcome::Finished) {
            anyhow::bail!("the empty run did not finish cleanly");
        }
    }
    Ok(Instantiation {
        instantiate_us,
        empty_run_us: spent.as_secs_f64() * 1e6 / f64::from(iterations),
    })
}

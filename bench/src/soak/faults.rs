//! The faults, on a fixed schedule from the soak's start (offsets chosen so
//! that no two windows of faults touching the same part overlap):
//!
//! | fault | every | at |
//! | --- | ---: | ---: |
//! | reload (SIGHUP or `POST /reload`), echo's plugin swapped | 10 s | 10 s |
//! | vanishing clients on echo | 60 s | 5 s |
//! | burst past echo's places and queue | 30 s | 15 s |
//! | redis-server killed and restarted | 60 s | 25 s |
//! | the file bucket's disk full | 60 s | 35 s |
//! | nats-server killed and restarted | 60 s | 50 s |
//!
//! Each opens a window in the [`Record`] when it starts and closes it
//! after a grace time for recovery; client errors inside a window of a
//! fault that touches their part are that fault's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::admin::{Admin, sum};
use super::config::{ECHO_IDLE_TIMEOUT_S, ECHO_MAX_CONNECTIONS, ECHO_MAX_QUEUED, Setup};
use super::procs::{Peer, signal};
use super::record::{Fault, Record, ReloadCheck};
use super::{echo_load, kv_file};

/// The two echo builds a reload alternates between: Rust's, with a small
/// data image, and Go's, with a large one.
pub const ECHO_PLUGINS: [&str; 2] = ["echo.wasm", "go-echo.wasm"];
/// How long a killed server stays down.
const DOWN: Duration = Duration::from_secs(2);
/// Time after a restart for the host to find the server again: the
/// tcp-proxy connects afresh for each connection; the host's NATS client
/// reconnects with a backoff.
const REDIS_GRACE: Duration = Duration::from_secs(2);
const NATS_GRACE: Duration = Duration::from_secs(5);
const DISK_FULL_FOR: Duration = Duration::from_secs(5);
/// A write the full disk cannot take.
const PROBE_BYTES: usize = 512 * 1024;
/// Time after the filler goes for a write in flight to be answered.
const DISK_GRACE: Duration = Duration::from_secs(2);
const BURST_HOLD: Duration = Duration::from_secs(2);
/// Time after a burst for the connections it queued to be served.
const BURST_GRACE: Duration = Duration::from_secs(2);
/// Longest a reload may take to show on /metrics.
const RELOAD_DEADLINE: Duration = Duration::from_secs(60);

/// What the faults act on.
pub struct Faults {
    pub record: Arc<Record>,
    pub setup: Setup,
    pub admin: Admin,
    pub host_pid: u32,
    pub echo: SocketAddr,
    /// The redis-kv service on the file bucket.
    pub kv_file: SocketAddr,
    pub redis: Arc<Mutex<Peer>>,
    pub nats: Arc<Mutex<Peer>>,
    /// The tmpfs holding the file bucket.
    pub disk: PathBuf,
    /// Kill Redis the first time without opening a fault window: the
    /// errors that follow must then be counted as lost (a check of the
    /// soak itself).
    pub unannounced_redis_kill: bool,
}

/// When each fault is due: its period and its first time.
fn schedule(fault: Fault) -> (u64, u64) {
    match fault {
        Fault::Reload => (10, 10),
        Fault::Vanish => (60, 5),
        Fault::Burst => (30, 15),
        Fault::RedisKill => (60, 25),
        Fault::DiskFull => (60, 35),
        Fault::NatsKill => (60, 50),
    }
}

/// Injects every fault on its schedule until `stop`, none due at or
/// after `end`.
pub async fn inject_all(faults: Arc<Faults>, end: Duration, stop: CancellationToken) {
    let kinds = [
        Fault::Reload,
        Fault::Vanish,
        Fault::Burst,
        Fault::RedisKill,
        Fault::DiskFull,
        Fault::NatsKill,
    ];
    let tasks: Vec<_> = kinds
        .into_iter()
        .map(|fault| tokio::spawn(on_schedule(faults.clone(), fault, end, stop.clone())))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

async fn on_schedule(faults: Arc<Faults>, fault: Fault, end: Duration, stop: CancellationToken) {
    let (period, offset) = schedule(fault);
    for n in 0.. {
        let due = Duration::from_secs(offset + n * period);
        if due >= end {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(due.saturating_sub(faults.record.now())) => {}
            () = stop.cancelled() => return,
        }
        match fault {
            Fault::Reload => reload(&faults, n).await,
            Fault::Vanish => vanish(&faults).await,
            Fault::Burst => burst(&faults).await,
            Fault::RedisKill => {
                let announce = !(faults.unannounced_redis_kill && n == 0);
                kill_peer(&faults, &faults.redis, fault, REDIS_GRACE, announce).await;
            }
            Fault::NatsKill => kill_peer(&faults, &faults.nats, fault, NATS_GRACE, true).await,
            Fault::DiskFull => fill_disk(&faults).await,
        }
    }
}

/// Reload `n`: the echo service swaps builds every time, and the way of
/// asking alternates every second time, so that each build comes by
/// each way.
async fn reload(faults: &Faults, n: u64) {
    let plugin = ECHO_PLUGINS[(n as usize + 1) % 2];
    let via = if (n / 2).is_multiple_of(2) {
        "SIGHUP"
    } else {
        "POST /reload"
    };
    let record = &faults.record;
    let window = record.start_fault(Fault::Reload, format!("{via} to {plugin}"));
    let (at, started) = (record.now(), Instant::now());
    let outcome = reload_and_check(faults, plugin, via).await;
    record.end_fault(window, Duration::ZERO, "");
    record.reload_checked(ReloadCheck {
        at,
        via,
        plugin: plugin.to_string(),
        took: started.elapsed(),
        problem: outcome.err().map(|error| format!("{error:#}")),
    });
}

async fn reload_and_check(faults: &Faults, plugin: &'static str, via: &str) -> Result<()> {
    faults.setup.write(plugin)?;
    let digest = sha256_hex(&faults.setup.plugin(plugin))?;
    match via {
        "SIGHUP" => signal(faults.host_pid, libc::SIGHUP)?,
        _ => drop(faults.admin.reload().await?),
    }
    let in_force = format!("portico_plugin_info{{service=\"echo\",digest=\"{digest}\"}}");
    let started = Instant::now();
    loop {
        let metrics = faults.admin.metrics().await?;
        let versions = sum(&metrics, "portico_plugin_info", &["service=\"echo\""]);
        if metrics.get(&in_force) == Some(&1.0) {
            if versions != 1.0 {
                bail!("{versions} echo versions are marked in force");
            }
            break;
        }
        if started.elapsed() > RELOAD_DEADLINE {
            bail!("{plugin} ({digest}) not in force after {RELOAD_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    echo_load::fresh_echo(faults.echo)
        .await
        .context("a fresh echo connection after the reload")
}

/// The SHA-256 of a file, in hex, as the host labels plugin versions.
fn sha256_hex(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// Kills `peer` (SIGKILL), leaves it down for [`DOWN`], and starts it
/// again on its port. Unless `announce`, opens no fault window.
async fn kill_peer(
    faults: &Faults,
    peer: &Arc<Mutex<Peer>>,
    fault: Fault,
    grace: Duration,
    announce: bool,
) {
    let record = &faults.record;
    let window = announce.then(|| record.start_fault(fault, "SIGKILL, down 2 s"));
    let peer = peer.clone();
    let restarted = tokio::task::spawn_blocking(move || {
        let mut peer = peer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        peer.kill();
        std::thread::sleep(DOWN);
        peer.restart()
    })
    .await;
    let outcome = match restarted {
        Ok(Ok(())) => String::new(),
        Ok(Err(error)) => format!("{error:#}"),
        Err(error) => error.to_string(),
    };
    if !outcome.is_empty() {
        record.problem(format!("{}: restarting failed: {outcome}", fault.name()));
    }
    if let Some(window) = window {
        record.end_fault(window, grace, &outcome);
    }
}

/// Fills the file bucket's disk with a filler file, checks that a write
/// needing room fails, holds the disk full for [`DISK_FULL_FOR`], and
/// removes the filler.
async fn fill_disk(faults: &Faults) {
    let record = &faults.record;
    let window = record.start_fault(Fault::DiskFull, "");
    let filler = faults.disk.join("filler");
    let path = filler.clone();
    let filled = tokio::task::spawn_blocking(move || fill(&path)).await;
    let mut outcome = match filled {
        Ok(Ok(bytes)) => format!("{} KiB of filler", bytes / 1024),
        Ok(Err(error)) => {
            record.problem(format!("filling the disk: {error:#}"));
            String::new()
        }
        Err(error) => {
            record.problem(format!("filling the disk: {error}"));
            String::new()
        }
    };
    // The verifier's small writes may fit in pages the database file
    // already has: this one cannot, so the fault always meets the
    // backend. Always the same key, so that one kept takes no more room.
    let big = "x".repeat(PROBE_BYTES);
    let probe = async {
        let mut resp = kv_file::Resp::connect(faults.kv_file).await?;
        resp.set("soak:disk-full-probe", &big).await
    };
    match tokio::time::timeout(Duration::from_secs(10), probe).await {
        Ok(Err(error)) => outcome.push_str(&format!(
            "; a {} KiB SET refused: {error:#}",
            PROBE_BYTES / 1024
        )),
        Ok(Ok(())) => record.problem(format!(
            "a {} KiB SET succeeded on a full disk",
            PROBE_BYTES / 1024
        )),
        Err(_) => record.problem("a SET on a full disk got no answer"),
    }
    tokio::time::sleep(DISK_FULL_FOR).await;
    if let Err(error) = std::fs::remove_file(&filler) {
        record.problem(format!("removing {}: {error}", filler.display()));
    }
    record.end_fault(window, DISK_GRACE, &outcome);
}

/// Writes `path` until the disk is full; returns the bytes written.
fn fill(path: &std::path::Path) -> Result<u64> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => bail!("the disk took no more bytes but said no error"),
            Ok(n) => written += n as u64,
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => return Ok(written),
            Err(error) => return Err(error.into()),
        }
    }
}

/// Opens more connections than the echo service's places and queue, and
/// holds them for [`BURST_HOLD`].
async fn burst(faults: &Faults) {
    let record = &faults.record;
    let window = record.start_fault(Fault::Burst, "");
    let count = (ECHO_MAX_CONNECTIONS + ECHO_MAX_QUEUED) as usize + 32;
    let outcome = match echo_load::burst(faults.echo, count, BURST_HOLD).await {
        Ok(0) => {
            record.problem(format!("a burst of {count} connections met no limit"));
            format!("{count} connections, none refused")
        }
        Ok(refused) => format!("{count} connections, {refused} refused"),
        Err(error) => {
            record.problem(format!("burst: {error:#}"));
            String::new()
        }
    };
    record.end_fault(window, BURST_GRACE, &outcome);
}

/// A client that resets its connection, and one that stops reading and is
/// never heard from again; the host must close the second at the echo
/// service's idle timeout.
async fn vanish(faults: &Faults) {
    let record = &faults.record;
    let window = record.start_fault(Fault::Vanish, "");
    let outcome = vanish_and_check(faults).await;
    if let Err(error) = &outcome {
        record.problem(format!("vanishing client: {error:#}"));
    }
    let note = outcome.unwrap_or_default();
    record.end_fault(window, Duration::ZERO, &note);
}

async fn vanish_and_check(faults: &Faults) -> Result<String> {
    let idle_closed = |metrics: super::admin::Metrics| {
        sum(
            &metrics,
            "portico_connections_closed_total",
            &["service=\"echo\"", "outcome=\"idle\""],
        )
    };
    let before = idle_closed(faults.admin.metrics().await?);
    echo_load::vanish_with_reset(faults.echo).await?;
    let stalled = echo_load::stall(faults.echo).await?;
    let started = Instant::now();
    let deadline = Duration::from_secs(ECHO_IDLE_TIMEOUT_S + 15);
    while idle_closed(faults.admin.metrics().await?) <= before {
        if started.elapsed() > deadline {
            bail!("the host had not closed it after {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(stalled);
    Ok(format!(
        "the silent one closed by the host after {:.1} s",
        started.elapsed().as_secs_f64()
    ))
}

//! `portico-bench soak`: the release host with a config of several
//! services, under mixed load from real clients, with hostile plugins
//! beside them and faults injected on a schedule, for N minutes; then the
//! host is killed and started again, and every write the file bucket
//! acknowledged is read back. Every 10 s it samples the host and prints a
//! table line; at the end it judges the targets (RELIABILITY.md), writes
//! `summary.md`, `metrics.tsv` and SVG plots into its out folder, and
//! fails if any target was missed.
//!
//! Layout:
//! - [`config`]: the ports and the host's config file;
//! - [`procs`]: the host, redis-server, nats-server and the tmpfs;
//! - [`record`]: what every client and fault writes down, and how errors
//!   are judged against fault windows;
//! - the clients: [`echo_load`] (the latency probe, the burst, the
//!   vanishing clients), [`tools`] (wrk, redis-benchmark), [`chat`],
//!   [`tls_load`], [`kv_file`] (the file backend's verifier), [`hostile`];
//! - [`faults`]: the schedule of faults;
//! - [`admin`], [`sample`]: what is measured of the host;
//! - [`report`], [`summary`], [`plot`]: the verdict.

mod admin;
mod chat;
mod config;
mod echo_load;
mod faults;
mod hostile;
mod kv_file;
mod plot;
mod procs;
mod record;
mod report;
mod run;
mod sample;
mod summary;
mod tls_load;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::pin::Layout;

pub use run::run;

/// What `portico-bench soak` is asked.
pub struct Options {
    pub minutes: u64,
    pub host: PathBuf,
    pub plugin_dir: PathBuf,
    pub out: PathBuf,
    /// Kill Redis once without opening a fault window, to check that the
    /// soak counts what no fault explains as lost (the run must fail).
    pub unannounced_redis_kill: bool,
}

/// Programs the soak runs, and the Debian package each comes in.
const PROGRAMS: [(&str, &str); 5] = [
    ("wrk", "wrk"),
    ("redis-benchmark", "redis-tools"),
    ("redis-server", "redis-server"),
    ("nats-server", "nats-server"),
    ("openssl", "openssl"),
];

/// Fails, naming the package, if a program the soak runs is missing.
fn check_programs() -> Result<()> {
    for (program, package) in PROGRAMS {
        if !tools::available(Path::new(program)) {
            bail!("{program} is missing: install Debian's {package} (cargo xtask soak does)");
        }
    }
    Ok(())
}

/// Where the host and the load run: the host on a core of its own and
/// every client and peer server on another, when there are two.
#[derive(Clone, Copy)]
struct Cores {
    layout: Layout,
    host: Option<usize>,
    clients: Option<usize>,
}

impl Cores {
    fn pick() -> Cores {
        let layout = Layout::all().last().copied().unwrap_or(Layout::Shared);
        let (host, clients) = match layout {
            Layout::Pinned { server, client } => (Some(server), Some(client)),
            Layout::Shared => (None, None),
        };
        Cores {
            layout,
            host,
            clients,
        }
    }
}

/// Makes the out folder's files: a self-signed certificate for the TLS
/// service and the admin token (returned). Removes what an earlier run
/// wrote there, but for the compile cache.
fn prepare_files(out: &Path) -> Result<String> {
    for stale in [
        "summary.md",
        "metrics.tsv",
        "host.log",
        "rss.svg",
        "fds.svg",
        "maps.svg",
        "echo-p99.svg",
    ] {
        let _ = std::fs::remove_file(out.join(stale));
    }
    let status = Command::new("openssl")
        .current_dir(out)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .stderr(std::process::Stdio::null())
        .status()
        .context("running openssl")?;
    if !status.success() {
        bail!("openssl could not make the TLS certificate");
    }
    let mut random = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
    let token: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    let path = out.join("admin-token");
    std::fs::write(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// Milliseconds since the Unix epoch, `after` from now.
fn unix_ms_after(after: Duration) -> Result<u128> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok((now + after).as_millis())
}

//! User-space instructions per connection and per round trip, counted by
//! callgrind: the figures that guard the hot path. Wall-clock rates on
//! these machines move by a third from run to run; instruction counts move
//! by well under a percent, so a change that makes a connection dearer
//! shows.
//!
//! Each figure is the difference between two runs of the host under
//! callgrind that differ only in how much load they serve, divided by that
//! difference: start-up and shutdown cancel out. The host runs one tokio
//! worker (`TOKIO_WORKER_THREADS=1`): with two, how often an idle worker
//! looks for work to steal depends on timing, and two identical runs
//! differed by 2%; with one, by under 0.1%. Every thread counts; the epoch
//! ticker's work grows with wall time, but it is a few hundred thousand
//! instructions in a whole run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Connections each pair of runs differs by.
const CONNECTIONS: (u64, u64) = (40, 140);
/// Round trips of [`ROUND_TRIP_BYTES`] each pair of runs differs by.
const ROUND_TRIPS: (u64, u64) = (100, 1100);
const ROUND_TRIP_BYTES: usize = 4096;
/// How long the client waits before each request of a round trip, so that
/// the host is always waiting for it, as a server usually is for an
/// interactive client. Sent back to back, a request sometimes found the
/// plugin still busy with the last one and sometimes waiting, and the two
/// paths cost different work: the figure moved by 10% between runs.
const THINK_TIME: Duration = Duration::from_millis(2);
/// What a fresh connection sends, and gets back.
const ECHO_BYTES: usize = 64;
/// Most growth over the baseline before the guard fails, and most shrinking
/// before it asks for the baseline to be lowered.
pub const TOLERANCE: f64 = 0.05;

/// Instructions the host executes, in user space.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    /// For one connection: accept, instantiate, echo 64 bytes, close.
    pub per_connection: f64,
    /// For one 4 KiB round trip on an open connection.
    pub per_round_trip: f64,
}

/// What to load a host with in one run.
#[derive(Clone, Copy)]
enum Load {
    Connections(u64),
    RoundTrips(u64),
}

/// Counts the figures for `host` serving `plugin`, run with `env` added to
/// its environment.
pub fn count(host: &Path, plugin: &Path, env: &[(String, String)]) -> Result<Figures> {
    let scratch = std::env::temp_dir().join(format!("portico-instructions-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).context("cannot make a scratch folder")?;
    let run = |load| instructions(host, plugin, env, &scratch, load);
    // The first run compiles the plugin into the cache; the rest load it.
    run(Load::Connections(1))?;
    let (few, many) = CONNECTIONS;
    let per_connection =
        (run(Load::Connections(many))? - run(Load::Connections(few))?) / (many - few) as f64;
    let (few, many) = ROUND_TRIPS;
    let per_round_trip =
        (run(Load::RoundTrips(many))? - run(Load::RoundTrips(few))?) / (many - few) as f64;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(Figures {
        per_connection,
        per_round_trip,
    })
}

/// Instructions of one host run under callgrind serving `load`, all
/// threads together.
fn instructions(
    host: &Path,
    plugin: &Path,
    env: &[(String, String)],
    scratch: &Path,
    load: Load,
) -> Result<f64> {
    let profiles = scratch.join("profiles");
    let _ = std::fs::remove_dir_all(&profiles);
    std::fs::create_dir_all(&profiles)?;
    let mut child = Command::new("valgrind")
        .args(["--tool=callgrind", "--separate-threads=yes"])
        .arg(format!(
            "--callgrind-out-file={}",
            profiles.join("callgrind.out").display()
        ))
        .arg(host)
        .arg("--plugin")
        .arg(plugin)
        // The most slots valgrind lets the pool reserve (4 GiB of address
        // space each). With fewer, freed slots waiting in the decommit batch
        // left the pool full every few connections, and each allocation
        // that found it full built an error: a path a host that is not
        // full never takes, and with a backtrace when `RUST_BACKTRACE` is
        // set (34,000 instructions per connection, on average).
        .args(["--listen", "127.0.0.1:0", "--max-connections", "12"])
        .arg("--cache-dir")
        .arg(scratch.join("cache"))
        // The default level: the two lines per connection an operator
        // gets are part of what a connection costs.
        .env("PORTICO_LOG", "info")
        .env("TOKIO_WORKER_THREADS", "1")
        // The count must not depend on the shell it is run from.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start valgrind (Debian's valgrind package)")?;
    let served = listening(&mut child).and_then(|addr| serve(addr, load));
    // SIGTERM: the host drains (nothing is left to drain) and exits, and
    // callgrind writes its profiles.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().context("the host under callgrind")?;
    served?;
    if !status.success() {
        bail!("the host under callgrind exited with {status}");
    }
    let mut total = 0.0;
    for entry in std::fs::read_dir(&profiles)? {
        let profile = std::fs::read_to_string(entry?.path())?;
        // The file named without a thread number stays empty.
        if !profile.is_empty() {
            total += profile_total(&profile)?;
        }
    }
    Ok(total)
}

/// The address in the host's first `listening on ADDR` line.
fn listening(child: &mut Child) -> Result<SocketAddr> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("the host did not start: {line:?}"))?;
    Ok(addr.parse()?)
}

fn serve(addr: SocketAddr, load: Load) -> Result<()> {
    let connect = || -> Result<TcpStream> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(stream)
    };
    match load {
        Load::Connections(count) => {
            for _ in 0..count {
                let mut stream = connect()?;
                echo(&mut stream, &[7; ECHO_BYTES])?;
                stream.shutdown(std::net::Shutdown::Write)?;
                // The host closes once the plugin's `run` has returned.
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest)?;
            }
        }
        Load::RoundTrips(count) => {
            let mut stream = connect()?;
            let out = [7; ROUND_TRIP_BYTES];
            for _ in 0..count {
                std::thread::sleep(THINK_TIME);
                echo(&mut stream, &out)?;
            }
        }
    }
    Ok(())
}

fn echo(stream: &mut TcpStream, out: &[u8]) -> Result<()> {
    stream.write_all(out)?;
    let mut back = vec![0; out.len()];
    stream.read_exact(&mut back)?;
    if back != out {
        bail!("wrong bytes echoed");
    }
    Ok(())
}

/// A callgrind profile's total of instructions (its `summary:` or
/// `totals:` line).
fn profile_total(profile: &str) -> Result<f64> {
    profile
        .lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|total| total.split_whitespace().next()?.parse().ok())
        .context("a callgrind profile without a total")
}

/// The committed figures the guard holds the host to.
pub fn read_baseline(path: &Path) -> Result<Figures> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the baseline {}", path.display()))?;
    let figure = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .trim()
                    .strip_prefix('=')?
                    .trim()
                    .parse()
                    .ok()
            })
            .with_context(|| format!("{}: no `{name} = N` line", path.display()))
    };
    Ok(Figures {
        per_connection: figure("per_connection")?,
        per_round_trip: figure("per_round_trip")?,
    })
}

pub fn write_baseline(path: &Path, figures: Figures) -> Result<()> {
    let text = format!(
        "# User-space instructions of the test build of the host serving the Rust\n\
         # echo, counted by callgrind (`portico-bench instructions`). The\n\
         # `instructions` test fails when a figure grows by more than 5% over\n\
         # these, or shrinks by more: then write the new figures here with\n\
         # `PORTICO_UPDATE_BASELINE=1 cargo xtask test --test instructions`.\n\
         per_connection = {:.0}\nper_round_trip = {:.0}\n",
        figures.per_connection, figures.per_round_trip
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The problems with `measured` against `baseline`, one line each.
pub fn compare(measured: Figures, baseline: Figures) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, now, then) in [
        (
            "per connection",
            measured.per_connection,
            baseline.per_connection,
        ),
        (
            "per round trip",
            measured.per_round_trip,
            baseline.per_round_trip,
        ),
    ] {
        let ratio = now / then;
        if ratio > 1.0 + TOLERANCE {
            problems.push(format!(
                "instructions {name}: {now:.0}, {:.1}% over the baseline's {then:.0}",
                (ratio - 1.0) * 100.0
            ));
        } else if ratio < 1.0 - TOLERANCE {
            problems.push(format!(
                "instructions {name}: {now:.0}, {:.1}% under the baseline's {then:.0}: \
                 lower the baseline in the same commit",
                (1.0 - ratio) * 100.0
            ));
        }
    }
    problems
}

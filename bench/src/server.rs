//! The echo servers under test, each a child process: the Portico host with
//! the echo plugin, and the two baselines, native tokio and POCO.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Which server a figure is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Native,
    Poco,
    Portico,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Native, Kind::Poco, Kind::Portico];
}

/// How to start each server.
#[derive(Clone, Debug)]
pub struct Launch {
    pub host: PathBuf,
    pub plugin: PathBuf,
    /// POCO's echo server, built from bench/poco/echo.cpp.
    pub poco: PathBuf,
    /// Room for the 10,000-connection scenario, plus the load.
    pub max_connections: u32,
    /// Room for as many hibernated connections.
    pub max_hibernated: u32,
}

/// CPU time, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    pub user_s: f64,
    pub system_s: f64,
}

impl CpuTime {
    pub fn total_s(&self) -> f64 {
        self.user_s + self.system_s
    }
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;

    fn sub(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_s: self.user_s - earlier.user_s,
            system_s: self.system_s - earlier.system_s,
        }
    }
}

/// Fields 10 to 15 of `/proc/PID/stat`: minflt, cminflt, majflt, cmajflt,
/// utime, stime.
fn stat_counters(pid: u32) -> Result<[f64; 6]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name, in parentheses, may hold spaces: fields are
    // counted from after it.
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    let mut fields = after_name.split_whitespace().skip(7);
    let mut counters = [0.0; 6];
    for counter in &mut counters {
        *counter = fields.next().context("short stat")?.parse()?;
    }
    Ok(counters)
}

/// CPU time process `pid` has used so far, in user space and in the kernel.
pub fn process_cpu(pid: u32) -> Result<CpuTime> {
    let [.., utime, stime] = stat_counters(pid)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(CpuTime {
        user_s: utime / per_second,
        system_s: stime / per_second,
    })
}

/// Minor page faults process `pid` has taken so far.
pub fn minor_faults(pid: u32) -> Result<f64> {
    Ok(stat_counters(pid)?[0])
}

/// CPU time of this process's children that have ended and been waited
/// for, in user space and in the kernel.
pub fn children_cpu() -> CpuTime {
    // SAFETY: getrusage writes only the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    CpuTime {
        user_s: seconds(usage.ru_utime),
        system_s: seconds(usage.ru_stime),
    }
}

/// Start-up to `listening on`, for the host with its compile cache empty
/// (it compiles the plugin), and warm (it loads the compiled plugin):
/// the cold figure once, the warm one the median of five starts.
pub fn startup_times(launch: &Launch) -> Result<(Duration, Duration)> {
    let cache = std::env::temp_dir().join(format!("portico-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let cold = time_to_listen(launch, &cache)?;
    let mut warm = (0..5)
        .map(|_| time_to_listen(launch, &cache))
        .collect::<Result<Vec<_>>>()?;
    warm.sort();
    let _ = std::fs::remove_dir_all(&cache);
    Ok((cold, warm[warm.len() / 2]))
}

fn time_to_listen(launch: &Launch, cache: &std::path::Path) -> Result<Duration> {
    let started = std::time::Instant::now();
    let mut child = Command::new(&launch.host)
        .arg("--plugin")
        .arg(&launch.plugin)
        .args(["--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(cache)
        .env("PORTICO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the host")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    if !line.starts_with("listening on ") {
        bail!("the host printed {line:?}");
    }
    Ok(took)
}

/// A command for `program`, through `taskset` if it is to run on core
/// `cpu` only.
pub fn command_on(program: &std::path::Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.args(["-c", &cpu.to_string()]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// A running server, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `kind`, pinned to core `cpu` if one is given.
    pub fn start(kind: Kind, launch: &Launch, cpu: Option<usize>) -> Result<Server> {
        let program = match kind {
            Kind::Native => std::env::current_exe()?,
            Kind::Poco => launch.poco.clone(),
            Kind::Portico => launch.host.clone(),
        };
        let mut command = command_on(&program, cpu);
        match kind {
            Kind::Native => {
                command.arg("native-echo");
            }
            Kind::Poco => {}
            Kind::Portico => {
                command
                    .arg("--plugin")
                    .arg(&launch.plugin)
                    .args(["--max-connections", &launch.max_connections.to_string()])
                    .args(["--max-hibernated", &launch.max_hibernated.to_string()])
                    .args(["--max-queued", "0"])
                    .env("PORTICO_LOG", "warn");
            }
        }
        command.args(["--listen", "127.0.0.1:0"]);
        Server::spawn(command, &format!("the {kind:?} server"))
    }

    /// Runs `command`, a server that prints `listening on ADDR` first on
    /// its stdout (its stderr is the benchmark's, unless set otherwise).
    pub fn spawn(mut command: Command, what: &str) -> Result<Server> {
        command.stdout(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} printed {line:?}");
        };
        Ok(Server {
            addr: addr.parse()?,
            child,
        })
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?)
    }

    /// CPU time the server has used so far, in user space and in the
    /// kernel.
    pub fn cpu(&self) -> Result<CpuTime> {
        process_cpu(self.child.id())
    }

    /// Memory no other process or mapping shares (RSS without the shared
    /// pages, such as a plugin's read-only data that every instance maps),
    /// in KiB.
    pub fn private_kib(&self) -> Result<u64> {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.child.id()))?;
        let mut total = 0;
        for line in rollup.lines() {
            if let Some(rest) = line
                .strip_prefix("Private_Clean:")
                .or_else(|| line.strip_prefix("Private_Dirty:"))
            {
                let kib = rest.split_whitespace().next().context("no value")?;
                total += kib.parse::<u64>()?;
            }
        }
        Ok(total)
    }

    /// Memory mappings the process holds (the kernel caps them with
    /// `vm.max_map_count`).
    pub fn mappings(&self) -> Result<usize> {
        Ok(
            std::fs::read_to_string(format!("/proc/{}/maps", self.child.id()))?
                .lines()
                .count(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

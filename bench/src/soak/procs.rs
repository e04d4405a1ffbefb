//! The processes the soak runs and kills: the host under test (pinned to
//! its own core), the real redis-server and nats-server it talks to (with
//! the load generators, on the other core), and the small tmpfs that holds
//! the file bucket, so that its disk can be filled. Each is stopped or
//! unmounted when dropped, on failure too.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::server::{CpuTime, command_on, process_cpu};

/// How long a server may take to listen after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// CPU time of a server's processes that are gone: read just before each
/// kill, since a killed child's time is otherwise only in the total of
/// every child, with the load generators'. Shared, so that the sampler
/// reads it while the server is down.
#[derive(Clone, Default)]
pub struct SpentCpu(Arc<Mutex<CpuTime>>);

impl SpentCpu {
    fn add(&self, pid: u32) {
        if let Ok(cpu) = process_cpu(pid) {
            let mut spent = self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            spent.user_s += cpu.user_s;
            spent.system_s += cpu.system_s;
        }
    }

    pub fn total(&self) -> CpuTime {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid).context("a pid out of range")?;
    // SAFETY: kill(2) has no memory effects; pid is our own child's.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).context("kill(2)");
    }
    Ok(())
}

/// Waits until something listens on `addr`, or `child` exits.
fn wait_listening(child: &mut Child, addr: SocketAddr, what: &str) -> Result<()> {
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening on {addr}");
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("{what} did not listen on {addr} within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A real server from Debian's packages, on a fixed loopback port so that
/// it comes back where the host expects it.
pub struct Peer {
    program: &'static str,
    args: Vec<String>,
    pub addr: SocketAddr,
    cpu: Option<usize>,
    child: Option<Child>,
    pub spent: SpentCpu,
}

impl Peer {
    /// redis-server on `addr`, keeping nothing on disk.
    pub fn redis(addr: SocketAddr, cpu: Option<usize>) -> Result<Peer> {
        let port = addr.port().to_string();
        let args = ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"];
        let mut args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        args.extend(["--port".into(), port]);
        Peer::start("redis-server", args, addr, cpu)
    }

    /// nats-server on `addr`.
    pub fn nats(addr: SocketAddr, cpu: Option<usize>) -> Result<Peer> {
        let args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            addr.port().to_string(),
        ];
        Peer::start("nats-server", args, addr, cpu)
    }

    fn start(
        program: &'static str,
        args: Vec<String>,
        addr: SocketAddr,
        cpu: Option<usize>,
    ) -> Result<Peer> {
        let mut peer = Peer {
            program,
            args,
            addr,
            cpu,
            child: None,
            spent: SpentCpu::default(),
        };
        peer.spawn()?;
        Ok(peer)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut child = command_on(Path::new(self.program), self.cpu)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (Debian's package)", self.program))?;
        let waited = wait_listening(&mut child, self.addr, self.program);
        self.child = Some(child);
        waited
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.spent.add(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again, on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The host under test, serving the soak's config file.
pub struct Host {
    child: Child,
    pub pid: u32,
    pub admin: SocketAddr,
}

impl Host {
    /// Starts the host on `config`, on core `cpu` if given, its log
    /// (warnings and errors) appended to `log`, and waits until it prints
    /// its admin address, after every `listening on` line.
    pub fn start(program: &Path, config: &Path, cpu: Option<usize>, log: &Path) -> Result<Host> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut child = command_on(program, cpu)
            .arg("--config-file")
            .arg(config)
            .env("PORTICO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = child.stdout.take().context("the host's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let admin = loop {
            let Some(line) = lines.next() else {
                let status = child.wait()?;
                bail!(
                    "the host exited with {status} before listening; see {}",
                    log.display()
                );
            };
            if let Some(addr) = line?.strip_prefix("admin on ") {
                break addr.trim().parse().context("the admin address")?;
            }
        };
        // The host prints nothing more to stdout; drained all the same,
        // so that it can never block on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Host {
            pid: child.id(),
            child,
            admin,
        })
    }

    /// Kills the host with SIGKILL; returns the CPU time it had used.
    pub fn kill(mut self) -> CpuTime {
        let cpu = process_cpu(self.pid).unwrap_or_default();
        let _ = self.child.kill();
        let _ = self.child.wait();
        cpu
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tmpfs mounted on a folder, unmounted when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `dir`,
    /// first unmounting one a failed run left there.
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        if is_mount_point(&dir)? {
            run(Command::new("umount").arg(&dir))?;
        }
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir))
        .context("mounting the file bucket's tmpfs (the soak runs as root)")?;
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(error) = run(Command::new("umount").arg(&self.dir)) {
            eprintln!("soak: unmounting {}: {error:#}", self.dir.display());
        }
    }
}

fn is_mount_point(dir: &Path) -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let dir = dir.display().to_string();
    Ok(mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some(dir.as_str())))
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

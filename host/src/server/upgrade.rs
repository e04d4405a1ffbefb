//! Upgrading the binary without dropping anyone, as nginx does on USR2 and
//! HAProxy with `-x`: on SIGUSR2 or `POST /upgrade`, the host starts its
//! binary again (whatever is now at the path it was started from), with
//! the same arguments, and hands it every listening socket
//! ([`crate::net::handover`]). The new process loads the same config and
//! listens on those sockets; once it says so, this one stops accepting and
//! drains as on SIGTERM. If the new process fails to start, this one keeps
//! serving, and says why.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracing::{error, info};

use super::Host;
use crate::net::handover;

/// How long the new process may take to listen: its plugins come from the
/// compile cache, which the old process filled, so this is generous.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What an upgrade starts: the program and arguments this process was
/// started with, read at start (the binary at that path may be replaced
/// on disk later, which is the point).
pub struct Successor {
    program: PathBuf,
    arguments: Vec<OsString>,
}

impl Successor {
    /// This process's program and arguments.
    pub fn of_this_process() -> Result<Self> {
        Ok(Self {
            program: std::env::current_exe().context("cannot find this program's path")?,
            arguments: std::env::args_os().skip(1).collect(),
        })
    }
}

impl Host {
    /// Starts the new process and hands it the listeners; once it listens,
    /// this process stops accepting and drains. Returns what happened, or
    /// why this process goes on serving.
    pub async fn upgrade(self: &Arc<Self>) -> Result<String> {
        let Ok(_one_at_a_time) = self.upgrading.try_lock() else {
            bail!("an upgrade is already under way");
        };
        if self.accepting.is_cancelled() {
            bail!("the host is draining: nothing to upgrade");
        }
        info!(target: "portico_host::server", program = %self.successor.program.display(), "upgrading: starting the new process");
        let started = Instant::now();
        let upgraded = self.hand_over_listeners().await;
        match upgraded {
            Ok(pid) => {
                let ms = started.elapsed().as_millis() as u64;
                info!(target: "portico_host::server", pid, ms, "upgraded: the new process listens; this one stops accepting and drains");
                self.upgraded.cancel();
                Ok(format!("process {pid} listens; this one drains"))
            }
            Err(error) => {
                let error = error.context("upgrade failed, still serving");
                error!(target: "portico_host::server", "{error:#}");
                Err(error)
            }
        }
    }

    /// Starts the successor with its end of a socket pair, sends it the
    /// listeners, and waits until it says it listens; returns its pid.
    async fn hand_over_listeners(self: &Arc<Self>) -> Result<u32> {
        let (ours, theirs) = UnixStream::pair().context("cannot make a socket pair")?;
        // The new process inherits its end, at the same number.
        let fd = theirs.as_raw_fd();
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            bail!("cannot pass a socket to the new process");
        }
        let mut child = Command::new(&self.successor.program)
            .args(&self.successor.arguments)
            .env(handover::FD_VARIABLE, fd.to_string())
            .spawn()
            .with_context(|| format!("cannot start {}", self.successor.program.display()))?;
        drop(theirs);
        let pid = child.id();
        let listeners = self.listening_sockets().await;
        let borrowed: Vec<_> = listeners
            .iter()
            .map(|(addr, socket)| (*addr, socket.as_fd()))
            .collect();
        let sent = handover::send(&ours, &borrowed);
        let ready = match sent {
            Ok(()) => {
                tokio::task::spawn_blocking(move || handover::wait_ready(&ours, READY_TIMEOUT))
                    .await
                    .context("the upgrade's waiting task failed")?
            }
            Err(error) => Err(error),
        };
        if let Err(error) = ready {
            stop(&mut child);
            return Err(error.context(format!("the new process (pid {pid})")));
        }
        Ok(pid)
    }

    /// Every listening socket this process serves, a copy each: the
    /// services' and the admin endpoint's.
    async fn listening_sockets(&self) -> Vec<(std::net::SocketAddr, std::os::fd::OwnedFd)> {
        let state = self.state.lock().await;
        let mut sockets: Vec<_> = state
            .listeners
            .values()
            .filter_map(|listening| Some((listening.local, listening.socket.try_clone().ok()?)))
            .collect();
        if let Some((addr, socket)) = self.admin_socket.get()
            && let Ok(socket) = socket.try_clone()
        {
            sockets.push((*addr, socket));
        }
        sockets
    }
}

/// Stops a new process that did not come up, so that it does not linger.
fn stop(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

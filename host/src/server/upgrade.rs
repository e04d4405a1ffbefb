//! Upgrading the binary without dropping anyone, as nginx does on USR2 and
//! HAProxy with `-x`: on SIGUSR2 or `POST /upgrade`, the host starts its
//! binary again (whatever is now at the path it was started from), with
//! the same arguments, and hands it every listening socket
//! ([`crate::net::handover`]). The new process loads the same config and
//! listens on those sockets; once it says so, this one stops accepting and
//! drains as on SIGTERM. If the new process fails to start, this one keeps
//! serving, and says why.
//!
//! Hibernated connections move too, over the same pair: each sends its
//! socket and what it keeps (the plugin's state, what remains of its wake
//! timer, its subscriptions and the messages waiting on them, its addresses
//! and age), and the new process holds it hibernated, its subscriptions
//! made again there, so that an idle client notices nothing. One with a
//! TLS session cannot move (its keys live in this process's memory), and
//! is woken by the drain as on SIGTERM.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::Host;
use super::handed::HandedConnection;
use super::service::Version;
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
            Ok(()) => tokio::task::spawn_blocking(move || {
                handover::wait_ready(&ours, READY_TIMEOUT).map(|()| ours)
            })
            .await
            .context("the upgrade's waiting task failed")?,
            Err(error) => Err(error),
        };
        match ready {
            Ok(ours) => {
                self.handover.begin(ours);
                Ok(pid)
            }
            Err(error) => {
                stop(&mut child);
                Err(error.context(format!("the new process (pid {pid})")))
            }
        }
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

impl Host {
    /// Reads the hibernated connections the process this one replaced
    /// hands over on `from`, until it closes its end, and holds each as
    /// its own are held.
    pub(super) fn take_over_hibernated(self: &Arc<Self>, from: UnixStream) {
        let (host, runtime) = (self.clone(), tokio::runtime::Handle::current());
        let reading = std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || {
                loop {
                    match handover::receive_connection(&from) {
                        Ok(Some((description, socket))) => {
                            let resuming = host.clone();
                            let resumed =
                                async move { resuming.resume(&description, socket).await };
                            runtime.spawn(host.tracker.track_future(resumed));
                        }
                        Ok(None) => return,
                        Err(error) => {
                            return error!(target: "portico_host::server", "upgrade: {error:#}");
                        }
                    }
                }
            });
        if let Err(error) = reading {
            error!(target: "portico_host::server", "upgrade: cannot read handed-over connections: {error}");
        }
    }

    /// Holds one handed-over connection, hibernated, in the version of its
    /// service in force; closes it if the service is gone.
    async fn resume(self: &Arc<Self>, description: &[u8], socket: OwnedFd) {
        let handed: HandedConnection = match serde_json::from_slice(description) {
            Ok(handed) => handed,
            Err(error) => {
                return error!(target: "portico_host::server", "upgrade: a handed-over connection: {error}");
            }
        };
        let Some((version, serving)) = self.serving(&handed.service).await else {
            return warn!(target: "portico_host::server", service = handed.service, "upgrade: a handed-over connection's service is gone: closed");
        };
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        super::connection::resume_hibernated(version, serving, handed, socket, id).await;
    }

    /// The version of service `name` in force, and the channel that says
    /// which version is (as its listeners' accept loops have it).
    async fn serving(
        &self,
        name: &str,
    ) -> Option<(Arc<Version>, watch::Receiver<Option<Arc<Version>>>)> {
        let state = self.state.lock().await;
        let version = state.versions.get(name)?.clone();
        let serving = state
            .listeners
            .values()
            .find(|listening| {
                listening
                    .version
                    .borrow()
                    .as_ref()
                    .is_some_and(|serving| serving.name() == name)
            })
            .map(|listening| listening.version.subscribe())
            .unwrap_or_else(|| watch::channel(Some(version.clone())).1);
        Some((version, serving))
    }
}

/// Stops a new process that did not come up, so that it does not linger.
fn stop(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

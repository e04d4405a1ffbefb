//! Listening sockets the host did not bind itself: passed by systemd
//! (socket activation), or by the process this one replaces (an upgrade,
//! see [`super::handover`]).
//!
//! They arrive once, at start, before anything listens; binding an address
//! takes the inherited socket for it, if there is one, instead of binding
//! anew. So a socket keeps its queue of connections not yet accepted, and
//! no client is refused while the host starts or is replaced.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

use super::handover;

/// The sockets inherited and not taken yet.
static INHERITED: Mutex<Vec<Inherited>> = Mutex::new(Vec::new());

/// One inherited listening socket.
struct Inherited {
    addr: SocketAddr,
    listener: TcpListener,
}

/// Takes the sockets systemd passed (`LISTEN_FDS`, `LISTEN_PID`,
/// `LISTEN_FDNAMES`), if it passed any, and returns their addresses by
/// name. Each must be a listening TCP socket.
pub fn from_systemd() -> Result<BTreeMap<String, Vec<SocketAddr>>> {
    let fds = sd_notify::listen_fds_with_names()
        .context("cannot read the sockets systemd passed (LISTEN_FDS)")?;
    let mut names: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    for (fd, name) in fds {
        // SAFETY: systemd passes these descriptors to this process for it
        // to own, each once (LISTEN_PID names this process).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let listener = listener(owned)
            .with_context(|| format!("the socket systemd passed as {name:?} (fd {fd})"))?;
        let addr = listener.local_addr()?;
        names.entry(name).or_default().push(addr);
        add(addr, listener);
    }
    Ok(names)
}

/// This process's end of the pair an upgrade started it with, kept to say
/// `ready` on once it listens.
static PREDECESSOR: Mutex<Option<UnixStream>> = Mutex::new(None);

/// Takes the listeners of the process this one replaces, if an upgrade
/// started it (`PORTICO_UPGRADE_FD` names its end of the pair).
pub fn from_predecessor() -> Result<()> {
    let Some(fd) = std::env::var_os(handover::FD_VARIABLE) else {
        return Ok(());
    };
    let fd: RawFd = fd
        .to_str()
        .and_then(|fd| fd.parse().ok())
        .filter(|&fd| fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        .with_context(|| format!("{} is not an open file descriptor", handover::FD_VARIABLE))?;
    // SAFETY: the upgrading process made this descriptor for this one
    // alone, and checked above that it is open.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    socket2::SockRef::from(&stream).set_cloexec(true)?;
    for (addr, fd) in handover::receive(&stream)? {
        add(addr, listener(fd)?);
    }
    *PREDECESSOR.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
    Ok(())
}

/// Tells the process this one replaced, if any, that this one listens:
/// it stops accepting, hands over its hibernated connections on the pair
/// (returned, to read them from), and drains.
pub fn tell_predecessor_ready() -> Result<Option<UnixStream>> {
    let stream = PREDECESSOR.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(stream) = &stream {
        handover::say_ready(stream)?;
    }
    Ok(stream)
}

/// Keeps `listener` for whoever binds `addr` first.
pub fn add(addr: SocketAddr, listener: TcpListener) {
    let mut inherited = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    inherited.push(Inherited { addr, listener });
}

/// The inherited socket listening on `addr`, if there is one.
pub fn take(addr: SocketAddr) -> Option<TcpListener> {
    let mut inherited = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    let at = inherited.iter().position(|socket| socket.addr == addr)?;
    Some(inherited.swap_remove(at).listener)
}

/// Closes the inherited sockets nothing took, and returns their
/// addresses. Once the host listens, nothing will: one kept open would
/// queue its clients unanswered (an upgrade hands over a port-0 listener
/// that the new process replaces with a port of its own), where closed it
/// refuses them at once.
pub fn close_untaken() -> Vec<SocketAddr> {
    let mut inherited = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
    inherited.drain(..).map(|socket| socket.addr).collect()
}

/// `fd` as a listener, if it is a listening TCP socket; made non-blocking
/// and closed on exec (an upgrade passes sockets explicitly).
fn listener(fd: OwnedFd) -> Result<TcpListener> {
    let socket = socket2::Socket::from(fd);
    if socket.r#type()? != socket2::Type::STREAM || socket.local_addr()?.as_socket().is_none() {
        bail!("it is not a TCP socket: give the unit ListenStream=ADDRESS:PORT");
    }
    if !socket.is_listener()? {
        bail!("it is not listening: give the unit Accept=no");
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_that_is_not_listening_is_refused() {
        let bound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let error = listener(OwnedFd::from(bound)).unwrap_err().to_string();
        assert!(error.contains("not a TCP socket"), "{error}");
        let listening = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listening.local_addr().unwrap();
        let listener = listener(OwnedFd::from(listening)).unwrap();
        add(addr, listener);
        assert!(take(addr).is_some());
        assert!(take(addr).is_none());
        let untaken = TcpListener::bind("127.0.0.1:0").unwrap();
        let untaken_addr = untaken.local_addr().unwrap();
        add(untaken_addr, untaken);
        assert_eq!(close_untaken(), [untaken_addr]);
        assert!(std::net::TcpStream::connect(untaken_addr).is_err());
    }
}

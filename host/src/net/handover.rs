//! Handing listening sockets from a host to the one that replaces it (an
//! upgrade), over a Unix socket pair the old process makes and the new one
//! inherits: the old sends every listener it serves, each with its address,
//! in one `SCM_RIGHTS` message; the new one takes them, starts, and says
//! `ready` once it listens, which is when the old one stops accepting.
//!
//! Both processes accept on the same sockets meanwhile, so a connection
//! that arrives during the hand-over waits in the socket's queue for
//! whichever accepts first: none is refused.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sendfd::{RecvWithFd, SendWithFd};

/// The environment variable that tells the new process which of its file
/// descriptors is its end of the pair.
pub const FD_VARIABLE: &str = "PORTICO_UPGRADE_FD";

/// Most listeners one hand-over carries (services' addresses, and the
/// admin endpoint's).
const MAX_LISTENERS: usize = 256;

/// What the new process writes once it listens.
const READY: &[u8] = b"ready\n";

/// Sends `listeners` (each with its address) over `stream`.
pub fn send(stream: &UnixStream, listeners: &[(SocketAddr, BorrowedFd<'_>)]) -> Result<()> {
    if listeners.len() > MAX_LISTENERS {
        bail!(
            "{} listeners: at most {MAX_LISTENERS} can be handed over",
            listeners.len()
        );
    }
    let addrs: String = listeners
        .iter()
        .map(|(addr, _)| format!("{addr}\n"))
        .collect();
    let fds: Vec<RawFd> = listeners.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let sent = stream
        .send_with_fd(addrs.as_bytes(), &fds)
        .context("cannot send the listeners to the new process")?;
    if sent != addrs.len() {
        bail!("the listeners' addresses went over in part");
    }
    Ok(())
}

/// Receives the listeners sent by [`send`], each with its address.
pub fn receive(stream: &UnixStream) -> Result<Vec<(SocketAddr, OwnedFd)>> {
    let mut bytes = vec![0; MAX_LISTENERS * 64];
    let mut fds = [0 as RawFd; MAX_LISTENERS];
    let (length, count) = stream
        .recv_with_fd(&mut bytes, &mut fds)
        .context("cannot receive the listeners from the process being replaced")?;
    // SAFETY: SCM_RIGHTS gave this process these descriptors, each once.
    let owned: Vec<OwnedFd> = fds[..count]
        .iter()
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    let text = std::str::from_utf8(&bytes[..length]).context("listener addresses not UTF-8")?;
    let addrs: Vec<SocketAddr> = text
        .lines()
        .map(|line| {
            line.parse()
                .with_context(|| format!("bad listener address {line:?}"))
        })
        .collect::<Result<_>>()?;
    if addrs.len() != owned.len() {
        bail!("{} addresses for {} listeners", addrs.len(), owned.len());
    }
    Ok(addrs.into_iter().zip(owned).collect())
}

/// Tells the old process that the new one listens.
pub fn say_ready(mut stream: &UnixStream) -> Result<()> {
    stream
        .write_all(READY)
        .context("cannot tell the replaced process that this one listens")
}

/// Waits up to `timeout` for the new process to say it listens; an error
/// if it closed its end (it exited) or said nothing in time.
pub fn wait_ready(stream: &UnixStream, timeout: Duration) -> Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(_) if line.as_bytes() == READY => Ok(()),
        Ok(0) => bail!("it exited before it listened"),
        Ok(_) => bail!("it said {line:?}, not that it listens"),
        Err(error) => Err(error).with_context(|| {
            format!(
                "it did not say it listens within {}",
                humantime::format_duration(timeout)
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn listeners_go_over_with_their_addresses() {
        let (old, new) = UnixStream::pair().unwrap();
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let sent: Vec<(SocketAddr, BorrowedFd<'_>)> = listeners
            .iter()
            .map(|listener| (listener.local_addr().unwrap(), listener.as_fd()))
            .collect();
        send(&old, &sent).unwrap();
        let received = receive(&new).unwrap();
        assert_eq!(received.len(), 3);
        for ((addr, fd), listener) in received.into_iter().zip(&listeners) {
            assert_eq!(addr, listener.local_addr().unwrap());
            let taken = TcpListener::from(fd);
            assert_eq!(taken.local_addr().unwrap(), addr);
        }
        say_ready(&new).unwrap();
        wait_ready(&old, Duration::from_secs(1)).unwrap();
        drop(new);
        let error = wait_ready(&old, Duration::from_secs(1)).unwrap_err();
        assert!(error.to_string().contains("exited"), "{error}");
    }
}

//! Handing listening sockets from a host to the one that replaces it (an
//! upgrade), over a Unix socket pair the old process makes and the new one
//! inherits: the old sends every listener it serves, each with its address,
//! in one `SCM_RIGHTS` message; the new one takes them, starts, and says
//! `ready` once it listens, which is when the old one stops accepting.
//!
//! Both processes accept on the same sockets meanwhile, so a connection
//! that arrives during the hand-over waits in the socket's queue for
//! whichever accepts first: none is refused.

use std::io::{BufRead, BufReader, Read, Write};
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

/// Most bytes one handed-over connection's description may take: its
/// plugin's state is bounded far below this by `max-hibernation-state`.
const MAX_CONNECTION_BYTES: usize = 64 << 20;

/// Sends one connection: `description`, and the socket `fd` with it.
pub fn send_connection(
    mut stream: &UnixStream,
    description: &[u8],
    fd: BorrowedFd<'_>,
) -> Result<()> {
    let length = u32::try_from(description.len())
        .ok()
        .filter(|&length| length as usize <= MAX_CONNECTION_BYTES)
        .context("a connection's description is too large to hand over")?;
    let sent = stream
        .send_with_fd(&length.to_be_bytes(), &[fd.as_raw_fd()])
        .context("cannot send a connection to the new process")?;
    stream.write_all(&length.to_be_bytes()[sent..])?;
    stream
        .write_all(description)
        .context("cannot send a connection to the new process")
}

/// Receives one connection sent by [`send_connection`]; `None` once the
/// old process has closed its end.
pub fn receive_connection(mut stream: &UnixStream) -> Result<Option<(Vec<u8>, OwnedFd)>> {
    let mut length = [0u8; 4];
    let mut fds = [0 as RawFd; 1];
    let (got, count) = stream
        .recv_with_fd(&mut length, &mut fds)
        .context("cannot receive a connection from the replaced process")?;
    if got == 0 {
        return Ok(None);
    }
    if count != 1 {
        bail!("a handed-over connection came without its socket");
    }
    // SAFETY: SCM_RIGHTS gave this process the descriptor, once.
    let fd = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    stream.read_exact(&mut length[got..])?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_CONNECTION_BYTES {
        bail!("a handed-over connection's description of {length} bytes is too large");
    }
    let mut description = vec![0; length];
    stream.read_exact(&mut description)?;
    Ok(Some((description, fd)))
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

//! Density: chat members held hibernated by several host processes that
//! share one port (`--reuse-port`), opened by as many client processes,
//! each from its own loopback address (one address has only so many
//! ports). One process may open only so many files here, so one host
//! cannot hold them all; the hosts' total RSS is reported per member.
//!
//! Each member joins a room of its own: joining tells the room, and a
//! shared room would make every join wake every member before it.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::server::{Server, command_on};

/// Members one client process opens at most: its open files allow 20,000.
const PER_CLIENT: usize = 18_000;

/// The figures of one run.
pub struct Density {
    pub members: usize,
    pub hosts: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub took: Duration,
}

/// Starts `hosts` hosts serving the chat plugin `chat` on one port, and
/// has client processes open `members` members among them.
pub fn measure(host: &Path, chat: &Path, members: usize, hosts: usize) -> Result<Density> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let servers: Vec<Server> = (0..hosts)
        .map(|_| {
            let mut command = command_on(host, None);
            command
                .arg("--plugin")
                .arg(chat)
                .args(["--allow-messaging", "rooms.*", "--reuse-port"])
                .args(["--listen", &addr.to_string()])
                .args(["--max-hibernated", &members.to_string()])
                .env("PORTICO_LOG", "warn");
            Server::spawn(command, "a chat host")
        })
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(1));
    let rss = |servers: &[Server]| -> Result<u64> {
        servers.iter().map(Server::rss_kib).sum::<Result<u64>>()
    };
    let rss_before_kib = rss(&servers)?;

    let started = Instant::now();
    let clients = members.div_ceil(PER_CLIENT);
    let mut children: Vec<Child> = (0..clients)
        .map(|client| {
            let count = PER_CLIENT.min(members - client * PER_CLIENT);
            let source = Ipv4Addr::new(127, 0, 1, client as u8 + 1);
            Command::new(std::env::current_exe()?)
                .args(["hold-members", "--addr", &addr.to_string()])
                .args([
                    "--count",
                    &count.to_string(),
                    "--source",
                    &source.to_string(),
                ])
                .args(["--first-room", &(client * PER_CLIENT).to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a client process")
        })
        .collect::<Result<_>>()?;
    for child in &mut children {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        if !line.starts_with("held") {
            bail!("a client process printed {line:?}");
        }
    }
    let took = started.elapsed();
    // Time for the last instances to be gone.
    std::thread::sleep(Duration::from_secs(2));
    let rss_after_kib = rss(&servers)?;
    for mut child in children {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    Ok(Density {
        members,
        hosts,
        rss_before_kib,
        rss_after_kib,
        took,
    })
}

/// The client process: opens `count` chat members from `source`, each
/// joining room `first_room + i`, prints `held`, and keeps them until its
/// stdin closes.
pub fn hold(addr: SocketAddr, count: usize, source: Ipv4Addr, first_room: usize) -> Result<()> {
    rlimit::increase_nofile_limit(u64::MAX)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let members = runtime.block_on(async {
        let mut members = Vec::with_capacity(count);
        for i in 0..count {
            members.push(
                join(addr, source, first_room + i)
                    .await
                    .with_context(|| format!("member {i}"))?,
            );
        }
        anyhow::Ok(members)
    })?;
    println!("held {}", members.len());
    std::io::stdout().flush()?;
    std::io::stdin().read_line(&mut String::new())?;
    Ok(())
}

/// One member, connected from `source`, greeted, and in room `room`.
async fn join(
    addr: SocketAddr,
    source: Ipv4Addr,
    room: usize,
) -> Result<tokio::io::BufReader<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let mut stream = tokio::io::BufReader::new(socket.connect(addr).await?);
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    if !line.starts_with("welcome") {
        bail!("greeted with {line:?}");
    }
    stream
        .get_mut()
        .write_all(format!("/join m{room}\n").as_bytes())
        .await?;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            bail!("closed before joining");
        }
        if line.starts_with("* you are in") {
            return Ok(stream);
        }
    }
}

pub fn report(density: &Density) {
    let grown = density.rss_after_kib.saturating_sub(density.rss_before_kib);
    println!();
    println!(
        "Density: {} hibernated chat members on {} host processes sharing one port, opened in {:.1} s",
        density.members,
        density.hosts,
        density.took.as_secs_f64()
    );
    println!(
        "hosts' RSS: {} KiB before, {} KiB after: {:.2} KiB per member",
        density.rss_before_kib,
        density.rss_after_kib,
        grown as f64 / density.members as f64
    );
}

//! How many connections one host process holds on this machine. The host
//! works its ceiling out at start (open files, and `vm.max_map_count`
//! against the memory mappings each connection costs) and warns when
//! `--max-connections` asks for more; this asks for far more, then fills
//! the host to its ceiling with live echo connections and checks that one
//! more is turned away rather than breaking anything.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::load;
use crate::server::{Server, command_on};

/// What the host served at its ceiling.
pub struct Held {
    /// The ceiling the host announced.
    pub ceiling: usize,
    /// Why: the host's own words, or "" if nothing bound it.
    pub bound_by: String,
    /// Live connections held (each echoed a byte).
    pub held: usize,
    pub mappings: usize,
    pub rss_mib: f64,
    /// Whether the connection past the ceiling was closed without an echo
    /// (not tried when the load generator could not reach the ceiling).
    pub next_turned_away: Option<bool>,
}

/// Fills the host to its ceiling, or to `most` connections if the load
/// generator cannot open more.
pub async fn measure(host: &Path, plugin: &Path, most: usize) -> Result<Held> {
    let mut command = command_on(host, None);
    command
        .arg("--plugin")
        .arg(plugin)
        .args(["--listen", "127.0.0.1:0", "--max-connections", "1000000"])
        .args(["--max-queued", "0"])
        .env("PORTICO_LOG", "warn")
        .stderr(Stdio::piped());
    let mut server = Server::spawn(command, "the host")?;
    let stderr = server.child.stderr.take().context("stderr")?;
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    // The warning comes before `listening on`, which has been read.
    let mut ceiling = 1_000_000;
    let mut bound_by = String::new();
    while let Ok(line) = heard.recv_timeout(Duration::from_millis(200)) {
        if let Some((_, rest)) = line.split_once("serving at most ") {
            let (count, why) = rest.split_once(" at once: ").unwrap_or((rest, ""));
            ceiling = count.trim().parse().context("the host's ceiling")?;
            bound_by = why.to_string();
        } else {
            eprintln!("{line}");
        }
    }
    let target = ceiling.min(most);
    let open = load::open_idle(server.addr, target)
        .await
        .with_context(|| format!("holding {target} connections"))?;
    let held = Held {
        ceiling,
        bound_by,
        held: open.len(),
        mappings: server.mappings()?,
        rss_mib: server.rss_kib()? as f64 / 1024.0,
        next_turned_away: match target < ceiling {
            true => None,
            false => Some(turned_away(server.addr).await?),
        },
    };
    drop(open);
    if heard
        .try_iter()
        .any(|line| line.contains("panicked") || line.contains("ERROR"))
    {
        bail!("the host reported an error at its ceiling");
    }
    Ok(held)
}

/// Whether a connection is closed without its byte echoed.
async fn turned_away(addr: std::net::SocketAddr) -> Result<bool> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.write_all(b"x").await;
    let mut back = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut back)).await;
    Ok(matches!(read, Ok(Ok(0)) | Ok(Err(_))))
}

pub fn report(held: &Held) {
    println!();
    println!("Connections one host process holds (echo, --max-connections 1000000)");
    println!("| figure | value |");
    println!("| --- | ---: |");
    println!("| ceiling the host works out at start | {} |", held.ceiling);
    if !held.bound_by.is_empty() {
        println!("| bound by | {} |", held.bound_by);
    }
    println!("| live connections held | {} |", held.held);
    println!("| memory mappings then | {} |", held.mappings);
    println!(
        "| mappings per connection | {:.2} |",
        held.mappings as f64 / held.held.max(1) as f64
    );
    println!("| host RSS then, MiB | {:.0} |", held.rss_mib);
    println!(
        "| one more connection turned away, host unharmed | {} |",
        match held.next_turned_away {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not tried (the load generator stopped short)",
        }
    );
}

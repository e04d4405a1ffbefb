//! Chat members over the real nats-server: a few clients join one room,
//! each says a numbered line every second, and each checks that it hears
//! every other member's lines. A line someone did not hear within
//! [`DELIVERY_TIMEOUT`] is an error at the time it was said; so is the
//! host's `* not sent` or `* N messages lost`, and a connection that
//! breaks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::sync::CancellationToken;

use super::record::{Part, Record};

pub const MEMBERS: usize = 3;
const ROOM: &str = "soak";
const SAY_EVERY: Duration = Duration::from_secs(1);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines said and not yet heard: by who should hear them and the text
/// they will see, the time each was said.
#[derive(Default)]
pub struct Room {
    unheard: Mutex<HashMap<(usize, String), Duration>>,
    joined: [AtomicBool; MEMBERS],
}

impl Room {
    fn unheard(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, String), Duration>> {
        self.unheard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs member `me` until `stop`, joining again whenever its connection
/// breaks.
pub async fn member(
    addr: SocketAddr,
    me: usize,
    room: Arc<Room>,
    record: Arc<Record>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let served = tokio::select! {
            served = take_part(addr, me, &room, &record) => served,
            () = stop.cancelled() => Ok(()),
        };
        room.joined[me].store(false, Relaxed);
        // What it would have heard on this connection is no more expected:
        // the broken connection is the one error.
        room.unheard().retain(|(listener, _), _| *listener != me);
        if let Err(error) = served {
            record.error(Part::Chat, format!("chat member {me}: {error:#}"));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// One connection of member `me`: join, then talk and listen.
async fn take_part(addr: SocketAddr, me: usize, room: &Room, record: &Record) -> Result<()> {
    let stream = TcpStream::connect(addr).await.context("connect")?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    expect(&mut lines, "welcome").await?;
    write.write_all(format!("/nick m{me}\n").as_bytes()).await?;
    expect(&mut lines, "* you are").await?;
    write
        .write_all(format!("/join {ROOM}\n").as_bytes())
        .await?;
    expect(&mut lines, &format!("* you are in {ROOM}")).await?;
    room.joined[me].store(true, Relaxed);

    let mut said = 0u64;
    let mut ticker = tokio::time::interval(SAY_EVERY);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                said += 1;
                let text = format!("line {me} {said}");
                let now = record.now();
                {
                    let mut unheard = room.unheard();
                    for listener in (0..MEMBERS).filter(|&other| other != me) {
                        if room.joined[listener].load(Relaxed) {
                            unheard.insert((listener, format!("m{me}: {text}")), now);
                        }
                    }
                }
                write.write_all(format!("{text}\n").as_bytes()).await?;
                record.done(Part::Chat, 1);
            }
            // Cancel-safe: a line half read stays in the reader.
            line = lines.next_line() => {
                let line = line?.context("the host closed the connection")?;
                heard(me, &line, room, record);
            }
        }
    }
}

/// Reads the next line and checks it starts with `prefix`.
async fn expect(
    lines: &mut tokio::io::Lines<BufReader<OwnedReadHalf>>,
    prefix: &str,
) -> Result<()> {
    let line = tokio::time::timeout(READ_TIMEOUT, lines.next_line())
        .await
        .with_context(|| format!("no {prefix:?} within the timeout"))??
        .with_context(|| format!("closed before {prefix:?}"))?;
    if !line.starts_with(prefix) {
        bail!("expected {prefix:?}, got {line:?}");
    }
    Ok(())
}

/// Takes what member `me` heard: a line it was waiting for, another
/// member joining, or the host saying something went wrong.
fn heard(me: usize, line: &str, room: &Room, record: &Record) {
    if room.unheard().remove(&(me, line.to_string())).is_some() {
        return;
    }
    if line.starts_with("* not sent") || line.ends_with("messages lost") {
        record.error(Part::Chat, format!("chat member {me} was told {line:?}"));
    }
}

/// Every second until `stop`, counts each line not heard within
/// [`DELIVERY_TIMEOUT`] as an error at the time it was said.
pub async fn sweep(room: Arc<Room>, record: Arc<Record>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
        let now = record.now();
        let mut late = Vec::new();
        room.unheard().retain(|(listener, text), said| {
            let overdue = now.saturating_sub(*said) > DELIVERY_TIMEOUT;
            if overdue {
                late.push((*listener, text.clone(), *said));
            }
            !overdue
        });
        for (listener, text, said) in late {
            let what = format!("member {listener} never heard {text:?}");
            record.error_over(Part::Chat, said, said, what, 1);
        }
    }
}

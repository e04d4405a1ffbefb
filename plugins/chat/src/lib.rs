//! Chat: line-based rooms. `/nick NAME` names you, `/join ROOM` moves you
//! to a room, and every other line goes to everyone else in your room, on
//! this host or (with a NATS backend) another. Each room is the pubsub
//! topic `rooms.ROOM`, which the service must be granted (`rooms.*`).

use std::hash::{BuildHasher, RandomState};
use std::io::{self, Write};

use portico_guest_sdk::net::wait_readable;
use portico_guest_sdk::pubsub::{self, Subscription};
use portico_guest_sdk::{Connection, Handler};

/// Longest line a client may send.
const MAX_LINE: usize = 4096;

struct Chat;

struct Member {
    /// Tells this member's own messages apart when they come back: random,
    /// since connection ids repeat from one host to the next.
    id: u64,
    nick: String,
    room: Option<(String, Subscription)>,
}

impl Handler for Chat {
    fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
        let mut me = Member {
            // Random keys, fresh in every instance: a random number.
            id: RandomState::new().hash_one(conn.id()),
            nick: format!("guest{}", conn.id()),
            room: None,
        };
        let (input, output) = conn.split();
        writeln!(output, "welcome, {}: /nick NAME, /join ROOM", me.nick)?;
        let mut pending = Vec::new();
        let mut buf = [0; 4096];
        loop {
            let ready = match &me.room {
                Some((_, subscription)) => wait_readable(&[&*input, subscription]),
                None => wait_readable(&[&*input]),
            };
            if ready.contains(&1) {
                deliver(&me, output)?;
            }
            if !ready.contains(&0) {
                continue;
            }
            match input.try_read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(error.into()),
            }
            while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                command(&mut me, line.trim_end(), output)?;
            }
            if pending.len() > MAX_LINE {
                writeln!(output, "* line too long")?;
                return Ok(());
            }
        }
    }
}

fn command(me: &mut Member, line: &str, output: &mut impl Write) -> portico_guest_sdk::Result {
    if let Some(nick) = line.strip_prefix("/nick ") {
        me.nick = nick.trim().to_string();
        writeln!(output, "* you are {}", me.nick)?;
    } else if let Some(room) = line.strip_prefix("/join ") {
        let room = room.trim();
        match pubsub::subscribe(&format!("rooms.{room}")) {
            Ok(subscription) => {
                me.room = Some((room.to_string(), subscription));
                say(me, &format!("* {} joined", me.nick), output)?;
                writeln!(output, "* you are in {room}")?;
            }
            Err(error) => writeln!(output, "* cannot join {room}: {error}")?,
        }
    } else if me.room.is_some() {
        say(me, &format!("{}: {line}", me.nick), output)?;
    } else {
        writeln!(output, "* /join a room first")?;
    }
    Ok(())
}

/// Sends `text` to the others in the room, tagged with the sender's id;
/// tells the member if it could not be sent (the host's broker may be away
/// for a while).
fn say(me: &Member, text: &str, output: &mut impl Write) -> io::Result<()> {
    if let Some((room, _)) = &me.room {
        let sent = pubsub::publish(
            &format!("rooms.{room}"),
            format!("{} {text}", me.id).as_bytes(),
        );
        if let Err(error) = sent {
            writeln!(output, "* not sent: {error}")?;
        }
    }
    Ok(())
}

/// Writes what the room said, but for the member's own messages.
fn deliver(me: &Member, output: &mut impl Write) -> io::Result<()> {
    let Some((_, subscription)) = &me.room else {
        return Ok(());
    };
    while let Some(message) = subscription.try_receive() {
        let text = String::from_utf8_lossy(&message.payload);
        if let Some((sender, text)) = text.split_once(' ')
            && sender != me.id.to_string()
        {
            writeln!(output, "{text}")?;
        }
    }
    match subscription.dropped() {
        0 => Ok(()),
        lost => writeln!(output, "* {lost} messages lost"),
    }
}

portico_guest_sdk::export!(Chat);

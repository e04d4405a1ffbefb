//! Chat: line-based rooms. `/nick NAME` names you, `/join ROOM` moves you
//! to a room, and every other line goes to everyone else in your room, on
//! this host or (with a NATS backend) another. Each room is the pubsub
//! topic `rooms.ROOM`, which the service must be granted (`rooms.*`).
//!
//! Between lines, a member's connection hibernates: its instance is gone,
//! and the host wakes a fresh one when the member sends a line or the room
//! speaks. The member's id, nick, room and any partial line travel in the
//! hibernation state; the room's subscription is kept by the host.

use std::hash::{BuildHasher, RandomState};
use std::io::{self, Write};

use portico_guest_sdk::hibernation::{self, Wake, WakeReason};
use portico_guest_sdk::net::wait_readable;
use portico_guest_sdk::pubsub::{self, Subscription};
use portico_guest_sdk::{Connection, Handler};

/// Longest line a client may send.
const MAX_LINE: usize = 4096;

/// The first byte of this build's hibernation state.
const STATE_FORMAT: u8 = 1;

struct Chat;

struct Member {
    /// Tells this member's own messages apart when they come back: random,
    /// since connection ids repeat from one host to the next.
    id: u64,
    nick: String,
    room: Option<(String, Subscription)>,
    /// What the member sent of a line not yet ended.
    pending: Vec<u8>,
}

impl Handler for Chat {
    fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
        let conn_id = conn.id();
        let (input, output) = conn.split();
        let woken = hibernation::woken();
        if woken
            .as_ref()
            .is_some_and(|wake| wake.reason == WakeReason::Draining)
        {
            writeln!(output, "* the server is shutting down: bye")?;
            return Ok(());
        }
        let mut me = match woken.and_then(Member::woken) {
            Some(me) => me,
            None => {
                let me = Member {
                    // Random keys, fresh in every instance: a random number.
                    id: RandomState::new().hash_one(conn_id),
                    nick: format!("guest{conn_id}"),
                    room: None,
                    pending: Vec::new(),
                };
                writeln!(output, "welcome, {}: /nick NAME, /join ROOM", me.nick)?;
                me
            }
        };
        let mut buf = [0; 4096];
        loop {
            deliver(&me, output)?;
            match input.try_read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => me.pending.extend_from_slice(&buf[..n]),
                // Nothing to do until the member or the room speaks: give
                // the instance back. If the host will not have it, wait
                // here instead.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if hibernation::hibernate(&me.state(), None).is_ok() {
                        return Ok(());
                    }
                    match &me.room {
                        Some((_, subscription)) => wait_readable(&[&*input, subscription]),
                        None => wait_readable(&[&*input]),
                    };
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
            while let Some(end) = me.pending.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = me.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                command(&mut me, line.trim_end(), output)?;
            }
            if me.pending.len() > MAX_LINE {
                writeln!(output, "* line too long")?;
                return Ok(());
            }
        }
    }
}

impl Member {
    /// The member a woken connection carries on with; `None` for a state
    /// this build cannot read, which starts over as a new member.
    fn woken(wake: Wake) -> Option<Member> {
        let [STATE_FORMAT, rest @ ..] = &wake.state[..] else {
            return None;
        };
        let (id, rest) = rest.split_first_chunk::<8>()?;
        let (nick, rest) = take_string(rest)?;
        let (room, pending) = take_string(rest)?;
        let subscription = wake.subscriptions.into_iter().next();
        Some(Member {
            id: u64::from_le_bytes(*id),
            nick,
            room: subscription.map(|subscription| (room, subscription)),
            pending: pending.to_vec(),
        })
    }

    /// What the next instance needs: the id, nick, room and partial line.
    fn state(&self) -> Vec<u8> {
        let room = self.room.as_ref().map_or("", |(room, _)| room);
        let mut state = vec![STATE_FORMAT];
        state.extend(self.id.to_le_bytes());
        for text in [&self.nick, room] {
            state.extend((text.len() as u16).to_le_bytes());
            state.extend(text.as_bytes());
        }
        state.extend(&self.pending);
        state
    }
}

/// A string written as its length (two bytes) and its bytes, and the rest.
fn take_string(bytes: &[u8]) -> Option<(String, &[u8])> {
    let (length, rest) = bytes.split_first_chunk::<2>()?;
    let (text, rest) = rest.split_at_checked(usize::from(u16::from_le_bytes(*length)))?;
    Some((String::from_utf8_lossy(text).into_owned(), rest))
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

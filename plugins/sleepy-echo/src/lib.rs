//! Sleepy echo: sends every byte back, as echo does, and hibernates
//! whenever the client pauses, so that an idle connection holds no
//! instance. It keeps no state, so every wake starts as a new connection
//! would: the smallest hibernating plugin.

use std::io::{self, Read, Write};

use portico_guest_sdk::{Connection, Handler, hibernation};

struct SleepyEcho;

impl Handler for SleepyEcho {
    fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
        let (input, output) = conn.split();
        let mut buf = [0; 16384];
        loop {
            let n = match input.try_read(&mut buf) {
                // Nothing came yet: give the instance back until it does
                // (or, if the host will not have it, wait here).
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if hibernation::hibernate(&[], None).is_ok() {
                        return Ok(());
                    }
                    input.read(&mut buf)?
                }
                read => read?,
            };
            if n == 0 {
                return Ok(());
            }
            output.write_all(&buf[..n])?;
        }
    }
}

portico_guest_sdk::export!(SleepyEcho);

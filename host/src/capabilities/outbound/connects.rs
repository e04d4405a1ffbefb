//! Connect timeouts for a plugin's outbound sockets.
//!
//! wasmtime-wasi's TCP connect waits as long as the operating system does
//! (over two minutes for an address that never answers) and has no setting
//! to shorten it. So the host bounds the wait where the plugin waits: a
//! socket that starts connecting gets a deadline, a `wasi:io/poll` wait on
//! that socket's pollables ends at the deadline, and from then on
//! `finish-connect` fails with `timeout` (see [`super::host`], which puts
//! these checks in front of wasmtime-wasi's calls).
//!
//! Sockets and pollables are known by their resource ids, which the table
//! reuses once they are dropped; the host forgets an id when its resource
//! is dropped, so a deadline never outlives what it was set for.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// The connecting sockets of one connection, with their deadlines.
pub struct Connects {
    timeout: Duration,
    /// When each connecting socket must be connected, by socket id, and
    /// whether its timeout was reported already.
    deadlines: HashMap<u32, (Instant, bool)>,
    /// The socket each of the sockets' pollables belongs to, by pollable
    /// id. A pollable may be made before its socket starts connecting, and
    /// waits on the connect all the same, so every one is noted.
    pollables: HashMap<u32, u32>,
}

impl Connects {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            deadlines: HashMap::new(),
            pollables: HashMap::new(),
        }
    }

    /// Notes that `socket` started connecting now.
    pub fn started(&mut self, socket: u32) {
        self.deadlines
            .insert(socket, (Instant::now() + self.timeout, false));
    }

    /// Notes that `pollable` waits on `socket`.
    pub fn subscribed(&mut self, socket: u32, pollable: u32) {
        self.pollables.insert(pollable, socket);
    }

    /// Whether `socket` is connecting and past its deadline.
    pub fn timed_out(&self, socket: u32) -> bool {
        self.deadlines
            .get(&socket)
            .is_some_and(|(deadline, _)| *deadline <= Instant::now())
    }

    /// Whether the timeout of `socket` was reported (logged, counted, and
    /// told to the plugin): from then on its connect has failed, whatever
    /// the operating system makes of it.
    pub fn timeout_reported(&self, socket: u32) -> bool {
        self.deadlines
            .get(&socket)
            .is_some_and(|(_, reported)| *reported)
    }

    /// Notes that the timeout of `socket` was reported.
    pub fn report_timeout(&mut self, socket: u32) {
        if let Some((_, reported)) = self.deadlines.get_mut(&socket) {
            *reported = true;
        }
    }

    /// Notes that `socket` connected or failed to.
    pub fn ended(&mut self, socket: u32) {
        self.deadlines.remove(&socket);
    }

    /// Forgets `socket`, which was dropped (its pollables were, before it).
    pub fn dropped(&mut self, socket: u32) {
        self.deadlines.remove(&socket);
        if !self.pollables.is_empty() {
            self.pollables.retain(|_, of| *of != socket);
        }
    }

    /// Forgets `pollable`, which was dropped.
    pub fn pollable_dropped(&mut self, pollable: u32) {
        if !self.pollables.is_empty() {
            self.pollables.remove(&pollable);
        }
    }

    /// The deadline of `pollable`, if it waits on a connecting socket.
    pub fn deadline(&self, pollable: u32) -> Option<Instant> {
        let socket = self.pollables.get(&pollable)?;
        self.deadlines.get(socket).map(|(deadline, _)| *deadline)
    }

    /// The earliest deadline among `pollables`.
    pub fn earliest(&self, pollables: &[u32]) -> Option<Instant> {
        if self.deadlines.is_empty() {
            return None;
        }
        pollables.iter().filter_map(|&p| self.deadline(p)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_their_sockets_and_pollables() {
        let mut connects = Connects::new(Duration::from_secs(5));
        // A pollable made before the connect waits on it all the same.
        connects.subscribed(1, 10);
        assert_eq!(connects.earliest(&[10]), None, "socket 1 is not connecting");
        connects.started(1);
        let deadline = connects.earliest(&[3, 10]).unwrap();
        assert!(!connects.timed_out(1));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(connects.timed_out(1));
        assert!(!connects.timeout_reported(1));
        connects.report_timeout(1);
        assert!(connects.timeout_reported(1));
        assert_eq!(connects.deadline(10), Some(deadline));
        // A dropped pollable's id, reused by another pollable, has no deadline.
        connects.pollable_dropped(10);
        assert_eq!(connects.deadline(10), None);
        connects.subscribed(1, 11);
        connects.ended(1);
        assert_eq!(connects.deadline(11), None);
        assert!(!connects.timed_out(1));
        connects.dropped(1);
        assert!(connects.pollables.is_empty());
    }
}

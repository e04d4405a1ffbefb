//! Messages between connections: publish to a topic, subscribe to one,
//! and wait on the client and subscriptions at once with
//! [`wait_readable`](crate::net::wait_readable).
//!
//! A service may use only the topics it is granted (`grants.messaging` in
//! the host's config file, `--allow-messaging PATTERN` on its command
//! line). Delivery is at most once: a subscriber that falls behind loses
//! messages, and [`Subscription::dropped`] says how many.

use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::bindings::portico::plugin::pubsub::Message;
use crate::bindings::portico::plugin::pubsub::{self, Error};
use crate::bindings::wasi::io::poll::Pollable;
use crate::net::Readable;

/// Messages published to one topic since subscribing. Dropping it
/// unsubscribes, except after a successful
/// `hibernation::hibernate`: the connection then keeps
/// it for its next instance.
pub struct Subscription(Option<pubsub::Subscription>);

/// Whether dropping a subscription keeps it for the connection's next
/// instance: set once this instance's `hibernate` has succeeded.
static KEEP_ON_DROP: AtomicBool = AtomicBool::new(false);

/// Makes every subscription dropped from now on kept rather than
/// unsubscribed (or not), for `hibernation::hibernate`.
pub(crate) fn keep_subscriptions(keep: bool) {
    KEEP_ON_DROP.store(keep, Ordering::Relaxed);
}

/// Starts receiving what is published to `topic` (dot-separated words).
pub fn subscribe(topic: &str) -> crate::Result<Subscription> {
    pubsub::subscribe(topic)
        .map(Subscription::new)
        .map_err(|error| describe(&format!("subscribing to {topic:?}"), error))
}

/// Sends `payload` to every subscription to `topic`, this connection's own
/// included.
pub fn publish(topic: &str, payload: &[u8]) -> crate::Result {
    pubsub::publish(topic, payload)
        .map_err(|error| describe(&format!("publishing to {topic:?}"), error))
}

impl Subscription {
    pub(crate) fn new(subscription: pubsub::Subscription) -> Self {
        Self(Some(subscription))
    }

    fn handle(&self) -> &pubsub::Subscription {
        // Only `drop` takes it.
        self.0
            .as_ref()
            .expect("a subscription is held until dropped")
    }

    /// The oldest message waiting, if any; never waits.
    pub fn try_receive(&self) -> Option<Message> {
        self.handle().receive()
    }

    /// How many messages were lost since the last call because this
    /// subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.handle().dropped()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The host keeps the subscriptions an instance still holds when a
        // `run` that asked to hibernate returns: those Rust drops on the way
        // out must stay held.
        if let Some(subscription) = self.0.take()
            && KEEP_ON_DROP.load(Ordering::Relaxed)
        {
            std::mem::forget(subscription);
        }
    }
}

impl Readable for Subscription {
    fn readable(&self) -> Pollable {
        self.handle().subscribe()
    }
}

fn describe(what: &str, error: Error) -> crate::Error {
    match error {
        Error::AccessDenied => format!("{what}: access denied").into(),
        Error::Limit(limit) => format!("{what}: limit reached: {limit}").into(),
        Error::Other(message) => format!("{what}: {message}").into(),
    }
}

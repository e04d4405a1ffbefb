//! Messages between connections: the host side of `portico:plugin/pubsub`.
//!
//! One broker per process carries messages from publishers to the
//! subscriptions of every service. A plugin may use only the topics its
//! service is granted (`grants.messaging`). Each subscription has a queue
//! bounded in bytes: a message that finds it full is dropped and counted
//! (`portico_messages_dropped_total`), so a slow subscriber never grows the
//! host's memory, and a fast publisher is held back only by its CPU budget.

use std::sync::Arc;

use crate::ops::counters::Counters;

mod broker;
mod earlier;
mod host;

pub use broker::{Broker, Subscription};
pub use host::{MessagingCtx, MessagingCtxView, MessagingView};

/// The host side of `portico:plugin/pubsub`, generated from the contract;
/// the handler world's bindings use these.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit",
        inline: "
            package portico:host;

            world pubsub {
                import portico:plugin/pubsub@0.4.0;
            }
        ",
        world: "portico:host/pubsub",
        // A backend may wait on the NATS server.
        imports: { default: async | trappable },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "portico:plugin/pubsub.subscription": super::Subscription,
        },
    });
}

/// Links `portico:plugin/pubsub`, at the contract's version and at every
/// earlier one, for stores whose data reaches a [`MessagingCtx`].
pub fn add_to_linker<T: MessagingView>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    host::add_to_linker(linker)?;
    earlier::add_to_linker(linker)
}

/// Largest payload, in bytes.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// Bytes of payload one subscription's queue holds at most.
pub const QUEUE_BYTES: usize = 256 << 10;
/// Subscriptions one connection may hold at once.
pub const MAX_SUBSCRIPTIONS: usize = 16;
/// Longest topic, in bytes.
const MAX_TOPIC: usize = 256;

/// A topic pattern from `grants.messaging`: dot-separated words, where `*`
/// stands for any one word and a final `>` for one or more.
#[derive(Clone, Debug, PartialEq)]
pub struct Pattern(Vec<String>);

impl std::str::FromStr for Pattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Pattern, String> {
        let words: Vec<String> = text.split('.').map(str::to_string).collect();
        let last = words.len() - 1;
        let valid = words
            .iter()
            .enumerate()
            .all(|(i, word)| is_word(word) || word == "*" || (word == ">" && i == last));
        if !valid {
            return Err(format!(
                "{text:?} is not a topic pattern: write dot-separated words, `*` for any one word \
                 and a final `>` for the rest, like rooms.*"
            ));
        }
        Ok(Pattern(words))
    }
}

impl Pattern {
    fn matches(&self, topic: &[&str]) -> bool {
        let mut words = topic.iter();
        for (i, pattern) in self.0.iter().enumerate() {
            if pattern == ">" {
                return topic.len() > i;
            }
            match words.next() {
                Some(word) if pattern == "*" || pattern == word => {}
                _ => return false,
            }
        }
        words.next().is_none()
    }
}

fn is_word(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The words of `topic`, if it is a topic (no wildcards).
fn topic_words(topic: &str) -> Option<Vec<&str>> {
    let words: Vec<&str> = topic.split('.').collect();
    (topic.len() <= MAX_TOPIC && words.iter().all(|word| is_word(word))).then_some(words)
}

/// Where messages go, from the config's `[messaging]` table.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Backend {
    /// Within this process.
    #[default]
    Memory,
    /// Through a NATS server, to every host subscribed to the topic.
    Nats(String),
}

/// A service's messaging grant, shared by its connections.
pub struct Grant {
    pub broker: Arc<Broker>,
    pub patterns: Vec<Pattern>,
}

impl Grant {
    /// Whether the grant lets a connection use `topic`.
    fn allows(&self, topic: &str) -> bool {
        topic_words(topic)
            .is_some_and(|words| self.patterns.iter().any(|pattern| pattern.matches(&words)))
    }

    /// The subscription to `topic` of a connection an upgrade handed over,
    /// made again in this process, with the messages that waited on its
    /// old one (`waiting`, oldest first); `None` if the grant no longer
    /// allows the topic, or the broker cannot subscribe.
    pub async fn resubscribe(
        &self,
        topic: &str,
        waiting: Vec<Vec<u8>>,
        counters: Arc<Counters>,
    ) -> Option<Subscription> {
        if !self.allows(topic) {
            return None;
        }
        let queue = self.broker.subscribe(topic, counters).await.ok()?;
        for payload in waiting {
            let topic = topic.to_string();
            queue.push(Arc::new(bindings::portico::plugin::pubsub::Message {
                topic,
                payload,
            }));
        }
        Some(Subscription(queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_words() {
        let pattern: Pattern = "rooms.*".parse().unwrap();
        assert!(pattern.matches(&["rooms", "lobby"]));
        assert!(!pattern.matches(&["rooms"]));
        assert!(!pattern.matches(&["rooms", "a", "b"]));
        let rest: Pattern = "chat.>".parse().unwrap();
        assert!(rest.matches(&["chat", "a", "b"]));
        assert!(!rest.matches(&["chat"]));
        assert!("rooms.>.x".parse::<Pattern>().is_err());
        assert!("rooms..x".parse::<Pattern>().is_err());
        assert!(topic_words("rooms.*").is_none());
    }
}

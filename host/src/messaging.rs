//! Messages between connections: the host side of `portico:plugin/pubsub`.
//!
//! One broker per process carries messages from publishers to the
//! subscriptions of every service. A plugin may use only the topics its
//! service is granted (`grants.messaging`). Each subscription has a queue
//! bounded in bytes: a message that finds it full is dropped and counted
//! (`portico_messages_dropped_total`), so a slow subscriber never grows the
//! host's memory, and a fast publisher is held back only by its CPU budget.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::bindings::portico::plugin::pubsub::{self, Error, Message};
use crate::counters::{Counters, count};
use crate::sandbox::ConnState;

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

/// Carries messages from publishers to subscriptions, in this process.
#[derive(Default)]
pub struct Broker {
    topics: Mutex<HashMap<String, Vec<Weak<Queue>>>>,
}

impl Broker {
    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Weak<Queue>>>> {
        self.topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn subscribe(&self, topic: &str, counters: Arc<Counters>) -> Arc<Queue> {
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            ready: Notify::new(),
            counters,
        });
        let mut topics = self.topics();
        let subscribers = topics.entry(topic.to_string()).or_default();
        subscribers.retain(|queue| queue.strong_count() > 0);
        subscribers.push(Arc::downgrade(&queue));
        queue
    }

    fn publish(&self, message: Arc<Message>) {
        let subscribers: Vec<Arc<Queue>> = {
            let mut topics = self.topics();
            let Some(subscribers) = topics.get_mut(&message.topic) else {
                return;
            };
            subscribers.retain(|queue| queue.strong_count() > 0);
            if subscribers.is_empty() {
                topics.remove(&message.topic);
                return;
            }
            subscribers.iter().filter_map(Weak::upgrade).collect()
        };
        for queue in subscribers {
            queue.push(message.clone());
        }
    }
}

/// One subscription's messages.
pub struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
    /// The subscriber's service's counters.
    counters: Arc<Counters>,
}

#[derive(Default)]
struct QueueState {
    messages: VecDeque<Arc<Message>>,
    bytes: usize,
    dropped: u64,
}

impl Queue {
    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, message: Arc<Message>) {
        let mut state = self.state();
        if state.bytes + message.payload.len() > QUEUE_BYTES {
            state.dropped += 1;
            count(&self.counters.messages_dropped);
            return;
        }
        state.bytes += message.payload.len();
        state.messages.push_back(message);
        drop(state);
        self.ready.notify_waiters();
    }

    fn pop(&self) -> Option<Arc<Message>> {
        let mut state = self.state();
        let message = state.messages.pop_front()?;
        state.bytes -= message.payload.len();
        Some(message)
    }
}

/// A plugin's subscription: the resource behind `pubsub.subscription`.
pub struct Subscription(Arc<Queue>);

#[wasmtime_wasi::async_trait]
impl Pollable for Subscription {
    async fn ready(&mut self) {
        loop {
            let notified = self.0.ready.notified();
            tokio::pin!(notified);
            // Registered before looking, so that a push in between wakes it.
            notified.as_mut().enable();
            if !self.0.state().messages.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// A service's messaging grant, shared by its connections.
pub struct Grant {
    pub broker: Arc<Broker>,
    pub patterns: Vec<Pattern>,
}

/// One connection's use of messaging.
pub struct ConnMessaging {
    /// `None` when the service has no messaging grant.
    grant: Option<Arc<Grant>>,
    counters: Arc<Counters>,
    subscriptions: usize,
}

impl ConnMessaging {
    pub fn new(grant: Option<Arc<Grant>>, counters: Arc<Counters>) -> Self {
        Self {
            grant,
            counters,
            subscriptions: 0,
        }
    }

    /// The broker, if `topic` is a topic the service is granted.
    fn granted(&self, topic: &str) -> Option<&Broker> {
        let grant = self.grant.as_ref()?;
        let words = topic_words(topic)?;
        grant
            .patterns
            .iter()
            .any(|pattern| pattern.matches(&words))
            .then_some(&*grant.broker)
    }
}

impl pubsub::Host for ConnState {
    fn subscribe(
        &mut self,
        topic: String,
    ) -> wasmtime::Result<Result<Resource<Subscription>, Error>> {
        let messaging = &mut self.messaging;
        let Some(broker) = messaging.granted(&topic) else {
            count(&messaging.counters.messaging_denied);
            return Ok(Err(Error::AccessDenied));
        };
        if messaging.subscriptions >= MAX_SUBSCRIPTIONS {
            return Ok(Err(Error::Limit(format!(
                "{MAX_SUBSCRIPTIONS} subscriptions per connection"
            ))));
        }
        let queue = broker.subscribe(&topic, messaging.counters.clone());
        messaging.subscriptions += 1;
        Ok(Ok(self.table.push(Subscription(queue))?))
    }

    fn publish(&mut self, topic: String, payload: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        let messaging = &self.messaging;
        let Some(broker) = messaging.granted(&topic) else {
            count(&messaging.counters.messaging_denied);
            return Ok(Err(Error::AccessDenied));
        };
        if payload.len() > MAX_PAYLOAD {
            return Ok(Err(Error::Limit(format!(
                "payload of {} bytes, more than the {MAX_PAYLOAD} allowed",
                payload.len()
            ))));
        }
        broker.publish(Arc::new(Message { topic, payload }));
        Ok(Ok(()))
    }
}

impl pubsub::HostSubscription for ConnState {
    fn receive(
        &mut self,
        subscription: Resource<Subscription>,
    ) -> wasmtime::Result<Option<Message>> {
        let queue = &self.table.get(&subscription)?.0;
        Ok(queue.pop().map(|message| Message::clone(&message)))
    }

    fn dropped(&mut self, subscription: Resource<Subscription>) -> wasmtime::Result<u64> {
        let queue = &self.table.get(&subscription)?.0;
        Ok(std::mem::take(&mut queue.state().dropped))
    }

    fn subscribe(
        &mut self,
        subscription: Resource<Subscription>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(&mut self.table, subscription)
    }

    fn drop(&mut self, subscription: Resource<Subscription>) -> wasmtime::Result<()> {
        self.table.delete(subscription)?;
        self.messaging.subscriptions -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

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

    #[test]
    fn a_full_queue_drops_and_counts() {
        let broker = Broker::default();
        let counters = Arc::new(Counters::default());
        let queue = broker.subscribe("t", counters.clone());
        let message = Arc::new(Message {
            topic: "t".into(),
            payload: vec![0; MAX_PAYLOAD],
        });
        for _ in 0..QUEUE_BYTES / MAX_PAYLOAD + 3 {
            broker.publish(message.clone());
        }
        assert_eq!(queue.state().messages.len(), QUEUE_BYTES / MAX_PAYLOAD);
        assert_eq!(counters.messages_dropped.load(Relaxed), 3);
        drop(queue);
        broker.publish(message);
        assert!(
            broker.topics().is_empty(),
            "a topic without subscribers is forgotten"
        );
    }
}

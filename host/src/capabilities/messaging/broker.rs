//! The broker: carries messages from publishers to the subscriptions of
//! every service, within this process or through NATS, each subscription
//! with a queue bounded in bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wasmtime_wasi::p2::Pollable;

use super::bindings::portico::plugin::pubsub::{Error, Message};
use super::{Backend, QUEUE_BYTES};
use crate::ops::counters::{Counters, count};

/// Longest a plugin's call waits on the NATS server.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `operation` against the NATS server, failing at once if the client
/// is not connected (async-nats would hold the call until it is again, or
/// buffer what it sends without bound of time) and after [`NATS_TIMEOUT`]
/// if the server does not answer.
async fn on_nats<T>(
    nats: &async_nats::Client,
    operation: impl Future<Output = Result<T, Box<dyn std::error::Error + Send + Sync>>>,
) -> Result<T, Error> {
    if nats.connection_state() != async_nats::connection::State::Connected {
        return Err(Error::Other("NATS: not connected to the server".into()));
    }
    match tokio::time::timeout(NATS_TIMEOUT, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Error::Other(format!("NATS: {error}"))),
        Err(_) => Err(Error::Other(format!("NATS: no answer in {NATS_TIMEOUT:?}"))),
    }
}

/// Carries messages from publishers to subscriptions: within this process,
/// or through NATS.
pub struct Broker {
    topics: Mutex<HashMap<String, Topic>>,
    nats: Option<async_nats::Client>,
    /// Held while a topic's subscription at the NATS server is made, so
    /// that a second subscriber waits for the first's to succeed or fail
    /// instead of counting on one that may never be.
    subscribing: tokio::sync::Mutex<()>,
}

/// A topic's subscriptions in this process.
#[derive(Default)]
struct Topic {
    queues: Vec<Weak<Queue>>,
    /// Stops the task that forwards the topic's messages from NATS.
    forwarding: Option<CancellationToken>,
}

impl Broker {
    /// A broker for `backend`: connects to NATS if it is that.
    pub async fn new(backend: &Backend) -> anyhow::Result<Arc<Broker>> {
        let nats = match backend {
            Backend::Memory => None,
            Backend::Nats(url) => Some(
                async_nats::connect(url.as_str())
                    .await
                    .with_context(|| format!("cannot connect to NATS at {url}"))?,
            ),
        };
        Ok(Arc::new(Broker {
            topics: Mutex::default(),
            nats,
            subscribing: tokio::sync::Mutex::new(()),
        }))
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, Topic>> {
        self.topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        counters: Arc<Counters>,
    ) -> Result<Arc<Queue>, Error> {
        let queue = Arc::new(Queue {
            topic: topic.to_string(),
            broker: Arc::downgrade(self),
            state: Mutex::default(),
            ready: Notify::new(),
            counters,
        });
        let _subscribing = match &self.nats {
            Some(_) => Some(self.subscribing.lock().await),
            None => None,
        };
        let start_forwarding = {
            let mut topics = self.topics();
            let entry = topics.entry(topic.to_string()).or_default();
            entry.queues.retain(|queue| queue.strong_count() > 0);
            entry.queues.push(Arc::downgrade(&queue));
            match (&self.nats, &entry.forwarding) {
                (Some(nats), None) => {
                    let stop = CancellationToken::new();
                    entry.forwarding = Some(stop.clone());
                    Some((nats.clone(), stop))
                }
                _ => None,
            }
        };
        if let Some((nats, stop)) = start_forwarding {
            let subscribed = async {
                let subscriber = nats.subscribe(topic.to_string()).await?;
                // Subscribed at the server before the plugin goes on, so
                // that what is published next reaches it.
                nats.flush().await?;
                Ok(subscriber)
            };
            match on_nats(&nats, subscribed).await {
                Ok(subscriber) => {
                    tokio::spawn(forward(
                        Arc::downgrade(self),
                        topic.to_string(),
                        subscriber,
                        stop,
                    ));
                }
                Err(error) => {
                    // The next subscriber to the topic tries again.
                    if let Some(entry) = self.topics().get_mut(topic) {
                        entry.forwarding = None;
                    }
                    return Err(error);
                }
            }
        }
        Ok(queue)
    }

    pub(super) async fn publish(&self, message: Message) -> Result<(), Error> {
        match &self.nats {
            Some(nats) => {
                let published = async {
                    nats.publish(message.topic, message.payload.into()).await?;
                    Ok(())
                };
                on_nats(nats, published).await
            }
            None => {
                self.deliver(Arc::new(message));
                Ok(())
            }
        }
    }

    /// Hands `message` to this process's subscriptions to its topic.
    fn deliver(&self, message: Arc<Message>) {
        let subscribers: Vec<Arc<Queue>> = match self.topics().get(&message.topic) {
            Some(topic) => topic.queues.iter().filter_map(Weak::upgrade).collect(),
            None => return,
        };
        for queue in subscribers {
            queue.push(message.clone());
        }
    }

    /// Forgets `topic` once its last subscription here has gone.
    fn left(&self, topic: &str) {
        let mut topics = self.topics();
        let Some(entry) = topics.get_mut(topic) else {
            return;
        };
        entry.queues.retain(|queue| queue.strong_count() > 0);
        if entry.queues.is_empty() {
            if let Some(stop) = &entry.forwarding {
                stop.cancel();
            }
            topics.remove(topic);
        }
    }
}

/// Carries `topic`'s messages from NATS to this process's subscriptions,
/// until the last of them goes.
async fn forward(
    broker: Weak<Broker>,
    topic: String,
    mut subscriber: async_nats::Subscriber,
    stop: CancellationToken,
) {
    use futures_util::StreamExt;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = subscriber.next() => message,
        };
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let Some(message) = message else {
            // The client closed the subscription: the next subscriber to
            // the topic makes a new one.
            if let Some(entry) = broker.topics().get_mut(&topic) {
                entry.forwarding = None;
            }
            return;
        };
        broker.deliver(Arc::new(Message {
            topic: topic.clone(),
            payload: message.payload.to_vec(),
        }));
    }
}

/// One subscription's messages.
pub struct Queue {
    topic: String,
    broker: Weak<Broker>,
    state: Mutex<QueueState>,
    ready: Notify,
    /// The subscriber's service's counters.
    counters: Arc<Counters>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.upgrade() {
            broker.left(&self.topic);
        }
    }
}

#[derive(Default)]
pub(super) struct QueueState {
    messages: VecDeque<Arc<Message>>,
    bytes: usize,
    pub(super) dropped: u64,
}

impl Queue {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn push(&self, message: Arc<Message>) {
        let mut state = self.state();
        if state.bytes + queued_size(&message) > QUEUE_BYTES {
            state.dropped += 1;
            count(&self.counters.messages_dropped);
            return;
        }
        state.bytes += queued_size(&message);
        state.messages.push_back(message);
        drop(state);
        self.ready.notify_waiters();
    }

    pub(super) fn pop(&self) -> Option<Arc<Message>> {
        let mut state = self.state();
        let message = state.messages.pop_front()?;
        state.bytes -= queued_size(&message);
        Some(message)
    }
}

/// What a queued message costs the host: its payload and topic, and the
/// allocations around them, so that a flood of empty messages fills a
/// queue too.
fn queued_size(message: &Message) -> usize {
    message.payload.len() + message.topic.len() + 128
}

/// A plugin's subscription: the resource behind `pubsub.subscription`.
pub struct Subscription(pub(super) Arc<Queue>);

impl Subscription {
    /// The topic it receives.
    pub fn topic(&self) -> &str {
        &self.0.topic
    }

    /// Takes the messages waiting, oldest first: their payloads.
    pub fn take_waiting(&self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.0.pop())
            .map(|message| message.payload.clone())
            .collect()
    }
}

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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::capabilities::messaging::MAX_PAYLOAD;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let broker = Broker::new(&Backend::Memory).await.unwrap();
        let counters = Arc::new(Counters::default());
        let queue = broker.subscribe("t", counters.clone()).await.unwrap();
        let message = Message {
            topic: "t".into(),
            payload: vec![0; MAX_PAYLOAD],
        };
        for _ in 0..QUEUE_BYTES / MAX_PAYLOAD + 3 {
            broker.publish(message.clone()).await.unwrap();
        }
        let held = QUEUE_BYTES / queued_size(&message);
        assert_eq!(queue.state().messages.len(), held);
        assert_eq!(
            counters.messages_dropped.load(Relaxed),
            (QUEUE_BYTES / MAX_PAYLOAD + 3 - held) as u64
        );
        drop(queue);
        assert!(
            broker.topics().is_empty(),
            "a topic without subscribers is forgotten"
        );
    }
}

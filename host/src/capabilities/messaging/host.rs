//! What a connection holds of `portico:plugin/pubsub`, and the calls on
//! it.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynPollable, subscribe};

use super::bindings::portico::plugin::pubsub::{self, Error, Message};
use super::{Broker, Grant, MAX_PAYLOAD, MAX_SUBSCRIPTIONS, Subscription};
use crate::capabilities::denials::{Denials, Logged, TARGET};
use crate::ops::counters::count;

/// One connection's use of messaging: its service's grant, and the
/// subscriptions it holds (resources in the store's table, listed here by
/// their handles in the order they were made, so that hibernation can keep
/// them for the connection's next instance).
pub struct MessagingCtx {
    /// `None` when the service has no messaging grant.
    grant: Option<Arc<Grant>>,
    denials: Arc<Denials>,
    subscriptions: Vec<u32>,
}

impl MessagingCtx {
    pub fn new(grant: Option<Arc<Grant>>, denials: Arc<Denials>) -> Self {
        Self {
            grant,
            denials,
            subscriptions: Vec::new(),
        }
    }

    /// Takes every subscription the instance holds out of `table`, oldest
    /// first, for a hibernating connection to keep.
    pub fn take_subscriptions(&mut self, table: &mut ResourceTable) -> Vec<Subscription> {
        std::mem::take(&mut self.subscriptions)
            .into_iter()
            .filter_map(|rep| table.delete(Resource::<Subscription>::new_own(rep)).ok())
            .collect()
    }

    /// Gives the instance a subscription its connection kept while it
    /// hibernated.
    pub fn adopt(
        &mut self,
        table: &mut ResourceTable,
        subscription: Subscription,
    ) -> wasmtime::Result<Resource<Subscription>> {
        let resource = table.push(subscription)?;
        self.subscriptions.push(resource.rep());
        Ok(resource)
    }

    /// The broker, if `topic` is a topic the service is granted.
    fn granted(&self, topic: &str) -> Option<&Arc<Broker>> {
        let grant = self.grant.as_ref()?;
        grant.allows(topic).then_some(&grant.broker)
    }

    /// Records that the plugin reached a limit.
    fn limit_hit(&self, problem: &str) {
        if let Some(Logged { service, conn }) = self.denials.count(|c| &c.messaging_limit_hits) {
            tracing::warn!(target: TARGET, service, conn, "messaging limit reached: {problem}");
        }
    }
}

/// What a messaging call works on.
pub struct MessagingCtxView<'a> {
    pub ctx: &'a mut MessagingCtx,
    pub table: &'a mut ResourceTable,
}

/// Implemented once by the store's data, to reach the view.
pub trait MessagingView: Send + 'static {
    fn messaging(&mut self) -> MessagingCtxView<'_>;
}

pub(super) struct HasMessaging;

impl HasData for HasMessaging {
    type Data<'a> = MessagingCtxView<'a>;
}

/// Links `portico:plugin/pubsub` at the contract's version.
pub(super) fn add_to_linker<T: MessagingView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    pubsub::add_to_linker::<T, HasMessaging>(linker, T::messaging)
}

impl pubsub::Host for MessagingCtxView<'_> {
    async fn subscribe(
        &mut self,
        topic: String,
    ) -> wasmtime::Result<Result<Resource<Subscription>, Error>> {
        let messaging = &mut *self.ctx;
        let Some(broker) = messaging.granted(&topic).cloned() else {
            count(&messaging.denials.counters().messaging_denied);
            return Ok(Err(Error::AccessDenied));
        };
        if messaging.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            let problem = format!("{MAX_SUBSCRIPTIONS} subscriptions per connection");
            messaging.limit_hit(&problem);
            return Ok(Err(Error::Limit(problem)));
        }
        let counters = messaging.denials.counters().clone();
        let queue = match broker.subscribe(&topic, counters).await {
            Ok(queue) => queue,
            Err(error) => return Ok(Err(error)),
        };
        let resource = self.table.push(Subscription(queue))?;
        messaging.subscriptions.push(resource.rep());
        Ok(Ok(resource))
    }

    async fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let messaging = &*self.ctx;
        let Some(broker) = messaging.granted(&topic).cloned() else {
            count(&messaging.denials.counters().messaging_denied);
            return Ok(Err(Error::AccessDenied));
        };
        if payload.len() > MAX_PAYLOAD {
            let problem = format!(
                "payload of {} bytes, more than the {MAX_PAYLOAD} allowed",
                payload.len()
            );
            messaging.limit_hit(&problem);
            return Ok(Err(Error::Limit(problem)));
        }
        Ok(broker.publish(Message { topic, payload }).await)
    }
}

impl pubsub::HostSubscription for MessagingCtxView<'_> {
    async fn receive(
        &mut self,
        subscription: Resource<Subscription>,
    ) -> wasmtime::Result<Option<Message>> {
        let queue = &self.table.get(&subscription)?.0;
        Ok(queue.pop().map(|message| Message::clone(&message)))
    }

    async fn dropped(&mut self, subscription: Resource<Subscription>) -> wasmtime::Result<u64> {
        let queue = &self.table.get(&subscription)?.0;
        Ok(std::mem::take(&mut queue.state().dropped))
    }

    async fn subscribe(
        &mut self,
        subscription: Resource<Subscription>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(self.table, subscription)
    }

    async fn drop(&mut self, subscription: Resource<Subscription>) -> wasmtime::Result<()> {
        let rep = subscription.rep();
        self.table.delete(subscription)?;
        self.ctx.subscriptions.retain(|held| *held != rep);
        Ok(())
    }
}

//! The host side of `portico:plugin/hibernation`: a plugin asks to
//! hibernate, and a woken instance learns why it woke and gets back what
//! its connection kept. What the host does between the two (keep the
//! socket, wait for a wake, admit the connection again) is the server's;
//! this module holds only what one instance says and is told.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wasmtime::component::{HasData, Linker, ResourceTable};

pub use self::bindings::portico::plugin::hibernation::WakeReason;
use self::bindings::portico::plugin::hibernation::{self, Error, Wake};
use crate::capabilities::messaging::{MessagingCtx, Subscription};
use crate::ops::counters::{Counters, count};

/// The host side of `portico:plugin/hibernation`, generated from the
/// contract; the handler world's bindings use these.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit",
        inline: "
            package portico:host;

            world hibernation {
                import portico:plugin/hibernation@0.4.0;
            }
        ",
        world: "portico:host/hibernation",
        // `woken` puts subscriptions in the table, which may be full.
        imports: { default: trappable },
        require_store_data_send: true,
        with: {
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "portico:plugin/pubsub": crate::capabilities::messaging::bindings::portico::plugin::pubsub,
        },
    });
}

/// What a connection keeps while it hibernates, beyond its socket.
pub struct Hibernation {
    /// The plugin's state, for the instance that wakes.
    pub state: Vec<u8>,
    /// When to wake if nothing else wakes the connection first.
    pub wake_after: Option<Duration>,
    /// The subscriptions the instance held, oldest first.
    pub subscriptions: Vec<Subscription>,
    /// The connection's count among the service's hibernated ones.
    _counted: Hibernated,
}

impl Hibernation {
    /// A hibernation an upgrade's old process handed over, counted among
    /// the service's hibernated connections in this one; `None` if `max`
    /// are already.
    pub fn handed_over(
        state: Vec<u8>,
        wake_after: Option<Duration>,
        subscriptions: Vec<Subscription>,
        counters: &Arc<Counters>,
        max: u32,
    ) -> Option<Self> {
        let counted = Hibernated::count(counters, state.len(), max)?;
        Some(Self {
            state,
            wake_after,
            subscriptions,
            _counted: counted,
        })
    }

    /// What the instance that wakes for `reason` is handed.
    pub fn wake(self, reason: WakeReason) -> Woken {
        Woken {
            reason,
            state: self.state,
            subscriptions: self.subscriptions,
        }
    }
}

/// What a woken instance is handed when it asks.
pub struct Woken {
    reason: WakeReason,
    state: Vec<u8>,
    subscriptions: Vec<Subscription>,
}

/// One connection's count among its service's hibernated connections, and
/// its state's bytes among theirs, from the moment `hibernate` is granted
/// to the wake (or to a `run` that ends otherwise).
struct Hibernated {
    counters: Arc<Counters>,
    bytes: u64,
}

impl Hibernated {
    /// Counts one more hibernated connection, unless `max` are already.
    fn count(counters: &Arc<Counters>, bytes: usize, max: u32) -> Option<Self> {
        counters
            .hibernated
            .fetch_update(Relaxed, Relaxed, |now| {
                (now < u64::from(max)).then_some(now + 1)
            })
            .ok()?;
        let bytes = bytes as u64;
        counters.hibernated_state_bytes.fetch_add(bytes, Relaxed);
        Some(Self {
            counters: counters.clone(),
            bytes,
        })
    }
}

impl Drop for Hibernated {
    fn drop(&mut self) {
        self.counters.hibernated.fetch_sub(1, Relaxed);
        self.counters
            .hibernated_state_bytes
            .fetch_sub(self.bytes, Relaxed);
    }
}

/// One instance's side of hibernation: the service's rules, what it was
/// woken with, and what it asked for.
pub struct HibernationCtx {
    max_state: usize,
    max_hibernated: u32,
    counters: Arc<Counters>,
    /// Cancelled when the host starts to drain.
    draining: CancellationToken,
    /// For an instance of a woken connection, until it asks.
    woken: Option<Woken>,
    /// What `run` asked for, if it did.
    request: Option<Request>,
}

struct Request {
    state: Vec<u8>,
    wake_after: Option<Duration>,
    counted: Hibernated,
}

/// A service's rules for hibernation.
pub struct Rules<'a> {
    pub max_state: u32,
    pub max_hibernated: u32,
    pub counters: &'a Arc<Counters>,
    pub draining: &'a CancellationToken,
}

impl HibernationCtx {
    pub fn new(rules: Rules<'_>, woken: Option<Woken>) -> Self {
        Self {
            max_state: rules.max_state as usize,
            max_hibernated: rules.max_hibernated,
            counters: rules.counters.clone(),
            draining: rules.draining.clone(),
            woken,
            request: None,
        }
    }

    /// What the instance asked to hibernate with, and the subscriptions
    /// its connection kept that it never claimed (they come first: they
    /// are older than any it made).
    pub fn take_request(&mut self) -> Option<Hibernation> {
        let request = self.request.take()?;
        let subscriptions = self
            .woken
            .take()
            .map(|woken| woken.subscriptions)
            .unwrap_or_default();
        Some(Hibernation {
            state: request.state,
            wake_after: request.wake_after,
            subscriptions,
            _counted: request.counted,
        })
    }

    /// What a woken connection was handed, back from an instance that never
    /// started: the next one gets it.
    pub fn take_woken(&mut self) -> Option<Woken> {
        self.woken.take()
    }
}

/// What a hibernation call works on: the instance's side, and messaging's,
/// which adopts the subscriptions a woken instance gets back.
pub struct HibernationCtxView<'a> {
    pub ctx: &'a mut HibernationCtx,
    pub messaging: &'a mut MessagingCtx,
    pub table: &'a mut ResourceTable,
}

/// Implemented once by the store's data, to reach the view.
pub trait HibernationView: Send + 'static {
    fn hibernation(&mut self) -> HibernationCtxView<'_>;
}

struct HasHibernation;

impl HasData for HasHibernation {
    type Data<'a> = HibernationCtxView<'a>;
}

/// Links `portico:plugin/hibernation` for stores whose data reaches a
/// [`HibernationCtx`].
pub fn add_to_linker<T: HibernationView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    hibernation::add_to_linker::<T, HasHibernation>(linker, T::hibernation)
}

impl hibernation::Host for HibernationCtxView<'_> {
    fn hibernate(
        &mut self,
        state: Vec<u8>,
        wake_after: Option<u64>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let ctx = &mut *self.ctx;
        if ctx.draining.is_cancelled() {
            return Ok(Err(Error::Draining));
        }
        if state.len() > ctx.max_state {
            return Ok(Err(Error::StateTooLarge(format!(
                "a state of {} bytes, more than the {} of max-hibernation-state",
                state.len(),
                ctx.max_state
            ))));
        }
        // A second call replaces the first, and its place among the
        // hibernated.
        ctx.request = None;
        let Some(counted) = Hibernated::count(&ctx.counters, state.len(), ctx.max_hibernated)
        else {
            return Ok(Err(Error::TooManyHibernated));
        };
        ctx.request = Some(Request {
            state,
            wake_after: wake_after.map(Duration::from_nanos),
            counted,
        });
        Ok(Ok(()))
    }

    fn woken(&mut self) -> wasmtime::Result<Option<Wake>> {
        let Some(woken) = self.ctx.woken.take() else {
            return Ok(None);
        };
        let subscriptions = woken
            .subscriptions
            .into_iter()
            .map(|subscription| self.messaging.adopt(self.table, subscription))
            .collect::<wasmtime::Result<_>>()?;
        Ok(Some(Wake {
            reason: woken.reason,
            state: woken.state,
            subscriptions,
        }))
    }
}

/// Counts a wake of a hibernated connection of the service, by its reason;
/// returns the reason's name, as the contract and the metrics spell it.
pub fn count_wake(counters: &Counters, reason: WakeReason) -> &'static str {
    let (counter, name) = match reason {
        WakeReason::ClientData => (&counters.wakes_client_data, "client-data"),
        WakeReason::ClientClosed => (&counters.wakes_client_closed, "client-closed"),
        WakeReason::Message => (&counters.wakes_message, "message"),
        WakeReason::Timer => (&counters.wakes_timer, "timer"),
        WakeReason::Draining => (&counters.wakes_draining, "draining"),
    };
    count(counter);
    name
}

//! What earlier versions of the contract imported as `pubsub`, linked for
//! plugins built against them: 0.2.0 and 0.3.0 (0.1.0 imported nothing of
//! its own). Since 0.x minor versions are not semver-compatible, wasmtime
//! would not link `portico:plugin/pubsub@0.3.0` to the current version's;
//! the interface is unchanged, so each call is passed on to the current one.

/// A module linking `pubsub` as the contract version in `$wit` named it.
macro_rules! earlier_pubsub {
    ($module:ident, $wit:literal) => {
        pub(super) mod $module {
            wasmtime::component::bindgen!({
                path: "../guest-sdk/wit/deps/io.wit",
                inline: $wit,
                imports: { default: async | trappable },
                with: {
                    "wasi:io": wasmtime_wasi::p2::bindings::io,
                    "portico:plugin/pubsub.subscription": super::super::Subscription,
                },
            });

            use wasmtime::component::{Linker, Resource};
            use wasmtime_wasi::p2::DynPollable;

            use self::portico::plugin::pubsub::{Error, Host, HostSubscription, Message};
            use super::super::Subscription;
            use super::super::bindings::portico::plugin::pubsub as current;
            use super::super::host::HasMessaging;
            use super::super::{MessagingCtxView, MessagingView};

            impl From<current::Error> for Error {
                fn from(error: current::Error) -> Self {
                    match error {
                        current::Error::AccessDenied => Error::AccessDenied,
                        current::Error::Limit(problem) => Error::Limit(problem),
                        current::Error::Other(problem) => Error::Other(problem),
                    }
                }
            }

            impl Host for MessagingCtxView<'_> {
                async fn subscribe(
                    &mut self,
                    topic: String,
                ) -> wasmtime::Result<Result<Resource<Subscription>, Error>> {
                    Ok(current::Host::subscribe(self, topic)
                        .await?
                        .map_err(Error::from))
                }

                async fn publish(
                    &mut self,
                    topic: String,
                    payload: Vec<u8>,
                ) -> wasmtime::Result<Result<(), Error>> {
                    Ok(current::Host::publish(self, topic, payload)
                        .await?
                        .map_err(Error::from))
                }
            }

            impl HostSubscription for MessagingCtxView<'_> {
                async fn receive(
                    &mut self,
                    subscription: Resource<Subscription>,
                ) -> wasmtime::Result<Option<Message>> {
                    let message = current::HostSubscription::receive(self, subscription).await?;
                    Ok(message.map(|message| Message {
                        topic: message.topic,
                        payload: message.payload,
                    }))
                }

                async fn dropped(&mut self, subscription: Resource<Subscription>) -> wasmtime::Result<u64> {
                    current::HostSubscription::dropped(self, subscription).await
                }

                async fn subscribe(
                    &mut self,
                    subscription: Resource<Subscription>,
                ) -> wasmtime::Result<Resource<DynPollable>> {
                    current::HostSubscription::subscribe(self, subscription).await
                }

                async fn drop(&mut self, subscription: Resource<Subscription>) -> wasmtime::Result<()> {
                    current::HostSubscription::drop(self, subscription).await
                }
            }

            /// Links this version's `pubsub`, each call passed on to the current one.
            pub(in super::super) fn add_to_linker<T: MessagingView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
                portico::plugin::pubsub::add_to_linker::<T, HasMessaging>(linker, T::messaging)
            }
        }
    };
}

earlier_pubsub!(
    v0_2,
    "
    package portico:plugin@0.2.0;

    interface pubsub {
        use wasi:io/poll@0.2.12.{pollable};
        variant error { access-denied, limit(string), other(string) }
        record message { topic: string, payload: list<u8> }
        resource subscription {
            receive: func() -> option<message>;
            dropped: func() -> u64;
            subscribe: func() -> pollable;
        }
        subscribe: func(topic: string) -> result<subscription, error>;
        publish: func(topic: string, payload: list<u8>) -> result<_, error>;
    }

    world plugin {
        import pubsub;
    }
    "
);

earlier_pubsub!(
    v0_3,
    "
    package portico:plugin@0.3.0;

    interface pubsub {
        use wasi:io/poll@0.2.12.{pollable};
        variant error { access-denied, limit(string), other(string) }
        record message { topic: string, payload: list<u8> }
        resource subscription {
            receive: func() -> option<message>;
            dropped: func() -> u64;
            subscribe: func() -> pollable;
        }
        subscribe: func(topic: string) -> result<subscription, error>;
        publish: func(topic: string, payload: list<u8>) -> result<_, error>;
    }

    world plugin {
        import pubsub;
    }
    "
);

/// Links `pubsub` as every earlier version named it.
pub(super) fn add_to_linker<T: super::MessagingView>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    v0_2::add_to_linker(linker)?;
    v0_3::add_to_linker(linker)
}

//! Host-side bindings for the plugin contract in `guest-sdk/wit`, the one
//! definition of it that the host and the guest SDK both read.

wasmtime::component::bindgen!({
    path: "../guest-sdk/wit",
    world: "portico:plugin/handler",
    exports: { default: async },
    // Key-value and messaging backends wait on a disk, Redis or NATS.
    imports: {
        "wasi:keyvalue": async | trappable,
        "portico:plugin/pubsub": async | trappable,
    },
    // The WASI interfaces are wasmtime-wasi's, so that its stream and
    // pollable resources are the ones `run` receives.
    with: {
        "wasi:cli": wasmtime_wasi::p2::bindings::cli,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:filesystem": wasmtime_wasi::p2::bindings::filesystem,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "wasi:sockets": wasmtime_wasi::p2::bindings::sockets,
        "wasi:keyvalue/store.bucket": crate::capabilities::keyvalue::OpenBucket,
        "portico:plugin/pubsub.subscription": crate::capabilities::messaging::Subscription,
    },
});

/// What version 0.2.0 of the contract imported under its own name, linked
/// for plugins built against it. Only `pubsub` needs this: 0.2.0's other
/// imports are WASI's, and 0.1.0 imported nothing of its own. Since 0.x
/// minor versions are not semver-compatible, wasmtime would not link
/// `portico:plugin/pubsub@0.2.0` to 0.3.0's; the interface is unchanged,
/// so each call is passed on to the current one.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit/deps/io.wit",
        inline: "
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

            world plugin-0-2 {
                import pubsub;
            }
        ",
        imports: { default: async | trappable },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "portico:plugin/pubsub.subscription": crate::capabilities::messaging::Subscription,
        },
    });

    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;

    use self::portico::plugin::pubsub::{Error, Host, HostSubscription, Message};
    use super::portico::plugin::pubsub as current;
    use crate::capabilities::messaging::Subscription;
    use crate::sandbox::ConnState;

    impl From<current::Error> for Error {
        fn from(error: current::Error) -> Self {
            match error {
                current::Error::AccessDenied => Error::AccessDenied,
                current::Error::Limit(problem) => Error::Limit(problem),
                current::Error::Other(problem) => Error::Other(problem),
            }
        }
    }

    impl Host for ConnState {
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

    impl HostSubscription for ConnState {
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
}

/// `wasi:config` as Spin's toolchains import it (0.2.0-draft-2024-09-27),
/// beside the 0.2.0-rc.1 that wasmtime-wasi-config provides: the same
/// interface under an earlier name (pre-release versions never match each
/// other), answered from the same settings, so that a plugin written for
/// Spin's config interface loads unchanged.
pub mod spin_config {
    wasmtime::component::bindgen!({
        inline: "
            package wasi:config@0.2.0-draft-2024-09-27;

            interface store {
                variant error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, error>;
                get-all: func() -> result<list<tuple<string, string>>, error>;
            }

            world imports {
                import store;
            }
        ",
    });

    use self::wasi::config::store::{Error, Host};
    use crate::sandbox::ConnState;

    impl Host for ConnState {
        fn get(&mut self, key: String) -> Result<Option<String>, Error> {
            Ok(self.settings.get(&key).cloned())
        }

        fn get_all(&mut self) -> Result<Vec<(String, String)>, Error> {
            Ok(self
                .settings
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect())
        }
    }
}

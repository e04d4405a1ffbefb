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
        "wasi:keyvalue/store.bucket": crate::keyvalue::OpenBucket,
        "portico:plugin/pubsub.subscription": crate::messaging::Subscription,
    },
});

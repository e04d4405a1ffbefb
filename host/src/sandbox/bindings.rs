//! Host-side bindings for the plugin contract in `guest-sdk/wit`, the one
//! definition of it that the host and the guest SDK both read.

wasmtime::component::bindgen!({
    path: "../guest-sdk/wit",
    world: "portico:plugin/handler",
    exports: { default: async },
    // The WASI interfaces are wasmtime-wasi's, so that its stream and
    // pollable resources are the ones `run` receives; the host's own are
    // each capability's, which links them.
    with: {
        "wasi:cli": wasmtime_wasi::p2::bindings::cli,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:filesystem": wasmtime_wasi::p2::bindings::filesystem,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
        "wasi:sockets": wasmtime_wasi::p2::bindings::sockets,
        "wasi:keyvalue": crate::capabilities::keyvalue::bindings::wasi::keyvalue,
        "portico:plugin/pubsub": crate::capabilities::messaging::bindings::portico::plugin::pubsub,
        "portico:plugin/connection": crate::capabilities::connection::bindings::portico::plugin::connection,
        "portico:plugin/hibernation": crate::capabilities::hibernation::bindings::portico::plugin::hibernation,
    },
});

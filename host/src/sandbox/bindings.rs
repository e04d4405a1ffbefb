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

/// The contract's version, as the package line of `handler.wit` gives it:
/// what a plugin built today is built against.
pub fn contract_version() -> &'static str {
    const HANDLER_WIT: &str = include_str!("../../../guest-sdk/wit/handler.wit");
    HANDLER_WIT
        .lines()
        .find_map(|line| line.strip_prefix("package portico:plugin@"))
        .map(|version| version.trim_end_matches(';'))
        .expect("handler.wit names its package and version")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_contract_version_is_read_from_the_contract() {
        let version = super::contract_version();
        assert!(version.starts_with("0.") && version.len() >= 5, "{version}");
    }
}

//! Handlers written in other languages than Rust, from `guest-sdk/wit`
//! alone, built by `cargo xtask plugins` from `plugins/LANGUAGE/NAME`.
//! (Commands in C and Go are in `command.rs`.)

use crate::util::{Host, pattern, send_and_collect};

/// The Python echo (componentize-py) and the JavaScript echo
/// (componentize-js) each serve several clients at once, byte-exact through
/// 1 MiB each, ending each connection when its client half-closes.
#[test]
fn python_and_javascript_handlers_echo_byte_exact() {
    for plugin in ["py-echo", "js-echo"] {
        echoes_byte_exact(plugin);
    }
}

fn echoes_byte_exact(plugin: &str) {
    let host = Host::start(plugin, &[]);
    let clients: Vec<_> = (0..4u8)
        .map(|seed| {
            let stream = host.connect();
            std::thread::spawn(move || {
                let payload = pattern(1 << 20, seed);
                send_and_collect(stream, payload.clone()) == payload
            })
        })
        .collect();
    for client in clients {
        assert!(client.join().unwrap(), "a client's echo differed");
    }
    host.wait_for_lines(&["closed", "bytes_out=1048576", "outcome=\"ok\""], 4);
}

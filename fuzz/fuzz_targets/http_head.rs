//! The http-hello example plugin's request-head parser (httparse plus its
//! own reading of the headers it acts on), built for the host.
//!
//! Properties: no panic; a head is found only within the bytes given and
//! within the size bound; the answer does not change when more bytes
//! follow a complete head (pipelined requests), and a head found in a
//! prefix is the same head in the whole.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../plugins/http-hello/src/head.rs"]
mod head;

fuzz_target!(|data: (&[u8], &[u8])| {
    let (received, following) = data;
    let Ok(parsed) = head::parse(received) else {
        return;
    };
    let Some((request, head_len)) = parsed else {
        assert!(received.len() <= head::MAX_HEAD_BYTES);
        return;
    };
    assert!(head_len <= received.len());
    assert!(
        received[..head_len].ends_with(b"\n"),
        "a head ends with its blank line"
    );
    let mut pipelined = received[..head_len].to_vec();
    pipelined.extend_from_slice(following);
    let (again, again_len) = head::parse(&pipelined)
        .expect("the same head parses")
        .expect("the same head is complete");
    assert_eq!(again_len, head_len);
    let fields = |r: &head::Request| (r.method.clone(), r.path.clone(), r.keep_alive, r.body_len);
    assert_eq!(fields(&again), fields(&request));
});

use std::io::{Read, Write};

use crate::util::{Host, assert_closed};

/// A real HTTP client gets the page several times over one kept-alive
/// connection.
#[test]
fn serves_a_real_http_client_with_keep_alive() {
    let host = Host::start("http-hello", &[]);
    let agent = ureq::Agent::new_with_defaults();
    let url = format!("http://{}/", host.addr);
    for _ in 0..3 {
        let mut response = agent.get(&url).call().expect("GET /");
        assert_eq!(response.status(), 200);
        let body = response.body_mut().read_to_string().unwrap();
        assert!(body.contains("Hello from Portico"), "{body}");
    }
    let missing = agent.get(&format!("{url}nowhere")).call();
    assert!(
        matches!(missing, Err(ureq::Error::StatusCode(404))),
        "{missing:?}"
    );

    drop(agent);
    host.wait_for_log(&["closed", "conn=1", "outcome=\"ok\""]);
    assert!(
        !host.log().contains("conn=2"),
        "all requests share one connection:\n{}",
        host.log()
    );
}

/// Two pipelined requests on one socket get two responses, in order.
#[test]
fn answers_pipelined_requests_in_order() {
    let host = Host::start("http-hello", &[]);
    let mut stream = host.connect();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let first = text.find("HTTP/1.1 200 OK").expect("first response");
    let second = text
        .find("HTTP/1.1 404 Not Found")
        .expect("second response");
    assert!(first < second, "{text}");
}

/// Garbage gets 400 and the connection is closed.
#[test]
fn answers_garbage_with_400() {
    let host = Host::start("http-hello", &[]);
    let mut stream = host.connect();
    stream
        .write_all(b"\x01\x02 this is not http\r\n\r\n")
        .unwrap();
    let mut response = [0; 12];
    stream.read_exact(&mut response).unwrap();
    assert_eq!(&response, b"HTTP/1.1 400");
    assert_closed(&mut stream);
}

/// An http-hello built against the 0.3.0 contract (kept as a fixture) is
/// linked to the current `connection` interface: `/whoami` still learns
/// that the address is not a proxy's.
#[test]
fn an_http_hello_built_against_0_3_0_reads_its_connection() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/http-hello-0.3.0.wasm");
    let host = Host::start_file(&fixture, &[]);
    let mut response = ureq::get(&format!("http://{}/whoami", host.addr))
        .call()
        .expect("GET /whoami");
    let body = response.body_mut().read_to_string().unwrap();
    assert!(body.contains("proxied: false"), "{body}");
}

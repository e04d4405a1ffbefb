use std::io::Write;
use std::thread;

use crate::util::{Host, pattern, read_line, send_and_collect};

/// Payloads of 1 B, 64 KiB and 1 MiB come back byte for byte.
#[test]
fn echoes_byte_exact_at_every_size() {
    let host = Host::start("echo", &[]);
    for (len, seed) in [(1, 1), (64 * 1024, 2), (1024 * 1024, 3)] {
        let payload = pattern(len, seed);
        let received = send_and_collect(host.connect(), payload.clone());
        assert_eq!(
            received.len(),
            payload.len(),
            "length for a {len}-byte payload"
        );
        assert!(received == payload, "content for a {len}-byte payload");
    }
}

/// 200 clients at once each get exactly their own bytes back.
#[test]
fn serves_200_concurrent_connections() {
    let host = Host::start("echo", &[]);
    let clients: Vec<_> = (0..200u32)
        .map(|i| {
            let stream = host.connect();
            thread::spawn(move || {
                let payload = pattern(16 * 1024 + i as usize, i as u8);
                let received = send_and_collect(stream, payload.clone());
                assert!(received == payload, "client {i} got other bytes back");
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    host.wait_for_lines(&[" closed ", "outcome=\"ok\""], 200);
}

/// A client's half-close ends the plugin's `run`: the host closes the
/// connection after echoing everything, and logs it with its byte counts.
#[test]
fn half_close_ends_run_and_frees_the_connection() {
    let host = Host::start("echo", &[]);
    let received = send_and_collect(host.connect(), b"bye\n".to_vec());
    assert_eq!(received, b"bye\n");
    host.wait_for_log(&[
        "closed",
        "conn=1",
        "bytes_in=4",
        "bytes_out=4",
        "outcome=\"ok\"",
    ]);
}

/// An abrupt reset mid-connection ends `run` too, and the host carries on.
#[test]
fn reset_ends_run_and_host_carries_on() {
    let host = Host::start("echo", &[]);
    let mut stream = host.connect();
    stream.write_all(b"partial").unwrap();
    // SO_LINGER 0 makes close send a reset instead of FIN.
    socket2::SockRef::from(&stream)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(stream);
    host.wait_for_log(&["closed", "conn=1"]);

    let mut next = host.connect();
    next.write_all(b"still here\n").unwrap();
    assert_eq!(read_line(&mut next), "still here\n");
}

/// A client that resets while the plugin is writing to it ends the
/// connection normally: the plugin's broken pipe is not a plugin error.
#[test]
fn client_leaving_mid_write_is_a_normal_end() {
    let host = crate::util::Host::start("misbehave", &[]);
    let mut stream = host.connect();
    stream.write_all(b"flood\n").unwrap();
    let mut some = [0; 4096];
    std::io::Read::read_exact(&mut stream, &mut some).unwrap();
    socket2::SockRef::from(&stream)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(stream);
    host.wait_for_log(&["closed", "conn=1", "outcome=\"ok\""]);
}

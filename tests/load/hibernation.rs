use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Host, TIMEOUT, assert_closed, read_line};
use crate::{cores, exclusive, under_load};

/// Twice as many connections as cores hibernate and wake without pause,
/// beside an echo load: each is stopped when its CPU budget is spent, as a
/// busy plugin is, and the load keeps its latency.
#[test]
fn wake_loops_are_stopped_by_their_budget() {
    let _turn = exclusive();
    let host = Host::start(
        "misbehave",
        &[
            "--cpu-budget",
            "100ms",
            "--cpu-refill",
            "0s",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    under_load(&host, "connections waking without pause", || {
        let loops: Vec<_> = (0..2 * cores())
            .map(|_| {
                let addr = host.addr;
                thread::spawn(move || {
                    let mut conn = TcpStream::connect(addr).unwrap();
                    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                    writeln!(conn, "hibernate-loop").unwrap();
                    assert_eq!(read_line(&mut conn), "hibernating\n");
                    assert_closed(&mut conn);
                })
            })
            .collect();
        for wake_loop in loops {
            wake_loop.join().unwrap();
        }
    });
    let stopped = host.wait_for_lines(&["closed", "CPU budget spent"], 2 * cores());
    assert_eq!(stopped.len(), 2 * cores());
    let wakes = host.metric(r#"portico_wakes_total{service="misbehave",reason="timer"}"#);
    println!("{wakes} wakes before the budgets were spent");
}

/// As many clients as cores wake hibernated connections byte by byte,
/// beside an echo load on another service of the same host: every byte is
/// a wake, each connection is stopped once its wakes have spent its CPU
/// budget, and the load keeps its latency.
#[test]
fn byte_by_byte_wakes_get_no_more_than_their_budget() {
    let _turn = exclusive();
    let config = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("byte-by-byte-{}.toml", std::process::id()));
    let misbehave = crate::util::plugin("misbehave");
    std::fs::write(
        &config,
        format!(
            r#"
            [admin]
            listen = "127.0.0.1:0"
            [services.echo]
            plugin = "{plugin}"
            listen = ["127.0.0.1:0"]
            [services.waker]
            plugin = "{plugin}"
            listen = ["127.0.0.1:0"]
            cpu-budget = "50ms"
            cpu-refill = "0s"
            "#,
            plugin = misbehave.display()
        ),
    )
    .unwrap();
    let host = Host::start_config(&config, &[], 2, true);
    let waker = host.service("waker");
    under_load(&host, "clients waking connections byte by byte", || {
        let clients: Vec<_> = (0..cores())
            .map(|_| {
                thread::spawn(move || {
                    let mut conn = TcpStream::connect(waker).unwrap();
                    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                    writeln!(conn, "hibernate-reading").unwrap();
                    assert_eq!(read_line(&mut conn), "hibernating\n");
                    let started = Instant::now();
                    let mut sent = 0;
                    while conn.write_all(b"x").is_ok() {
                        sent += 1;
                        assert!(started.elapsed() < TIMEOUT, "never stopped");
                        thread::sleep(Duration::from_micros(100));
                    }
                    sent
                })
            })
            .collect();
        for client in clients {
            let sent = client.join().unwrap();
            println!("a client sent {sent} bytes before it was stopped");
        }
    });
    let _ = std::fs::remove_file(&config);
    let stopped = host.wait_for_lines(
        &["closed", "service=\"waker\"", "CPU budget spent"],
        cores(),
    );
    assert_eq!(stopped.len(), cores());
    let wakes = host.metric(r#"portico_wakes_total{service="waker",reason="client-data"}"#);
    println!("{wakes} wakes");
}

/// A thousand hibernated subscribers of one topic, and as many publishers
/// as cores publishing to it, twenty messages each, 100 ms apart: every
/// message wakes every subscriber. Wakes wait for places as new connections
/// do (64 here) and pass the wake gate, so an echo load on the same service
/// keeps its latency.
#[test]
fn a_wake_storm_keeps_other_connections_served() {
    let _turn = exclusive();
    let host = Host::start(
        "misbehave",
        &[
            "--allow-messaging",
            "storm",
            "--max-connections",
            "64",
            "--cpu-budget",
            "50ms",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let subscribers: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut conn = host.connect();
            writeln!(conn, "subscribe-hibernate storm").unwrap();
            assert_eq!(read_line(&mut conn), "hibernating\n");
            conn
        })
        .collect();
    under_load(&host, "a wake storm of 1000 subscribers", || {
        let publishers: Vec<_> = (0..cores())
            .map(|_| {
                let addr = host.addr;
                thread::spawn(move || {
                    let mut conn = TcpStream::connect(addr).unwrap();
                    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                    writeln!(conn, "publish-every storm 100").unwrap();
                    assert_eq!(read_line(&mut conn), "published\n");
                })
            })
            .collect();
        for publisher in publishers {
            publisher.join().unwrap();
        }
    });
    let wakes = host.metric(r#"portico_wakes_total{service="misbehave",reason="message"}"#);
    println!("{wakes} wakes for messages");
    // Every message wakes every subscriber not already awake.
    assert!(wakes >= 2_000.0, "{wakes} wakes");
    for mut subscriber in subscribers {
        subscriber.shutdown(std::net::Shutdown::Write).unwrap();
        subscriber.read_to_end(&mut Vec::new()).unwrap();
    }
    assert_eq!(
        host.metric(r#"portico_connections_hibernated{service="misbehave"}"#),
        0.0
    );
}

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Host, TIMEOUT, assert_closed, read_line, unanswering_listener};
use crate::{cores, exclusive, under_load};

/// Sockets one connection may open, and the service's connections hold at
/// once, in these scenarios.
const PER_CONNECTION: usize = 8;
const PER_SERVICE: usize = 20;

fn start_host(granted: &str) -> Host {
    Host::start(
        "misbehave",
        &[
            "--allow-outbound",
            granted,
            "--max-outbound-sockets",
            &PER_CONNECTION.to_string(),
            "--max-outbound-sockets-per-service",
            &PER_SERVICE.to_string(),
            "--cpu-budget",
            "1s",
            "--admin",
            "127.0.0.1:0",
        ],
    )
}

/// Plugins hoarding connections to the one address their service may
/// reach: each gets at most its own limit, all of them together at most
/// the service's, and a connection's end gives its sockets back.
#[test]
fn outbound_sockets_are_bounded_per_connection_and_per_service() {
    let _turn = exclusive();
    let granted = TcpListener::bind("127.0.0.1:0").unwrap();
    let granted_addr = granted.local_addr().unwrap().to_string();
    let host = start_host(&granted_addr);

    let hoarders = under_load(&host, "plugins hoarding outbound sockets", || {
        (0..PER_SERVICE / PER_CONNECTION + 2)
            .map(|_| {
                let mut conn = host.connect();
                writeln!(conn, "hoard {granted_addr}").unwrap();
                let answer = read_line(&mut conn);
                let held: usize = answer
                    .strip_prefix("held ")
                    .and_then(|rest| rest.split(':').next()?.parse().ok())
                    .unwrap_or_else(|| panic!("answered {answer:?}"));
                (conn, held)
            })
            .collect::<Vec<_>>()
    });
    let held: Vec<usize> = hoarders.iter().map(|(_, held)| *held).collect();
    println!("sockets held by each hoarder, in turn: {held:?}");
    assert_eq!(held[0], PER_CONNECTION);
    assert_eq!(held.iter().sum::<usize>(), PER_SERVICE);
    assert_eq!(*held.last().unwrap(), 0);

    // The first hoarder lets go; a new one gets a connection's share once
    // the host has ended the first.
    let mut hoarders = hoarders.into_iter();
    let (mut first, _) = hoarders.next().unwrap();
    writeln!(first, "done").unwrap();
    assert_closed(&mut first);
    let started = Instant::now();
    loop {
        let mut next = host.connect();
        writeln!(next, "hoard {granted_addr}").unwrap();
        if read_line(&mut next).starts_with(&format!("held {PER_CONNECTION}:")) {
            break;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "the first hoarder's sockets were not given back"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(host.metric(r#"portico_outbound_denied_total{service="misbehave"}"#) >= 3.0);
}

/// As many plugins as twice the cores at once, scanning ports, connecting
/// where they may not in a tight loop, and looking up names they may not:
/// every attempt fails, the echo load beside them keeps its latency, and
/// the log gets a bounded number of lines per connection while the metric
/// counts them all.
#[test]
fn outbound_scans_and_denied_loops_under_load() {
    let _turn = exclusive();
    let granted = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = start_host(&granted.local_addr().unwrap().to_string());
    let attackers = 2 * cores();

    under_load(
        &host,
        "plugins scanning and connecting where denied",
        || {
            let threads: Vec<_> = (0..attackers)
                .map(|i| {
                    let addr = host.addr;
                    thread::spawn(move || {
                        let mut conn = TcpStream::connect(addr).unwrap();
                        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                        match i % 3 {
                            0 => {
                                writeln!(conn, "scan 1000").unwrap();
                                assert_eq!(read_line(&mut conn), "connected to 0 of 1000 ports\n");
                            }
                            1 => {
                                writeln!(conn, "connect-loop 127.0.0.1:22").unwrap();
                                assert_closed(&mut conn);
                            }
                            _ => {
                                writeln!(conn, "lookup internal.example").unwrap();
                                assert!(read_line(&mut conn).starts_with("denied"));
                            }
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
        },
    );
    host.wait_for_log(&["closed", "CPU budget spent"]);
    let denied = host.metric(r#"portico_outbound_denied_total{service="misbehave"}"#);
    let logged = host
        .log()
        .lines()
        .filter(|line| line.contains(" denied"))
        .count();
    println!("denied attempts counted: {denied}, log lines about them: {logged}");
    assert!(denied >= 1000.0, "{denied}");
    assert!(logged <= attackers * 8, "{logged} log lines");
}

/// Twice as many clients as cores, each having plugins connect in turn to an
/// address that never answers: each connect ends at the host's connect
/// timeout, the echo load beside them keeps its latency, and every
/// timeout is counted.
#[test]
fn connects_that_never_answer_time_out_under_load() {
    let _turn = exclusive();
    let (listener, _queued) = unanswering_listener();
    let silent = listener.local_addr().unwrap().as_socket().unwrap();
    let host = Host::start(
        "misbehave",
        &[
            "--allow-outbound",
            &silent.to_string(),
            "--connect-timeout",
            "300ms",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let attackers = 2 * cores();
    const CONNECTS: usize = 4;
    under_load(&host, "plugins connecting where nothing answers", || {
        let threads: Vec<_> = (0..attackers)
            .map(|_| {
                let addr = host.addr;
                thread::spawn(move || {
                    for _ in 0..CONNECTS {
                        let mut conn = TcpStream::connect(addr).unwrap();
                        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                        writeln!(conn, "connect {silent}").unwrap();
                        let answer = read_line(&mut conn);
                        assert!(answer.contains("timed out"), "{answer}");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    });
    let timeouts = host.metric(r#"portico_outbound_connect_timeouts_total{service="misbehave"}"#);
    assert_eq!(timeouts, (attackers * CONNECTS) as f64);
}

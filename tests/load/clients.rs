use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::exclusive;
use crate::util::{EchoLoad, Host, read_line};

const LOAD_CONNECTIONS: usize = 8;
/// The echo load runs at least this long, abuse or not.
const MIN_LOAD: Duration = Duration::from_secs(2);

/// Runs `abuse` while an echo load runs; asserts the load saw no error and
/// prints its figures. Returns what `abuse` returns.
fn under_load<T>(host: &Host, name: &str, abuse: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let load = EchoLoad::start(host, LOAD_CONNECTIONS);
    let abused = abuse();
    thread::sleep(MIN_LOAD.saturating_sub(started.elapsed()));
    let report = load.stop();
    println!(
        "{name}: {} round trips, p50 {:?}, p99 {:?}, {} errors",
        report.round_trips,
        report.p50,
        report.p99,
        report.errors.len()
    );
    assert!(report.round_trips > 0, "{name}: the load made no progress");
    assert!(
        report.errors.is_empty(),
        "{name}: load errors {:?}",
        report.errors
    );
    abused
}

/// 10,000 connections opened and abandoned: the host serves what it may
/// (200 at once), queues 200, refuses the rest, and keeps the echo load
/// going.
#[test]
fn ten_thousand_abandoned_connections() {
    let _turn = exclusive();
    rlimit::increase_nofile_limit(20_000).unwrap();
    let host = Host::start(
        "misbehave",
        &[
            "--idle-timeout",
            "3s",
            "--max-connections",
            "200",
            "--max-queued",
            "200",
        ],
    );
    under_load(&host, "10,000 abandoned", || {
        let mut abandoned = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            match TcpStream::connect(host.addr) {
                Ok(stream) => abandoned.push(stream),
                Err(error) => panic!("connect #{} failed: {error}", abandoned.len()),
            }
        }
        thread::sleep(Duration::from_secs(1));
        drop(abandoned);
    });
    // Everything drains: the abandoned connections end (idle or closed) and
    // a newcomer is served.
    let mut newcomer = host.connect();
    newcomer.write_all(b"echo\n").unwrap();
    assert_eq!(read_line(&mut newcomer), "ok\n");
    host.wait_for_log(&["refused:"]);
}

/// Slowloris: clients that send one byte a second cannot slow the others
/// down, and --max-lifetime ends their connections.
#[test]
fn slowloris() {
    let _turn = exclusive();
    let host = Host::start("misbehave", &["--max-lifetime", "8s"]);
    let drip = |slow: &mut Vec<TcpStream>, seconds: u64| {
        for _ in 0..seconds {
            for stream in slow.iter_mut() {
                // Fails once the host has closed the connection.
                let _ = stream.write_all(b"e");
            }
            thread::sleep(Duration::from_secs(1));
        }
    };
    let mut slow = under_load(&host, "slowloris", || {
        let mut slow: Vec<_> = (0..50).map(|_| host.connect()).collect();
        drip(&mut slow, 3);
        slow
    });
    drip(&mut slow, 7);
    host.wait_for_lines(&["closed", "maximum lifetime reached"], 50);
}

/// Many clients connecting and closing at once, as fast as they can.
#[test]
fn connect_and_close_storm() {
    let _turn = exclusive();
    let host = Host::start("misbehave", &[]);
    under_load(&host, "connect-and-close storm", || {
        let storms: Vec<_> = (0..4)
            .map(|_| {
                let addr = host.addr;
                thread::spawn(move || {
                    for _ in 0..500 {
                        drop(TcpStream::connect(addr).unwrap());
                    }
                })
            })
            .collect();
        for storm in storms {
            storm.join().unwrap();
        }
    });
    host.wait_for_lines(&["closed"], 2000);
}

/// A client resets its connection in the middle of a large write.
#[test]
fn reset_in_the_middle_of_a_large_write() {
    let _turn = exclusive();
    let host = Host::start("misbehave", &[]);
    under_load(&host, "reset mid-write", || {
        for _ in 0..20 {
            let mut stream = host.connect();
            stream.write_all(b"echo\n").unwrap();
            // Write without reading until the buffers are full, then reset.
            stream.set_nonblocking(true).unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..64 {
                if stream.write(&chunk).is_err() {
                    break;
                }
            }
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    });
}

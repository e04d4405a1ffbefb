use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::exclusive;
use crate::util::{EchoLoad, Host, LoadReport, assert_closed, read_line};

/// Connections in the echo load.
const LOAD_CONNECTIONS: usize = 8;
/// How long the quiet baseline is measured.
const QUIET: Duration = Duration::from_secs(3);
/// A p99 under hostile load may be this much over twice the quiet p99: on a
/// 2-core machine where the load generator shares the cores with the host,
/// a sub-millisecond quiet p99 doubled is below scheduler noise (a 2 ms
/// slack once failed a harmless `sleep` at 3.3 ms while the machine was
/// busy elsewhere). Still half the suite's 10 ms bound.
const P99_SLACK: Duration = Duration::from_millis(4);

/// One hostile plugin behaviour: the command that triggers it, what the
/// client does meanwhile, and the log line parts that name the cause.
struct Hostile {
    command: &'static str,
    client: Client,
    expect: &'static [&'static str],
}

enum Client {
    /// Waits for the host to close the connection.
    AwaitClose,
    /// Reads one answer line that must start with this.
    Answer(&'static str),
    /// Never reads (the plugin floods), and waits for the close.
    NeverRead,
}

const SUITE: &[Hostile] = &[
    Hostile {
        command: "loop",
        client: Client::AwaitClose,
        expect: &["outcome=\"stopped\"", "CPU budget spent"],
    },
    Hostile {
        command: "print-loop",
        client: Client::AwaitClose,
        expect: &["outcome=\"stopped\"", "CPU budget spent"],
    },
    Hostile {
        command: "alloc",
        client: Client::AwaitClose,
        expect: &["outcome=\"trap\""],
    },
    Hostile {
        // Rust's stack lives in linear memory: overflowing it is an
        // out-of-bounds access before wasm's own call stack runs out.
        command: "recurse",
        client: Client::AwaitClose,
        expect: &["outcome=\"trap\""],
    },
    Hostile {
        command: "trap",
        client: Client::AwaitClose,
        expect: &["outcome=\"trap\"", "unreachable"],
    },
    Hostile {
        command: "panic",
        client: Client::AwaitClose,
        expect: &["outcome=\"trap\""],
    },
    Hostile {
        command: "abort",
        client: Client::AwaitClose,
        expect: &["outcome=\"trap\""],
    },
    Hostile {
        command: "flood",
        client: Client::NeverRead,
        expect: &["outcome=\"stopped\"", "idle timeout"],
    },
    Hostile {
        command: "spam-log",
        client: Client::AwaitClose,
        expect: &["outcome=\"stopped\"", "CPU budget spent"],
    },
    Hostile {
        command: "open-file /etc/passwd",
        client: Client::Answer("denied"),
        expect: &["outcome=\"ok\""],
    },
    Hostile {
        command: "connect 127.0.0.1:22",
        client: Client::Answer("denied"),
        expect: &["outcome=\"ok\""],
    },
    Hostile {
        command: "lookup localhost",
        client: Client::Answer("denied"),
        expect: &["outcome=\"ok\""],
    },
    Hostile {
        command: "env",
        client: Client::Answer("env=0 args=0"),
        expect: &["outcome=\"ok\""],
    },
    Hostile {
        command: "exit 7",
        client: Client::AwaitClose,
        expect: &["outcome=\"error\"", "exited with status"],
    },
    Hostile {
        command: "sleep",
        client: Client::AwaitClose,
        expect: &["outcome=\"stopped\"", "idle timeout"],
    },
    Hostile {
        command: "return",
        client: Client::AwaitClose,
        expect: &["outcome=\"ok\""],
    },
    Hostile {
        command: "random 1024",
        client: Client::Answer("got 1024"),
        expect: &["outcome=\"ok\""],
    },
    Hostile {
        // The host would allocate and fill it before the plugin's memory
        // limit could refuse it.
        command: "random 67108864",
        client: Client::AwaitClose,
        expect: &["outcome=\"trap\"", "exceeds limit"],
    },
    Hostile {
        command: "poll-many 2000000",
        client: Client::AwaitClose,
        expect: &["outcome=\"trap\"", "pollables, more than the 1024 allowed"],
    },
    Hostile {
        command: "stdout-chunk 16",
        client: Client::AwaitClose,
        expect: &["outcome=\"trap\"", "exceeded the permit"],
    },
];

/// Every hostile behaviour, one after another, each under an echo load:
/// the host stays up, closes only the hostile connection and logs why, and
/// the load sees no error and a p99 within twice its quiet value. The
/// host's memory is back near where it started afterwards.
#[test]
fn hostile_plugins_under_load() {
    let _turn = exclusive();
    let host = Host::start(
        "misbehave",
        &[
            "--cpu-budget",
            "1s",
            "--idle-timeout",
            "2s",
            "--max-memory",
            "32",
        ],
    );
    let quiet = measure(&host, QUIET, || {});
    println!("quiet: {}", describe(&quiet));
    let rss_before = host.rss_kib();

    // Connections made so far: each measurement makes the load's and one
    // hostile one.
    let mut made = LOAD_CONNECTIONS;
    for hostile in SUITE {
        // On this shared 2-core machine a single stall elsewhere can spoil
        // one measurement's p99: a case over the bound is measured once
        // more, and fails if it is over again (a real slowdown is).
        for attempt in 1..=2 {
            made += LOAD_CONNECTIONS + 1;
            let conn = format!("conn={made}");
            let report = measure(&host, Duration::ZERO, || {
                let started = Instant::now();
                let stream = run_hostile(&host, hostile);
                let mut parts = vec!["closed", conn.as_str()];
                parts.extend_from_slice(hostile.expect);
                host.wait_for_log(&parts);
                drop(stream);
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "{} took too long",
                    hostile.command
                );
            });
            println!("{:<24} {}", hostile.command, describe(&report));
            assert!(
                report.errors.is_empty(),
                "{}: load errors {:?}",
                hostile.command,
                report.errors
            );
            let bound = quiet.p99 * 2 + P99_SLACK;
            if report.p99 <= bound {
                break;
            }
            assert!(
                attempt < 2,
                "{}: p99 {:?} over {bound:?} twice",
                hostile.command,
                report.p99
            );
            println!(
                "{:<24} p99 over {bound:?}: measuring again",
                hostile.command
            );
        }
    }
    host.wait_for_log(&["memory limit reached"]);
    host.wait_for_log(&["plugin log lines dropped"]);

    // Freed memory goes back once no connection has started or ended for
    // two seconds (and the reclaimer has looked, every half second).
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = host.rss_kib();
    println!("host RSS: {rss_before} KiB before the suite, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 20 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// A plugin that opens a thousand stdout handles, each holding an
/// unfinished line, from as many connections as there are cores: the host
/// keeps one unfinished line per stream and connection, not one per handle
/// (it once held 4 MiB per connection).
#[test]
fn stdout_handles_share_one_line_buffer() {
    let _turn = exclusive();
    let host = Host::start("misbehave", &["--max-memory", "2"]);
    let load = EchoLoad::start(&host, LOAD_CONNECTIONS);
    std::thread::sleep(Duration::from_millis(300));
    let before = host.rss_kib();
    let conns: Vec<_> = (0..2 * crate::cores())
        .map(|_| {
            let mut conn = host.connect();
            conn.write_all(b"streams 1000\n").unwrap();
            assert_eq!(read_line(&mut conn), "holding 1000\n");
            conn
        })
        .collect();
    let holding = host.rss_kib();
    crate::check("1000 stdout handles", &load.stop());
    let per_conn = (holding.saturating_sub(before)) / conns.len() as u64;
    println!("host RSS per connection holding 1000 unfinished stdout lines: {per_conn} KiB");
    assert!(per_conn < 1024, "{per_conn} KiB per connection");
}

/// A plugin that returns while holding a pollable of its output stream,
/// with output still pending: every byte it wrote reaches the client (the
/// last 62 KiB were once dropped, with an `ok` outcome).
#[test]
fn output_is_flushed_when_run_returns_holding_a_pollable() {
    let _turn = exclusive();
    let host = Host::start("misbehave", &[]);
    let load = EchoLoad::start(&host, LOAD_CONNECTIONS);
    let mut conn = host.connect();
    conn.write_all(b"hold-pollable\n").unwrap();
    let line = host.wait_for_log(&["wrote", "bytes"]);
    let written: usize = line
        .split("wrote ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line:?}"));
    let mut received = Vec::new();
    std::io::Read::read_to_end(&mut conn, &mut received).unwrap();
    crate::check("return holding a pollable", &load.stop());
    assert_eq!(received.len(), written);
    host.wait_for_log(&["closed", "outcome=\"ok\""]);
}

/// Runs an echo load while `during` runs (and for at least `at_least`).
fn measure(host: &Host, at_least: Duration, during: impl FnOnce()) -> LoadReport {
    let started = Instant::now();
    let load = EchoLoad::start(host, LOAD_CONNECTIONS);
    during();
    if let Some(rest) = at_least.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    load.stop()
}

/// Starts the hostile connection and plays the client's part; returns the
/// connection, to be dropped only once the host has logged its end.
fn run_hostile(host: &Host, hostile: &Hostile) -> TcpStream {
    let mut stream = host.connect();
    stream
        .write_all(format!("{}\n", hostile.command).as_bytes())
        .unwrap();
    match hostile.client {
        Client::AwaitClose => assert_closed(&mut stream),
        Client::Answer(prefix) => {
            let answer = read_line(&mut stream);
            assert!(
                answer.starts_with(prefix),
                "{}: answered {answer:?}",
                hostile.command
            );
        }
        Client::NeverRead => {}
    }
    stream
}

fn describe(report: &LoadReport) -> String {
    format!(
        "{} round trips, p50 {:?}, p99 {:?}, {} errors",
        report.round_trips,
        report.p50,
        report.p99,
        report.errors.len()
    )
}

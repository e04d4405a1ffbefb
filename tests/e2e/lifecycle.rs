use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::{Host, assert_closed, echo_connection, echoes, read_line};

/// SIGTERM stops accepting at once; a live connection keeps being served
/// until its client is done, then the host logs its counters and exits 0.
#[test]
fn sigterm_drains_live_connections() {
    let host = Host::start("misbehave", &[]);
    let mut live = echo_connection(&host);
    host.signal(libc::SIGTERM);
    host.wait_for_log(&["SIGTERM: stopped accepting"]);
    host.wait_for_log(&["draining", "live=1"]);

    assert!(
        TcpStream::connect(host.addr).is_err(),
        "nothing is accepted once draining"
    );
    assert!(echoes(&mut live, "still served while draining"));
    drop(live);
    host.wait_for_log(&["stopped", "counters=", "total=1", "max_concurrent=1"]);
    assert_eq!(host.wait_exit().code(), Some(0));
}

/// Connections still live when --drain-timeout runs out are stopped, and
/// the host exits 0.
#[test]
fn drain_timeout_stops_the_rest() {
    let host = Host::start("misbehave", &["--drain-timeout", "1s"]);
    let mut live = echo_connection(&host);
    let signalled = Instant::now();
    host.signal(libc::SIGINT);
    host.wait_for_log(&["closed", "conn=1", "outcome=\"stopped\"", "drain timed out"]);
    assert_closed(&mut live);
    assert!(signalled.elapsed() >= Duration::from_secs(1));
    host.wait_for_log(&["stopped", "drain_stops=1"]);
    assert_eq!(host.wait_exit().code(), Some(0));
}

/// A second signal during the drain exits at once, with a failure status.
#[test]
fn second_signal_exits_at_once() {
    let host = Host::start("misbehave", &["--drain-timeout", "60s"]);
    let _live = echo_connection(&host);
    host.signal(libc::SIGTERM);
    host.wait_for_log(&["draining"]);
    let status = host.stop_with(libc::SIGTERM);
    assert_eq!(status.code(), Some(1));
}

/// Past --max-connections, connections wait in the queue and are served in
/// turn; past --max-queued, they are closed at once and counted as refused.
#[test]
fn admission_queues_then_refuses() {
    let host = Host::start(
        "misbehave",
        &["--max-connections", "2", "--max-queued", "1"],
    );
    let mut first = echo_connection(&host);
    let _second = echo_connection(&host);

    let mut queued = host.connect();
    queued.write_all(b"echo\n").unwrap();
    host.wait_for_log(&["queued", "conn=3"]);
    let mut refused = host.connect();
    assert_closed(&mut refused);
    host.wait_for_log(&["refused", "conn=4"]);

    assert!(echoes(&mut first, "served"));
    drop(first);
    assert_eq!(
        read_line(&mut queued),
        "ok\n",
        "the queued connection is served once a place frees"
    );
    assert!(echoes(&mut queued, "served in turn"));

    let status = host.stop_with(libc::SIGKILL);
    assert!(!status.success());
}

/// A connection with no byte either way for --idle-timeout is closed.
#[test]
fn idle_connections_are_closed() {
    let host = Host::start("misbehave", &["--idle-timeout", "500ms"]);
    let mut idle = echo_connection(&host);
    let mut busy = echo_connection(&host);
    for i in 0..8 {
        std::thread::sleep(Duration::from_millis(150));
        assert!(echoes(&mut busy, &format!("keep-alive {i}")));
    }
    assert_closed(&mut idle);
    host.wait_for_log(&["closed", "conn=1", "idle timeout"]);
    assert!(echoes(&mut busy, "busy connections stay"));
}

/// --max-lifetime closes a connection however busy it is.
#[test]
fn max_lifetime_closes_busy_connections() {
    let host = Host::start("misbehave", &["--max-lifetime", "1s"]);
    let mut busy = echo_connection(&host);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) && echoes(&mut busy, "busy") {
        std::thread::sleep(Duration::from_millis(50));
    }
    host.wait_for_log(&["closed", "conn=1", "maximum lifetime reached"]);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A plugin that computes for ever is stopped at its CPU budget; one that
/// waits for input for longer is not.
#[test]
fn cpu_budget_counts_running_not_waiting() {
    let host = Host::start("misbehave", &["--cpu-budget", "300ms"]);
    let mut waiting = echo_connection(&host);
    let mut spinning = host.connect();
    spinning.write_all(b"loop\n").unwrap();
    assert_closed(&mut spinning);
    host.wait_for_log(&["closed", "conn=2", "CPU budget spent"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(echoes(&mut waiting, "waiting costs nothing"));
}

/// Memory growth past --max-memory fails inside the plugin, and the host
/// logs it once.
#[test]
fn memory_limit_is_enforced_and_logged() {
    let host = Host::start("misbehave", &["--max-memory", "16"]);
    let mut bomb = host.connect();
    bomb.write_all(b"alloc\n").unwrap();
    assert_closed(&mut bomb);
    let hits = host.wait_for_lines(&["memory limit reached", "conn=1", "limit=16777216"], 1);
    assert_eq!(hits.len(), 1);
    host.wait_for_log(&["closed", "conn=1", "outcome=\"trap\""]);
    host.wait_for_log(&["conn=1", "stderr", "memory allocation"]);
}

/// A plugin spamming its log gets cut to the rate limit, with a line that
/// says how much was dropped.
#[test]
fn plugin_log_is_rate_limited() {
    let host = Host::start(
        "misbehave",
        &["--cpu-budget", "1500ms", "--log-lines-per-second", "20"],
    );
    let mut spammer = host.connect();
    spammer.write_all(b"spam-log\n").unwrap();
    assert_closed(&mut spammer);
    host.wait_for_log(&["closed", "conn=1", "CPU budget spent"]);
    host.wait_for_log(&[
        "plugin log lines dropped",
        "conn=1",
        "over 20 lines per second",
    ]);
    let logged = host
        .log()
        .lines()
        .filter(|line| line.contains("spam spam"))
        .count();
    assert!((20..=40).contains(&logged), "{logged} spam lines logged");
}

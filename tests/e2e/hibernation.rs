use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::services::Scratch;
use crate::util::{Host, assert_closed, echo_connection, echoes, plugin, read_line};

/// Sends `command` to the misbehave plugin on `stream` and returns its
/// answer.
fn ask(stream: &mut TcpStream, command: &str) -> String {
    stream.write_all(format!("{command}\n").as_bytes()).unwrap();
    read_line(stream)
}

/// A misbehave connection that has asked to hibernate with `bytes` of
/// state, once the host holds it hibernated.
fn hibernated(host: &Host, bytes: usize, hibernated_before: f64) -> TcpStream {
    let mut stream = host.connect();
    assert_eq!(
        ask(&mut stream, &format!("hibernate {bytes}")),
        "hibernating\n"
    );
    host.wait_for_metric(HIBERNATED, hibernated_before + 1.0);
    stream
}

const HIBERNATED: &str = r#"portico_connections_hibernated{service="misbehave"}"#;

/// A hibernated connection holds no place: with one place, a second client
/// is served while the first hibernates; then the first wakes on its bytes
/// into a fresh instance that has its state, and carries on.
#[test]
fn a_hibernated_connection_gives_its_place_back_and_wakes_on_data() {
    let host = Host::start(
        "misbehave",
        &[
            "--max-connections",
            "1",
            "--max-queued",
            "0",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let mut sleeper = hibernated(&host, 100, 0.0);
    assert_eq!(
        host.metric(r#"portico_hibernated_state_bytes{service="misbehave"}"#),
        100.0
    );
    // Counted once the connection has given its place back (the gauge
    // above counts from the plugin's request, a moment before).
    host.wait_for_metric(r#"portico_hibernations_total{service="misbehave"}"#, 1.0);

    let mut other = echo_connection(&host);
    assert!(echoes(&mut other, "served beside a hibernated connection"));
    drop(other);
    host.wait_for_log(&["closed", "outcome=\"ok\""]);

    assert_eq!(ask(&mut sleeper, "info"), "woke client-data 100\n");
    let info = read_line(&mut sleeper);
    assert!(info.starts_with("1 127.0.0.1:"), "{info:?}");
    assert_eq!(host.metric(HIBERNATED), 0.0);
    assert_eq!(
        host.metric(r#"portico_wakes_total{service="misbehave",reason="client-data"}"#),
        1.0
    );
    assert_eq!(
        host.metric(r#"portico_hibernations_total{service="misbehave"}"#),
        1.0
    );
    assert_closed(&mut sleeper);
}

/// A timer wakes a hibernated connection without a byte from the client;
/// the client's closing wakes one too, and the woken instance sees the end.
#[test]
fn timers_and_the_client_closing_wake_a_connection() {
    let host = Host::start("misbehave", &["--admin", "127.0.0.1:0"]);
    let mut timed = host.connect();
    let asked = Instant::now();
    assert_eq!(ask(&mut timed, "hibernate 3 300"), "hibernating\n");
    assert_eq!(read_line(&mut timed), "woke timer 3\n");
    assert!(asked.elapsed() >= Duration::from_millis(300));
    assert_eq!(ask(&mut timed, "echo"), "ok\n");
    assert!(echoes(&mut timed, "after the timer"));

    let mut leaving = hibernated(&host, 0, 0.0);
    leaving.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_line(&mut leaving), "woke client-closed 0\n");
    assert_closed(&mut leaving);
    assert_eq!(
        host.metric(r#"portico_wakes_total{service="misbehave",reason="client-closed"}"#),
        1.0
    );
}

/// A state over `max-hibernation-state` and a hibernation past
/// `max-hibernated` are refused inside the plugin, naming the limit, and the
/// connection stays live.
#[test]
fn hibernation_limits_are_refused_inside_the_plugin() {
    let host = Host::start(
        "misbehave",
        &[
            "--max-hibernation-state",
            "1000",
            "--max-hibernated",
            "1",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let mut large = host.connect();
    assert_eq!(
        ask(&mut large, "hibernate 2000"),
        "refused: cannot hibernate: a state of 2000 bytes, more than the 1000 of \
         max-hibernation-state\n"
    );
    let _first = hibernated(&host, 1000, 0.0);
    let mut second = host.connect();
    assert_eq!(
        ask(&mut second, "hibernate 1"),
        "refused: cannot hibernate: the service holds as many hibernated connections as it may\n"
    );
    assert_eq!(host.metric(HIBERNATED), 1.0);
}

/// A hibernated connection is closed at the hibernated idle timeout, and
/// counted as idle.
#[test]
fn a_hibernated_connection_is_closed_when_idle() {
    let host = Host::start(
        "misbehave",
        &[
            "--hibernated-idle-timeout",
            "300ms",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let mut stream = hibernated(&host, 10, 0.0);
    assert_closed(&mut stream);
    host.wait_for_log(&["closed", "outcome=\"stopped\"", "reason=\"idle timeout\""]);
    assert_eq!(host.metric(HIBERNATED), 0.0);
    assert_eq!(
        host.metric(r#"portico_hibernated_state_bytes{service="misbehave"}"#),
        0.0
    );
}

/// On a drain, a hibernated connection wakes to say goodbye; hibernating
/// again is refused; and the host exits once it is done.
#[test]
fn a_drain_wakes_hibernated_connections_to_say_goodbye() {
    let host = Host::start("misbehave", &["--admin", "127.0.0.1:0"]);
    let mut stream = hibernated(&host, 5, 0.0);
    host.signal(libc::SIGTERM);
    assert_eq!(read_line(&mut stream), "woke draining 5\n");
    assert_eq!(
        ask(&mut stream, "hibernate 1"),
        "refused: cannot hibernate: the host is shutting down\n"
    );
    assert_closed(&mut stream);
    assert!(host.wait_exit().success());
}

/// After a reload, a hibernated connection wakes into the new version of
/// the plugin: here, the echo that replaced misbehave answers its bytes.
#[test]
fn a_hibernated_connection_wakes_into_the_version_in_force() {
    let scratch = Scratch::new("hibernation-reload");
    let path = scratch.0.join("misbehave.wasm");
    std::fs::copy(plugin("misbehave"), &path).unwrap();
    let host = Host::start_file(&path, &["--admin", "127.0.0.1:0"]);
    let mut stream = hibernated(&host, 5, 0.0);
    std::fs::copy(plugin("echo"), &path).unwrap();
    host.signal(libc::SIGHUP);
    host.wait_for_log(&["reloaded"]);
    assert!(echoes(&mut stream, "answered by the new version"));
}

/// A plugin that hibernates and wakes without pause is stopped when its
/// CPU budget is spent, as a busy one is; meanwhile, others are served.
#[test]
fn waking_without_pause_spends_the_cpu_budget() {
    let host = Host::start(
        "misbehave",
        &[
            "--cpu-budget",
            "20ms",
            "--cpu-refill",
            "0s",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let mut looping = host.connect();
    assert_eq!(ask(&mut looping, "hibernate-loop"), "hibernating\n");
    let mut other = echo_connection(&host);
    assert!(echoes(&mut other, "served beside a wake loop"));
    assert_closed(&mut looping);
    host.wait_for_log(&["closed", "reason=\"CPU budget spent\""]);
    let wakes = host.metric(r#"portico_wakes_total{service="misbehave",reason="timer"}"#);
    assert!(wakes > 10.0, "{wakes} wakes");
    assert!(echoes(&mut other, "and after it"));
}

/// The sleepy echo hibernates whenever its client pauses, and echoes
/// byte-exact all the same: 1 MiB in one go, and lines with pauses between
/// them, each pause a hibernation and each line a wake.
#[test]
fn the_sleepy_echo_is_byte_exact_across_wakes() {
    let host = Host::start("sleepy-echo", &["--admin", "127.0.0.1:0"]);
    let payload = crate::util::pattern(1 << 20, 7);
    assert_eq!(
        crate::util::send_and_collect(host.connect(), payload.clone()),
        payload
    );
    let mut stream = host.connect();
    let wakes = r#"portico_wakes_total{service="sleepy_echo",reason="client-data"}"#;
    let before = host.metric(wakes);
    for line in 0..5 {
        host.wait_for_metric(
            r#"portico_connections_hibernated{service="sleepy_echo"}"#,
            1.0,
        );
        assert!(echoes(&mut stream, &format!("line {line}")));
    }
    assert_eq!(host.metric(wakes), before + 5.0);
}

/// A connection that arrived over TLS behind a PROXY header hibernates
/// and wakes with both kept: the woken instance reads and writes through
/// the same TLS session, and is told the addresses the header gave.
#[test]
fn tls_and_proxy_addresses_survive_hibernation() {
    use std::io::{BufRead, BufReader};
    let scratch = Scratch::new("hibernation-tls");
    let config = scratch.config(
        r#"
        [services.misbehave]
        plugin = "{misbehave}"
        listen = ["127.0.0.1:0"]
        [services.misbehave.tls]
        certificates = [ { cert = "{certs}/a.pem", key = "{certs}/a.key" } ]
        [services.misbehave.proxy-protocol]
        trusted = ["127.0.0.1/32"]
        "#,
    );
    let host = Host::start_config(&config, &[], 1, false);
    let mut tcp = TcpStream::connect(host.addr).unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 5000 443\r\n")
        .unwrap();
    let stream = crate::util::tls_over(tcp, "localhost", None).unwrap();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let mut ask = |command: &str, line: &mut String| {
        stream.get_mut().write_all(command.as_bytes()).unwrap();
        line.clear();
        stream.read_line(line).unwrap();
    };
    ask("hibernate 7\n", &mut line);
    assert_eq!(line, "hibernating\n");
    std::thread::sleep(Duration::from_millis(200));
    ask("info\n", &mut line);
    assert_eq!(line, "woke client-data 7\n");
    line.clear();
    stream.read_line(&mut line).unwrap();
    assert_eq!(line, "1 192.0.2.7:5000 198.51.100.1:443\n");
}

/// A connection that has hibernated lives to `hibernated-max-lifetime`,
/// one that never did to `max-lifetime`; both count from the accept.
#[test]
fn hibernated_connections_have_their_own_lifetime() {
    let host = Host::start(
        "misbehave",
        &[
            "--max-lifetime",
            "500ms",
            "--hibernated-max-lifetime",
            "2s",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let accepted = Instant::now();
    let mut sleeper = hibernated(&host, 1, 0.0);
    let mut live = echo_connection(&host);
    assert_closed(&mut live);
    std::thread::sleep(Duration::from_millis(800).saturating_sub(accepted.elapsed()));
    assert_eq!(ask(&mut sleeper, "echo"), "woke client-data 1\n");
    assert_eq!(read_line(&mut sleeper), "ok\n");
    assert_closed(&mut sleeper);
    assert!(accepted.elapsed() >= Duration::from_secs(2));
    host.wait_for_lines(&["closed", "reason=\"maximum lifetime reached\""], 2);
}

/// Hibernated connections are bounded by the open files that live ones
/// leave: asking for more than that is warned of at start, with what to
/// raise, and the host serves with what fits.
#[test]
fn max_hibernated_is_bounded_by_open_files() {
    let host = Host::start(
        "misbehave",
        &["--max-hibernated", "4000000000", "--admin", "127.0.0.1:0"],
    );
    let warning = host.wait_for_log(&["max-hibernated", "does not fit", "ulimit -n"]);
    assert!(
        warning.contains("4000000000 for all services together"),
        "{warning}"
    );
    let _sleeper = hibernated(&host, 1, 0.0);
}

//! WASI commands as handlers (inetd mode): a program with `main`, its
//! stdin and stdout on the connection.

use std::io::{Read, Write};
use std::net::Shutdown;

use crate::util::{Host, TIMEOUT, pattern, send_and_collect};

/// What a command writes before its echo, given `args`.
const BANNER: &str = "hello from a WASI command\n";

/// The example `cat` programs (a Rust `fn main`, a C `main` and a Go
/// `main`, no SDK)
/// serve several clients at once, each byte-exact through 1 MiB, their
/// arguments from the `args` setting, their stderr in the log under the
/// connection's id.
#[test]
fn wasi_commands_serve_connections_on_their_stdio() {
    for plugin in ["cat", "c-cat", "go-cat"] {
        serves_on_stdio(plugin);
    }
}

fn serves_on_stdio(plugin: &str) {
    let host = Host::start(plugin, &["--config", "args=hello from a WASI command"]);
    let clients: Vec<_> = (0..4u8)
        .map(|seed| {
            let stream = host.connect();
            std::thread::spawn(move || {
                let payload = pattern(1 << 20, seed);
                let mut expected = BANNER.as_bytes().to_vec();
                expected.extend_from_slice(&payload);
                send_and_collect(stream, payload) == expected
            })
        })
        .collect();
    for client in clients {
        assert!(client.join().unwrap(), "a client's echo differed");
    }
    host.wait_for_lines(&["\"serving 127.0.0.1\"", "stream=\"stderr\""], 4);
    host.wait_for_lines(&["closed", "bytes_in=1048576", "outcome=\"ok\""], 4);
}

/// A command's environment holds every setting and the connection's
/// addresses as tcpserver names them; its arguments start with its name.
#[test]
fn a_command_gets_settings_and_addresses_in_its_environment() {
    let host = Host::start(
        "misbehave-command",
        &[
            "--config",
            "args=-v --port 7",
            "--config",
            "greeting=hi there",
            "--config",
            "TCPREMOTEIP=forged",
        ],
    );
    let mut conn = host.connect();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    conn.write_all(b"env\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let local = conn.peer_addr().unwrap();
    let peer = conn.local_addr().unwrap();
    for line in [
        "arg misbehave-command".to_string(),
        "arg -v".to_string(),
        "arg --port".to_string(),
        "arg 7".to_string(),
        "env greeting=hi there".to_string(),
        "env args=-v --port 7".to_string(),
        "env PROTO=TCP".to_string(),
        "env PORTICO_CONN=1".to_string(),
        format!("env TCPREMOTEIP={}", peer.ip()),
        format!("env TCPREMOTEPORT={}", peer.port()),
        format!("env TCPLOCALIP={}", local.ip()),
        format!("env TCPLOCALPORT={}", local.port()),
    ] {
        assert!(
            answer.lines().any(|l| l == line),
            "{line:?} missing from:\n{answer}"
        );
    }
    // The connection's own variables are the host's, whatever the settings.
    assert!(!answer.contains("forged"), "{answer}");
}

/// A command that exits with a failure status, panics or spins is logged
/// as such and counted, and the host goes on serving.
#[test]
fn a_command_that_fails_is_logged_and_counted() {
    let host = Host::start(
        "misbehave-command",
        &["--cpu-budget", "200ms", "--admin", "127.0.0.1:0"],
    );
    for (command, outcome) in [
        // WASI 0.2 carries only success or failure: status 1.
        (
            "exit 3",
            r#"outcome="error" unsent=0 error="exited with status 1""#,
        ),
        ("exit 0", r#"outcome="ok""#),
        ("panic", r#"outcome="trap""#),
        ("spin", r#"outcome="stopped" reason="CPU budget spent""#),
    ] {
        let mut conn = host.connect();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        writeln!(conn, "{command}").unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        host.wait_for_log(&["closed", outcome]);
    }
    let mut conn = host.connect();
    conn.write_all(b"still served\nand more").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "still served\nand more");
    for (outcome, count) in [
        ("ok", 2.0),
        ("error", 1.0),
        ("trap", 1.0),
        ("cpu-budget", 1.0),
    ] {
        let series = format!(
            r#"portico_connections_closed_total{{service="misbehave-command",outcome="{outcome}"}}"#
        );
        assert_eq!(host.metric(&series), count, "{series}");
    }
}

/// A plugin that reads its settings through `wasi:config` as Spin's
/// toolchains import it (0.2.0-draft-2024-09-27) loads and reads them.
#[test]
fn a_plugin_importing_spins_wasi_config_reads_its_settings() {
    let host = Host::start(
        "spin-config",
        &["--config", "greeting=hello", "--config", "other=1"],
    );
    let mut conn = host.connect();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "greeting: hello\nsettings: 2\n");
}

/// However many stdout handles a command opens, they share one write's
/// worth of pending output: commands filling handles for clients that do
/// not read, as many as cores and more, leave the host's memory where it
/// was.
#[test]
fn many_stdout_handles_cannot_grow_the_host() {
    let host = Host::start("misbehave-command", &[]);
    let before = host.rss_kib();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut conn = host.connect();
            conn.write_all(b"many-stdout 1000\n").unwrap();
            conn
        })
        .collect();
    // A leak of a write's worth per handle would be 64 MiB per client.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let grown = host.rss_kib().saturating_sub(before);
    assert!(grown < 32 * 1024, "the host grew by {grown} KiB");
    for mut conn in clients {
        conn.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    }
    host.wait_for_lines(&["closed", "outcome=\"ok\""], 4);
}

/// What a command wrote and never flushed still reaches its client after
/// it exits, as a handler's does.
#[test]
fn a_commands_unflushed_output_is_delivered() {
    let host = Host::start("misbehave-command", &[]);
    let mut conn = host.connect();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    conn.write_all(b"unflushed 4194304\n").unwrap();
    // Reading late lets the socket fill, so that the last write is still
    // in the host when the command exits.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut received = Vec::new();
    conn.read_to_end(&mut received).unwrap();
    assert_eq!(received.len(), 4 << 20);
    assert!(received.iter().all(|&byte| byte == b'x'));
    host.wait_for_log(&["closed", "outcome=\"ok\"", "bytes_out=4194304"]);
}

use std::io::Write;

use crate::util::{Host, assert_closed, echo_connection, echoes, read_line};

/// Asks a new connection to misbehave with `command`; checks that only it
/// is closed and that the host logs `expected` about it.
fn misbehave_alone(command: &str, expected: &[&str]) {
    let host = Host::start("misbehave", &[]);
    let mut bystander = echo_connection(&host);
    assert!(echoes(&mut bystander, "first"));

    let mut culprit = host.connect();
    culprit
        .write_all(format!("{command}\n").as_bytes())
        .unwrap();
    assert_closed(&mut culprit);
    let mut parts = vec!["closed", "conn=2"];
    parts.extend_from_slice(expected);
    host.wait_for_log(&parts);

    assert!(echoes(&mut bystander, "after"));
    let mut newcomer = echo_connection(&host);
    assert!(echoes(&mut newcomer, "newcomer"));
}

/// A trap (`unreachable`) closes only its connection and is logged with
/// the wasm backtrace.
#[test]
fn trap_closes_only_its_connection() {
    misbehave_alone("trap", &["outcome=\"trap\"", "unreachable"]);
}

/// A panic closes only its connection; its message reaches the log.
#[test]
fn panic_closes_only_its_connection() {
    misbehave_alone("panic", &["outcome=\"trap\"", "error=\"wasm trap"]);
}

/// An error returned from `run` closes only its connection and is logged.
#[test]
fn returned_error_closes_only_its_connection() {
    misbehave_alone("error", &["outcome=\"error\"", "asked to fail"]);
}

/// `exit(3)` is a failure of that connection only. (WASI 0.2's `exit`
/// carries only success or failure, so the host sees status 1.)
#[test]
fn nonzero_exit_closes_only_its_connection() {
    misbehave_alone("exit 3", &["outcome=\"error\"", "exited with status 1"]);
}

/// `exit(0)` is a normal end of the connection.
#[test]
fn zero_exit_is_a_normal_end() {
    let host = Host::start("misbehave", &[]);
    let mut stream = host.connect();
    stream.write_all(b"exit 0\n").unwrap();
    assert_closed(&mut stream);
    host.wait_for_log(&["closed", "conn=1", "outcome=\"ok\""]);
}

/// The panic message written to stderr is logged, tagged with the
/// connection id.
#[test]
fn panic_message_reaches_the_log() {
    let host = Host::start("misbehave", &[]);
    let mut culprit = host.connect();
    culprit.write_all(b"panic\n").unwrap();
    assert_closed(&mut culprit);
    host.wait_for_log(&["conn=1", "stderr", "asked to panic"]);
}

/// With explicit bounds checks (each slot reserving only `--max-memory`),
/// plugin code computes as before, and a plugin that overruns its memory
/// or its stack still traps alone, with the limit named in the log.
#[test]
fn explicit_bounds_checks_keep_plugins_in_their_memory() {
    let host = Host::start(
        "misbehave",
        &["--explicit-bounds-checks", "--max-memory", "16"],
    );
    let mut stream = host.connect();
    stream.write_all(b"compute 18\n").unwrap();
    let answer = read_line(&mut stream);
    assert!(answer.starts_with("computed "), "{answer:?}");
    for command in ["alloc", "recurse"] {
        let mut stream = host.connect();
        stream.write_all(format!("{command}\n").as_bytes()).unwrap();
        assert_closed(&mut stream);
    }
    host.wait_for_lines(&["closed", "outcome=\"trap\""], 2);
    host.wait_for_log(&["memory limit reached"]);
    assert!(echoes(&mut echo_connection(&host), "still serving"));
}

use std::io::Write;

use crate::util::{Host, read_line};

/// Sends one command line to the misbehave plugin and returns its answer.
fn ask(host: &Host, command: &str) -> String {
    let mut stream = host.connect();
    stream.write_all(format!("{command}\n").as_bytes()).unwrap();
    read_line(&mut stream)
}

/// `--config` values reach the plugin through `wasi:config/store`.
#[test]
fn config_values_reach_the_plugin() {
    let host = Host::start(
        "greeter",
        &[
            "--config",
            "banner=welcome to portico",
            "--config",
            "greeting=hi",
        ],
    );
    let mut stream = host.connect();
    assert_eq!(read_line(&mut stream), "welcome to portico\n");
    stream.write_all(b"ada\n").unwrap();
    assert_eq!(read_line(&mut stream), "hi ada\n");
    stream.write_all(b"quit\n").unwrap();
    assert_eq!(read_line(&mut stream), "bye\n");

    let host = Host::start(
        "misbehave",
        &["--config", "colour=blue", "--config", "empty="],
    );
    assert_eq!(ask(&host, "config colour"), "blue\n");
    assert_eq!(ask(&host, "config empty"), "\n");
    assert_eq!(ask(&host, "config other"), "<unset>\n");
}

/// The plugin is told its connection id, which matches the host's log, and
/// both addresses.
#[test]
fn plugin_knows_its_connection() {
    let host = Host::start("misbehave", &[]);
    let mut stream = host.connect();
    let client = stream.local_addr().unwrap();
    stream.write_all(b"info\n").unwrap();
    assert_eq!(
        read_line(&mut stream),
        format!("1 {client} {}\n", host.addr)
    );
    host.wait_for_log(&["accepted", "conn=1", &format!("peer={client}")]);
}

/// Lines a plugin prints land in the host's log, tagged with the
/// connection id and stream.
#[test]
fn plugin_output_goes_to_the_log() {
    let host = Host::start("misbehave", &[]);
    ask(&host, "print greetings");
    host.wait_for_log(&["conn=1", "stdout", "greetings on stdout"]);
    host.wait_for_log(&["conn=1", "stderr", "greetings on stderr"]);
}

/// Files, sockets, name lookups, environment and arguments are not granted.
#[test]
fn plugin_gets_no_ambient_authority() {
    let host = Host::start("misbehave", &[]);
    assert!(ask(&host, "open-file /etc/passwd").starts_with("denied"));
    assert!(ask(&host, &format!("connect {}", host.addr)).starts_with("denied"));
    assert!(ask(&host, "lookup localhost").starts_with("denied"));
    assert_eq!(ask(&host, "env"), "env=0 args=0\n");
}

/// A plugin written without bindings (as in C) that returns from `run`
/// still holding its borrowed streams traps, and the log says what to do.
#[test]
fn returning_with_borrowed_streams_is_explained() {
    let plugin = crate::wat::component(
        "keeps-borrows",
        &format!("{} (i32.const 0))", crate::wat::RUN),
    );
    let host = Host::start_file(&plugin, &[]);
    let mut conn = host.connect();
    crate::util::assert_closed(&mut conn);
    host.wait_for_log(&[
        "outcome=\"trap\"",
        "borrow handles still remain",
        "drop both before returning",
    ]);
}

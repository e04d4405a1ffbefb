//! Plugins written in other languages than Rust, from `guest-sdk/wit`
//! alone (Python, JavaScript) or as plain WASI programs (C, Go), built by
//! `cargo xtask plugins` from `plugins/LANGUAGE/NAME`.

use std::io::Write;
use std::net::Shutdown;

use crate::util::{Host, pattern, read_line, send_and_collect};

/// The echo handlers in Python (componentize-py), JavaScript
/// (componentize-js), C (guest-sdk/c over the contract's C bindings) and Go
/// (the contract's Go bindings) each serve several clients at once,
/// byte-exact through 1 MiB each, ending each connection when its client
/// half-closes.
#[test]
fn echo_handlers_in_every_language_are_byte_exact() {
    for plugin in ["py-echo", "js-echo", "c-echo", "go-echo"] {
        echoes_byte_exact(plugin);
    }
}

fn echoes_byte_exact(plugin: &str) {
    let host = Host::start(plugin, &[]);
    let clients: Vec<_> = (0..4u8)
        .map(|seed| {
            let stream = host.connect();
            std::thread::spawn(move || {
                let payload = pattern(1 << 20, seed);
                send_and_collect(stream, payload.clone()) == payload
            })
        })
        .collect();
    for client in clients {
        assert!(client.join().unwrap(), "{plugin}: a client's echo differed");
    }
    host.wait_for_lines(&["closed", "bytes_out=1048576", "outcome=\"ok\""], 4);
}

/// The greeter, in every language, reads the operator's settings (through
/// `wasi:config` in a handler, the environment in a command) and speaks the
/// same line protocol, with two clients at once; an error it reports and a
/// crash are logged as the connection's outcome, with what the runtime
/// printed. The greeters over an SDK (Rust's, Python's, JavaScript's)
/// answer a last line that has no newline, sent as the client shuts its
/// side.
#[test]
fn every_greeter_reads_its_settings() {
    for plugin in [
        "greeter",
        "py-greeter",
        "js-greeter",
        "c-greeter",
        "go-greeter",
    ] {
        let host = Host::start(
            plugin,
            &[
                "--config",
                "banner=welcome to portico",
                "--config",
                "greeting=hi",
            ],
        );
        let mut first = host.connect();
        let mut second = host.connect();
        for (stream, name) in [(&mut first, "ada"), (&mut second, "grace")] {
            assert_eq!(read_line(stream), "welcome to portico\n", "{plugin}");
            writeln!(stream, "{name}").unwrap();
        }
        assert_eq!(read_line(&mut second), "hi grace\n", "{plugin}");
        assert_eq!(read_line(&mut first), "hi ada\n", "{plugin}");
        first.write_all(b"quit\n").unwrap();
        assert_eq!(read_line(&mut first), "bye\n", "{plugin}");
        crate::util::assert_closed(&mut first);
        host.wait_for_log(&["closed", "conn=1", "outcome=\"ok\""]);

        second.write_all(b"fail\n").unwrap();
        crate::util::assert_closed(&mut second);
        let failed = host.wait_for_log(&["closed", "conn=2", "outcome=\"error\""]);
        let reported = match plugin {
            "c-greeter" | "go-greeter" => {
                host.wait_for_log(&["\"the client asked to fail\"", "conn=2", "stderr"]);
                failed.contains("exited with status 1")
            }
            _ => failed.contains("error=\"the client asked to fail\""),
        };
        assert!(reported, "{plugin}: {failed}");

        let mut crashing = host.connect();
        assert_eq!(read_line(&mut crashing), "welcome to portico\n", "{plugin}");
        crashing.write_all(b"crash\n").unwrap();
        crate::util::assert_closed(&mut crashing);
        // What each runtime prints of a crash, on stderr (C's abort prints
        // nothing; Go's panic ends the program with a failure status).
        let (outcome, printed) = match plugin {
            "greeter" => ("trap", Some("the client asked to crash")),
            "py-greeter" => ("trap", Some("RuntimeError: the client asked to crash")),
            // The SDK prints what was thrown; the bindings only say it is
            // not a string.
            "js-greeter" => ("trap", Some("TypeError: can't access property")),
            "c-greeter" => ("trap", None),
            _ => ("error", Some("panic: the client asked to crash")),
        };
        host.wait_for_log(&["closed", "conn=3", &format!("outcome=\"{outcome}\"")]);
        if let Some(printed) = printed {
            host.wait_for_log(&[printed, "conn=3", "stream=\"stderr\""]);
        }
        // An exception that left `run` in Python or JavaScript: the
        // `closed` line names it, and the report is logged at WARN.
        let uncaught = match plugin {
            "py-greeter" => Some(("Python", "RuntimeError: the client asked to crash")),
            "js-greeter" => Some(("JavaScript", "TypeError: can't access property")),
            _ => None,
        };
        if let Some((language, exception)) = uncaught {
            let cause = format!("cause=\"uncaught {language} exception\"");
            let exception = format!("exception=\"{exception}");
            host.wait_for_log(&["closed", "conn=3", "outcome=\"trap\"", &cause, &exception]);
            host.wait_for_log(&["WARN", "plugin:", &exception[11..], "conn=3"]);
        }

        if matches!(plugin, "greeter" | "py-greeter" | "js-greeter") {
            let mut last = host.connect();
            assert_eq!(read_line(&mut last), "welcome to portico\n", "{plugin}");
            last.write_all(b"ada").unwrap();
            last.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_line(&mut last), "hi ada\n", "{plugin}");
            crate::util::assert_closed(&mut last);
            host.wait_for_log(&["closed", "conn=4", "outcome=\"ok\""]);
        }
    }
}

/// The line counters in C and Python hibernate between lines: each line
/// wakes a fresh instance, which gets the count (and a partial line) back
/// from the state; a drain wakes them to say goodbye.
#[test]
fn c_and_python_counters_hibernate_between_lines() {
    for plugin in ["c-count", "py-count"] {
        let host = Host::start(plugin, &["--admin", "127.0.0.1:0"]);
        let hibernated = format!(r#"portico_connections_hibernated{{service="{plugin}"}}"#);
        let wait_hibernated = || host.wait_for_metric(&hibernated, 1.0);
        let mut stream = host.connect();
        // Nothing to read yet: the first instance hibernates at once.
        wait_hibernated();
        stream.write_all(b"one\n").unwrap();
        assert_eq!(read_line(&mut stream), "1\n", "{plugin}");
        wait_hibernated();
        stream.write_all(b"two\nthr").unwrap();
        assert_eq!(read_line(&mut stream), "2\n", "{plugin}");
        wait_hibernated();
        stream.write_all(b"ee\n").unwrap();
        assert_eq!(read_line(&mut stream), "3\n", "{plugin}");
        wait_hibernated();
        let wakes = format!(r#"portico_wakes_total{{service="{plugin}",reason="client-data"}}"#);
        assert_eq!(host.metric(&wakes), 3.0, "{plugin}");
        host.signal(libc::SIGTERM);
        assert_eq!(read_line(&mut stream), "bye\n", "{plugin}");
        crate::util::assert_closed(&mut stream);
        assert!(host.wait_exit().success(), "{plugin}");
    }
}

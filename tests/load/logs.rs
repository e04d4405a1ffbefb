use std::io::Write;

use crate::util::{Host, assert_closed, read_line};
use crate::{cores, exclusive, under_load, wat};

/// Most bytes one log line of the host may have: three plugin-controlled
/// fields of at most 4 KiB each, escaped, and the rest of the line.
const MAX_LINE: usize = 16 * 1024;

/// A function name made to end the backtrace's line and start a forged
/// host line, repaint a terminal and end a line in Unicode.
const FORGED_NAME: &str = r#"x\n2026-01-01T00:00:00.000000Z  INFO portico_host::server: closed conn=424242 elapsed_ms=0 bytes_in=0 bytes_out=0 outcome=\"ok\"\u{2028}\1b[2J"#;

/// A plugin whose trap backtrace carries forged lines: `run` recurses 300
/// frames deep through a function with a 10 KB name, then traps in one
/// named to forge a host line.
fn forging_backtrace_plugin() -> std::path::PathBuf {
    let long_name = "n".repeat(10_000);
    wat::component(
        "forged-names",
        &format!(
            r#"(func $evil (@name "{FORGED_NAME}") unreachable)
            (func $deep (@name "{long_name}") (param $depth i32)
              (if (i32.eqz (local.get $depth)) (then (call $evil)))
              (call $deep (i32.sub (local.get $depth) (i32.const 1))))
            {} (call $deep (i32.const 300)) (i32.const 0))"#,
            wat::RUN
        ),
    )
}

/// Plugin text made to forge or flood the host's log, from as many
/// connections at once as there are cores: newlines and a whole forged host
/// line in `run`'s error, a 16 MiB error, control characters and Unicode
/// line separators on stdout, forged function names and a 3 MB backtrace
/// in a trap. Every line of the log is still the host's own, none is
/// longer than [`MAX_LINE`], and the echo load keeps its latency.
#[test]
fn plugin_text_cannot_forge_or_flood_the_log() {
    let _turn = exclusive();
    let host = Host::start("misbehave", &[]);
    under_load(&host, "forging the log", || {
        for command in ["forge-error", "huge-error 16", "print-controls"] {
            let conns: Vec<_> = (0..cores())
                .map(|_| {
                    let mut conn = host.connect();
                    conn.write_all(format!("{command}\n").as_bytes()).unwrap();
                    conn
                })
                .collect();
            for mut conn in conns {
                if command == "print-controls" {
                    assert_eq!(read_line(&mut conn), "printed\n");
                }
                assert_closed(&mut conn);
            }
        }
        host.wait_for_lines(&["closed", "outcome=\"error\""], 2 * cores());
    });
    let log = host.log();
    assert_log_is_the_hosts(&log);
    assert!(log.contains(r#"error="fine\n2026-01-01T00:00:00"#), "{log}");
    assert!(log.contains("more bytes cut]"));
    assert!(log.contains(r#"cr\rvt\u{b}ff\u{c}esc\u{1b}[31mred ls\u{2028}ps\u{2029}nel\u{85}end"#));

    let plugin = forging_backtrace_plugin();
    let host = Host::start_file(&plugin, &[]);
    let echo_host = Host::start("misbehave", &[]);
    let traps = under_load(&echo_host, "forged backtraces", || {
        let conns: Vec<_> = (0..cores()).map(|_| host.connect()).collect();
        for mut conn in conns {
            assert_closed(&mut conn);
        }
        host.wait_for_lines(&["closed", "outcome=\"trap\""], cores())
    });
    let log = host.log();
    assert_log_is_the_hosts(&log);
    let per_trap = traps.iter().map(String::len).max().unwrap_or(0);
    println!("log bytes per trap with a 3 MB backtrace: {per_trap}");
    assert!(traps[0].contains("closed conn=424242"));
    assert!(per_trap < MAX_LINE, "{per_trap} log bytes per trap");
    let _ = std::fs::remove_file(plugin);
}

/// Asserts every line of `log` is one the host wrote: it starts with the
/// time (not the forged one) and a level, and is at most [`MAX_LINE`]
/// bytes.
fn assert_log_is_the_hosts(log: &str) {
    for line in log.lines() {
        let is_host_line = line.len() > 30
            && line.as_bytes()[4] == b'-'
            && line.as_bytes()[10] == b'T'
            && !line.starts_with("2026-01-01T00:00:00")
            && ["INFO", "WARN", "ERROR", "DEBUG"]
                .iter()
                .any(|level| line[27..].trim_start().starts_with(level));
        assert!(is_host_line, "a line the host did not write: {line:?}");
        assert!(line.len() <= MAX_LINE, "a line of {} bytes", line.len());
    }
}

//! The benchmark keeps working: one short round against the host built for
//! the tests. A debug build's figures say nothing about speed and are not
//! checked; a clean run is, since the benchmark verifies every echoed byte
//! and fails on any error.

use std::process::Command;

mod util;

#[test]
fn a_short_round_runs_clean() {
    let built = util::built();
    let poco = std::env::var_os("PORTICO_POCO_ECHO")
        .expect("PORTICO_POCO_ECHO is unset: run the tests with `cargo xtask test`");

    let output = Command::new(&built.bench)
        .arg("--host")
        .arg(&built.host)
        .arg("--plugin")
        .arg(built.plugins.join("echo.wasm"))
        .arg("--poco")
        .arg(poco)
        .args([
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--idle-connections",
            "200",
            "--redis-requests",
            "2000",
            // Python's and JavaScript's echoes take seconds to compile;
            // every language goes through the same code.
            "--languages",
            "rust,c",
            "--capacity-connections",
            "300",
        ])
        .output()
        .expect("cannot start portico-bench");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "portico-bench failed:\n{}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    for metric in [
        "| connection rate",
        "POCO/native",
        "load generator CPU",
        "| c |",
        "live connections held",
        "ping-pong",
        "streaming",
        "RSS per idle connection",
        "instantiate",
        "redis-kv",
        "via tcp-proxy",
    ] {
        assert!(
            stdout.contains(metric),
            "no {metric:?} figure in:\n{stdout}"
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cores < 2 || stdout.contains("server pinned to CPU 0"),
        "no pinned run on {cores} cores in:\n{stdout}"
    );
}

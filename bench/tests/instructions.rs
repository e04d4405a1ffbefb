//! The hot path's guard: the host's user-space instructions per connection
//! and per 4 KiB round trip, counted by callgrind, within 5% of the
//! baseline committed in bench/instructions.txt. A change that makes them
//! grow fails here; one that makes them shrink lowers the baseline in the
//! same commit (run this test with PORTICO_UPDATE_BASELINE=1).

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn instructions_per_connection_and_round_trip_hold_to_the_baseline() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_portico-bench"));
    let host = bench.with_file_name("host");
    assert!(
        host.is_file(),
        "{} is missing: run the tests with `cargo xtask test`",
        host.display()
    );
    let plugins = std::env::var_os("PORTICO_PLUGIN_DIR")
        .expect("PORTICO_PLUGIN_DIR is unset: run the tests with `cargo xtask test`");
    let baseline = Path::new(env!("CARGO_MANIFEST_DIR")).join("instructions.txt");
    let mut command = Command::new(&bench);
    command
        .arg("--host")
        .arg(&host)
        .arg("--plugin")
        .arg(PathBuf::from(plugins).join("echo.wasm"))
        .arg("instructions")
        .arg("--baseline")
        .arg(&baseline);
    if std::env::var_os("PORTICO_UPDATE_BASELINE").is_some() {
        command.arg("--update");
    }
    let output = command.output().expect("cannot start portico-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
}

//! The hot path's guard: the host's user-space instructions per connection
//! and per 4 KiB round trip, counted by callgrind, within 5% of the
//! baseline committed in bench/instructions.txt. A change that makes them
//! grow fails here; one that makes them shrink lowers the baseline in the
//! same commit (run this test with PORTICO_UPDATE_BASELINE=1).

use std::path::Path;
use std::process::Command;

mod util;

#[test]
fn instructions_per_connection_and_round_trip_hold_to_the_baseline() {
    let built = util::built();
    let baseline = Path::new(env!("CARGO_MANIFEST_DIR")).join("instructions.txt");
    let mut command = Command::new(&built.bench);
    command
        .arg("--host")
        .arg(&built.host)
        .arg("--plugin")
        .arg(built.plugins.join("echo.wasm"))
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

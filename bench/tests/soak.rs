//! The 60-second soak (RELIABILITY.md): the host built for the tests, with
//! several services under mixed load, hostile plugins beside them and
//! every fault injected once, must meet every target the soak judges on
//! a run this short. It mounts a tmpfs, so it runs as root, as CI does.

use std::process::Command;

mod util;

#[test]
fn a_one_minute_soak_meets_its_targets() {
    let built = util::built();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak");

    let output = Command::new(&built.bench)
        .args(["soak", "--minutes", "1"])
        .arg("--host")
        .arg(&built.host)
        .arg("--plugin-dir")
        .arg(&built.plugins)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("cannot start portico-bench");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the soak failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for written in [
        "summary.md",
        "metrics.tsv",
        "rss.svg",
        "fds.svg",
        "echo-p99.svg",
    ] {
        assert!(
            out.join(written).is_file(),
            "no {written} in {}",
            out.display()
        );
    }
    assert!(
        stdout.contains("every judged target met"),
        "no verdict in:\n{stdout}"
    );
}

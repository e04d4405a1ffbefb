use std::path::Path;
use std::process::Command;

/// The Kubernetes manifests pass `kubernetes-validate --strict` offline,
/// and their shutdown timing outlasts the drain; the systemd units pass
/// `systemd-analyze verify` (`deploy/check`).
#[test]
fn the_deployment_files_check_out() {
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/check");
    let output = Command::new("bash")
        .arg(check)
        .env("PORTICO_HOST", env!("CARGO_BIN_EXE_host"))
        .output()
        .expect("run deploy/check");
    assert!(
        output.status.success(),
        "deploy/check failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

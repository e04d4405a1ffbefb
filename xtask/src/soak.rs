//! `cargo xtask soak [--minutes N] [SOAK FLAGS...]`: installs what the soak
//! runs (Debian's wrk, redis-server, redis-tools, nats-server and
//! openssl), builds every plugin (the Go echo, which reloads alternate
//! with Rust's, among them), the host and the benchmark in release mode,
//! and runs `portico-bench soak` on them, its out folder `target/soak`.
//! Fails if the soak missed a target. See RELIABILITY.md.

use std::process::Command;

use anyhow::Result;

use super::{
    Languages, build_plugins, build_release_host_and_bench, install_debian_packages, run,
    target_dir, workspace_root,
};

/// Debian's packages with the programs the soak runs.
const SOAK_PACKAGES: &[&str] = &[
    "wrk",
    "redis-server",
    "redis-tools",
    "nats-server",
    "openssl",
];

/// Sets up, builds, and runs the soak with `soak_args` (`--minutes N`,
/// and any other flag of `portico-bench soak`).
pub fn soak(soak_args: &[String]) -> Result<()> {
    install_debian_packages(SOAK_PACKAGES)?;
    let plugins = build_plugins(Languages::All)?;
    let root = workspace_root();
    let release = build_release_host_and_bench(&root)?;
    run(Command::new(release.join("portico-bench"))
        .current_dir(&root)
        .arg("soak")
        .arg("--host")
        .arg(release.join("host"))
        .arg("--plugin-dir")
        .arg(plugins)
        .arg("--out")
        .arg(target_dir(&root).join("soak"))
        .args(soak_args))
}

//! `cargo xtask fuzz`: the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer,
//! the nightly toolchain), one for every parser a stranger controls.
//!
//! - `cargo xtask fuzz [TARGET] [--seconds N]` runs each target (or one)
//!   for N seconds (default 60), adding what it finds new to the target's
//!   corpus in `fuzz/corpus/TARGET` (commit it) and any crash to
//!   `fuzz/artifacts/TARGET` (turn it into a regression test).
//! - `cargo xtask fuzz --smoke` builds every target and runs it over its
//!   corpus only, once: what CI runs, so that the targets keep building and
//!   every input that ever mattered keeps passing.
//!
//! After a run, each corpus is minimised (libFuzzer's `-merge`): only the
//! inputs that add coverage stay, so the committed corpora stay small.
//!
//! The targets are built without a sanitizer (`-s none`): the host's code
//! is safe Rust, wasmtime runs its own fuzzers under sanitizers, and one
//! build without them serves the smoke test and the long runs alike, at
//! about twice the speed.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::{run, target_dir, workspace_root};

/// A fuzz target, and the largest input it is given (libFuzzer's default,
/// 4 KiB, is too small for a plugin file).
struct Target {
    name: &'static str,
    max_len: Option<usize>,
}

const TARGETS: &[Target] = &[
    Target {
        name: "proxy_header",
        max_len: None,
    },
    Target {
        name: "config",
        max_len: Some(16 * 1024),
    },
    Target {
        name: "plugin",
        max_len: Some(128 * 1024),
    },
    Target {
        name: "untrusted",
        max_len: Some(16 * 1024),
    },
    Target {
        name: "wit_arguments",
        max_len: Some(64 * 1024),
    },
    Target {
        name: "redis_resp",
        max_len: None,
    },
    Target {
        name: "http_head",
        max_len: Some(32 * 1024),
    },
];

/// The cargo-fuzz release this task installs when the machine lacks one.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// rustup's cargo, which takes `+nightly` (the `cargo` that runs xtask, in
/// `$CARGO`, is the stable toolchain's own, which does not).
fn rustup_cargo() -> Command {
    Command::new("cargo")
}

pub fn fuzz(args: &[String]) -> Result<()> {
    let mut seconds = 60;
    let mut smoke = false;
    let mut only = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--seconds" => {
                let value = args.next().context("--seconds needs a number")?;
                seconds = value
                    .parse()
                    .with_context(|| format!("--seconds {value:?} is not a number"))?;
            }
            name if TARGETS.iter().any(|target| target.name == name) => only = Some(name),
            other => {
                let names: Vec<_> = TARGETS.iter().map(|target| target.name).collect();
                bail!(
                    "unknown fuzz target {other:?}: the targets are {}",
                    names.join(", ")
                );
            }
        }
    }
    install_cargo_fuzz()?;
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    let builds = target_dir(&root).join("fuzz");
    run(rustup_cargo()
        .current_dir(&fuzz_dir)
        .args([
            "+nightly",
            "fuzz",
            "build",
            "--sanitizer",
            "none",
            "--target-dir",
        ])
        .arg(&builds))?;
    let binaries = builds
        .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .join("release");
    for target in TARGETS
        .iter()
        .filter(|t| only.is_none_or(|name| name == t.name))
    {
        let started = Instant::now();
        let mut command = Command::new(binaries.join(target.name));
        command.current_dir(&fuzz_dir);
        match smoke {
            true => command.arg("-runs=0"),
            false => libfuzzer_flags(&mut command, &fuzz_dir, target, seconds),
        };
        let corpus = fuzz_dir.join("corpus").join(target.name);
        std::fs::create_dir_all(&corpus)?;
        run(command.arg(&corpus)).with_context(|| format!("fuzz target {}", target.name))?;
        if !smoke {
            minimize(&binaries.join(target.name), &corpus, target)?;
        }
        println!(
            "fuzz {}: passed in {:.0?}, corpus of {} inputs",
            target.name,
            started.elapsed(),
            std::fs::read_dir(&corpus)?.count()
        );
    }
    Ok(())
}

/// The flags of a long run: its time, dictionary, input size, where a
/// crash goes, and room for the wasm-compiling targets.
fn libfuzzer_flags<'a>(
    command: &'a mut Command,
    fuzz_dir: &Path,
    target: &Target,
    seconds: u64,
) -> &'a mut Command {
    let artifacts = fuzz_dir.join("artifacts").join(target.name);
    let _ = std::fs::create_dir_all(&artifacts);
    command
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-rss_limit_mb=4096");
    let dictionary = fuzz_dir.join("dicts").join(format!("{}.dict", target.name));
    if dictionary.exists() {
        command.arg(format!("-dict={}", dictionary.display()));
    }
    if let Some(max_len) = target.max_len {
        command.arg(format!("-max_len={max_len}"));
    }
    command
}

/// Replaces `corpus` with its inputs that add coverage.
fn minimize(binary: &Path, corpus: &Path, target: &Target) -> Result<()> {
    let merged = corpus.with_extension("merging");
    let _ = std::fs::remove_dir_all(&merged);
    std::fs::create_dir_all(&merged)?;
    let mut command = Command::new(binary);
    command.arg("-merge=1").arg("-rss_limit_mb=4096");
    if let Some(max_len) = target.max_len {
        command.arg(format!("-max_len={max_len}"));
    }
    run(command
        .arg(&merged)
        .arg(corpus)
        .stderr(std::process::Stdio::null()))
    .with_context(|| format!("minimising the corpus of {}", target.name))?;
    std::fs::remove_dir_all(corpus)?;
    std::fs::rename(&merged, corpus)?;
    Ok(())
}

/// Installs cargo-fuzz from crates.io if the machine lacks it, and checks
/// that the nightly toolchain (which libFuzzer's instrumentation needs) is
/// there.
fn install_cargo_fuzz() -> Result<()> {
    let has = |args: &[&str]| {
        rustup_cargo()
            .args(args)
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if !has(&["+nightly", "--version"]) {
        eprintln!("xtask: installing the nightly toolchain with rustup");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("the fuzz targets need the nightly toolchain")?;
    }
    if !has(&["fuzz", "--version"]) {
        eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io");
        run(rustup_cargo().args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }
    Ok(())
}

//! `host new`: a project in every language, written into a folder outside
//! the repository, built with its own `build.sh` and the language's tools
//! (the pinned ones `cargo xtask test` installs), and served.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::readme::{FIXED_PORTS, Shell};
use crate::util::{Host, host_command, pattern, send_and_collect};

/// Every language `host new` knows.
const LANGUAGES: &[&str] = &["rust", "command", "c", "go", "python", "javascript"];

/// A folder of the system's temporary folder, outside the repository,
/// removed when dropped.
pub struct Outside(pub PathBuf);

impl Outside {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("portico-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Outside(dir)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// PATH with the toolchains `cargo xtask test` installed
/// (`PORTICO_TOOL_PATH`) first.
pub fn tool_path() -> std::ffi::OsString {
    let tools = std::env::var_os("PORTICO_TOOL_PATH").unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_default();
    // An empty entry would mean the current folder.
    let dirs: Vec<PathBuf> = std::env::split_paths(&tools)
        .chain(std::env::split_paths(&path))
        .filter(|dir| !dir.as_os_str().is_empty())
        .collect();
    std::env::join_paths(dirs).unwrap()
}

/// Where a Rust project's build goes: one folder for every run, so that
/// the SDK's dependencies are compiled once.
pub fn rust_target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/new-projects")
}

/// Runs `command` in `dir` (a Rust project's build into
/// [`rust_target_dir`]); panics with its output unless it succeeds.
pub fn run_in(dir: &Path, command: &mut Command) -> Output {
    let output = command
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", rust_target_dir())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `host new` writes, for every language, a project that builds outside
/// the repository: its README's commands run as written (`./build.sh`,
/// then `host --plugin NAME.wasm`), and the plugin echoes byte for byte,
/// to several clients at once.
#[test]
fn every_language_s_new_project_builds_and_echoes() {
    let outside = Outside::new("new");
    for language in LANGUAGES {
        let name = format!("hello-{language}");
        let output = run_in(
            &outside.0,
            host_command().args(["new", "--lang", language, &name]),
        );
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(said.contains("./build.sh"), "{language}: {said}");
        let project = outside.0.join(&name);
        let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
        {
            let _fixed_ports = FIXED_PORTS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut shell = Shell::new(&outside.0, true);
            shell.cwd = project.clone();
            shell.run_readme(&readme);
        }
        let host = Host::start_file(&project.join(format!("{name}.wasm")), &[]);
        let clients: Vec<_> = (0..3u8)
            .map(|seed| {
                let stream = host.connect();
                std::thread::spawn(move || {
                    let payload = pattern(256 * 1024 + seed as usize, seed);
                    send_and_collect(stream, payload.clone()) == payload
                })
            })
            .collect();
        for client in clients {
            assert!(client.join().unwrap(), "{language}: an echo differed");
        }
        host.wait_for_lines(
            &["closed", "outcome=\"ok\"", &format!("service=\"{name}\"")],
            3,
        );
    }
}

/// What `host new` refuses: a name that cannot be a file and a crate, a
/// folder that exists, a language it does not know; one line each, and
/// nothing written.
#[test]
fn host_new_refuses_what_it_cannot_write() {
    let outside = Outside::new("new-refused");
    std::fs::create_dir(outside.0.join("taken")).unwrap();
    for (args, expected) in [
        (
            &["new", "--lang", "rust", "Bad Name"][..],
            "cannot name a plugin",
        ),
        (&["new", "--lang", "rust", "taken"], "already exists"),
        (&["new", "--lang", "cobol", "x"], "invalid value 'cobol'"),
    ] {
        let output = host_command()
            .current_dir(&outside.0)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(&outside.0)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(left, ["taken"]);
}

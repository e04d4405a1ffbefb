//! The README's commands, and those of every project `host new` writes,
//! run as written.
//!
//! A [`Shell`] reads the ```sh blocks of a README and runs each line as a
//! person would, in order: `cd DIR && ...` moves it, a line that starts a
//! host runs in the background until the next one (the test talks to it
//! at the address it prints), `nc ADDR PORT` is typed a line into and must
//! echo it, and any other line must succeed. Lines that install a tool are
//! not run (the tools are installed by `cargo xtask test`), but must name
//! the very versions xtask pins; `cargo xtask` lines are the test command
//! itself and the long runs whose short forms CI runs ([`CARGO_XTASK`]).
//! A README line of any other kind fails the test until it is taught.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::new::{Outside, run_in, tool_path};
use crate::util::TIMEOUT;

/// The README's hosts listen on fixed ports (9000 above all): one README
/// runs at a time.
pub static FIXED_PORTS: Mutex<()> = Mutex::new(());

/// The `cargo xtask` lines a README may show, and why the test does not
/// run them.
const CARGO_XTASK: &[(&str, &str)] = &[
    (
        "cargo xtask test",
        "the test command: CI runs it, and it runs this test",
    ),
    (
        "cargo xtask run",
        "a release build, then the host and plugin of \
         `target/release/host --plugin target/wasm32-wasip2/release/echo.wasm`, which runs here",
    ),
    (
        "cargo xtask bench",
        "minutes long; its smoke test runs in `cargo xtask test`",
    ),
    (
        "cargo xtask fuzz",
        "minutes long; CI runs `cargo xtask fuzz --smoke`",
    ),
    (
        "cargo xtask soak",
        "minutes long; a one-minute soak runs in `cargo xtask test`",
    ),
];

/// Commands that install a tool.
const INSTALLERS: &[&str] = &[
    "apt-get ",
    "pip ",
    "npm ",
    "python3 -m venv",
    "cargo install",
];

/// Runs README lines in order, as a person at a terminal would.
pub struct Shell {
    pub cwd: PathBuf,
    /// PATH: the toolchains `cargo xtask test` installed, then the usual.
    path: OsString,
    /// The host started last, still serving.
    serving: Option<Serving>,
}

struct Serving {
    child: Child,
    addr: SocketAddr,
    /// Kept open: the host may print more, and must not meet a closed pipe.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        // SIGTERM drains and exits cleanly, as Ctrl-C would.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Shell {
    /// A shell in `cwd` that finds `host` on PATH (as a template's README
    /// writes it) as the binary under test, and the toolchains `cargo xtask
    /// test` installed if `with_tools` (else the README must say how).
    pub fn new(cwd: &Path, with_tools: bool) -> Shell {
        let bin = cwd.join(".bin");
        std::fs::create_dir_all(&bin).unwrap();
        let _ = std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_host"), bin.join("host"));
        let mut dirs = vec![bin];
        let path = match with_tools {
            true => tool_path(),
            false => std::env::var_os("PATH").unwrap_or_default(),
        };
        dirs.extend(std::env::split_paths(&path));
        Shell {
            cwd: cwd.to_path_buf(),
            path: std::env::join_paths(dirs).unwrap(),
            serving: None,
        }
    }

    /// Runs every line of every ```sh block of `readme`.
    pub fn run_readme(&mut self, readme: &str) {
        for line in sh_lines(readme) {
            self.run_line(&line);
        }
        self.serving = None;
    }

    fn run_line(&mut self, line: &str) {
        if let Some((dir, rest)) = line
            .strip_prefix("cd ")
            .and_then(|line| line.split_once(" && "))
        {
            self.cwd = self.cwd.join(dir);
            return self.run_line(rest);
        }
        if line.starts_with("cargo xtask") {
            assert!(
                CARGO_XTASK.iter().any(|(known, _)| line.starts_with(known)),
                "{line:?}: a `cargo xtask` line this test does not know"
            );
        } else if INSTALLERS
            .iter()
            .any(|installer| line.starts_with(installer))
        {
            assert_pinned(line);
        } else if line.starts_with("export PATH=") {
            let output = run_in(
                &self.cwd,
                &mut self.sh(&format!("{line} && printf %s \"$PATH\"")),
            );
            self.path = OsString::from(String::from_utf8(output.stdout).unwrap());
        } else if let Some(addr) = line.strip_prefix("nc ") {
            self.type_into_nc(line, addr);
        } else if is_host_serving(line) {
            self.serving = None;
            self.serving = Some(self.serve(line));
        } else {
            run_in(&self.cwd, self.sh(line).stdout(Stdio::piped()));
        }
    }

    fn sh(&self, line: &str) -> Command {
        let mut command = Command::new("sh");
        command
            .args(["-c", line])
            .current_dir(&self.cwd)
            .env("PATH", &self.path)
            .env("PORTICO_LOG", "info")
            .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"));
        command
    }

    /// Starts the host `line` runs, waits until it listens, and checks
    /// that it accepts a connection.
    fn serve(&self, line: &str) -> Serving {
        let mut child = self
            .sh(&format!("exec {line}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("{line:?} printed {first:?}"))
            .parse()
            .unwrap();
        TcpStream::connect_timeout(&addr, TIMEOUT)
            .unwrap_or_else(|error| panic!("{line:?}: cannot connect to {addr}: {error}"));
        Serving {
            child,
            addr,
            _stdout: stdout,
        }
    }

    /// Runs `nc ADDR PORT` as written, types a line into it, and expects
    /// the host serving there to echo it.
    fn type_into_nc(&self, line: &str, addr: &str) {
        let serving = self
            .serving
            .as_ref()
            .unwrap_or_else(|| panic!("{line:?}: no host is serving"));
        assert_eq!(
            addr.replace(' ', ":"),
            serving.addr.to_string(),
            "{line:?}: the host serves elsewhere"
        );
        let mut nc = self
            .sh(line)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        nc.stdin
            .as_mut()
            .unwrap()
            .write_all(b"hello portico\n")
            .unwrap();
        let mut stdout = nc.stdout.take().unwrap();
        let mut echoed = [0; 14];
        let read = std::thread::spawn(move || stdout.read_exact(&mut echoed).map(|()| echoed));
        std::thread::sleep(Duration::from_millis(100));
        let waited = std::time::Instant::now();
        while !read.is_finished() && waited.elapsed() < TIMEOUT {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nc.kill();
        let _ = nc.wait();
        let echoed = read.join().unwrap().expect("nc printed the echo");
        assert_eq!(&echoed, b"hello portico\n", "{line:?}");
    }
}

/// The lines of the ```sh blocks of `readme`, without their comments.
fn sh_lines(readme: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            code if in_sh && !code.is_empty() => {
                let code = code.split(" # ").next().unwrap_or(code).trim();
                if !code.starts_with('#') {
                    lines.push(code.to_string());
                }
            }
            _ => {}
        }
    }
    lines
}

/// Whether `line` starts a host that serves (not `host new`).
fn is_host_serving(line: &str) -> bool {
    let program = line.split(' ').next().unwrap_or_default();
    (program == "host" || program.ends_with("/host")) && !line.contains(" new ")
}

/// An install line names the packages xtask installs, with the versions
/// it pins.
fn assert_pinned(line: &str) {
    let xtask = include_str!("../../xtask/src/main.rs");
    if let Some(packages) = line.strip_prefix("apt-get install ") {
        for package in packages.split_whitespace() {
            assert!(
                xtask.contains(&format!("\"{package}\"")),
                "{line:?}: xtask does not install {package}"
            );
        }
    }
    for word in line.split_whitespace() {
        if let Some((package, version)) = word.split_once("==").or_else(|| {
            word.rsplit_once('@')
                .filter(|(package, _)| !package.is_empty())
        }) {
            let pinned = match word.contains("==") {
                true => format!("\"{package}=={version}\""),
                false => format!("\"{package}@{version}\""),
            };
            assert!(
                xtask.contains(&pinned),
                "{line:?}: xtask does not pin {pinned}"
            );
        }
    }
}

/// The README's commands, run as written from a folder laid out as a
/// checkout: `target/release/host` is the host these tests run (built
/// in the test profile from the same source), `target/wasm32-wasip2` and
/// `plugins/` are this checkout's, and so are the toolchains under
/// `target/toolchains`, which the README puts on PATH itself.
#[test]
fn the_readme_s_commands_run_as_written() {
    let _fixed_ports = FIXED_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let checkout = Outside::new("readme");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = checkout.0.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    let link = |from: &Path, to: &Path| std::os::unix::fs::symlink(from, to).unwrap();
    link(
        Path::new(env!("CARGO_BIN_EXE_host")),
        &target.join("release/host"),
    );
    link(
        crate::util::plugin("echo")
            .parent()
            .unwrap()
            .parent()
            .unwrap(),
        &target.join("wasm32-wasip2"),
    );
    link(&root.join("plugins"), &checkout.0.join("plugins"));
    let toolchains = std::env::var_os("PORTICO_TOOL_PATH").expect("run by cargo xtask test");
    link(
        Path::new(&toolchains).parent().unwrap(),
        &target.join("toolchains"),
    );
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        sh_lines(&readme).len() > 10,
        "the README's commands were not found"
    );
    Shell::new(&checkout.0, false).run_readme(&readme);
}

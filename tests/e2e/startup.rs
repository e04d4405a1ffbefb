use std::path::Path;
use std::process::Output;

use std::io::{Read, Write};

use crate::util::{Host, host_command, plugin};

/// Runs the host with `args` and expects it to refuse to start: exit
/// status 2 and exactly one line on stderr, which contains each of
/// `expected`; returns what it wrote to stderr.
pub(crate) fn assert_refused<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    args: &[S],
    expected: &[&str],
) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = host_command()
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("run the host");
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert_eq!(
        status.code(),
        Some(2),
        "{args:?}: exit status; stderr: {stderr}"
    );
    assert!(
        stdout.is_empty(),
        "nothing on stdout: {}",
        String::from_utf8_lossy(&stdout)
    );
    let lines: Vec<_> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("error:"), "{stderr}");
    assert!(
        !lines[0].chars().any(char::is_control),
        "a control character in: {stderr:?}"
    );
    for part in expected {
        assert!(lines[0].contains(part), "{part:?} missing from: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn refuse_plugin(path: &Path, expected: &[&str]) {
    let name = path.display().to_string();
    let mut parts = vec![name.as_str()];
    parts.extend_from_slice(expected);
    assert_refused(&["--plugin".as_ref(), path.as_os_str()], &parts);
}

/// A scratch file for one test, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("portico-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn missing_plugin_file() {
    refuse_plugin(
        Path::new("/nonexistent/echo.wasm"),
        &["cannot read plugin", "No such file"],
    );
}

/// A source file given as the plugin is told to build it first, and how.
#[test]
fn plugin_that_is_a_source_file() {
    let file = Scratch::new("app.py", b"import portico\n\ndef run(conn):\n    pass\n");
    refuse_plugin(
        &file.0,
        &[
            "is not a WebAssembly file",
            "it is text, a source file perhaps. Build it first",
            "`host new --lang LANG NAME`",
        ],
    );
}

/// A native library or program (here, the host itself) is told to build
/// for WebAssembly.
#[test]
fn plugin_that_is_a_native_program() {
    refuse_plugin(
        Path::new(env!("CARGO_BIN_EXE_host")),
        &[
            "is not a WebAssembly file",
            "native library or program",
            "--target wasm32-wasip2",
        ],
    );
}

/// A `run` of another shape than the contract's: the message gives the
/// contract's signature and the contract the plugin was built against.
#[test]
fn plugin_whose_run_has_the_wrong_shape() {
    let wit = "package portico:plugin@0.2.0;
        interface types { record connection-info { id: u64 } }
        world handler {
            use types.{connection-info};
            export run: func(info: connection-info) -> result<_, string>;
        }";
    let wat = r#"(module
        (memory (export "memory") 1)
        (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
        (func (export "run") (param i64) (result i32) (i32.const 0)))"#;
    let file = Scratch::new("wrong-run.wasm", &component_from(wit, wat));
    refuse_plugin(
        &file.0,
        &[
            "exports `run` with the wrong signature",
            "the contract's is `run: func(info: connection-info, input: borrow<input-stream>, \
             output: borrow<output-stream>) -> result<_, string>`",
            "it was built against portico:plugin@0.2.0",
            "host new",
        ],
    );
}

/// The component `wit-component` makes of the module `wat` for the world
/// `handler` of `wit`.
fn component_from(wit: &str, wat: &str) -> Vec<u8> {
    let mut module = wat::parse_str(wat).unwrap();
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("wrong.wit", wit).unwrap();
    let world = resolve.select_world(&[package], Some("handler")).unwrap();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .encode()
        .unwrap()
}

#[test]
fn plugin_that_is_a_core_module() {
    let file = Scratch::new("core.wasm", b"\0asm\x01\0\0\0");
    refuse_plugin(
        &file.0,
        &[
            "core WebAssembly module, not a component",
            "wasm32-wasip2",
            "wasm-tools component new",
            "wasi_snapshot_preview1.reactor.wasm",
        ],
    );
}

#[test]
fn plugin_that_is_truncated() {
    let echo = std::fs::read(plugin("echo")).unwrap();
    let file = Scratch::new("truncated.wasm", &echo[..echo.len() / 2]);
    refuse_plugin(&file.0, &["is not a valid WebAssembly component"]);
}

/// A plugin whose names hold control characters: wasmparser's error
/// quotes the name, and the host's line must not carry the escape
/// sequence to the operator's terminal (found by the `plugin` fuzz
/// target).
#[test]
fn plugin_whose_names_hold_control_characters() {
    let mut echo = std::fs::read(plugin("echo")).unwrap();
    let at = echo
        .windows(b"blocking-flush".len())
        .position(|name| name == b"blocking-flush")
        .expect("the echo imports blocking-flush");
    echo[at + 2..at + 6].copy_from_slice(b"\x1b[2J");
    let file = Scratch::new("control-name.wasm", &echo);
    refuse_plugin(
        &file.0,
        &[
            "is not a valid WebAssembly component",
            "bl\\u{1b}[2Jng-flush",
        ],
    );
}

#[test]
fn plugin_without_run_export() {
    refuse_plugin(
        &plugin("no-run"),
        &[
            "it exports nothing",
            "`run: func(info: connection-info",
            "`wasi:cli/run@0.2.x` (a WASI command",
        ],
    );
}

#[test]
fn plugin_with_an_import_the_host_lacks() {
    refuse_plugin(
        &plugin("bad-import"),
        &[
            "imports something this host does not provide",
            "launch-missiles",
            "it provides wasi:io, wasi:clocks",
        ],
    );
}

#[test]
fn plugin_whose_memory_exceeds_max_memory() {
    let echo = plugin("echo");
    assert_refused(
        &[
            "--plugin".as_ref(),
            echo.as_os_str(),
            "--max-memory".as_ref(),
            "1".as_ref(),
        ],
        &[
            "does not fit this host's limits",
            "raise --max-memory",
            "minimum byte size",
        ],
    );
}

#[test]
fn plugin_importing_a_version_the_host_lacks() {
    refuse_plugin(
        &plugin("old-config"),
        &[
            "`wasi:config/store@0.1.0`",
            "this host provides wasi:config 0.2.0-rc.1 and 0.2.0-draft-2024-09-27",
        ],
    );
}

/// A wrong flag gets clap's usual answer: an `error:` line naming the
/// flag and the problem (then a pointer to `--help`), exit status 2.
fn assert_flag_refused(args: &[&str], expected: &[&str]) {
    let Output { status, stderr, .. } = host_command()
        .arg("--plugin")
        .arg(plugin("echo"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("error:"), "{stderr}");
    for part in expected {
        assert!(first.contains(part), "{part:?} missing from: {stderr}");
    }
}

#[test]
fn bad_listen_address() {
    assert_flag_refused(
        &["--listen", "not-an-address"],
        &["--listen", "not-an-address"],
    );
}

#[test]
fn bad_front_door_flags() {
    assert_flag_refused(
        &["--proxy-protocol-from", "proxies"],
        &["--proxy-protocol-from", "\"proxies\" is not a network"],
    );
    assert_flag_refused(&["--tls-cert", "a.pem"], &["--tls-key"]);
}

#[test]
fn bad_setting_flag() {
    // --config is --setting's old name, kept as an alias.
    for flag in ["--setting", "--config"] {
        assert_flag_refused(&[flag, "no-equals-sign"], &["--setting", "KEY=VALUE"]);
    }
}

/// A port another process holds is one error line naming the address.
#[test]
fn listen_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let Output { status, stderr, .. } = host_command()
        .arg("--plugin")
        .arg(plugin("echo"))
        .args(["--listen", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn help_documents_every_flag() {
    let output = host_command().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in ["--plugin", "--listen", "--config", "127.0.0.1:9000"] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

/// SIGTERM and SIGINT stop the host with status 0.
#[test]
fn signals_stop_the_host_cleanly() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let host = Host::start("echo", &[]);
        let status = host.stop_with(signal);
        assert_eq!(status.code(), Some(0), "after signal {signal}");
    }
}

/// How a host run on a corrupted plugin ended.
enum Verdict {
    /// Refused: exit status 2 and this stderr.
    Refused(String),
    /// The corruption left a valid component, and the host listened.
    Listened,
}

/// Runs the host on `path` until it exits or listens.
fn verdict(path: &Path) -> Verdict {
    let mut child = host_command()
        .arg("--plugin")
        .arg(path)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (listening, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = listening.send(line);
    });
    let deadline = std::time::Instant::now() + crate::util::TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert_eq!(
                status.code(),
                Some(2),
                "{}: {status}, stderr: {stderr}",
                path.display()
            );
            return Verdict::Refused(stderr);
        }
        if heard
            .try_recv()
            .is_ok_and(|line| line.starts_with("listening on"))
        {
            child.kill().unwrap();
            child.wait().unwrap();
            return Verdict::Listened;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: neither refused nor listening",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Truncated, bit-flipped and random plugin files: each is refused with
/// one error line and exit status 2 (or, if a flip left it valid, served),
/// and never panics the host.
#[test]
fn corrupted_plugin_corpus() {
    let echo = std::fs::read(plugin("echo")).unwrap();
    let mut seed: u64 = 0x5eed;
    let mut random = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let mut corpus: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [0, 3, 8, 9, 64, 1000, echo.len() / 3, echo.len() - 1] {
        corpus.push((format!("truncated-{cut}"), echo[..cut].to_vec()));
    }
    // Flips in the first 64 KiB hit headers, types and code; the rest of
    // the file is mostly debug info, where a flip changes nothing.
    for i in 0..16 {
        let mut flipped = echo.clone();
        for _ in 0..=i % 4 {
            let at = 8 + random() % (64 * 1024);
            flipped[at] ^= 1 << (random() % 8);
        }
        corpus.push((format!("flipped-{i}"), flipped));
    }
    for i in 0..4 {
        let mut noise: Vec<u8> = (0..4096).map(|_| random() as u8).collect();
        if i % 2 == 0 {
            noise[..8].copy_from_slice(b"\0asm\x0d\0\x01\0");
        }
        corpus.push((format!("random-{i}"), noise));
    }

    let (mut refused, mut listened) = (0, 0);
    for (name, bytes) in corpus {
        let file = Scratch::new(&format!("{name}.wasm"), &bytes);
        match verdict(&file.0) {
            Verdict::Refused(stderr) => {
                refused += 1;
                assert_eq!(
                    stderr.lines().count(),
                    1,
                    "{name}: one error line, got:\n{stderr}"
                );
                assert!(stderr.starts_with("error: plugin "), "{name}: {stderr}");
                assert!(!stderr.contains("panicked"), "{name}: {stderr}");
            }
            Verdict::Listened => listened += 1,
        }
    }
    println!("corrupted plugins: {refused} refused, {listened} still valid");
    assert!(refused >= 20, "most corruptions are refused ({refused})");
}

/// Each live connection costs the memory mappings the host's ceiling
/// counts: 2 when the plugin's little data is copied into its memory, more
/// when a large image (the Go echo's 900 KB) is mapped into it. And an
/// oversized `--max-connections` is served from a pool no larger than the
/// ceiling, rather than failing to reserve one.
#[test]
fn live_connections_cost_the_mappings_the_ceiling_counts() {
    const HELD: usize = 50;
    for (name, least, most) in [("echo", 1.8, 2.2), ("go-echo", 2.5, 4.2)] {
        let host = Host::start(name, &["--max-connections", "1000000"]);
        let before = host.mappings();
        let held: Vec<_> = (0..HELD)
            .map(|_| {
                let mut stream = host.connect();
                stream.write_all(b"x").unwrap();
                let mut back = [0; 1];
                stream.read_exact(&mut back).unwrap();
                assert_eq!(&back, b"x", "{name} echoed");
                stream
            })
            .collect();
        let per_connection = (host.mappings() - before) as f64 / HELD as f64;
        assert!(
            (least..=most).contains(&per_connection),
            "{name}: {per_connection} mappings per live connection, not {least} to {most}"
        );
        host.wait_for_log(&["does not fit, serving at most"]);
        drop(held);
    }
}

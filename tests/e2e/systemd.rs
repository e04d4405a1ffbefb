//! Under systemd: socket activation with the real `systemd-socket-activate`
//! (Debian's systemd package), which listens, and starts the host on the
//! first connection with the socket as fd 3 (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`); and readiness (`READY=1`, `STOPPING=1`) sent to
//! `NOTIFY_SOCKET`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::services::Scratch;
use crate::util::{TIMEOUT, free_addr, plugin, read_line};

/// `systemd-socket-activate` listening on `sockets` (address and
/// `FileDescriptorName`), set to start the host with `args`; its stderr
/// and the host's (the same file) collected.
struct Activator {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Activator {
    fn start(sockets: &[(SocketAddr, &str)], env: &[(&str, &str)], args: &[&str]) -> Activator {
        let mut command = Command::new("systemd-socket-activate");
        for (addr, _) in sockets {
            command.arg("--listen").arg(addr.to_string());
        }
        let names: Vec<&str> = sockets.iter().map(|(_, name)| *name).collect();
        command.arg(format!("--fdname={}", names.join(":")));
        for (name, value) in env {
            command.arg(format!("--setenv={name}={value}"));
        }
        let mut child = command
            .arg(env!("CARGO_BIN_EXE_host"))
            .args(args)
            .env("PORTICO_LOG", "info")
            .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate runs: cargo xtask test installs it");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let activator = Activator { child, log };
        for (addr, _) in sockets {
            activator.wait_for_log(&format!("Listening on {addr}"));
        }
        activator
    }

    fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = self.log.lock().unwrap().clone();
            if log.contains(text) {
                return log;
            }
            assert!(Instant::now() < deadline, "no {text:?} in:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `listening on ...` lines the host printed once started.
    fn listening_lines(&mut self, count: usize) -> Vec<String> {
        let mut stdout = BufReader::new(self.child.stdout.take().unwrap());
        (0..count)
            .map(|_| {
                let mut line = String::new();
                stdout.read_line(&mut line).unwrap();
                line.trim().to_string()
            })
            .collect()
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Activator {
    /// A test that fails midway leaves no host behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// One socket: the first client's connection starts the host, which
/// serves that very connection on the socket systemd passed (it binds
/// nothing: `--listen` is ignored), says READY=1 (and MAINPID, which an
/// upgrade changes) once it listens and STOPPING=1 when it drains, and
/// exits cleanly.
#[test]
fn one_activated_socket_is_served_and_readiness_is_notified() {
    let scratch = Scratch::new("systemd-one");
    let notify_path = scratch.0.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let addr = free_addr();
    let echo = plugin("echo");
    let mut activator = Activator::start(
        &[(addr, "echo")],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
        &[
            "--plugin",
            echo.to_str().unwrap(),
            "--listen",
            "127.0.0.1:1",
        ],
    );
    // The kernel holds this connection in the socket's queue until the
    // host, started because of it, accepts it.
    let mut first = connect(addr);
    first.write_all(b"first\n").unwrap();
    assert_eq!(
        activator.listening_lines(1),
        [format!("listening on {addr}")]
    );
    assert_eq!(read_line(&mut first), "first\n");
    let mut buffer = [0; 64];
    let ready = notify.recv(&mut buffer).unwrap();
    let main_pid = activator.child.id();
    assert_eq!(
        String::from_utf8_lossy(&buffer[..ready]),
        format!("READY=1\nMAINPID={main_pid}\n")
    );

    let mut second = connect(addr);
    second.write_all(b"second\n").unwrap();
    assert_eq!(read_line(&mut second), "second\n");
    drop((first, second));
    activator.wait_for_log("closed");
    let status = activator.terminate();
    let stopping = notify.recv(&mut buffer).unwrap();
    assert_eq!(&buffer[..stopping], b"STOPPING=1\n");
    assert!(status.success(), "{status}");
}

/// Two named sockets and a config file of two services: each service
/// serves the socket of its name (`FileDescriptorName`), not the address
/// in the file.
#[test]
fn named_sockets_go_to_the_services_of_their_names() {
    let scratch = Scratch::new("systemd-named");
    let config = scratch.config(
        r#"
        [services.echo]
        plugin = "{echo}"
        listen = ["127.0.0.1:1"]
        [services.greeter]
        plugin = "{greeter}"
        listen = ["127.0.0.1:2"]
        [services.greeter.settings]
        banner = "activated"
        "#,
    );
    let (echo, greeter) = (free_addr(), free_addr());
    let mut activator = Activator::start(
        &[(echo, "echo"), (greeter, "greeter")],
        &[],
        &["-c", config.to_str().unwrap()],
    );
    let mut greeted = connect(greeter);
    let mut lines = activator.listening_lines(2);
    lines.sort();
    let mut expected = vec![
        format!("listening on {echo} for service echo"),
        format!("listening on {greeter} for service greeter"),
    ];
    expected.sort();
    assert_eq!(lines, expected);
    assert_eq!(read_line(&mut greeted), "activated\n");
    let mut echoed = connect(echo);
    echoed.write_all(b"ping\n").unwrap();
    assert_eq!(read_line(&mut echoed), "ping\n");
    drop((greeted, echoed));
    assert!(activator.terminate().success());
}

/// A socket whose name no service has is one error line, and the host
/// does not start.
#[test]
fn a_socket_named_for_no_service_is_refused() {
    let scratch = Scratch::new("systemd-unnamed");
    let config = scratch.config(
        r#"
        [services.echo]
        plugin = "{echo}"
        listen = ["127.0.0.1:0"]
        [services.other]
        plugin = "{echo}"
        listen = ["127.0.0.1:0"]
        "#,
    );
    let addr = free_addr();
    let mut activator = Activator::start(&[(addr, "nope")], &[], &["-c", config.to_str().unwrap()]);
    let mut client = connect(addr);
    let log = activator.wait_for_log("error:");
    let status = activator.child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "{log}");
    let error: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(error.len(), 1, "{log}");
    assert!(
        error[0].contains(r#"systemd passed a socket named "nope", but no service has that name"#)
            && error[0].contains("services: echo, other"),
        "{log}"
    );
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
}

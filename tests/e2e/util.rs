//! Starting the host, finding plugins, and talking to them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single read or wait in a test may take before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The `.wasm` file of a plugin crate (`plugins/NAME` or
/// `tests/plugins/NAME`), as built by `cargo xtask test`.
pub fn plugin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("PORTICO_PLUGIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"),
    };
    // A library's file name has `_` for `-`; a program's (a WASI command)
    // keeps the crate's name.
    let library = dir.join(format!("{}.wasm", name.replace('-', "_")));
    let path = match library.is_file() {
        true => library,
        false => dir.join(format!("{name}.wasm")),
    };
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo xtask test`, which builds the plugins",
        path.display()
    );
    path
}

/// The `host` binary cargo built for these tests, logging at `info`, with
/// its compile cache in the target folder.
pub fn host_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_host"));
    command
        .env("PORTICO_LOG", "info")
        .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"));
    command
}

/// A free loopback address, for a server the test starts itself.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// A real server the tests talk to (redis-server, nats-server), from
/// Debian's packages, on a free loopback port; killed when dropped.
pub struct Peer {
    child: Child,
    pub addr: SocketAddr,
    program: String,
    args: Vec<String>,
}

impl Peer {
    /// Starts `program` with the arguments `args` gives for a port, and
    /// waits until it listens.
    pub fn start(program: &str, args: impl FnOnce(&str) -> Vec<String>) -> Peer {
        let addr = free_addr();
        let args = args(&addr.port().to_string());
        let child = Peer::spawn(program, &args, addr);
        Peer {
            child,
            addr,
            program: program.to_string(),
            args,
        }
    }

    fn spawn(program: &str, args: &[String], addr: SocketAddr) -> Child {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "{program} (from Debian's packages; `cargo xtask test` installs it): {error}"
                )
            });
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(started.elapsed() < TIMEOUT, "{program} did not start");
            thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again, on the same port and with the same
    /// arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Peer::spawn(&self.program, &self.args, self.addr);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running host, stopped (SIGKILL) when dropped.
pub struct Host {
    child: Child,
    /// The first address it listens on.
    pub addr: SocketAddr,
    /// Every address it listens on, with the service's name.
    pub listening: Vec<(String, SocketAddr)>,
    /// The admin endpoint's address, if it has one.
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
}

impl Host {
    /// Starts `host --plugin <name> --listen 127.0.0.1:0 <args>` and waits
    /// until it listens.
    pub fn start(plugin_name: &str, args: &[&str]) -> Host {
        Host::start_file(&plugin(plugin_name), args)
    }

    /// Starts `host --plugin <path> --listen 127.0.0.1:0 <args>` and waits
    /// until it listens.
    pub fn start_file(plugin: &std::path::Path, args: &[&str]) -> Host {
        let mut command = host_command();
        command
            .arg("--plugin")
            .arg(plugin)
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        let admin = args.contains(&"--admin");
        Host::spawn(command, 1, admin)
    }

    /// Starts `host --config-file <path> <args>` and waits until it listens
    /// on `listeners` addresses (and on its admin endpoint, if `admin`).
    pub fn start_config(
        path: &std::path::Path,
        args: &[&str],
        listeners: usize,
        admin: bool,
    ) -> Host {
        let mut command = host_command();
        command.arg("--config-file").arg(path).args(args);
        Host::spawn(command, listeners, admin)
    }

    fn spawn(mut command: Command, listeners: usize, admin: bool) -> Host {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the host");

        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });

        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut next_line = || {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read the host's stdout");
            line.trim().to_string()
        };
        let mut listening = Vec::new();
        for _ in 0..listeners {
            let line = next_line();
            let rest = line
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("host printed {line:?}, log: {}", log.lock().unwrap()));
            let (addr, service) = match rest.split_once(" for service ") {
                Some((addr, service)) => (addr, service.to_string()),
                None => (rest, String::new()),
            };
            listening.push((service, addr.parse().expect("a socket address")));
        }
        let admin = admin.then(|| {
            let line = next_line();
            line.strip_prefix("admin on ")
                .unwrap_or_else(|| panic!("host printed {line:?}"))
                .parse()
                .expect("a socket address")
        });
        Host {
            child,
            addr: listening[0].1,
            listening,
            admin,
            log,
        }
    }

    /// The host's process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The first address service `name` listens on.
    pub fn service(&self, name: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|(service, _)| service == name)
            .map(|(_, addr)| *addr)
            .unwrap_or_else(|| panic!("no service {name} in {:?}", self.listening))
    }

    /// The value of metric `series` (name and labels, as the exposition
    /// writes them) on the admin endpoint.
    pub fn metric(&self, series: &str) -> f64 {
        let mut body = String::new();
        ureq::get(&self.admin_url("/metrics"))
            .call()
            .expect("the admin endpoint answers")
            .body_mut()
            .as_reader()
            .read_to_string(&mut body)
            .unwrap();
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
    }

    /// Waits until metric `series` reads `value`.
    pub fn wait_for_metric(&self, series: &str, value: f64) {
        let deadline = Instant::now() + TIMEOUT;
        while self.metric(series) != value {
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {}, not {value}",
                self.metric(series)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The admin endpoint's URL for `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("an admin endpoint"))
    }

    /// A new client connection, with [`TIMEOUT`] on reads and writes.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect to the host");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream
    }

    /// Everything the host has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains every one of `parts`; returns it.
    pub fn wait_for_log(&self, parts: &[&str]) -> String {
        self.wait_for_lines(parts, 1).swap_remove(0)
    }

    /// Waits until `count` log lines contain every one of `parts`; returns
    /// them.
    pub fn wait_for_lines(&self, parts: &[&str], count: usize) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let lines: Vec<String> = self
                .log()
                .lines()
                .filter(|line| parts.iter().all(|p| line.contains(p)))
                .map(String::from)
                .collect();
            if lines.len() >= count {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?} in:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The host's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// How many memory mappings the host holds.
    pub fn mappings(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/maps", self.child.id()))
            .unwrap()
            .lines()
            .count()
    }

    /// CPU time the host has used so far, user and system together.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no memory effects.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Sends `signal` to the host without waiting.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for the host to exit by itself.
    pub fn wait_exit(mut self) -> ExitStatus {
        self.wait_exit_keeping_log()
    }

    /// As [`Host::wait_exit`], keeping the host's log readable: what the
    /// processes it started (an upgrade's) write to it goes on.
    pub fn wait_exit_keeping_log(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "host did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the host and waits for it to exit.
    pub fn stop_with(mut self, signal: i32) -> ExitStatus {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "host did not exit after signal {signal}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `payload`, half-closes, and returns everything received until the
/// host closes. Sending runs on its own thread so that large payloads
/// cannot deadlock against the echo.
pub fn send_and_collect(mut stream: TcpStream, payload: Vec<u8>) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(&payload).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut received = Vec::new();
    stream
        .read_to_end(&mut received)
        .expect("read until the host closes");
    sender.join().unwrap();
    received
}

/// Reads one `\n`-terminated line.
pub fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0];
    while stream.read(&mut byte).expect("read a line") == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// Opens a connection to the misbehave plugin in echo mode.
pub fn echo_connection(host: &Host) -> TcpStream {
    let mut stream = host.connect();
    stream.write_all(b"echo\n").unwrap();
    assert_eq!(read_line(&mut stream), "ok\n");
    stream
}

/// Whether `text` and a newline, sent on `stream`, come back.
pub fn echoes(stream: &mut TcpStream, text: &str) -> bool {
    stream.write_all(format!("{text}\n").as_bytes()).is_ok()
        && read_line(stream) == format!("{text}\n")
}

/// Asserts the host closed `stream`: the next read sees end-of-file (or a
/// reset).
pub fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}"),
    }
}

/// A payload whose every byte depends on its position and `seed`, so that
/// a lost, repeated or reordered byte is caught.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// An echo load on long-lived connections to the misbehave plugin (in echo
/// mode): each connection sends a 64-byte line, waits for it to come back,
/// and pauses briefly, until stopped.
pub struct EchoLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<thread::JoinHandle<(Vec<Duration>, Vec<String>)>>,
}

/// What an [`EchoLoad`] saw.
pub struct LoadReport {
    pub round_trips: usize,
    pub errors: Vec<String>,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl EchoLoad {
    pub fn start(host: &Host, connections: usize) -> EchoLoad {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..connections)
            .map(|i| {
                let mut stream = host.connect();
                let stop = stop.clone();
                thread::spawn(move || {
                    let (mut latencies, mut errors) = (Vec::new(), Vec::new());
                    stream.write_all(b"echo\n").unwrap();
                    assert_eq!(read_line(&mut stream), "ok\n");
                    let line = format!("{:063}\n", i);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let started = Instant::now();
                        let mut echoed = vec![0; line.len()];
                        let result = stream
                            .write_all(line.as_bytes())
                            .and_then(|()| stream.read_exact(&mut echoed));
                        match result {
                            Ok(()) if echoed == line.as_bytes() => {
                                latencies.push(started.elapsed())
                            }
                            Ok(()) => errors.push(format!("client {i}: wrong bytes")),
                            Err(error) => {
                                errors.push(format!("client {i}: {error}"));
                                break;
                            }
                        }
                        thread::sleep(Duration::from_millis(2));
                    }
                    (latencies, errors)
                })
            })
            .collect();
        EchoLoad { stop, clients }
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut latencies, mut errors) = (Vec::new(), Vec::new());
        for client in self.clients {
            let (l, e) = client.join().unwrap();
            latencies.extend(l);
            errors.extend(e);
        }
        latencies.sort();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or_default()
        };
        LoadReport {
            round_trips: latencies.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: latencies.last().copied().unwrap_or_default(),
            errors,
        }
    }
}

/// A listener whose accept queue is full: the kernel drops further SYNs,
/// so a connect to it waits until the connecting side gives up.
pub fn unanswering_listener() -> (socket2::Socket, Vec<TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let queued = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok())
        .collect();
    (listener, queued)
}

/// Test certificates made with the `openssl` command: a CA; server
/// certificates for `a.test` (also `localhost` and 127.0.0.1) and `b.test`
/// that it issued; a client certificate for alice that it issued; and one
/// for mallory from a CA nobody trusts. Made once per test binary.
pub struct Certificates {
    pub dir: PathBuf,
}

impl Certificates {
    pub fn get() -> &'static Certificates {
        static MADE: std::sync::OnceLock<Certificates> = std::sync::OnceLock::new();
        MADE.get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("tls-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let certs = Certificates { dir };
            certs.make_ca("ca", "Portico Test CA");
            certs.make_ca("rogue-ca", "Rogue CA");
            let server = "serverAuth";
            certs.issue(
                "ca",
                "a",
                "/CN=a.test",
                "DNS:a.test,DNS:localhost,IP:127.0.0.1",
                server,
            );
            certs.issue("ca", "b", "/CN=b.test", "DNS:b.test", server);
            certs.issue(
                "ca",
                "alice",
                "/O=Example/CN=alice",
                "email:alice@example.com,URI:spiffe://example.com/alice",
                "clientAuth",
            );
            certs.issue(
                "rogue-ca",
                "mallory",
                "/CN=mallory",
                "DNS:mallory.test",
                "clientAuth",
            );
            certs
        })
    }

    /// The path of `name` (`ca.pem`, `a.key`...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .expect("openssl (from Debian's packages; `cargo xtask test` installs it)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn make_ca(&self, name: &str, common_name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={common_name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    /// Issues `name.pem` and `name.key` from CA `ca`.
    pub fn issue(&self, ca: &str, name: &str, subject: &str, alt_names: &str, usage: &str) {
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
            "-addext",
            &format!("subjectAltName={alt_names}"),
            "-addext",
            &format!("extendedKeyUsage={usage}"),
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-copy_extensions",
            "copyall",
            "-out",
            &format!("{name}.pem"),
        ]);
    }
}

/// A TLS client connection (rustls) to `addr`, asking for `server_name`,
/// trusting the test CA, and presenting `client` (a name in
/// [`Certificates`]) if given.
pub fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    client: Option<&str>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(TIMEOUT))?;
    tcp.set_write_timeout(Some(TIMEOUT))?;
    tls_over(tcp, server_name, client)
}

/// [`tls_connect`] over a connection already made (and written to).
pub fn tls_over(
    tcp: TcpStream,
    server_name: &str,
    client: Option<&str>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let certs = Certificates::get();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(certs.path("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(name) => {
            let chain = CertificateDer::pem_file_iter(certs.path(&format!("{name}.pem")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(certs.path(&format!("{name}.key"))).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let session = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut stream = rustls::StreamOwned::new(session, tcp);
    // Complete the handshake now, so that its failure shows here.
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

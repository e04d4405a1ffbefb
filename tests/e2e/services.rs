use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::util::{
    Host, TIMEOUT, assert_closed, echo_connection, echoes, host_command, plugin, read_line,
};

/// A folder of its own for one test, removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Writes `text` as `portico.toml`, with `{echo}`, `{misbehave}`,
    /// `{greeter}`, `{tcp-proxy}`, `{redis-kv}`, `{chat}` and `{http-hello}`
    /// standing for the plugins' paths, and `{certs}` for the folder of
    /// the test [`Certificates`](crate::util::Certificates) (made on first
    /// use); returns its path.
    pub(crate) fn config(&self, text: &str) -> PathBuf {
        let text = [
            "echo",
            "misbehave",
            "greeter",
            "tcp-proxy",
            "redis-kv",
            "chat",
            "http-hello",
        ]
        .iter()
        .fold(text.to_string(), |text, name| {
            text.replace(&format!("{{{name}}}"), &plugin(name).display().to_string())
        });
        let text = match text.contains("{certs}") {
            true => text.replace(
                "{certs}",
                &crate::util::Certificates::get().dir.display().to_string(),
            ),
            false => text,
        };
        let path = self.0.join("portico.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

pub(crate) fn get(url: &str) -> (u16, String) {
    request(url, |agent, url| agent.get(url).call())
}

pub(crate) fn post(url: &str) -> (u16, String) {
    request(url, |agent, url| agent.post(url).send_empty())
}

/// Sends a request with `send`, and returns the status and the body, errors
/// statuses included.
fn request(
    url: &str,
    send: impl FnOnce(&ureq::Agent, &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = send(&agent, url).expect("an HTTP response");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

/// The value of the metric line that starts with `series` (name and
/// labels, as the exposition writes them).
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Two services side by side, each with its own limits: one at its
/// connection limit refuses its next client, and one trapping on every
/// connection, while the other serves as usual.
#[test]
fn two_services_keep_their_own_limits() {
    let scratch = Scratch::new("two-services");
    let config = scratch.config(
        r#"
        [services.small]
        plugin = "{misbehave}"
        listen = ["127.0.0.1:0"]
        max-connections = 2
        max-queued = 0
        [services.big]
        plugin = "{misbehave}"
        listen = ["127.0.0.1:0"]
        "#,
    );
    let host = Host::start_config(&config, &[], 2, false);
    let (small, big) = (host.service("small"), host.service("big"));
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut conn = connect(small);
            conn.write_all(b"echo\n").unwrap();
            assert_eq!(read_line(&mut conn), "ok\n");
            conn
        })
        .collect();
    assert_closed(&mut connect(small));
    host.wait_for_log(&["service=\"small\"", "refused"]);
    for _ in 0..20 {
        let mut conn = connect(big);
        conn.write_all(b"trap\n").unwrap();
        assert_closed(&mut conn);
    }
    let mut conn = connect(big);
    conn.write_all(b"echo\n").unwrap();
    assert_eq!(read_line(&mut conn), "ok\n");
    assert!(echoes(&mut conn, "still served"));
    host.wait_for_lines(&["service=\"big\"", "outcome=\"trap\""], 20);
    drop(held);
}

/// The filter runs before any instance exists: a denied client is closed
/// at once and counted; an allowed one is served.
#[test]
fn the_peer_filter_allows_denies_and_counts() {
    let scratch = Scratch::new("filter");
    let config = scratch.config(
        r#"
        [admin]
        listen = "127.0.0.1:0"
        [services.guarded]
        plugin = "{misbehave}"
        listen = ["0.0.0.0:0"]
        [services.guarded.peers]
        allow = ["127.0.0.0/8"]
        deny = ["127.0.0.66/32"]
        "#,
    );
    let host = Host::start_config(&config, &[], 1, true);
    let port = host.addr.port();
    let denied = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    denied
        .bind(&"127.0.0.66:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    denied
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut denied: TcpStream = denied.into();
    denied.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = denied.write_all(b"echo\n");
    assert_closed(&mut denied);

    let mut allowed = connect(SocketAddr::from(([127, 0, 0, 1], port)));
    allowed.write_all(b"echo\n").unwrap();
    assert_eq!(read_line(&mut allowed), "ok\n");
    let (_, metrics) = get(&host.admin_url("/metrics"));
    assert_eq!(
        metric(
            &metrics,
            r#"portico_connections_refused_total{service="guarded",reason="filtered"}"#
        ),
        1.0
    );
    assert!(
        !host.log().contains("peer=127.0.0.66"),
        "no instance for a filtered client"
    );
}

/// Every kind of bad file, and backends it names that are not there: one
/// `error:` line naming the file, the line or key, and the problem; exit
/// status 2; nothing listens.
#[test]
fn bad_config_files_are_refused_with_one_line() {
    let scratch = Scratch::new("bad-files");
    let broken = scratch.0.join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x0d\0\x01\0garbage").unwrap();
    let service = r#"[services.s]
plugin = "{echo}"
listen = ["127.0.0.1:0"]
"#;
    let cases: &[(&str, String, &[&str])] = &[
        ("syntax", "[services.s\n".into(), &["portico.toml:1:"]),
        (
            "unknown key",
            format!("{service}colour = \"blue\"\n"),
            &["portico.toml:4:", "unknown field `colour`"],
        ),
        (
            "wrong type",
            format!("{service}max-connections = \"ten\"\n"),
            &["portico.toml:4:", "invalid type"],
        ),
        (
            "missing plugin",
            "[services.s]\nplugin = \"nowhere.wasm\"\nlisten = [\"127.0.0.1:0\"]\n".into(),
            &["service s", "nowhere.wasm"],
        ),
        (
            "broken plugin",
            format!(
                "[services.s]\nplugin = \"{}\"\nlisten = [\"127.0.0.1:0\"]\n",
                broken.display()
            ),
            &[
                "service s",
                "broken.wasm",
                "not a valid WebAssembly component",
            ],
        ),
        (
            "two services on one address",
            format!(
                "{}{}",
                service.replace(":0", ":19999"),
                service
                    .replace("services.s", "services.t")
                    .replace(":0", ":19999")
            ),
            &[
                "portico.toml:6:",
                "services.t.listen",
                "127.0.0.1:19999 is already the address of service s",
            ],
        ),
        (
            "bad address",
            "[services.s]\nplugin = \"{echo}\"\nlisten = [\"localhost:80\"]\n".into(),
            &["portico.toml:3:", "services.s.listen", "not an address"],
        ),
        (
            "bad network",
            format!("{service}[services.s.peers]\nallow = [\"10.0.0.0/33\"]\n"),
            &["portico.toml:5:", "services.s.peers.allow", "not a network"],
        ),
        (
            "limit out of range",
            format!("{service}max-connections = 0\n"),
            &[
                "portico.toml:4:",
                "services.s.max-connections",
                "out of range",
            ],
        ),
        (
            "bad duration",
            format!("{service}idle-timeout = \"soon\"\n"),
            &[
                "portico.toml:4:",
                "services.s.idle-timeout",
                "not a duration",
            ],
        ),
        (
            "no services",
            "drain-timeout = \"1s\"\n".into(),
            &["portico.toml:1: services: no services"],
        ),
        (
            "zero connect timeout",
            format!("{service}connect-timeout = \"0s\"\n"),
            &[
                "portico.toml:4:",
                "services.s.connect-timeout",
                "longer than zero",
            ],
        ),
        (
            "bad outbound grant",
            format!("{service}grants = {{ outbound = [\"example.com\"] }}\n"),
            &[
                "portico.toml:4:",
                "services.s.grants.outbound",
                "\"example.com\" is not an outbound grant",
            ],
        ),
        (
            "bad topic pattern",
            format!("{service}grants = {{ messaging = [\"a..b\"] }}\n"),
            &["portico.toml:4:", "\"a..b\" is not a topic pattern"],
        ),
        (
            "undeclared bucket",
            format!("{service}grants = {{ keyvalue = [\"nope\"] }}\n"),
            &["portico.toml:4:", "no bucket \"nope\"", "[keyvalue.nope]"],
        ),
        (
            "unknown key-value backend",
            format!(
                "{service}grants = {{ keyvalue = [\"b\"] }}\n[keyvalue.b]\nbackend = \"etcd\"\n"
            ),
            &[
                "portico.toml:6:",
                "keyvalue.b.backend",
                "\"etcd\" is not a backend",
            ],
        ),
        (
            "file bucket without a path",
            format!("{service}[keyvalue.b]\nbackend = \"file\"\n"),
            &["keyvalue.b.path", "needs a path"],
        ),
        (
            "bucket with no room",
            format!("{service}[keyvalue.b]\nmax-keys = 0\n"),
            &["portico.toml:5:", "keyvalue.b.max-keys", "out of range"],
        ),
        (
            "not a Redis URL",
            format!("{service}[keyvalue.b]\nbackend = \"redis\"\nurl = \"http://x\"\n"),
            &["portico.toml:6:", "keyvalue.b.url", "not a redis:// URL"],
        ),
        (
            "no Redis there",
            format!(
                "{service}grants = {{ keyvalue = [\"b\"] }}\n[keyvalue.b]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n"
            ),
            &[
                "key-value bucket b",
                "cannot connect to Redis at redis://127.0.0.1:1",
            ],
        ),
        (
            "bucket name with a colon",
            format!("{service}[keyvalue.\"a:b\"]\n"),
            &["portico.toml:4:", "a bucket name is letters"],
        ),
        (
            "unknown messaging backend",
            format!("{service}[messaging]\nbackend = \"kafka\"\n"),
            &[
                "portico.toml:5:",
                "messaging.backend",
                "\"kafka\" is not a messaging backend",
            ],
        ),
        (
            "no NATS there",
            format!("{service}[messaging]\nbackend = \"nats\"\nurl = \"nats://127.0.0.1:1\"\n"),
            &["cannot connect to NATS at nats://127.0.0.1:1"],
        ),
        (
            "no TLS certificate",
            format!("{service}[services.s.tls]\ncertificates = []\n"),
            &[
                "portico.toml:4:",
                "services.s.tls.certificates",
                "no certificate",
            ],
        ),
        (
            "missing certificate file",
            format!(
                "{service}[services.s.tls]\ncertificates = [{{ cert = \"none.pem\", key = \"none.key\" }}]\n"
            ),
            &["service s", "TLS", "none.pem"],
        ),
        (
            "key of another certificate",
            format!(
                "{service}[services.s.tls]\ncertificates = [{{ cert = \"{{certs}}/a.pem\", key = \"{{certs}}/b.key\" }}]\n"
            ),
            &["b.key does not go with the certificate", "a.pem"],
        ),
        (
            "a key as the client CA",
            format!(
                "{service}[services.s.tls]\ncertificates = [{{ cert = \"{{certs}}/a.pem\", key = \"{{certs}}/a.key\" }}]\nclient-ca = \"{{certs}}/ca.key\"\n"
            ),
            &["ca.key holds no PEM certificate"],
        ),
        (
            "PROXY protocol without trusted proxies",
            format!("{service}[services.s.proxy-protocol]\ntrusted = []\n"),
            &[
                "portico.toml:4:",
                "services.s.proxy-protocol.trusted",
                "no trusted proxy",
            ],
        ),
        (
            "unknown PROXY protocol version",
            format!(
                "{service}[services.s.proxy-protocol]\nversions = [\"v3\"]\ntrusted = [\"10.0.0.0/8\"]\n"
            ),
            &[
                "portico.toml:5:",
                "services.s.proxy-protocol.versions",
                "\"v3\" is not a PROXY protocol version",
            ],
        ),
        (
            "bad trusted network",
            format!("{service}[services.s.proxy-protocol]\ntrusted = [\"everyone\"]\n"),
            &[
                "portico.toml:5:",
                "services.s.proxy-protocol.trusted",
                "not a network",
            ],
        ),
    ];
    for (case, text, expected) in cases {
        let path = scratch.config(text);
        let output = host_command()
            .arg("--config-file")
            .arg(&path)
            .output()
            .expect("run the host");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{case}: {stderr}");
        assert!(output.stdout.is_empty(), "{case}: something listened");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{case}: {stderr}");
        assert!(lines[0].starts_with("error:"), "{case}: {stderr}");
        for part in *expected {
            assert!(
                lines[0].contains(part),
                "{case}: {part:?} missing from {stderr}"
            );
        }
    }
}

/// /metrics values move with real traffic, pass `promtool check metrics`,
/// and /healthz and /readyz tell a drain apart from a dead host.
#[test]
fn metrics_and_health_across_traffic_and_a_drain() {
    let host = Host::start(
        "misbehave",
        &["--admin", "127.0.0.1:0", "--drain-timeout", "5s"],
    );
    assert_eq!(get(&host.admin_url("/healthz")).0, 200);
    assert_eq!(get(&host.admin_url("/readyz")).0, 200);
    for command in ["echo", "trap", "error"] {
        let mut conn = host.connect();
        conn.write_all(format!("{command}\n").as_bytes()).unwrap();
        if command == "echo" {
            assert_eq!(read_line(&mut conn), "ok\n");
            assert!(echoes(&mut conn, "counted"));
            conn.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert_closed(&mut conn);
    }
    host.wait_for_lines(&["closed"], 3);
    let (status, metrics) = get(&host.admin_url("/metrics"));
    assert_eq!(status, 200);
    let series = |name: &str, labels: &str| format!(r#"{name}{{service="misbehave"{labels}}}"#);
    assert_eq!(
        metric(&metrics, &series("portico_connections_total", "")),
        3.0
    );
    for outcome in ["ok", "trap", "error"] {
        let labels = format!(r#",outcome="{outcome}""#);
        assert_eq!(
            metric(
                &metrics,
                &series("portico_connections_closed_total", &labels)
            ),
            1.0
        );
    }
    assert!(metric(&metrics, &series("portico_bytes_received_total", "")) >= 20.0);
    assert!(
        metric(
            &metrics,
            &series("portico_connection_duration_seconds_count", "")
        ) >= 3.0
    );
    assert!(metric(&metrics, &series("portico_instantiation_seconds_count", "")) >= 3.0);
    // The digest is the one `sha256sum` prints for the file.
    let file = std::fs::read(plugin("misbehave")).unwrap();
    let sha256: String = sha2::Sha256::digest(&file)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let info = format!(r#",digest="{sha256}""#);
    assert_eq!(metric(&metrics, &series("portico_plugin_info", &info)), 1.0);
    promtool_accepts(&metrics);

    let live = echo_connection(&host);
    host.signal(libc::SIGTERM);
    host.wait_for_log(&["draining"]);
    assert_eq!(get(&host.admin_url("/readyz")).0, 503);
    assert_eq!(get(&host.admin_url("/healthz")).0, 200);
    drop(live);
    assert_eq!(host.wait_exit().code(), Some(0));
}

/// Runs `promtool check metrics` (Debian's `prometheus` package, which the
/// test set-up installs) on `metrics`.
fn promtool_accepts(metrics: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool: `cargo xtask test` installs it");
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(metrics.as_bytes()).unwrap();
    drop(stdin);
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A copy of the greeter plugin whose file differs (a custom section is
/// appended), so that it is another version by its digest.
fn greeter_variant(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(plugin("greeter")).unwrap();
    // A custom section: id 0, size 6, name "v2" (length 2), 3 bytes of data.
    bytes.extend_from_slice(&[0, 6, 2, b'v', b'2', 1, 2, 3]);
    let path = dir.join("greeter-v2.wasm");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A steady load through 20 reloads that alternate two plugin versions
/// (two files, two banners): no connection fails or is refused, and every
/// connection is served by one version from start to end, also those that
/// span a reload. A broken file or plugin changes nothing.
#[test]
fn reloads_under_load_cut_over_by_connection() {
    let scratch = Scratch::new("reload");
    let v2 = greeter_variant(&scratch.0);
    let version = |n: usize| {
        let (path, banner) = match n % 2 {
            0 => (plugin("greeter"), "v1"),
            _ => (v2.clone(), "v2"),
        };
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[services.greet]\nplugin = \"{}\"\nlisten = [\"127.0.0.1:0\"]\n\
             [services.greet.settings]\nbanner = \"{banner}\"\ngreeting = \"{banner}\"\n",
            path.display()
        )
    };
    let config = scratch.config(&version(0));
    let host = Host::start_config(&config, &[], 1, true);
    let addr = host.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut served = 0;
                while !stop.load(Relaxed) {
                    let mut conn = connect(addr);
                    let banner = read_line(&mut conn);
                    let banner = banner.trim();
                    assert!(
                        banner == "v1" || banner == "v2",
                        "client {i}: banner {banner:?}"
                    );
                    for word in ["a", "b", "c"] {
                        conn.write_all(format!("{word}\n").as_bytes()).unwrap();
                        assert_eq!(
                            read_line(&mut conn),
                            format!("{banner} {word}\n"),
                            "client {i}"
                        );
                        thread::sleep(Duration::from_millis(5));
                    }
                    conn.write_all(b"quit\n").unwrap();
                    assert_eq!(read_line(&mut conn), "bye\n");
                    served += 1;
                }
                served
            })
        })
        .collect();

    let started = Instant::now();
    for n in 1..=20 {
        std::fs::write(&config, version(n)).unwrap();
        let (status, body) = if n % 2 == 0 {
            post(&host.admin_url("/reload"))
        } else {
            host.signal(libc::SIGHUP);
            host.wait_for_lines(&["reloaded"], n);
            (200, String::new())
        };
        assert_eq!(status, 200, "reload {n}: {body}");
        thread::sleep(Duration::from_millis(100));
    }
    let reloading = started.elapsed();

    std::fs::write(&config, "[services.greet\n").unwrap();
    let (status, body) = post(&host.admin_url("/reload"));
    assert_eq!(status, 400);
    assert!(
        body.contains("portico.toml:1:") && body.lines().count() == 1,
        "{body}"
    );
    let mut broken = version(1);
    broken = broken.replace(
        &v2.display().to_string(),
        &scratch.0.join("missing.wasm").display().to_string(),
    );
    std::fs::write(&config, broken).unwrap();
    let (status, body) = post(&host.admin_url("/reload"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("missing.wasm"), "{body}");
    let mut conn = connect(addr);
    assert_eq!(
        read_line(&mut conn),
        "v1\n",
        "the running version is unchanged"
    );

    stop.store(true, Relaxed);
    let served: usize = clients
        .into_iter()
        .map(|client| client.join().unwrap())
        .sum();
    let (_, metrics) = get(&host.admin_url("/metrics"));
    let refused: f64 = ["full", "filtered"]
        .iter()
        .map(|reason| {
            metric(
                &metrics,
                &format!(
                    r#"portico_connections_refused_total{{service="greet",reason="{reason}"}}"#
                ),
            )
        })
        .sum();
    println!("20 reloads in {reloading:?} under load: {served} connections, none failed");
    assert_eq!(refused, 0.0);
    assert!(served > 20);
    assert!(!host.log().contains("outcome=\"trap\""));
    assert!(!host.log().contains("outcome=\"error\""));
}

/// A plugin is compiled once, then loaded from the cache; a corrupted
/// entry is ignored and written anew, never trusted and never fatal.
#[test]
fn compiled_plugins_are_cached_and_damage_is_survived() {
    let scratch = Scratch::new("cache");
    let cache = scratch.0.join("cache");
    let dir = cache.display().to_string();
    let start = || Host::start("echo", &["--cache-dir", &dir]);
    // The compiled code of each entry (a checksum file stands beside it).
    let entries = || -> Vec<PathBuf> {
        let Ok(dir) = std::fs::read_dir(&cache) else {
            return Vec::new();
        };
        dir.map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
            .collect()
    };

    let host = start();
    host.wait_for_log(&["plugin loaded", "from_cache=false"]);
    drop(host);
    assert_eq!(entries().len(), 1);

    let host = start();
    host.wait_for_log(&["plugin loaded", "from_cache=true"]);
    let mut conn = host.connect();
    assert!(echoes(&mut conn, "cached"));
    drop(host);

    let entry = entries().remove(0);
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    let host = start();
    host.wait_for_log(&["plugin loaded", "from_cache=false"]);
    assert!(echoes(&mut host.connect(), "rebuilt"));
    drop(host);
    std::fs::write(&entry, b"truncated").unwrap();
    let host = start();
    assert!(echoes(&mut host.connect(), "rebuilt again"));
}

/// `--log-format json` writes one JSON object per line, with the service.
#[test]
fn json_logs_are_one_object_per_line() {
    let host = Host::start("misbehave", &["--log-format", "json"]);
    let mut conn = host.connect();
    conn.write_all(b"print hi\n").unwrap();
    assert_closed(&mut conn);
    host.wait_for_log(&["closed"]);
    for line in host.log().lines() {
        let object: serde_json::Value = serde_json::from_str(line).expect("a JSON object");
        assert!(object.is_object(), "{line}");
    }
    assert!(host.log().contains("\"service\":\"misbehave\""));
}

/// A reload while every place of a service is taken: the new version shares
/// the pool, so its start-up check waits for a slot instead of failing.
#[test]
fn a_reload_at_full_capacity_waits_for_a_slot() {
    let scratch = Scratch::new("reload-full");
    let config = |banner: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[services.full]\nplugin = \"{{misbehave}}\"\n\
             listen = [\"127.0.0.1:0\"]\nmax-connections = 2\n[services.full.settings]\nbanner = \"{banner}\"\n"
        )
    };
    let path = scratch.config(&config("one"));
    let host = Host::start_config(&path, &[], 1, true);
    let mut held: Vec<_> = (0..2).map(|_| echo_connection(&host)).collect();
    scratch.config(&config("two"));
    let url = host.admin_url("/reload");
    let reload = thread::spawn(move || post(&url));
    thread::sleep(Duration::from_millis(500));
    assert!(
        !reload.is_finished(),
        "the check waits while the pool is full"
    );
    drop(held.pop());
    let (status, body) = reload.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let mut conn = host.connect();
    conn.write_all(b"config banner\n").unwrap();
    assert_eq!(read_line(&mut conn), "two\n");
}

/// With `reuse-port`, two hosts on one config listen on the same address
/// and the kernel spreads connections over both; a reload of one leaves the
/// other as it is. Without it, the second host is refused the address, in
/// one line.
#[test]
fn hosts_share_an_address_with_reuse_port() {
    let scratch = Scratch::new("reuse-port");
    let addr = crate::util::free_addr();
    let text = format!(
        "reuse-port = true\n[services.echo]\nplugin = \"{{echo}}\"\nlisten = [\"{addr}\"]\n"
    );
    let config = scratch.config(&text);
    let first = Host::start_config(&config, &[], 1, false);
    let second = Host::start_config(&config, &[], 1, false);
    assert_eq!((first.addr, second.addr), (addr, addr));
    for _ in 0..40 {
        let mut stream = connect(addr);
        assert!(crate::util::echoes(&mut stream, "spread"));
    }
    second.signal(libc::SIGHUP);
    second.wait_for_log(&["reloaded"]);
    for host in [&first, &second] {
        assert!(
            host.log().contains("accepted"),
            "one host got every connection:\n{}",
            host.log()
        );
    }

    let alone = scratch.config(&text.replace("reuse-port = true\n", ""));
    let output = crate::util::host_command()
        .arg("--config-file")
        .arg(&alone)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// `curl` against the admin endpoint: the status code and the body.
fn admin_curl(url: &str, args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(["--write-out", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("a status code");
    (code.parse().expect("a status code"), body.to_string())
}

/// With an admin token, `POST /reload` needs it (curl with none, a wrong
/// one and the right one); the endpoints that only read stay open. A token
/// file that is missing or empty stops the host at start, in one line.
#[test]
fn reload_over_http_needs_the_admin_token() {
    let scratch = Scratch::new("admin-token");
    let token_file = scratch.0.join("admin-token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let token_arg = token_file.display().to_string();
    let host = Host::start(
        "echo",
        &["--admin", "127.0.0.1:0", "--admin-token-file", &token_arg],
    );
    let reload = host.admin_url("/reload");
    let (code, body) = admin_curl(&reload, &["--request", "POST"]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let wrong = [
        "--request",
        "POST",
        "--header",
        "Authorization: Bearer s3cret-tokeN",
    ];
    assert_eq!(admin_curl(&reload, &wrong).0, 401);
    let right = [
        "--request",
        "POST",
        "--header",
        "Authorization: Bearer s3cret-token",
    ];
    let (code, body) = admin_curl(&reload, &right);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("services built"), "{body}");
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(admin_curl(&host.admin_url(path), &[]).0, 200, "{path}");
    }

    let empty = scratch.0.join("empty-token");
    std::fs::write(&empty, " \n").unwrap();
    for (file, problem) in [
        (scratch.0.join("missing-token"), "cannot read it"),
        (empty, "is empty"),
    ] {
        let output = crate::util::host_command()
            .arg("--plugin")
            .arg(crate::util::plugin("echo"))
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--admin-token-file")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        let line = format!("error: admin token file {}", file.display());
        assert!(
            stderr.starts_with(&line) && stderr.contains(problem),
            "{stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

/// Without a token, `POST /reload` is refused on an endpoint that other
/// machines can reach, and the host says so at start; on a loopback
/// address it is allowed, and the host says that too.
#[test]
fn without_a_token_reload_is_local_only() {
    let open = Host::start("echo", &["--admin", "0.0.0.0:0"]);
    open.wait_for_log(&["no admin token: POST /reload is refused"]);
    let (code, body) = admin_curl(&open.admin_url("/reload"), &["--request", "POST"]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--admin-token-file"), "{body}");
    assert_eq!(admin_curl(&open.admin_url("/metrics"), &[]).0, 200);

    let local = Host::start("echo", &["--admin", "127.0.0.1:0"]);
    local.wait_for_log(&["no admin token: POST /reload is open to this machine's users"]);
    assert_eq!(
        admin_curl(&local.admin_url("/reload"), &["--request", "POST"]).0,
        200
    );
}

/// The process-wide flags combine with a config file, the flag winning:
/// `--admin` serves the admin endpoint of a file that has none, and
/// `--log-format json` and `--drain-timeout` win over the file's keys;
/// they hold after a reload.
#[test]
fn process_flags_win_over_the_config_file() {
    let scratch = Scratch::new("flags-over-file");
    let config = scratch.config(
        r#"
        log-format = "text"
        drain-timeout = "20s"
        [services.echo]
        plugin = "{echo}"
        listen = ["127.0.0.1:0"]
        "#,
    );
    let host = Host::start_config(
        &config,
        &[
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--drain-timeout",
            "2s",
        ],
        1,
        true,
    );
    let mut stream = connect(host.addr);
    stream.write_all(b"ping\n").unwrap();
    assert_eq!(read_line(&mut stream), "ping\n");
    drop(stream);
    host.wait_for_log(&[r#""message":"closed""#, r#""service":"echo""#]);
    assert_eq!(post(&host.admin_url("/reload")).0, 200);
    host.wait_for_log(&[r#""message":"reloaded: "#]);
    let (status, metrics) = get(&host.admin_url("/metrics"));
    assert_eq!(status, 200);
    assert_eq!(
        metric(&metrics, r#"portico_connections_total{service="echo"}"#),
        1.0
    );
    host.signal(libc::SIGTERM);
    host.wait_for_log(&["draining for up to 2s"]);
}

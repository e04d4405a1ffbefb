use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ppp::v2;

use crate::services::Scratch;
use crate::util::{Host, TIMEOUT, assert_closed, free_addr, tls_over};

/// http-hello behind a PROXY protocol listener that trusts only
/// 127.0.0.1, with `extra` appended to the service.
fn proxied_web(scratch: &Scratch, extra: &str) -> std::path::PathBuf {
    scratch.config(&format!(
        r#"
        [admin]
        listen = "127.0.0.1:0"
        [services.web]
        plugin = "{{http-hello}}"
        listen = ["127.0.0.1:0"]
        [services.web.proxy-protocol]
        versions = ["v1", "v2"]
        trusted = ["127.0.0.1/32"]
        timeout = "1s"
        {extra}
        "#
    ))
}

/// A real HAProxy (Debian's package) running `deploy/haproxy.cfg`, killed
/// when dropped.
struct HaProxy {
    child: Child,
    front: SocketAddr,
    front_v1: SocketAddr,
}

impl HaProxy {
    /// Starts HAProxy in front of `hosts` (two), and waits until it listens.
    fn start(hosts: [&Host; 2]) -> HaProxy {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy.cfg");
        let (front, front_v1) = (free_addr(), free_addr());
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(config)
            .env("PORTICO_FRONT", front.to_string())
            .env("PORTICO_FRONT_V1", front_v1.to_string())
            .env("PORTICO_HOST1", hosts[0].addr.to_string())
            .env("PORTICO_HOST2", hosts[1].addr.to_string())
            .env(
                "PORTICO_HOST1_ADMIN_PORT",
                hosts[0].admin.unwrap().port().to_string(),
            )
            .env(
                "PORTICO_HOST2_ADMIN_PORT",
                hosts[1].admin.unwrap().port().to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (from Debian's packages; `cargo xtask test` installs it)");
        let started = Instant::now();
        while TcpStream::connect(front).is_err() || TcpStream::connect(front_v1).is_err() {
            assert!(started.elapsed() < TIMEOUT, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        HaProxy {
            child,
            front,
            front_v1,
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl http://FRONT/whoami` from source address `source`.
fn whoami_from(source: &str, front: SocketAddr) -> String {
    let output = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--interface",
            source,
        ])
        .arg(format!("http://{front}/whoami"))
        .output()
        .expect("curl (from Debian's packages)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Two hosts behind HAProxy, with `send-proxy-v2` and with `send-proxy`:
/// clients binding their own loopback addresses are seen under them by
/// the plugin and in the log of the host that served them.
#[test]
fn haproxy_passes_each_client_address_to_the_plugin_and_the_log() {
    let scratch = Scratch::new("proxy-haproxy");
    let config = proxied_web(&scratch, "");
    let hosts = [
        Host::start_config(&config, &[], 1, true),
        Host::start_config(&config, &[], 1, true),
    ];
    let haproxy = HaProxy::start([&hosts[0], &hosts[1]]);
    for (i, front) in [
        haproxy.front,
        haproxy.front,
        haproxy.front_v1,
        haproxy.front_v1,
    ]
    .into_iter()
    .enumerate()
    {
        let source = format!("127.0.0.{}", 10 + i);
        let body = whoami_from(&source, front);
        assert!(body.contains(&format!("peer: {source}:")), "{body}");
        assert!(body.contains("proxied: true"), "{body}");
        let logged = hosts.iter().any(|host| {
            host.log().lines().any(|line| {
                line.contains(": accepted ")
                    && line.contains(&format!("peer={source}:"))
                    && line.contains("proxied=true")
            })
        });
        assert!(
            logged,
            "no log line for {source}:\n{}\n{}",
            hosts[0].log(),
            hosts[1].log()
        );
    }
    let served: Vec<usize> = hosts
        .iter()
        .map(|host| host.log().matches(": accepted ").count())
        .collect();
    assert!(
        served.iter().all(|&n| n > 0),
        "both hosts serve: {served:?}"
    );
    for host in &hosts {
        assert_eq!(
            host.metric(
                "portico_connections_refused_total{service=\"web\",reason=\"proxy-header\"}"
            ),
            0.0,
            "HAProxy's health checks and connections all pass"
        );
    }
}

/// A client straight to a PROXY listener is refused and counted: without
/// a header, with a truncated one (at the timeout), with garbage, and from
/// an address not trusted even with a well-formed header. None of them
/// gets an instance.
#[test]
fn clients_without_a_trusted_header_are_refused() {
    let scratch = Scratch::new("proxy-refused");
    let host = Host::start_config(&proxied_web(&scratch, ""), &[], 1, true);
    let header = v1_header("192.0.2.7:5000", "127.0.0.1:7000");
    let cases: [(&str, &[u8]); 4] = [
        ("127.0.0.1", b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("127.0.0.1", b"PROXY TCP4 192.0.2.7 127.0.0.1 5000"),
        ("127.0.0.1", &[0xff; 64]),
        ("127.0.0.9", header.as_bytes()),
    ];
    for (source, sent) in cases {
        let mut stream = connect_from(source, host.addr);
        stream.write_all(sent).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(
            answer.is_empty(),
            "{source} sending {sent:?} got {answer:?}"
        );
    }
    let refused = "portico_connections_refused_total{service=\"web\",reason=\"proxy-header\"}";
    assert_eq!(host.metric(refused), 4.0);
    assert!(!host.log().contains(": accepted "), "{}", host.log());

    // A trusted proxy with a good header is served.
    let mut stream = connect_from("127.0.0.1", host.addr);
    stream.write_all(header.as_bytes()).unwrap();
    stream
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("peer: 192.0.2.7:5000"), "{answer}");
}

/// On a listener with both, the PROXY header comes before the TLS
/// handshake; the filter judges the header's address, and the plugin sees
/// it with what TLS established.
#[test]
fn the_header_comes_before_tls_and_the_filter_judges_its_address() {
    let scratch = Scratch::new("proxy-tls");
    let extra = r#"
        [services.web.peers]
        deny = ["192.0.2.66"]
        [services.web.tls]
        certificates = [ { cert = "{certs}/a.pem", key = "{certs}/a.key" } ]
    "#;
    let host = Host::start_config(&proxied_web(&scratch, extra), &[], 1, true);

    let mut tcp = connect_from("127.0.0.1", host.addr);
    tcp.write_all(&v2_header("[2001:db8::7]:4000", "[2001:db8::1]:443"))
        .unwrap();
    let mut tls = tls_over(tcp, "a.test", None).expect("a handshake after the header");
    tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer);
    for line in ["peer: [2001:db8::7]:4000", "proxied: true", "sni: a.test"] {
        assert!(answer.contains(line), "{line:?} not in {answer}");
    }

    let mut denied = connect_from("127.0.0.1", host.addr);
    denied
        .write_all(&v2_header("192.0.2.66:4000", "127.0.0.1:443"))
        .unwrap();
    assert_closed(&mut denied);
    let filtered = "portico_connections_refused_total{service=\"web\",reason=\"filtered\"}";
    let deadline = Instant::now() + TIMEOUT;
    while host.metric(filtered) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the denied client was not filtered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn v1_header(source: &str, destination: &str) -> String {
    let (source, destination): (SocketAddr, SocketAddr) =
        (source.parse().unwrap(), destination.parse().unwrap());
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
}

fn v2_header(source: &str, destination: &str) -> Vec<u8> {
    let addresses = (
        source.parse::<SocketAddr>().unwrap(),
        destination.parse::<SocketAddr>().unwrap(),
    );
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        addresses,
    )
    .build()
    .unwrap()
}

/// A connection to `addr` from loopback address `source`.
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&source.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

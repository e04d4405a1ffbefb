use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};

use crate::services::{Scratch, get, metric};
use crate::util::{Host, Peer, TIMEOUT, assert_closed, read_line, unanswering_listener};

/// A real `redis-server`.
pub fn redis() -> Peer {
    Peer::start("redis-server", |port| {
        [
            "--bind",
            "127.0.0.1",
            "--port",
            port,
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec()
    })
}

/// Runs a Redis command-line tool against `addr`.
pub fn redis_tool(tool: &str, addr: SocketAddr, args: &[&str]) -> Output {
    let output = Command::new(tool)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{tool} (Debian's redis-tools): {error}"));
    assert!(output.status.success(), "{tool} {args:?}: {output:?}");
    output
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `plugins/tcp-proxy/portico.toml`, as shipped, pointed at `redis`, its
/// plugin path made absolute and its port left to the system.
fn shipped_proxy_config(scratch: &Scratch, redis: &Peer) -> std::path::PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/tcp-proxy/portico.toml");
    let text = std::fs::read_to_string(shipped).unwrap();
    assert!(text.contains("127.0.0.1:6379") && text.contains("127.0.0.1:7000"));
    let text = text
        .replace(
            "../../target/wasm32-wasip2/release/tcp_proxy.wasm",
            "{tcp-proxy}",
        )
        .replace("127.0.0.1:6379", &redis.addr.to_string())
        .replace("127.0.0.1:7000", "127.0.0.1:0");
    scratch.config(&text)
}

/// redis-cli and redis-benchmark through the tcp-proxy plugin reach a real
/// Redis, with every request answered and every connection ending well.
#[test]
fn the_proxy_carries_redis_clients_to_a_real_redis() {
    let redis = redis();
    let scratch = Scratch::new("proxy");
    let host = Host::start_config(&shipped_proxy_config(&scratch, &redis), &[], 1, false);
    let proxy = host.service("proxy");

    assert_eq!(text(&redis_tool("redis-cli", proxy, &["PING"])), "PONG");
    redis_tool("redis-cli", proxy, &["SET", "portico", "through the proxy"]);
    assert_eq!(
        text(&redis_tool("redis-cli", redis.addr, &["GET", "portico"])),
        "through the proxy",
        "the value reached the real server"
    );

    let benchmark = redis_tool(
        "redis-benchmark",
        proxy,
        &["-t", "ping,set,get,incr", "-n", "5000", "-c", "50", "-q"],
    );
    let report = String::from_utf8_lossy(&benchmark.stdout).replace('\r', "\n");
    let results: Vec<&str> = report
        .lines()
        .filter(|line| line.contains("requests per second"))
        .collect();
    assert_eq!(results.len(), 5, "one result per test:\n{report}");
    let errors = String::from_utf8_lossy(&benchmark.stderr);
    assert!(
        !report.to_lowercase().contains("error") && errors.is_empty(),
        "{report}{errors}"
    );

    // 2 redis-cli runs and the benchmark's 50 connections per test (its
    // CONFIG query on one more).
    let closed = host.wait_for_lines(&["closed"], 2 + 5 * 50);
    let bad: Vec<_> = closed
        .iter()
        .filter(|line| !line.contains("outcome=\"ok\""))
        .collect();
    assert!(
        bad.is_empty(),
        "connections that did not end well: {bad:#?}"
    );
}

/// An upstream that the grant does not list, a name it does not list, and
/// a service with no grant at all: each attempt fails inside the plugin,
/// is logged with the connection and the address, and is counted.
#[test]
fn outbound_is_refused_unless_granted() {
    let redis = redis();
    let scratch = Scratch::new("outbound-refused");
    let config = scratch.config(&format!(
        r#"
        [admin]
        listen = "127.0.0.1:0"

        [services.other-port]
        plugin = "{{tcp-proxy}}"
        listen = ["127.0.0.1:0"]
        settings = {{ upstream = "{redis}" }}
        grants = {{ outbound = ["127.0.0.1:{other}"] }}

        [services.unlisted-name]
        plugin = "{{tcp-proxy}}"
        listen = ["127.0.0.1:0"]
        settings = {{ upstream = "redis.invalid:6379" }}
        grants = {{ outbound = ["{redis}", "*.example.com:6379"] }}

        [services.no-grant]
        plugin = "{{misbehave}}"
        listen = ["127.0.0.1:0"]
        "#,
        redis = redis.addr,
        other = redis.addr.port() + 1,
    ));
    let host = Host::start_config(&config, &[], 3, true);

    for service in ["other-port", "unlisted-name"] {
        let mut client = TcpStream::connect(host.service(service)).unwrap();
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        client.write_all(b"PING\r\n").unwrap();
        assert_closed(&mut client);
    }
    let mut client = TcpStream::connect(host.service("no-grant")).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    writeln!(client, "connect {}", redis.addr).unwrap();
    assert!(read_line(&mut client).starts_with("denied"));

    let denied = host.wait_for_log(&["outbound connect denied", "service=\"other-port\""]);
    assert!(
        denied.contains("conn=") && denied.contains(&format!("address={}", redis.addr)),
        "{denied}"
    );
    host.wait_for_log(&[
        "name lookup denied",
        "service=\"unlisted-name\"",
        "name=\"redis.invalid\"",
    ]);
    host.wait_for_log(&["outbound TCP denied", "service=\"no-grant\""]);
    host.wait_for_log(&["closed", "service=\"other-port\"", "access-denied"]);

    let (_, metrics) = get(&host.admin_url("/metrics"));
    for service in ["other-port", "unlisted-name", "no-grant"] {
        let series = format!(r#"portico_outbound_denied_total{{service="{service}"}}"#);
        assert_eq!(metric(&metrics, &series), 1.0, "{service}");
    }
}

/// A plugin's blocking connect (Rust's std, no timeout of its own) to an
/// address that never answers fails with `timeout` at the host's connect
/// timeout, not the operating system's two minutes; logged and counted.
#[test]
fn a_connect_that_gets_no_answer_times_out() {
    let (listener, _queued) = unanswering_listener();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let scratch = Scratch::new("connect-timeout");
    let config = scratch.config(&format!(
        r#"
        [admin]
        listen = "127.0.0.1:0"

        [services.caller]
        plugin = "{{misbehave}}"
        listen = ["127.0.0.1:0"]
        connect-timeout = "1s"
        grants = {{ outbound = ["{addr}"] }}
        "#
    ));
    let host = Host::start_config(&config, &[], 1, true);
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let mut client = TcpStream::connect(host.service("caller")).unwrap();
            client.set_read_timeout(Some(TIMEOUT)).unwrap();
            writeln!(client, "connect {addr}").unwrap();
            client
        })
        .collect();
    for mut client in clients {
        let answer = read_line(&mut client);
        assert!(
            answer.starts_with("denied") && answer.contains("timed out"),
            "{answer}"
        );
    }
    let logged = host.wait_for_log(&["outbound connect timed out", "service=\"caller\""]);
    assert!(logged.contains("conn="), "{logged}");
    assert_eq!(
        host.metric(r#"portico_outbound_connect_timeouts_total{service="caller"}"#),
        2.0
    );
}

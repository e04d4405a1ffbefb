use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

use crate::services::Scratch;
use crate::util::{Certificates, Host, TIMEOUT, pattern, tls_connect};

/// http-hello on TLS with two certificates chosen by SNI, offering
/// `http/1.1` by ALPN; with `client_ca`, clients need a certificate.
fn web_config(scratch: &Scratch, client_ca: bool) -> std::path::PathBuf {
    let client_ca = match client_ca {
        true => r#"client-ca = "{certs}/ca.pem""#,
        false => "",
    };
    scratch.config(&format!(
        r#"
        [admin]
        listen = "127.0.0.1:0"
        [services.web]
        plugin = "{{http-hello}}"
        listen = ["127.0.0.1:0"]
        [services.web.tls]
        certificates = [ {{ cert = "{{certs}}/a.pem", key = "{{certs}}/a.key" }},
                         {{ cert = "{{certs}}/b.pem", key = "{{certs}}/b.key" }} ]
        alpn = ["h2", "http/1.1"]
        handshake-timeout = "2s"
        {client_ca}
        "#
    ))
}

/// `curl` for `https://NAME:PORT/PATH`, with NAME resolving to the host
/// and the test CA trusted.
fn curl(addr: SocketAddr, name: &str, path: &str, extra: &[&str]) -> Output {
    let certs = Certificates::get();
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20", "--http1.1"])
        .arg("--cacert")
        .arg(certs.path("ca.pem"))
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", addr.port()))
        .args(extra)
        .arg(format!("https://{name}:{}{path}", addr.port()))
        .output()
        .expect("curl (from Debian's packages; `cargo xtask test` installs it)")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `openssl s_client` to the host with `args`, sending `request` and
/// waiting for the host to close if there is one; returns what it printed.
fn s_client(addr: SocketAddr, args: &[&str], request: &[u8]) -> String {
    let certs = Certificates::get();
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(certs.path("ca.pem"))
        .arg("-verify_return_error")
        .args(if request.is_empty() {
            None
        } else {
            Some("-ign_eof")
        })
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (from Debian's packages)");
    child.stdin.take().unwrap().write_all(request).unwrap();
    let output = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// curl and openssl reach http-hello over TLS; SNI picks the certificate
/// (curl checks the name against it), a client naming no server or an
/// unknown one gets the first; ALPN and SNI reach the plugin.
#[test]
fn curl_and_openssl_reach_http_hello_over_tls() {
    let scratch = Scratch::new("tls-web");
    let host = Host::start_config(&web_config(&scratch, false), &[], 1, true);

    let page = curl(host.addr, "a.test", "/", &[]);
    assert!(page.status.success(), "{page:?}");
    assert!(stdout(&page).contains("Hello from Portico"));

    let whoami = curl(host.addr, "b.test", "/whoami", &[]);
    assert!(whoami.status.success(), "{whoami:?}");
    let body = stdout(&whoami);
    for line in [
        "sni: b.test",
        "alpn: http/1.1",
        "tls: TLSv1.3 TLS13_",
        "proxied: false",
        "peer: 127.0.0.1:",
    ] {
        assert!(body.contains(line), "{line:?} not in {body:?}");
    }

    let request = b"GET /whoami HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n";
    let b = s_client(host.addr, &["-servername", "b.test"], request);
    assert!(
        b.contains("CN = b.test") && b.contains("Verify return code: 0 (ok)"),
        "{b}"
    );
    assert!(
        b.contains("HTTP/1.1 200 OK") && b.contains("sni: b.test"),
        "{b}"
    );
    let tls12 = s_client(host.addr, &["-servername", "a.test", "-tls1_2"], request);
    assert!(tls12.contains("tls: TLSv1.2 TLS_ECDHE_ECDSA_"), "{tls12}");
    for args in [&["-noservername"][..], &["-servername", "unknown.test"]] {
        let default = s_client(host.addr, args, b"");
        assert!(default.contains("CN = a.test"), "{args:?}: {default}");
    }
    assert_eq!(
        host.metric("portico_tls_handshake_failures_total{service=\"web\"}"),
        0.0
    );
}

/// Plaintext through TLS is byte-exact both ways, a megabyte at a time,
/// on several connections at once (the misbehave plugin echoing).
#[test]
fn tls_carries_large_echoes_byte_exact() {
    let scratch = Scratch::new("tls-echo");
    let config = scratch.config(
        r#"
        [services.echo]
        plugin = "{misbehave}"
        listen = ["127.0.0.1:0"]
        [services.echo.tls]
        certificates = [ { cert = "{certs}/a.pem", key = "{certs}/a.key" } ]
        "#,
    );
    let host = Host::start_config(&config, &[], 1, false);
    let clients: Vec<_> = (0..4u8)
        .map(|seed| {
            let addr = host.addr;
            std::thread::spawn(move || {
                let mut stream = tls_connect(addr, "localhost", None).expect("a handshake");
                stream.write_all(b"echo\n").unwrap();
                let mut ok = [0; 3];
                stream.read_exact(&mut ok).unwrap();
                assert_eq!(&ok, b"ok\n");
                let payload = pattern(1 << 20, seed);
                let mut echoed = vec![0; payload.len()];
                // Write and read in turns of 64 KiB, so that neither side's
                // buffers have to hold the whole megabyte.
                for (sent, back) in payload.chunks(64 << 10).zip(echoed.chunks_mut(64 << 10)) {
                    stream.write_all(sent).unwrap();
                    stream.read_exact(back).unwrap();
                }
                assert!(echoed == payload, "client {seed}: the echo differs");
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

/// With a client CA, a client without a certificate, or with one from
/// another CA, is refused before any instance exists, and counted; one
/// with a certificate the CA issued is served, and its subject and names
/// reach the plugin.
#[test]
fn client_certificates_are_required_and_reach_the_plugin() {
    let scratch = Scratch::new("tls-clients");
    let host = Host::start_config(&web_config(&scratch, true), &[], 1, true);
    let certs = Certificates::get();

    let anonymous = curl(host.addr, "a.test", "/whoami", &[]);
    assert!(
        !anonymous.status.success(),
        "served without a certificate: {anonymous:?}"
    );
    let cert = |name: &str| {
        [
            "--cert".to_string(),
            certs.path(&format!("{name}.pem")).display().to_string(),
            "--key".to_string(),
            certs.path(&format!("{name}.key")).display().to_string(),
        ]
    };
    let mallory = cert("mallory");
    let rogue = curl(
        host.addr,
        "a.test",
        "/whoami",
        &mallory.each_ref().map(String::as_str),
    );
    assert!(
        !rogue.status.success(),
        "served a rogue certificate: {rogue:?}"
    );

    let alice = cert("alice");
    let served = curl(
        host.addr,
        "a.test",
        "/whoami",
        &alice.each_ref().map(String::as_str),
    );
    assert!(served.status.success(), "{served:?}");
    let body = stdout(&served);
    assert!(
        body.contains("client-subject: O=Example, CN=alice"),
        "{body}"
    );
    assert!(
        body.contains("client-names: email:alice@example.com, URI:spiffe://example.com/alice"),
        "{body}"
    );

    // The rustls client sees the refusal as an alert on its first read.
    let mut refused = tls_connect(host.addr, "a.test", None).expect("the client's side completes");
    let _ = refused.write_all(b"GET / HTTP/1.1\r\n\r\n");
    let mut buf = [0; 64];
    assert!(
        !matches!(refused.read(&mut buf), Ok(n) if n > 0),
        "served without a certificate"
    );

    let failures = "portico_tls_handshake_failures_total{service=\"web\"}";
    let deadline = std::time::Instant::now() + TIMEOUT;
    while host.metric(failures) < 3.0 {
        assert!(std::time::Instant::now() < deadline, "failures not counted");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(host.metric(failures), 3.0);
    assert_eq!(
        host.log()
            .lines()
            .filter(|line| line.contains(": accepted "))
            .count(),
        1,
        "only alice's connection got an instance:\n{}",
        host.log()
    );
}

/// Renewed certificate files are picked up by a reload, and a connection
/// made before it goes on over its old session.
#[test]
fn a_reload_picks_up_renewed_certificates_without_dropping_a_connection() {
    let scratch = Scratch::new("tls-reload");
    let certs = Certificates::get();
    let (cert, key) = (scratch.0.join("site.pem"), scratch.0.join("site.key"));
    std::fs::copy(certs.path("a.pem"), &cert).unwrap();
    std::fs::copy(certs.path("a.key"), &key).unwrap();
    let config = scratch.config(&format!(
        r#"
        [admin]
        listen = "127.0.0.1:0"
        [services.web]
        plugin = "{{http-hello}}"
        listen = ["127.0.0.1:0"]
        [services.web.tls]
        certificates = [ {{ cert = "{}", key = "{}" }} ]
        "#,
        cert.display(),
        key.display()
    ));
    let host = Host::start_config(&config, &[], 1, true);
    let mut before = tls_connect(host.addr, "a.test", None).unwrap();
    let old_serial = serial(&s_client(host.addr, &["-servername", "a.test"], b""));

    certs.issue(
        "ca",
        "renewed",
        "/CN=a.test",
        "DNS:a.test,DNS:localhost,IP:127.0.0.1",
        "serverAuth",
    );
    std::fs::copy(certs.path("renewed.pem"), &cert).unwrap();
    std::fs::copy(certs.path("renewed.key"), &key).unwrap();
    let reload = ureq::post(&host.admin_url("/reload")).send_empty().unwrap();
    assert_eq!(reload.status(), 200);
    let new_serial = serial(&s_client(host.addr, &["-servername", "a.test"], b""));
    assert_ne!(
        old_serial, new_serial,
        "the renewed certificate is not served"
    );

    before
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    before.read_to_string(&mut answer).unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

/// The serial number of the certificate `openssl s_client` printed.
fn serial(printed: &str) -> String {
    let pem_start = printed
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let pem_end = printed.find("-----END CERTIFICATE-----").unwrap() + 25;
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&printed.as_bytes()[pem_start..pem_end])
        .unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

/// Garbage instead of a ClientHello, and a client that never finishes its
/// handshake, are closed (the latter at the handshake timeout), counted,
/// and never get an instance.
#[test]
fn failed_and_abandoned_handshakes_cost_no_instance() {
    let scratch = Scratch::new("tls-garbage");
    let host = Host::start_config(&web_config(&scratch, false), &[], 1, true);
    let mut garbage = std::net::TcpStream::connect(host.addr).unwrap();
    garbage.set_read_timeout(Some(TIMEOUT)).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = garbage.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
        "served in plaintext"
    );

    let started = std::time::Instant::now();
    let mut silent = std::net::TcpStream::connect(host.addr).unwrap();
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = silent.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(1900) && waited < TIMEOUT,
        "closed after {waited:?}, the handshake timeout is 2s"
    );
    assert_eq!(
        host.metric("portico_tls_handshake_failures_total{service=\"web\"}"),
        2.0
    );
    assert!(!host.log().contains(": accepted "), "{}", host.log());
}

/// A drain does not wait for handshakes still in progress: clients that
/// never finish theirs are closed at once, not at the handshake timeout,
/// while a connection already served is drained as usual.
#[test]
fn a_drain_does_not_wait_for_handshakes() {
    let scratch = Scratch::new("tls-drain");
    let config = web_config(&scratch, false);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        r#"handshake-timeout = "2s""#,
        r#"handshake-timeout = "60s""#,
    );
    std::fs::write(&config, text).unwrap();
    let host = Host::start_config(&config, &[], 1, true);
    let mut served = tls_connect(host.addr, "a.test", None).unwrap();
    served.write_all(b"GET /whoami HTTP/1.1\r\n").unwrap();
    served.flush().unwrap();
    host.wait_for_log(&["accepted", "conn=1"]);
    let mut silent: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(host.addr).unwrap())
        .collect();

    let signalled = std::time::Instant::now();
    host.signal(libc::SIGTERM);
    host.wait_for_log(&["draining", "live=1"]);
    for stream in &mut silent {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        assert_eq!(stream.read(&mut [0; 1]).unwrap_or(0), 0);
    }
    served.write_all(b"Host: a.test\r\n\r\n").unwrap();
    let mut answer = [0; 15];
    served.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200 OK");
    drop(served);
    assert_eq!(host.wait_exit().code(), Some(0));
    assert!(
        signalled.elapsed() < std::time::Duration::from_secs(5),
        "drained in {:?}",
        signalled.elapsed()
    );
}

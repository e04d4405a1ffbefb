use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Certificates, Host, TIMEOUT, tls_connect};
use crate::{cores, exclusive, under_load};

/// A host with two services: `echo` (the misbehave plugin, plain), which
/// the echo load uses, and `front` (misbehave too), on TLS or behind the
/// PROXY protocol as `front` says, which the attackers use.
fn host_with_front(front: &str) -> Host {
    let certs = Certificates::get();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("front-door-{}.toml", std::process::id()));
    let misbehave = crate::util::plugin("misbehave");
    let text = format!(
        r#"
        [admin]
        listen = "127.0.0.1:0"
        [services.echo]
        plugin = "{plugin}"
        listen = ["127.0.0.1:0"]
        [services.front]
        plugin = "{plugin}"
        listen = ["127.0.0.1:0"]
        max-connections = 200
        {front}
        "#,
        plugin = misbehave.display(),
    )
    .replace("{certs}", &certs.dir.display().to_string());
    std::fs::write(&path, text).unwrap();
    let host = Host::start_config(&path, &[], 2, true);
    assert_eq!(host.listening[0].0, "echo", "the echo load goes to echo");
    host
}

const TLS: &str = r#"
    [services.front.tls]
    certificates = [ { cert = "{certs}/a.pem", key = "{certs}/a.key" } ]
    handshake-timeout = "2s"
"#;

const PROXY: &str = r#"
    [services.front.proxy-protocol]
    trusted = ["127.0.0.1/32"]
    timeout = "1s"
"#;

/// `attackers` threads running `attack` against `addr` in a loop until
/// `duration` has passed; returns how many times they ran it.
fn flood(addr: SocketAddr, attackers: usize, duration: Duration, attack: fn(SocketAddr)) -> usize {
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..attackers)
        .map(|_| {
            let done = done.clone();
            thread::spawn(move || {
                let started = Instant::now();
                while started.elapsed() < duration {
                    attack(addr);
                    done.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    done.load(Relaxed)
}

/// A well-behaved TLS client of `front` while the attack runs: connects,
/// echoes a line, and closes, again and again, until stopped; every
/// attempt must succeed.
struct LegitTls {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<(usize, Vec<String>)>,
}

impl LegitTls {
    fn start(addr: SocketAddr) -> LegitTls {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let stop = stop.clone();
            move || {
                let (mut served, mut errors) = (0, Vec::new());
                while !stop.load(Relaxed) {
                    match tls_echo(addr) {
                        Ok(()) => served += 1,
                        Err(error) => errors.push(error.to_string()),
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                (served, errors)
            }
        });
        LegitTls { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Relaxed);
        let (served, errors) = self.thread.join().unwrap();
        println!(
            "legitimate TLS client: {served} served, {} errors",
            errors.len()
        );
        assert!(served > 0, "the legitimate TLS client was never served");
        assert!(
            errors.is_empty(),
            "the legitimate TLS client failed: {errors:?}"
        );
    }
}

fn tls_echo(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = tls_connect(addr, "localhost", None)?;
    stream.write_all(b"echo\n")?;
    let mut ok = [0; 3];
    stream.read_exact(&mut ok)?;
    stream.write_all(b"ping\n")?;
    let mut ping = [0; 5];
    stream.read_exact(&mut ping)?;
    if (&ok, &ping) != (b"ok\n", b"ping\n") {
        return Err(std::io::Error::other("wrong bytes"));
    }
    Ok(())
}

/// Waits until the admin endpoint's `series` reaches `at_least`.
fn wait_for_metric(host: &Host, series: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let value = host.metric(series);
        if value >= at_least {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stays at {value}, below {at_least}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Twice as many attackers as cores complete TLS handshakes as fast as
/// they can (each one costs the host a signature) and hang up: the echo
/// load keeps its latency and a legitimate TLS client is served
/// throughout.
#[test]
fn tls_handshake_flood() {
    let _turn = exclusive();
    let host = host_with_front(TLS);
    let front = host.service("front");
    let handshakes = under_load(&host, "TLS handshake flood", || {
        let legit = LegitTls::start(front);
        let handshakes = flood(front, 2 * cores(), Duration::from_secs(2), |addr| {
            drop(tls_connect(addr, "localhost", None).expect("a flood handshake"));
        });
        legit.stop();
        handshakes
    });
    println!("TLS handshake flood: {handshakes} handshakes");
    assert!(handshakes > 0);
}

/// Slowloris in the handshake: many clients (as many as the service may
/// serve at once, and no more, so that the legitimate one has room) send a
/// TLS record header and then a byte a second; each is closed at the
/// handshake timeout and counted, none gets an instance, and the echo load
/// and a legitimate TLS client are unaffected.
#[test]
fn slowloris_during_the_handshake() {
    let _turn = exclusive();
    let host = host_with_front(TLS);
    let front = host.service("front");
    let slow = 8 * cores();
    under_load(&host, "slowloris TLS handshakes", || {
        let legit = LegitTls::start(front);
        let mut dripping: Vec<TcpStream> = (0..slow)
            .map(|_| {
                let mut stream = TcpStream::connect(front).unwrap();
                stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
                stream
            })
            .collect();
        for _ in 0..3 {
            thread::sleep(Duration::from_secs(1));
            for stream in &mut dripping {
                let _ = stream.write_all(&[0x01]);
            }
        }
        legit.stop();
    });
    let failures = r#"portico_tls_handshake_failures_total{service="front"}"#;
    assert_eq!(wait_for_metric(&host, failures, slow as f64), slow as f64);
}

/// Garbage instead of a ClientHello, from twice as many attackers as
/// cores as fast as they can: every connection closed and counted, the
/// echo load and a legitimate TLS client unaffected.
#[test]
fn garbage_instead_of_a_client_hello() {
    let _turn = exclusive();
    let host = host_with_front(TLS);
    let front = host.service("front");
    let sent = under_load(&host, "garbage ClientHellos", || {
        let legit = LegitTls::start(front);
        let sent = flood(front, 2 * cores(), Duration::from_secs(2), |addr| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let _ = stream.write_all(b"\x16\x03\x01\x00\x10garbage garbage!\xff\xfe");
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        });
        legit.stop();
        sent
    });
    println!("garbage ClientHellos: {sent} sent");
    let failures = r#"portico_tls_handshake_failures_total{service="front"}"#;
    assert_eq!(wait_for_metric(&host, failures, sent as f64), sent as f64);
}

/// Oversized and truncated PROXY headers, and garbage, from twice as many
/// attackers as cores (from the trusted address): each refused and
/// counted, the truncated ones at the header timeout; the echo load
/// unaffected, and a proxy with a good header served throughout.
#[test]
fn oversized_and_truncated_proxy_headers() {
    let _turn = exclusive();
    let host = host_with_front(PROXY);
    let front = host.service("front");
    let attacks: [fn(SocketAddr); 3] = [
        |addr| {
            // A version 2 header that claims 65,535 bytes after its fixed
            // part, and sends them.
            let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff".to_vec();
            header.extend(vec![0; 0xffff]);
            refused_after(addr, &header);
        },
        |addr| refused_after(addr, b"PROXY TCP4 192.0.2.1 127.0.0.1 4000"),
        |addr| refused_after(addr, &[b'P'; 200]),
    ];
    let sent: usize = under_load(&host, "bad PROXY headers", || {
        let good = thread::spawn(move || {
            let started = Instant::now();
            let mut served = 0;
            while started.elapsed() < Duration::from_secs(2) {
                let mut stream = TcpStream::connect(front).unwrap();
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                stream
                    .write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 7000\r\necho\n")
                    .unwrap();
                let mut ok = [0; 3];
                stream.read_exact(&mut ok).expect("a good header is served");
                assert_eq!(&ok, b"ok\n");
                served += 1;
            }
            served
        });
        let sent = attacks
            .iter()
            .map(|&attack| flood(front, 2 * cores(), Duration::from_millis(700), attack))
            .sum();
        assert!(good.join().unwrap() > 0);
        sent
    });
    println!("bad PROXY headers: {sent} sent");
    let refused = r#"portico_connections_refused_total{service="front",reason="proxy-header"}"#;
    assert_eq!(wait_for_metric(&host, refused, sent as f64), sent as f64);
}

/// Sends `bytes` (what it can) and waits for the host to close.
fn refused_after(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = stream.write_all(bytes);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "answered after a bad header: {rest:?}");
}

//! TLS: the host terminating TLS in front of the echo plugin, against a
//! native tokio-rustls echo server with the same certificate (ECDSA P-256,
//! made with `openssl`) and the same provider (*ring*). Same run, rounds
//! alternating which goes first; the client, a process of its own, is
//! pinned to one core and the server to the other.
//!
//! Two figures: full handshakes per second (the client resumes no session,
//! and each connection echoes one byte, so that Portico's include creating
//! the instance), and echo throughput over TLS (64 KiB writes, at most
//! 256 KiB in flight per connection). The client does not verify the
//! server's certificate (see [`client`]), so that the server, not the
//! client, is the bottleneck; both CPU shares are printed to show it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::capabilities::{Background, free_addr};
use crate::server::children_cpu;

/// Concurrent clients in the handshake scenario.
const HANDSHAKE_CLIENTS: usize = 16;
/// Connections in the throughput scenario.
const STREAM_CONNECTIONS: usize = 16;
const CHUNK: usize = 64 * 1024;
const WINDOW: u64 = 256 * 1024;

/// One server's figures in one round.
#[derive(Clone, Copy, Default)]
pub struct Figures {
    handshakes_per_s: f64,
    handshake_client_cpu: f64,
    handshake_server_cpu: f64,
    mib_per_s: f64,
    stream_client_cpu: f64,
    stream_server_cpu: f64,
}

/// A certificate and key for `localhost`, signed by a CA of their own.
struct Certificate {
    dir: PathBuf,
}

impl Certificate {
    fn make() -> Result<Certificate> {
        let dir = std::env::temp_dir().join(format!("portico-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let openssl = |args: &[&str]| -> Result<()> {
            let status = Command::new("openssl")
                .current_dir(&dir)
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .context("running openssl (Debian's openssl package)")?;
            if !status.success() {
                bail!("openssl {args:?} failed");
            }
            Ok(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-days",
                    "2",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-subj",
                    "/CN=bench CA",
                ],
            ]
            .concat(),
        )?;
        openssl(
            &[
                &["req", "-new"][..],
                &ec,
                &[
                    "-keyout",
                    "key.pem",
                    "-out",
                    "cert.csr",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=DNS:localhost",
                ],
            ]
            .concat(),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "cert.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-copy_extensions",
            "copyall",
            "-out",
            "cert.pem",
        ])?;
        Ok(Certificate { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `rounds` rounds; returns Portico's figures and the native
/// server's, one per round.
pub fn measure(
    host: &Path,
    plugin_dir: &Path,
    rounds: usize,
    seconds: u64,
) -> Result<(Vec<Figures>, Vec<Figures>)> {
    let certificate = Certificate::make()?;
    let bench = std::env::current_exe()?;
    let echo = plugin_dir.join("echo.wasm").display().to_string();
    let (cert, key) = (certificate.path("cert.pem"), certificate.path("key.pem"));
    let (mut portico, mut native) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for portico_turn in [round % 2 == 0, round % 2 != 0] {
            let addr = free_addr()?;
            let listen = addr.to_string();
            let server = if portico_turn {
                let args = [
                    "--plugin",
                    &echo,
                    "--listen",
                    &listen,
                    "--tls-cert",
                    &cert,
                    "--tls-key",
                    &key,
                    "--max-connections",
                    "2000",
                ];
                Background::start(addr, host, &args)?
            } else {
                let args = [
                    "native-tls-echo",
                    "--listen",
                    &listen,
                    "--cert",
                    &cert,
                    "--key",
                    &key,
                ];
                Background::start(addr, &bench, &args)?
            };
            eprintln!(
                "TLS round {} of {rounds}: {}",
                round + 1,
                if portico_turn { "Portico" } else { "native" }
            );
            let figures = run_client(&bench, &server, seconds).with_context(|| {
                format!(
                    "TLS against {}",
                    if portico_turn { "Portico" } else { "native" }
                )
            })?;
            match portico_turn {
                true => portico.push(figures),
                false => native.push(figures),
            }
        }
    }
    Ok((portico, native))
}

/// Runs both scenarios' client, pinned to CPU 1, against `server`.
fn run_client(bench: &Path, server: &Background, seconds: u64) -> Result<Figures> {
    let mut figures = Figures::default();
    for mode in ["handshakes", "stream"] {
        let server_before = crate::server::process_cpu(server.child.id())?.total_s();
        let (client_before, started) = (children_cpu(), Instant::now());
        let output = Command::new("taskset")
            .args(["-c", "1"])
            .arg(bench)
            .args(["tls-client", "--addr", &server.addr.to_string()])
            .args(["--mode", mode, "--seconds", &seconds.to_string()])
            .output()
            .context("running the TLS client")?;
        let elapsed = started.elapsed().as_secs_f64();
        if !output.status.success() {
            bail!(
                "the TLS client failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let value: f64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;
        let client_cpu = (children_cpu() - client_before).total_s() / elapsed;
        let server_cpu =
            (crate::server::process_cpu(server.child.id())?.total_s() - server_before) / elapsed;
        if mode == "handshakes" {
            (
                figures.handshakes_per_s,
                figures.handshake_client_cpu,
                figures.handshake_server_cpu,
            ) = (value, client_cpu, server_cpu);
        } else {
            (
                figures.mib_per_s,
                figures.stream_client_cpu,
                figures.stream_server_cpu,
            ) = (value, client_cpu, server_cpu);
        }
    }
    Ok(figures)
}

/// Prints both figures, medians over rounds, with the ratios.
pub fn report(portico: &[Figures], native: &[Figures]) {
    let median = |figures: &[Figures], metric: fn(&Figures) -> f64| {
        let mut values: Vec<f64> = figures.iter().map(metric).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!();
    println!(
        "TLS (ECDSA P-256, TLS 1.3, ring; client on CPU 1, server on CPU 0; medians of {} rounds)",
        portico.len()
    );
    println!("| metric | Portico | native tokio-rustls | Portico/native |");
    println!("| --- | ---: | ---: | ---: |");
    type Metric = (&'static str, fn(&Figures) -> f64);
    let metrics: [Metric; 8] = [
        ("full handshakes/s (16 clients, 1-byte echo each)", |f| {
            f.handshakes_per_s
        }),
        ("  server CPU per handshake, us", |f| {
            f.handshake_server_cpu * 1e6 / f.handshakes_per_s
        }),
        ("  client CPU, share of a core", |f| f.handshake_client_cpu),
        ("  server CPU, share of a core", |f| f.handshake_server_cpu),
        (
            "echo throughput, MiB/s (16 connections, 64 KiB writes)",
            |f| f.mib_per_s,
        ),
        ("  server CPU per MiB, ms", |f| {
            f.stream_server_cpu * 1e3 / f.mib_per_s
        }),
        ("  client CPU, share of a core", |f| f.stream_client_cpu),
        ("  server CPU, share of a core", |f| f.stream_server_cpu),
    ];
    for (name, metric) in metrics {
        let (p, n) = (median(portico, metric), median(native, metric));
        println!("| {name} | {p:.2} | {n:.2} | {:.2} |", p / n);
    }
}

/// The native baseline: a tokio-rustls echo server as one would write it,
/// printing `listening on ADDR` first.
pub fn serve(listen: SocketAddr, cert: &Path, key: &Path) -> Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                if let Ok(Ok(stream)) = handshake.await {
                    let (mut input, mut output) = tokio::io::split(stream);
                    let _ = tokio::io::copy(&mut input, &mut output).await;
                    let _ = output.shutdown().await;
                }
            });
        }
    })
}

/// The load generator: `mode` is `handshakes` (prints handshakes per
/// second) or `stream` (prints MiB per second).
pub fn client(addr: SocketAddr, mode: &str, seconds: u64) -> Result<()> {
    let connector = connector()?;
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Runtime::new()?;
    let value = runtime.block_on(async {
        match mode {
            "handshakes" => handshakes(addr, connector, duration).await,
            "stream" => stream(addr, connector, duration).await,
            other => bail!("no mode {other}"),
        }
    })?;
    println!("{value:.2}");
    Ok(())
}

/// A client that does a full handshake on every connection and does not
/// check the server's certificate.
pub fn connector() -> Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Checking the server's certificate and signature costs the client two
    // ECDSA verifications a handshake, more than the server spends: with
    // them the client, on its one core, was the bottleneck. Both servers
    // are this run's own.
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustTheServer(provider)))
        .with_no_client_auth();
    // Every handshake a full one: what a server pays for a new client.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Accepts the server's certificate and signatures unchecked.
#[derive(Debug)]
struct TrustTheServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for TrustTheServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects to `addr` and does a TLS handshake for `localhost`.
pub async fn connect(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost")?;
    Ok(connector.connect(name, tcp).await?)
}

async fn handshakes(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    duration: Duration,
) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..HANDSHAKE_CLIENTS)
        .map(|_| {
            let (connector, done) = (connector.clone(), done.clone());
            tokio::spawn(async move {
                while started.elapsed() < duration {
                    let mut stream = connect(addr, &connector).await?;
                    stream.write_all(b"x").await?;
                    let mut back = [0; 1];
                    stream.read_exact(&mut back).await?;
                    done.fetch_add(1, Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for client in clients {
        client.await??;
    }
    Ok(done.load(Relaxed) as f64 / started.elapsed().as_secs_f64())
}

async fn stream(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    duration: Duration,
) -> Result<f64> {
    let received = Arc::new(AtomicU64::new(0));
    let mut connections = Vec::new();
    for _ in 0..STREAM_CONNECTIONS {
        connections.push(connect(addr, &connector).await?);
    }
    let started = Instant::now();
    let clients: Vec<_> = connections
        .into_iter()
        .map(|mut stream| {
            let received = received.clone();
            tokio::spawn(async move {
                let chunk = vec![0x5a; CHUNK];
                let mut buf = vec![0; CHUNK];
                let (mut sent, mut got) = (0u64, 0u64);
                while started.elapsed() < duration {
                    stream.write_all(&chunk).await?;
                    sent += CHUNK as u64;
                    while sent - got > WINDOW - CHUNK as u64 {
                        let n = stream.read(&mut buf).await?;
                        if n == 0 {
                            bail!("the server closed mid-stream");
                        }
                        got += n as u64;
                        received.fetch_add(n as u64, Relaxed);
                    }
                }
                // Close as a client should: stop sending, take the rest.
                stream.shutdown().await?;
                while stream.read(&mut buf).await? > 0 {}
                Ok(())
            })
        })
        .collect();
    for client in clients {
        client.await??;
    }
    Ok(received.load(Relaxed) as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64())
}

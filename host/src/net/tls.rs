//! TLS termination for a service's listeners (rustls, with the *ring*
//! provider, which builds anywhere a C compiler does).
//!
//! The host completes the handshake before it creates an instance, so a
//! client that fails or abandons one costs no instance: it is closed,
//! logged at debug level and counted. The plugin then reads and writes
//! plaintext through the same streams as on a plain listener
//! ([`crate::net::socket`]).
//!
//! A service may have several certificates: the one whose names cover the
//! name the client asked for (SNI) is used, else the first. Optionally,
//! clients must present a certificate issued by a given CA.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use tokio::net::TcpStream;

/// A certificate chain and its key, as PEM files.
#[derive(Clone, Debug, PartialEq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A listener's TLS settings, as the config gives them.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsSpec {
    /// The first is the default, for clients that name no server or one
    /// that no certificate covers.
    pub certificates: Vec<CertificateFiles>,
    /// If set, clients must present a certificate this CA issued.
    pub client_ca: Option<PathBuf>,
    /// Protocols offered by ALPN, most preferred first.
    pub alpn: Vec<String>,
    pub handshake_timeout: Duration,
}

/// How long a client may take over its handshake, unless configured.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A service's TLS, loaded and ready to accept.
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
    /// The hash of every file it was loaded from, to tell on a reload
    /// whether any changed.
    pub files_digest: String,
}

impl Tls {
    /// Reads the certificates, keys and CA of `spec` and checks that each
    /// key belongs to its certificate.
    pub fn load(spec: &TlsSpec) -> Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let keys = spec
            .certificates
            .iter()
            .map(|files| certified_key(files, &provider))
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            bail!("TLS needs at least one certificate");
        }
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("no TLS protocol version is available")?;
        let builder = match &spec.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots
                        .add(cert)
                        .with_context(|| format!("a certificate in {}", path.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .with_context(|| format!("client CA {}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(BySni { keys }));
        config.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: spec.handshake_timeout,
            files_digest: files_digest(spec)?,
        })
    }

    /// Completes the handshake on `tcp` within the handshake timeout.
    pub async fn accept(&self, tcp: TcpStream) -> Result<(TcpStream, ServerConnection)> {
        let stream = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp))
            .await
            .map_err(|_| anyhow::anyhow!("no handshake within {:?}", self.handshake_timeout))?
            .context("handshake failed")?;
        let (tcp, mut session) = stream.into_inner();
        // The plugin's writes are bounded by the output stream (64 KiB at
        // a time, none while any is unsent), not by the session's buffer.
        session.set_buffer_limit(None);
        Ok((tcp, session))
    }
}

/// The hash of the files `spec` names, in order.
pub fn files_digest(spec: &TlsSpec) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    let paths = spec
        .certificates
        .iter()
        .flat_map(|files| [&files.cert, &files.key])
        .chain(&spec.client_ca);
    for path in paths {
        hasher.update(
            &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        );
    }
    Ok(hasher.finalize().to_hex().to_string())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn certified_key(files: &CertificateFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read a private key from {}", files.key.display()))?;
    let key = CertifiedKey::from_der(certs, key, provider).with_context(|| {
        format!(
            "the key {} does not go with the certificate {}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(Arc::new(key))
}

/// Chooses the certificate that covers the server name the client asked
/// for, else the first.
struct BySni {
    keys: Vec<Arc<CertifiedKey>>,
}

impl BySni {
    fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
        key.end_entity_cert()
            .ok()
            .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
            .is_some_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
    }
}

impl fmt::Debug for BySni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BySni({} certificates)", self.keys.len())
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let asked = hello
            .server_name()
            .and_then(|name| ServerName::try_from(name).ok());
        let covering = asked.and_then(|name| {
            self.keys
                .iter()
                .find(|key| BySni::covers(key, &name))
                .cloned()
        });
        covering.or_else(|| self.keys.first().cloned())
    }
}

//! The host side of `portico:plugin/connection`: what the TLS handshake and
//! a PROXY protocol header told the host about the connection an instance
//! serves. Answers are read off the connection's own socket, so a plugin
//! can learn of its connection and of no other.

use std::sync::Arc;

use rustls::{ProtocolVersion, ServerConnection};
use wasmtime::component::{HasData, Linker};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use self::bindings::portico::plugin::connection::{self, ClientCertificate, Host, TlsSession};
use crate::net::socket::Socket;

/// The host side of `portico:plugin/connection`, generated from the
/// contract; the handler world's bindings use these.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit",
        inline: "
            package portico:host;

            world connection {
                import portico:plugin/connection@0.4.0;
            }
        ",
        world: "portico:host/connection",
    });
}

/// What an instance may learn of its connection: the client's socket,
/// which holds what the handshake and the PROXY header established.
pub struct ConnectionCtx {
    /// `None` in the instance that checks a plugin at load, which serves
    /// no one.
    socket: Option<Arc<Socket>>,
}

impl ConnectionCtx {
    pub fn new(socket: Option<Arc<Socket>>) -> Self {
        Self { socket }
    }
}

/// Implemented once by the store's data, to reach the state.
pub trait ConnectionView: Send + 'static {
    fn connection(&mut self) -> &ConnectionCtx;
}

struct HasConnection;

impl HasData for HasConnection {
    type Data<'a> = &'a ConnectionCtx;
}

/// Links `portico:plugin/connection` for stores whose data reaches a
/// [`ConnectionCtx`], at the contract's version and at 0.3.0's.
pub fn add_to_linker<T: ConnectionView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    connection::add_to_linker::<T, HasConnection>(linker, T::connection)?;
    add_0_3_to_linker(linker)
}

/// Links 0.3.0's `connection`, which is the same interface: since 0.x minor
/// versions are not semver-compatible, wasmtime would not link it to the
/// current one by itself. Records are checked by their shape, so the
/// current types serve.
fn add_0_3_to_linker<T: ConnectionView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    let mut earlier = linker.instance("portico:plugin/connection@0.3.0")?;
    earlier.func_wrap("tls", |mut store, (): ()| {
        Ok((Host::tls(&mut store.data_mut().connection()),))
    })?;
    earlier.func_wrap("proxied", |mut store, (): ()| {
        Ok((Host::proxied(&mut store.data_mut().connection()),))
    })?;
    Ok(())
}

impl Host for &ConnectionCtx {
    fn tls(&mut self) -> Option<TlsSession> {
        let socket = self.socket.as_ref()?;
        let session = socket.tls()?;
        Some(tls_session(&session))
    }

    fn proxied(&mut self) -> bool {
        self.socket.as_ref().is_some_and(|socket| socket.proxied())
    }
}

fn tls_session(session: &ServerConnection) -> TlsSession {
    let protocol_version = match session.protocol_version() {
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let cipher_suite = session
        .negotiated_cipher_suite()
        .map(|suite| format!("{:?}", suite.suite()))
        .unwrap_or_default();
    TlsSession {
        server_name: session.server_name().map(str::to_string),
        alpn_protocol: session
            .alpn_protocol()
            .map(|protocol| String::from_utf8_lossy(protocol).into_owned()),
        protocol_version,
        cipher_suite,
        client_certificate: session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|der| client_certificate(der)),
    }
}

/// The subject and names of a certificate the handshake verified. (Its
/// DER parsed then, so it parses now; if it somehow did not, the plugin
/// still gets the DER.)
fn client_certificate(der: &[u8]) -> ClientCertificate {
    let (subject, subject_alt_names) = match X509Certificate::from_der(der) {
        Ok((_, cert)) => (cert.subject().to_string(), alt_names(&cert)),
        Err(_) => (String::new(), Vec::new()),
    };
    ClientCertificate {
        subject,
        subject_alt_names,
        der: der.to_vec(),
    }
}

fn alt_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(names)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(format!("DNS:{dns}")),
            GeneralName::RFC822Name(email) => Some(format!("email:{email}")),
            GeneralName::URI(uri) => Some(format!("URI:{uri}")),
            GeneralName::IPAddress(bytes) => ip_address(bytes).map(|ip| format!("IP:{ip}")),
            _ => None,
        })
        .collect()
}

fn ip_address(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(Into::into),
        16 => <[u8; 16]>::try_from(bytes).ok().map(Into::into),
        _ => None,
    }
}

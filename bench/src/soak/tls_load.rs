//! Full TLS handshakes, one after another on a few connections at once:
//! each connects to the TLS service, does a handshake that resumes no
//! session, echoes one byte, and closes. The client is the benchmark's
//! (`crate::tls`), which does not check the certificate: the soak's own,
//! made with `openssl` for the run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::record::{Part, Record};

pub const CLIENTS: usize = 2;
/// A pause between handshakes: the host's core is shared with every
/// other load, and a handshake costs it an ECDSA signature.
const PAUSE: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one handshaking client until `stop`.
pub async fn handshakes(
    addr: SocketAddr,
    connector: TlsConnector,
    record: Arc<Record>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(TIMEOUT, handshake(addr, &connector)) => outcome,
            () = stop.cancelled() => return,
        };
        match outcome {
            Ok(Ok(())) => record.done(Part::Tls, 1),
            Ok(Err(error)) => record.error(Part::Tls, format!("TLS: {error:#}")),
            Err(_) => record.error(Part::Tls, format!("TLS: no echo within {TIMEOUT:?}")),
        }
        tokio::time::sleep(PAUSE).await;
    }
}

async fn handshake(addr: SocketAddr, connector: &TlsConnector) -> Result<()> {
    let mut stream = crate::tls::connect(addr, connector).await?;
    stream.write_all(b"x").await?;
    let mut back = [0; 1];
    stream.read_exact(&mut back).await?;
    if back != *b"x" {
        bail!("wrong byte echoed");
    }
    stream.shutdown().await?;
    Ok(())
}

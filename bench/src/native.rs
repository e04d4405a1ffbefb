//! The baseline: a plain tokio echo server, as a native implementation of
//! the same service would be written. It runs in a process of its own, as
//! the host does, so that both are measured the same way.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

/// Serves echo on `listen` for ever, printing `listening on ADDR` first.
pub fn serve(listen: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen).await.context("binding")?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (mut stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let (mut input, mut output) = stream.split();
                let _ = tokio::io::copy(&mut input, &mut output).await;
            });
        }
    })
}

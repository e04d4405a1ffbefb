//! A plugin's bytes, from its file or pulled from an OCI registry.
//!
//! A pull follows the wasm OCI artifact layout (CNCF TAG Runtime, as
//! `wkg oci push` writes it), one step per module:
//!
//! - [`pull`]: the manifest, by tag or by the digest that pins it (its
//!   SHA-256 checked against the pin); then the layer, downloaded within
//!   the size limit and its SHA-256 checked against the manifest's before
//!   anything compiles it; all of it within one timeout.
//! - [`artifact`]: whether a manifest is a wasm component's: config
//!   `application/vnd.wasm.config.v0+json`, one `application/wasm` layer
//!   no larger than the limit.
//! - [`store`]: manifests and layers kept by digest in the cache folder
//!   (`<cache>/oci/sha256/`), so that a pinned plugin starts, and reloads,
//!   with the registry down, and an unmoved tag downloads nothing.
//! - [`auth`]: credentials from Docker's `config.json`, or none.
//!
//! TLS unless the registry is on a loopback address or listed as insecure.

mod artifact;
mod auth;
mod pull;
mod store;

use std::path::Path;

use anyhow::{Context, Result};

use super::plugin::Plugin;
use crate::config::{PluginSource, RegistrySettings};

/// A plugin's bytes, ready to compile.
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// The SHA-256 of `bytes` in hex, when it is known already (a pulled
    /// layer's, checked); a file's is computed only when needed.
    pub digest: Option<String>,
}

impl Fetched {
    /// The SHA-256 of the plugin, in hex: what logs and metrics show.
    pub fn digest(&self) -> String {
        self.digest
            .clone()
            .unwrap_or_else(|| super::cache::digest(&self.bytes))
    }
}

/// A registry that could not be reached or did not answer in time. At a
/// reload, the plugin in force stays, where a plugin the registry refuses
/// makes the reload fail.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// Whether `error` says the registry could not be reached.
pub fn is_unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<Unreachable>())
}

/// Reads the plugin file, or pulls the plugin (from the cache folder's
/// store when it holds it): its bytes, checked against their digest.
pub async fn fetch(
    source: &PluginSource,
    settings: &RegistrySettings,
    cache_dir: Option<&Path>,
) -> Result<Fetched> {
    match source {
        PluginSource::File(path) => {
            let path = path.clone();
            // A large file must not hold an async worker.
            let bytes = tokio::task::spawn_blocking(move || Plugin::read(&path))
                .await
                .context("the reading thread failed")??;
            Ok(Fetched {
                bytes,
                digest: None,
            })
        }
        PluginSource::Registry(reference) => {
            let store = cache_dir.map(store::Store::in_cache);
            pull::pull(reference, settings, store)
                .await
                .with_context(|| format!("plugin {reference}"))
        }
    }
}

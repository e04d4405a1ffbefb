//! One pull of a plugin from its registry, within `[registry] timeout`:
//! the manifest (checked against a pinned digest), its shape
//! ([`super::artifact`]), then the layer, from the store or downloaded and
//! checked byte for byte against the size and the digest its manifest
//! declares. Nothing of a layer reaches the compiler before its SHA-256 is
//! the manifest's.
//!
//! A pinned plugin kept in the store needs no network at all: the manifest
//! the pin names and the layer it names are both there, and both checked by
//! their hashes.

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::OciDescriptor;
use sha2::{Digest, Sha256};

use super::artifact::{self, Descriptor};
use super::store::{Kind, Store, sha256};
use super::{Fetched, Unreachable, auth};
use crate::config::{Reference, RegistrySettings};

/// The plugin `reference` names: from the store if pinned and kept there,
/// else from the registry (and then kept).
pub(super) async fn pull(
    reference: &Reference,
    settings: &RegistrySettings,
    store: Option<Store>,
) -> Result<Fetched> {
    if let (Some(pinned), Some(store)) = (&reference.digest, &store) {
        let (store, pinned, max_size) = (store.clone(), pinned.clone(), settings.max_size);
        let kept = tokio::task::spawn_blocking(move || kept(&store, &pinned, max_size))
            .await
            .ok()
            .flatten();
        if let Some(fetched) = kept {
            return Ok(fetched);
        }
    }
    let deadline = settings.timeout;
    match tokio::time::timeout(deadline, download(reference, settings, store)).await {
        Ok(pulled) => pulled,
        Err(_) => Err(Unreachable(format!(
            "the registry {} did not complete the pull within {} (--registry-timeout, \
             [registry] timeout)",
            reference.registry,
            humantime::format_duration(deadline)
        ))
        .into()),
    }
}

/// A pinned plugin kept in the store: the manifest `pinned` names, and the
/// layer it names.
fn kept(store: &Store, pinned: &str, max_size: u64) -> Option<Fetched> {
    let manifest = store.get(pinned, Kind::Manifest)?;
    let layer = artifact::wasm_layer(&manifest, max_size).ok()?;
    let bytes = store.get(&layer.digest, Kind::Layer)?;
    Some(fetched(bytes, &layer))
}

fn fetched(bytes: Vec<u8>, layer: &Descriptor) -> Fetched {
    Fetched {
        bytes,
        digest: Some(layer.digest["sha256:".len()..].to_owned()),
    }
}

/// The manifest and layer from the registry, both kept in `store`.
async fn download(
    reference: &Reference,
    settings: &RegistrySettings,
    store: Option<Store>,
) -> Result<Fetched> {
    let started = std::time::Instant::now();
    let client = client(reference, settings)?;
    let image = image(reference);
    let auth = auth::credentials(&reference.registry, settings.auth_file.as_deref())?;
    let (manifest, _) = client
        .pull_manifest_raw(&image, &auth, artifact::ACCEPTED)
        .await
        .map_err(|error| explain(error, reference, settings))?;
    let manifest_digest = sha256(&manifest);
    if let Some(pinned) = &reference.digest
        && manifest_digest != *pinned
    {
        bail!(mismatch("manifest", &manifest_digest, pinned));
    }
    let layer =
        artifact::wasm_layer(&manifest, settings.max_size).map_err(|problem| anyhow!(problem))?;
    let kept = match store.clone() {
        Some(store) => {
            let digest = layer.digest.clone();
            tokio::task::spawn_blocking(move || store.get(&digest, Kind::Layer))
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    let downloaded = kept.is_none();
    let bytes = match kept {
        Some(bytes) => bytes,
        None => download_layer(&client, &image, &layer, settings.max_size)
            .await
            .map_err(|error| match error.downcast::<OciDistributionError>() {
                Ok(error) => explain(error, reference, settings),
                Err(error) => error,
            })?,
    };
    tracing::info!(
        target: "portico_host::registry",
        plugin = %reference, manifest = %manifest_digest, layer = %layer.digest, bytes = bytes.len(),
        downloaded, ms = started.elapsed().as_millis() as u64, "plugin pulled"
    );
    let Some(store) = store else {
        return Ok(fetched(bytes, &layer));
    };
    // Kept before it is compiled, so that a restart with the registry
    // down finds it even if this start fails later.
    tokio::task::spawn_blocking(move || {
        store.put(&layer.digest, Kind::Layer, &bytes);
        store.put(&manifest_digest, Kind::Manifest, &manifest);
        fetched(bytes, &layer)
    })
    .await
    .context("the cache's writing thread failed")
}

/// The layer's bytes: no more than its manifest declares (which is within
/// `max_size`), and with the digest it declares.
async fn download_layer(
    client: &Client,
    image: &oci_client::Reference,
    layer: &Descriptor,
    max_size: u64,
) -> Result<Vec<u8>> {
    let declared = u64::try_from(layer.size).unwrap_or(u64::MAX);
    let descriptor = OciDescriptor {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size,
        ..Default::default()
    };
    let mut stream = client.pull_blob_stream(image, &descriptor).await?;
    if let Some(length) = stream.content_length.filter(|length| *length > declared) {
        bail!(
            "the registry sends {length} bytes for a layer its manifest declares as {declared} bytes"
        );
    }
    let mut bytes = Vec::with_capacity(usize::try_from(declared.min(max_size)).unwrap_or(0));
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        // A digest the stream itself found wrong is reported below, with
        // both digests, once every byte is in.
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) if bytes.len() as u64 == declared => {
                tracing::debug!(target: "portico_host::registry", "{error}");
                break;
            }
            Err(error) => return Err(error).context("the layer's download broke off"),
        };
        if bytes.len() as u64 + chunk.len() as u64 > declared {
            bail!(
                "the registry sends more bytes for a layer than its manifest declares ({declared})"
            );
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
    }
    if bytes.len() as u64 != declared {
        bail!(
            "the layer ended after {} of its {declared} bytes",
            bytes.len()
        );
    }
    let digest = format!("sha256:{}", hex(&hasher.finalize()));
    if digest != layer.digest {
        bail!(mismatch("layer", &digest, &layer.digest));
    }
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The words for content whose digest is not the one expected.
fn mismatch(what: &str, actual: &str, expected: &str) -> String {
    format!("the registry sent a {what} whose digest is {actual}, not {expected}")
}

/// A client for `reference`'s registry: plain HTTP only where allowed,
/// each request bounded by the timeout too (reqwest follows at most 10
/// redirects, so a loop ends in an error).
fn client(reference: &Reference, settings: &RegistrySettings) -> Result<Client> {
    // reqwest is built without a crypto provider of its own: rustls's
    // process default, ring, is the one the host's TLS uses. Installing it
    // again fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = match settings.allows_plain_http(reference) {
        true => ClientProtocol::Http,
        false => ClientProtocol::Https,
    };
    let config = ClientConfig {
        protocol,
        connect_timeout: Some(settings.timeout),
        read_timeout: Some(settings.timeout),
        ..Default::default()
    };
    Client::try_from(config).context("cannot set up the registry client")
}

/// The client crate's reference for ours.
fn image(reference: &Reference) -> oci_client::Reference {
    let (registry, repository) = (reference.registry.clone(), reference.repository.clone());
    match (&reference.tag, &reference.digest) {
        (_, Some(digest)) => {
            oci_client::Reference::with_digest(registry, repository, digest.clone())
        }
        (Some(tag), None) => oci_client::Reference::with_tag(registry, repository, tag.clone()),
        (None, None) => oci_client::Reference::with_tag(registry, repository, "latest".into()),
    }
}

/// The client's error in the operator's words: a registry that cannot be
/// reached is [`Unreachable`] (and, if it needed TLS, says how to allow
/// plain HTTP); a pinned manifest that is not the pin names both digests.
fn explain(
    error: OciDistributionError,
    reference: &Reference,
    settings: &RegistrySettings,
) -> anyhow::Error {
    let registry = &reference.registry;
    match error {
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            anyhow!(mismatch("manifest", &actual, &expected))
        }
        OciDistributionError::RequestError(error) if error.is_connect() || error.is_timeout() => {
            let hint = match settings.allows_plain_http(reference) {
                true => String::new(),
                false => format!(
                    " (TLS is required; a registry that speaks plain HTTP needs \
                     --insecure-registry {registry})"
                ),
            };
            Unreachable(format!(
                "cannot reach the registry {registry}: {}{hint}",
                crate::ops::log::error_line(&anyhow::Error::new(error))
            ))
            .into()
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => anyhow!(
            "the registry {registry} refused the pull: not authorized ({error}); give its \
             credentials with --registry-auth-file (or [registry] auth-file), a file in \
             Docker's config.json format"
        ),
        OciDistributionError::ServerError { code, .. } if code >= 500 => {
            Unreachable(format!("the registry {registry} is failing: {error}")).into()
        }
        error => {
            anyhow::Error::new(error).context(format!("the registry {registry} refused the pull"))
        }
    }
}

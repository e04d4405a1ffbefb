//! Whether a manifest is a wasm component's, as the CNCF wasm OCI artifact
//! layout has it (and `wkg oci push` writes it): an OCI image manifest
//! whose config is `application/vnd.wasm.config.v0+json` and whose one
//! layer is the component, `application/wasm`.
//!
//! Read from the manifest alone, before a byte of the layer is fetched:
//! an ordinary container image, an index of platforms, a media type we do
//! not know, or a layer over the size limit is refused with a sentence
//! saying which.

use serde::Deserialize;

pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub(super) const WASM_LAYER: &str = "application/wasm";

/// The manifest media types asked for: those of a wasm artifact, and
/// those of what it might be instead, to say so.
pub(super) const ACCEPTED: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<serde_json::Value>,
}

/// A blob a manifest names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    pub(super) media_type: String,
    pub(super) digest: String,
    pub(super) size: i64,
}

/// The component's layer in `manifest`, no larger than `max_size` bytes;
/// or why the manifest is not a plugin's.
pub(super) fn wasm_layer(manifest: &[u8], max_size: u64) -> Result<Descriptor, String> {
    let manifest: Manifest = serde_json::from_slice(manifest)
        .map_err(|error| format!("its manifest cannot be read: {error}"))?;
    let media_type = manifest.media_type.as_deref();
    if matches!(media_type, Some(OCI_INDEX | DOCKER_LIST)) || manifest.manifests.is_some() {
        return Err(
            "it is an image index (one manifest per platform), not a wasm component: \
                    name the component's own manifest"
                .into(),
        );
    }
    if let Some(other) =
        media_type.filter(|media_type| ![OCI_MANIFEST, DOCKER_MANIFEST].contains(media_type))
    {
        return Err(format!("its manifest has the unknown media type {other:?}"));
    }
    let config = manifest
        .config
        .map(|config| config.media_type)
        .unwrap_or_default();
    let layers: Vec<&str> = manifest
        .layers
        .iter()
        .map(|layer| layer.media_type.as_str())
        .collect();
    let [layer] = &manifest.layers[..] else {
        return Err(not_wasm(&config, &layers));
    };
    if config != WASM_CONFIG || layer.media_type != WASM_LAYER {
        return Err(not_wasm(&config, &layers));
    }
    if !crate::config::is_sha256(&layer.digest) {
        return Err(format!(
            "its layer's digest {:?} is not sha256:HEX",
            layer.digest
        ));
    }
    match u64::try_from(layer.size) {
        Ok(size) if size <= max_size => Ok(layer.clone()),
        _ => Err(too_large(&format!("{} bytes", layer.size), max_size)),
    }
}

fn not_wasm(config: &str, layers: &[&str]) -> String {
    format!(
        "it is not a wasm component: its config is {config:?} and its layers {layers:?} (a \
         container image?); a plugin is pushed as a wasm artifact (`wkg oci push`): config \
         {WASM_CONFIG}, one {WASM_LAYER} layer"
    )
}

/// The words for a layer of `size` over `max_size` bytes.
pub(super) fn too_large(size: &str, max_size: u64) -> String {
    format!(
        "its layer is {size}, over the limit of {} MiB (--registry-max-size, [registry] max-size)",
        max_size >> 20
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn manifest(config: &str, layers: &[(&str, i64)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(media_type, size)| serde_json::json!({"mediaType": media_type, "digest": LAYER, "size": size}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config, "digest": LAYER, "size": 2},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn a_wasm_artifact_gives_its_layer() {
        let layer = wasm_layer(&manifest(WASM_CONFIG, &[(WASM_LAYER, 100)]), 1 << 20).unwrap();
        assert_eq!((layer.digest.as_str(), layer.size), (LAYER, 100));
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let image = manifest(
            "application/vnd.oci.image.config.v1+json",
            &[("application/vnd.oci.image.layer.v1.tar", 10)],
        );
        for (manifest, reason) in [
            (image, "not a wasm component"),
            (manifest(WASM_CONFIG, &[]), "not a wasm component"),
            (
                manifest(WASM_CONFIG, &[(WASM_LAYER, 1), (WASM_LAYER, 1)]),
                "not a wasm component",
            ),
            (
                manifest(WASM_CONFIG, &[(WASM_LAYER, 2 << 20)]),
                "over the limit of 1 MiB",
            ),
            (manifest(WASM_CONFIG, &[(WASM_LAYER, -1)]), "over the limit"),
            (
                br#"{"mediaType":"application/x-other"}"#.to_vec(),
                "unknown media type",
            ),
            (br#"{"manifests":[]}"#.to_vec(), "image index"),
            (b"<html>".to_vec(), "cannot be read"),
        ] {
            let error = wasm_layer(&manifest, 1 << 20).unwrap_err();
            assert!(error.contains(reason), "{error}");
        }
    }
}

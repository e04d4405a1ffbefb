//! Manifests and layers pulled from registries, kept by digest in the
//! cache folder: `<cache>/oci/sha256/<hex>.json` for a manifest,
//! `<hex>.wasm` for a layer.
//!
//! A file is named after the SHA-256 of its content, and read back only if
//! its content still has that hash, so a truncated or altered file is
//! ignored (and pulled again), never served. Files are written aside and
//! renamed into place, so that a reader never sees half of one. A store
//! that cannot be written is logged, not fatal: the pull still serves.

use std::path::{Path, PathBuf};

/// What a kept file holds, by its extension.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Manifest,
    Layer,
}

impl Kind {
    fn extension(self) -> &'static str {
        match self {
            Kind::Manifest => "json",
            Kind::Layer => "wasm",
        }
    }
}

/// The `oci/sha256` folder of a cache folder.
#[derive(Clone)]
pub(super) struct Store {
    dir: PathBuf,
}

impl Store {
    pub(super) fn in_cache(cache_dir: &Path) -> Self {
        Store {
            dir: cache_dir.join("oci").join("sha256"),
        }
    }

    /// Where the content of `digest` (`sha256:HEX`) is kept; `None` for a
    /// digest that is not SHA-256, which could name no file safely.
    fn path(&self, digest: &str, kind: Kind) -> Option<PathBuf> {
        crate::config::is_sha256(digest).then(|| {
            let hex = &digest["sha256:".len()..];
            self.dir.join(format!("{hex}.{}", kind.extension()))
        })
    }

    /// The content kept under `digest`, if it is there and intact.
    pub(super) fn get(&self, digest: &str, kind: Kind) -> Option<Vec<u8>> {
        let path = self.path(digest, kind)?;
        let bytes = std::fs::read(&path).ok()?;
        if sha256(&bytes) == digest {
            return Some(bytes);
        }
        tracing::warn!(target: "portico_host::registry", file = %path.display(), "a pulled plugin kept in the cache is damaged; pulling it again");
        None
    }

    /// Keeps `bytes`, whose digest is `digest` (checked by the caller).
    pub(super) fn put(&self, digest: &str, kind: Kind, bytes: &[u8]) {
        let Some(path) = self.path(digest, kind) else {
            return;
        };
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&partial, bytes))
            .and_then(|()| std::fs::rename(&partial, &path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&partial);
            tracing::warn!(target: "portico_host::registry", dir = %self.dir.display(), "cannot keep a pulled plugin in the cache: {error}");
        }
    }
}

/// `sha256:HEX` of `bytes`.
pub(super) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", super::super::cache::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_kept_by_digest_and_a_damaged_file_is_ignored() {
        let dir = std::env::temp_dir().join(format!("portico-store-{}", std::process::id()));
        let store = Store::in_cache(&dir);
        let digest = sha256(b"\0asm component");
        assert_eq!(store.get(&digest, Kind::Layer), None);
        store.put(&digest, Kind::Layer, b"\0asm component");
        assert_eq!(
            store.get(&digest, Kind::Layer).as_deref(),
            Some(&b"\0asm component"[..])
        );
        assert_eq!(store.get(&digest, Kind::Manifest), None);
        let path = store.path(&digest, Kind::Layer).unwrap();
        assert!(path.ends_with(format!("oci/sha256/{}.wasm", &digest[7..])));
        std::fs::write(&path, b"\0asm altered").unwrap();
        assert_eq!(store.get(&digest, Kind::Layer), None);
        assert_eq!(store.path("sha256:../../etc/passwd", Kind::Layer), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}

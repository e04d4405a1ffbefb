//! Compiled plugins, kept on disk so that a restart or a reload does not
//! compile them again (a 15 MB Python or JavaScript plugin takes seconds).
//!
//! An entry is named after the plugin file's BLAKE3 hash and the engine's
//! compatibility hash, so a changed plugin, a different wasmtime or
//! different engine settings never find a stale entry. It holds a header
//! (a magic string and the BLAKE3 hash of the rest) and the bytes
//! `Engine::precompile_component` produced. An entry that is missing,
//! truncated, corrupted, foreign or refused by wasmtime is ignored and
//! written anew; the cache never makes a start fail.
//!
//! BLAKE3 rather than SHA-256 because start-up waits for it: it hashes the
//! 35 MB entry of a Python plugin in a few milliseconds where SHA-256 took
//! 40, which was a quarter of that plugin's warm start.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// What every entry starts with.
const MAGIC: &[u8] = b"portico-compiled-plugin-v2\n";

/// A cache folder.
pub struct Cache {
    dir: PathBuf,
}

/// The SHA-256 of a plugin file, in hex: what operators see in logs and
/// metrics, since it is what `sha256sum` prints.
pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a plugin's compiled code is kept: its file's hash, and the
/// engine's compatibility hash.
pub struct Key(String);

impl Key {
    pub fn of(engine: &Engine, wasm: &[u8]) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self(format!(
            "{}-{:016x}",
            blake3::hash(wasm).to_hex(),
            hasher.finish()
        ))
    }
}

impl Cache {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn entry(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{}.cwasm", key.0))
    }

    /// The component compiled from the plugin under `key`, if this host
    /// cached it before and the entry is intact.
    pub fn load(&self, engine: &Engine, key: &Key) -> Option<Component> {
        let path = self.entry(key);
        let bytes = std::fs::read(&path).ok()?;
        let compiled = intact(&bytes)?;
        // SAFETY: `Component::deserialize` trusts its input to be what
        // `Engine::precompile_component` wrote, since it maps it as code.
        // These bytes are: this host wrote them to its own cache folder,
        // and the hash in the header still matches, so they are neither
        // truncated nor corrupted. wasmtime checks they came from the same
        // wasmtime version and engine settings, and refuses them otherwise.
        // (Someone able to write this folder could forge an entry; the
        // folder deserves the same protection as the host binary itself.)
        match unsafe { Component::deserialize(engine, compiled) } {
            Ok(component) => Some(component),
            // One that does not fit this host's limits would not compile
            // either: the compiler says so, once.
            Err(error) if super::engine::pool_hint(&format!("{error:#}")).is_some() => None,
            Err(error) => {
                tracing::warn!(target: "portico_host::cache", entry = %path.display(), "compile cache entry refused, compiling again: {error}");
                None
            }
        }
    }

    /// Compiles `wasm` and stores the result under `key`, returning the
    /// component. A cache that cannot be written is logged, not fatal.
    pub fn compile(&self, engine: &Engine, wasm: &[u8], key: &Key) -> wasmtime::Result<Component> {
        let compiled = engine.precompile_component(wasm)?;
        if let Err(error) = self.store(key, &compiled) {
            tracing::warn!(target: "portico_host::cache", dir = %self.dir.display(), "cannot write the compile cache: {error}");
        }
        // SAFETY: these bytes come straight from `precompile_component` on
        // this engine, in this process.
        unsafe { Component::deserialize(engine, &compiled) }
    }

    fn store(&self, key: &Key, compiled: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.entry(key);
        // Written aside and renamed into place, so that a reader never sees
        // half an entry.
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        let mut entry = Vec::with_capacity(MAGIC.len() + blake3::OUT_LEN + compiled.len());
        entry.extend_from_slice(MAGIC);
        entry.extend_from_slice(blake3::hash(compiled).as_bytes());
        entry.extend_from_slice(compiled);
        std::fs::write(&partial, &entry)?;
        std::fs::rename(&partial, &path)
    }
}

/// The compiled bytes of an entry, if its header is right and its
/// checksum matches.
fn intact(entry: &[u8]) -> Option<&[u8]> {
    let rest = entry.strip_prefix(MAGIC)?;
    let (checksum, compiled) = rest.split_at_checked(blake3::OUT_LEN)?;
    (blake3::hash(compiled).as_bytes() == checksum).then_some(compiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_entry_is_not_intact() {
        let compiled = b"compiled code";
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(blake3::hash(compiled).as_bytes());
        entry.extend_from_slice(compiled);
        assert_eq!(intact(&entry), Some(&compiled[..]));
        assert_eq!(intact(&entry[..entry.len() - 1]), None);
        let last = entry.len() - 1;
        entry[last] ^= 1;
        assert_eq!(intact(&entry), None);
        assert_eq!(intact(b"something else"), None);
    }
}

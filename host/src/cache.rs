//! Compiled plugins, kept on disk so that a restart or a reload does not
//! compile them again (a 15 MB Python or JavaScript plugin takes seconds).
//!
//! An entry is named after the plugin file's SHA-256 and the engine's
//! compatibility hash, so a changed plugin, a different wasmtime or
//! different engine settings never find a stale entry. It is two files:
//! `KEY.cwasm`, the bytes `Engine::precompile_component` produced, which
//! wasmtime maps rather than copies (a Python plugin's is 35 MB); and
//! `KEY.sum`, a magic line and their SHA-256. An entry that is missing,
//! truncated, corrupted, foreign or refused by wasmtime is ignored and
//! written anew; the cache never makes a start fail.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// What every checksum file starts with.
const MAGIC: &str = "portico-compiled-plugin-v2 sha256:";

/// A cache folder.
pub struct Cache {
    dir: PathBuf,
}

/// The SHA-256 of a plugin file, in hex.
pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cache {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The entry's compiled-code file; its checksum file is beside it.
    fn entry(&self, engine: &Engine, digest: &str) -> PathBuf {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir
            .join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
    }

    /// The component compiled from a plugin whose file has `digest`, if
    /// this host cached it before and the entry is intact.
    pub fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.entry(engine, digest);
        let sum = std::fs::read_to_string(path.with_extension("sum")).ok()?;
        let compiled = std::fs::read(&path).ok()?;
        if sum.strip_prefix(MAGIC)? != hex(&Sha256::digest(&compiled)) {
            return None;
        }
        drop(compiled);
        // SAFETY: `Component::deserialize_file` trusts the file to be what
        // `Engine::precompile_component` wrote, since it maps it as code.
        // This one is: this host wrote it to its own cache folder, and its
        // SHA-256 still matches the checksum written beside it, so it is
        // neither truncated nor corrupted. wasmtime checks it came from the
        // same wasmtime version and engine settings, and refuses it
        // otherwise. (Someone able to write this folder could forge an
        // entry; the folder deserves the protection of the host binary.)
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(entry = %path.display(), "compile cache entry refused, compiling again: {error}");
                None
            }
        }
    }

    /// Compiles `wasm` and stores the result under `digest`, returning the
    /// component. A cache that cannot be written is logged, not fatal.
    pub fn compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        digest: &str,
    ) -> wasmtime::Result<Component> {
        let compiled = engine.precompile_component(wasm)?;
        if let Err(error) = self.store(engine, digest, &compiled) {
            tracing::warn!(dir = %self.dir.display(), "cannot write the compile cache: {error}");
        }
        // SAFETY: these bytes come straight from `precompile_component` on
        // this engine, in this process.
        unsafe { Component::deserialize(engine, &compiled) }
    }

    /// Writes the entry: the code, then its checksum, each aside and
    /// renamed into place, so that a reader never sees half of either, and
    /// a checksum never stands beside code it was not computed from.
    fn store(&self, engine: &Engine, digest: &str, compiled: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.entry(engine, digest);
        let sum = format!("{MAGIC}{}", hex(&Sha256::digest(compiled)));
        let _ = std::fs::remove_file(path.with_extension("sum"));
        write_aside(&path, compiled)?;
        write_aside(&path.with_extension("sum"), sum.as_bytes())
    }
}

fn write_aside(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

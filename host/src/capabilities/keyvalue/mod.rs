//! Key-value buckets, the host side of `wasi:keyvalue` (0.2.0-draft: store,
//! atomics, batch): state that outlives a connection.
//!
//! A bucket is declared by the operator (`[keyvalue.NAME]`), lives in one
//! of three backends, and is opened only by the services granted it
//! (`grants.keyvalue`); every service granted a bucket shares it.
//! - `memory`: in this process, gone at exit; the default.
//! - `file`: an embedded redb database, each write committed durably before
//!   it returns, so data survives a restart and a `kill -9`.
//! - `redis`: a Redis server, shared by several hosts: the scale-out one.
//!
//! Keys are at most [`MAX_KEY_BYTES`], values at most [`MAX_VALUE_BYTES`];
//! a bucket holds at most `max-keys` keys and, in memory, `max-bytes` of
//! keys and values together. A plugin at a limit gets an error, and the
//! host's memory never grows past them. Counters (`increment`) are decimal
//! integers in ASCII, as Redis's `INCR` keeps them, in every backend.

mod checked;
mod file;
mod host;
mod memory;
mod redis;

pub use host::{KeyValueCtx, KeyValueCtxView, KeyValueView};

/// The host side of `wasi:keyvalue`, generated from the contract's copy of
/// it; the handler world's bindings use these.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit",
        world: "wasi:keyvalue/imports",
        // Backends wait on a disk or on Redis.
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": super::OpenBucket },
    });
}

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Keys one `list-keys` call returns at most; the cursor gives the rest.
const PAGE: usize = 1000;

/// Links `wasi:keyvalue` (store, atomics, batch) for stores whose data
/// reaches a [`KeyValueCtx`]: the generated calls, then the checked ones
/// in front of those that take keys and values.
pub fn add_to_linker<T: KeyValueView>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    host::add_to_linker(linker)?;
    checked::add_to_linker(linker)
}

/// Where a bucket lives, and its limits, as the config gives them.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketSpec {
    pub name: String,
    pub backend: BackendSpec,
    pub max_keys: u64,
    /// Keys and values together, in memory.
    pub max_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum BackendSpec {
    Memory,
    File(PathBuf),
    Redis(String),
}

/// The defaults of a bucket's limits.
pub const DEFAULT_MAX_KEYS: u64 = 100_000;
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// Where one bucket's entries live. Keys and values reach a backend
/// checked against [`MAX_KEY_BYTES`] and [`MAX_VALUE_BYTES`]; the backend
/// keeps the bucket's own limits (`max-keys`, and in memory `max-bytes`).
#[async_trait]
trait Backend: Send + Sync {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>>;
    async fn set(&self, key: &str, value: Vec<u8>) -> KvResult<()>;
    async fn delete(&self, key: &str) -> KvResult<()>;
    async fn exists(&self, key: &str) -> KvResult<bool>;
    /// A page of at most [`PAGE`] keys from `cursor`, and the cursor of
    /// the next page if there is one.
    async fn list_keys(&self, cursor: Option<u64>) -> KvResult<(Vec<String>, Option<u64>)>;
    /// Adds `delta` to the counter at `key` (0 when absent) atomically.
    async fn increment(&self, key: &str, delta: u64) -> KvResult<u64>;
}

/// An open bucket.
pub struct Bucket {
    spec: BucketSpec,
    backend: Box<dyn Backend>,
}

/// Why an operation failed: a limit (counted and logged, see
/// [`KeyValueCtxView::answer`]), or anything else.
#[derive(Debug)]
pub enum KvError {
    Limit(String),
    Failed(String),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Limit(problem) | KvError::Failed(problem) => f.write_str(problem),
        }
    }
}

impl std::error::Error for KvError {}

type KvResult<T> = std::result::Result<T, KvError>;

fn other(problem: impl std::fmt::Display) -> KvError {
    KvError::Failed(problem.to_string())
}

fn limit(problem: impl std::fmt::Display) -> KvError {
    KvError::Limit(problem.to_string())
}

fn bucket_full(max_keys: u64) -> KvError {
    limit(format!("bucket full: {max_keys} keys"))
}

/// Refuses a key of `len` bytes if it is too long.
pub fn check_key_size(len: usize) -> KvResult<()> {
    if len > MAX_KEY_BYTES {
        return Err(limit(format!(
            "key of {len} bytes, more than the {MAX_KEY_BYTES} allowed"
        )));
    }
    Ok(())
}

/// Refuses a value of `len` bytes if it is too large.
pub fn check_value_size(len: usize) -> KvResult<()> {
    if len > MAX_VALUE_BYTES {
        return Err(limit(format!(
            "value of {len} bytes, more than the {MAX_VALUE_BYTES} allowed"
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> KvResult<()> {
    check_key_size(key.len())
}

fn check_value(value: &[u8]) -> KvResult<()> {
    check_value_size(value.len())
}

/// The counter `value` holds plus `delta`.
fn add(value: Option<&[u8]>, delta: u64) -> KvResult<u64> {
    let old = match value {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| other("value is not an integer"))?,
    };
    old.checked_add(delta)
        .ok_or_else(|| other("increment would overflow"))
}

/// A page of `keys` that started at offset `skip`, and the cursor of the
/// next page if `more` follow: memory and file buckets page by offset
/// into their keys in order.
fn page(skip: usize, keys: Vec<String>, more: bool) -> (Vec<String>, Option<u64>) {
    let next = more.then(|| (skip + keys.len()) as u64);
    (keys, next)
}

impl Bucket {
    /// Opens the bucket `spec` describes: creates its file, or connects to
    /// its Redis server.
    pub async fn open(spec: &BucketSpec) -> Result<Bucket> {
        let backend: Box<dyn Backend> = match &spec.backend {
            BackendSpec::Memory => Box::new(memory::Memory::new(spec.max_keys, spec.max_bytes)),
            BackendSpec::File(path) => {
                Box::new(file::File::open(path, &spec.name, spec.max_keys).await?)
            }
            BackendSpec::Redis(url) => {
                Box::new(redis::Redis::connect(url, &spec.name, spec.max_keys).await?)
            }
        };
        Ok(Bucket {
            spec: spec.clone(),
            backend,
        })
    }

    pub fn spec(&self) -> &BucketSpec {
        &self.spec
    }

    pub async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        check_key(key)?;
        self.backend.get(key).await
    }

    pub async fn set(&self, key: &str, value: Vec<u8>) -> KvResult<()> {
        check_key(key)?;
        check_value(&value)?;
        self.backend.set(key, value).await
    }

    pub async fn delete(&self, key: &str) -> KvResult<()> {
        check_key(key)?;
        self.backend.delete(key).await
    }

    pub async fn exists(&self, key: &str) -> KvResult<bool> {
        check_key(key)?;
        self.backend.exists(key).await
    }

    /// A page of keys, from `cursor`, and the cursor of the next page.
    pub async fn list_keys(&self, cursor: Option<u64>) -> KvResult<(Vec<String>, Option<u64>)> {
        self.backend.list_keys(cursor).await
    }

    pub async fn increment(&self, key: &str, delta: u64) -> KvResult<u64> {
        check_key(key)?;
        self.backend.increment(key, delta).await
    }

    /// The values of `keys`, each with its key, at most
    /// [`MAX_ANSWER_BYTES`] of them together.
    pub async fn get_many(&self, keys: Vec<String>) -> KvResult<Vec<Option<(String, Vec<u8>)>>> {
        let mut values = Vec::with_capacity(keys.len());
        let mut bytes = 0;
        for key in keys {
            let value = self.get(&key).await?;
            bytes += value.as_ref().map_or(0, Vec::len);
            if bytes > MAX_ANSWER_BYTES {
                return Err(answer_too_large());
            }
            values.push(value.map(|value| (key, value)));
        }
        Ok(values)
    }
}

/// The buckets a service's plugin may open, by name.
pub type Granted = HashMap<String, Arc<Bucket>>;

/// A bucket a plugin opened: the resource behind `wasi:keyvalue/store.bucket`.
pub struct OpenBucket(Arc<Bucket>);

/// Most keys one batch call may name: each is a backend operation.
pub const MAX_BATCH: usize = 1000;

/// Most bytes of values one `get-many` answers with: the answer is built in
/// the host before it is copied into the plugin.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

pub fn answer_too_large() -> KvError {
    limit(format!(
        "the values asked for come to more than {MAX_ANSWER_BYTES} bytes"
    ))
}

pub fn too_many_keys() -> KvError {
    limit(format!("more than {MAX_BATCH} keys in one call"))
}

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

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use wasmtime::component::Resource;

use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::outbound::Capability;
use crate::sandbox::ConnState;

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Keys one `list-keys` call returns at most; the cursor gives the rest.
const PAGE: usize = 1000;

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

/// An open bucket.
pub struct Bucket {
    spec: BucketSpec,
    backend: Backend,
}

enum Backend {
    Memory(Mutex<Memory>),
    File(Arc<redb::Database>),
    Redis(redis::aio::ConnectionManager),
}

#[derive(Default)]
struct Memory {
    entries: BTreeMap<String, Vec<u8>>,
    /// Keys and values together.
    bytes: u64,
}

impl Memory {
    fn set(&mut self, key: &str, value: Vec<u8>, max_keys: u64, max_bytes: u64) -> KvResult<()> {
        let old = self.entries.get(key).map(|old| key.len() + old.len());
        if old.is_none() && self.entries.len() as u64 >= max_keys {
            return Err(limit(format!("bucket full: {max_keys} keys")));
        }
        let bytes = self.bytes - old.unwrap_or(0) as u64 + (key.len() + value.len()) as u64;
        if bytes > max_bytes {
            return Err(limit(format!("bucket full: {max_bytes} bytes")));
        }
        self.bytes = bytes;
        self.entries.insert(key.to_string(), value);
        Ok(())
    }
}

/// Why an operation failed: a limit (counted and logged, see
/// [`ConnState::answer`]), or anything else.
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

/// What a plugin is told when an operation fails.
type WitResult<T> = std::result::Result<T, store::Error>;

fn other(problem: impl std::fmt::Display) -> KvError {
    KvError::Failed(problem.to_string())
}

fn limit(problem: impl std::fmt::Display) -> KvError {
    KvError::Limit(problem.to_string())
}

fn check_key(key: &str) -> KvResult<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(limit(format!(
            "key of {} bytes, more than the {MAX_KEY_BYTES} allowed",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> KvResult<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(limit(format!(
            "value of {} bytes, more than the {MAX_VALUE_BYTES} allowed",
            value.len()
        )));
    }
    Ok(())
}

fn counter(value: Option<&[u8]>) -> KvResult<u64> {
    match value {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| other("value is not an integer")),
    }
}

impl Bucket {
    /// Opens the bucket `spec` describes: creates its file, or connects to
    /// its Redis server.
    pub async fn open(spec: &BucketSpec) -> Result<Bucket> {
        let backend = match &spec.backend {
            BackendSpec::Memory => Backend::Memory(Mutex::default()),
            BackendSpec::File(path) => {
                let path = path.clone();
                let db = tokio::task::spawn_blocking(move || {
                    if let Some(folder) = path.parent() {
                        std::fs::create_dir_all(folder)?;
                    }
                    redb::Database::create(&path)
                        .with_context(|| format!("cannot open {}", path.display()))
                })
                .await??;
                Backend::File(Arc::new(db))
            }
            BackendSpec::Redis(url) => {
                let client = redis::Client::open(url.as_str())
                    .with_context(|| format!("{url:?} is not a Redis URL"))?;
                let manager = redis::aio::ConnectionManager::new(client)
                    .await
                    .with_context(|| format!("cannot connect to Redis at {url}"))?;
                Backend::Redis(manager)
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

    fn memory(memory: &Mutex<Memory>) -> std::sync::MutexGuard<'_, Memory> {
        memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn redis_key(&self, key: &str) -> String {
        format!("portico:{}:{key}", self.spec.name)
    }

    /// Runs `work` on the file database, off the async workers (a commit
    /// waits for the disk).
    async fn on_file<T: Send + 'static>(
        &self,
        db: &Arc<redb::Database>,
        work: impl FnOnce(&redb::Database, TableDefinition<'_, &str, &[u8]>) -> Result<T>
        + Send
        + 'static,
    ) -> KvResult<T> {
        let (db, name) = (db.clone(), self.spec.name.clone());
        tokio::task::spawn_blocking(move || work(&db, TableDefinition::new(&name)))
            .await
            .map_err(other)?
            .map_err(|error| match error.downcast::<KvError>() {
                Ok(error) => error,
                Err(error) => other(format!("{error:#}")),
            })
    }

    pub async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        check_key(key)?;
        match &self.backend {
            Backend::Memory(memory) => Ok(Self::memory(memory).entries.get(key).cloned()),
            Backend::File(db) => {
                let key = key.to_string();
                self.on_file(db, move |db, table| {
                    let read = db.begin_read()?;
                    let table = match read.open_table(table) {
                        Ok(table) => table,
                        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                        Err(error) => return Err(error.into()),
                    };
                    Ok(table.get(key.as_str())?.map(|value| value.value().to_vec()))
                })
                .await
            }
            Backend::Redis(redis) => redis::cmd("GET")
                .arg(self.redis_key(key))
                .query_async(&mut redis.clone())
                .await
                .map_err(other),
        }
    }

    pub async fn set(&self, key: &str, value: Vec<u8>) -> KvResult<()> {
        check_key(key)?;
        check_value(&value)?;
        let (max_keys, max_bytes) = (self.spec.max_keys, self.spec.max_bytes);
        match &self.backend {
            Backend::Memory(memory) => Self::memory(memory).set(key, value, max_keys, max_bytes),
            Backend::File(db) => {
                let key = key.to_string();
                self.on_file(db, move |db, table| {
                    let write = db.begin_write()?;
                    {
                        let mut table = write.open_table(table)?;
                        if table.get(key.as_str())?.is_none() && table.len()? >= max_keys {
                            return Err(limit(format!("bucket full: {max_keys} keys")).into());
                        }
                        table.insert(key.as_str(), value.as_slice())?;
                    }
                    write.commit()?;
                    Ok(())
                })
                .await
            }
            Backend::Redis(redis) => redis::cmd("SET")
                .arg(self.redis_key(key))
                .arg(value)
                .query_async(&mut redis.clone())
                .await
                .map_err(other),
        }
    }

    pub async fn delete(&self, key: &str) -> KvResult<()> {
        check_key(key)?;
        match &self.backend {
            Backend::Memory(memory) => {
                let mut memory = Self::memory(memory);
                if let Some(old) = memory.entries.remove(key) {
                    memory.bytes -= (key.len() + old.len()) as u64;
                }
                Ok(())
            }
            Backend::File(db) => {
                let key = key.to_string();
                self.on_file(db, move |db, table| {
                    let write = db.begin_write()?;
                    write.open_table(table)?.remove(key.as_str())?;
                    write.commit()?;
                    Ok(())
                })
                .await
            }
            Backend::Redis(redis) => redis::cmd("DEL")
                .arg(self.redis_key(key))
                .query_async::<u64>(&mut redis.clone())
                .await
                .map(drop)
                .map_err(other),
        }
    }

    pub async fn exists(&self, key: &str) -> KvResult<bool> {
        check_key(key)?;
        match &self.backend {
            Backend::Memory(memory) => Ok(Self::memory(memory).entries.contains_key(key)),
            Backend::Redis(redis) => redis::cmd("EXISTS")
                .arg(self.redis_key(key))
                .query_async(&mut redis.clone())
                .await
                .map_err(other),
            Backend::File(_) => Ok(self.get(key).await?.is_some()),
        }
    }

    /// A page of keys, from `cursor` (an offset into the keys in order;
    /// for Redis, its `SCAN` cursor), and the cursor of the next page.
    pub async fn list_keys(&self, cursor: Option<u64>) -> KvResult<(Vec<String>, Option<u64>)> {
        let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        let page = |keys: Vec<String>, more: bool| {
            let next = more.then(|| (skip + keys.len()) as u64);
            (keys, next)
        };
        match &self.backend {
            Backend::Memory(memory) => {
                let memory = Self::memory(memory);
                let keys: Vec<String> = memory
                    .entries
                    .keys()
                    .skip(skip)
                    .take(PAGE)
                    .cloned()
                    .collect();
                let more = memory.entries.len() > skip + keys.len();
                Ok(page(keys, more))
            }
            Backend::File(db) => {
                let (keys, more) = self
                    .on_file(db, move |db, table| {
                        let read = db.begin_read()?;
                        let table = match read.open_table(table) {
                            Ok(table) => table,
                            Err(redb::TableError::TableDoesNotExist(_)) => {
                                return Ok((Vec::new(), false));
                            }
                            Err(error) => return Err(error.into()),
                        };
                        let mut keys = Vec::new();
                        for entry in table.iter()?.skip(skip).take(PAGE + 1) {
                            keys.push(entry?.0.value().to_string());
                        }
                        let more = keys.len() > PAGE;
                        keys.truncate(PAGE);
                        Ok((keys, more))
                    })
                    .await?;
                Ok(page(keys, more))
            }
            Backend::Redis(redis) => {
                let prefix = self.redis_key("");
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor.unwrap_or(0))
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(PAGE)
                    .query_async(&mut redis.clone())
                    .await
                    .map_err(other)?;
                let keys = keys
                    .into_iter()
                    .filter_map(|key| key.strip_prefix(&prefix).map(str::to_string))
                    .collect();
                Ok((keys, (next != 0).then_some(next)))
            }
        }
    }

    pub async fn increment(&self, key: &str, delta: u64) -> KvResult<u64> {
        check_key(key)?;
        let add = move |value: Option<&[u8]>| {
            counter(value)?
                .checked_add(delta)
                .ok_or_else(|| other("increment would overflow"))
        };
        match &self.backend {
            Backend::Memory(memory) => {
                let (max_keys, max_bytes) = (self.spec.max_keys, self.spec.max_bytes);
                let mut memory = Self::memory(memory);
                let new = add(memory.entries.get(key).map(Vec::as_slice))?;
                memory.set(key, new.to_string().into_bytes(), max_keys, max_bytes)?;
                Ok(new)
            }
            Backend::File(db) => {
                let (key, max_keys) = (key.to_string(), self.spec.max_keys);
                self.on_file(db, move |db, table| {
                    let write = db.begin_write()?;
                    let new = {
                        let mut table = write.open_table(table)?;
                        let old = table.get(key.as_str())?.map(|value| value.value().to_vec());
                        if old.is_none() && table.len()? >= max_keys {
                            return Err(limit(format!("bucket full: {max_keys} keys")).into());
                        }
                        let new = add(old.as_deref())?;
                        table.insert(key.as_str(), new.to_string().as_bytes())?;
                        new
                    };
                    write.commit()?;
                    Ok(new)
                })
                .await
            }
            Backend::Redis(redis) => {
                let delta = i64::try_from(delta).map_err(|_| other("increment too large"))?;
                redis::cmd("INCRBY")
                    .arg(self.redis_key(key))
                    .arg(delta)
                    .query_async::<i64>(&mut redis.clone())
                    .await
                    .map_err(other)
                    .and_then(|value| {
                        u64::try_from(value).map_err(|_| other("counter is negative"))
                    })
            }
        }
    }
}

/// The buckets a service's plugin may open, by name.
pub type Granted = HashMap<String, Arc<Bucket>>;

/// A bucket a plugin opened: the resource behind `wasi:keyvalue/store.bucket`.
pub struct OpenBucket(Arc<Bucket>);

impl ConnState {
    /// What the plugin is told of `result`; a limit it reached is also
    /// counted and logged.
    pub fn answer<T>(&self, result: KvResult<T>) -> WitResult<T> {
        result.map_err(|error| {
            if let KvError::Limit(problem) = &error {
                self.outbound.limit_hit(Capability::KeyValue, problem);
            }
            store::Error::Other(error.to_string())
        })
    }

    /// The bucket behind a plugin's handle.
    pub fn open_bucket(&self, bucket: &Resource<OpenBucket>) -> wasmtime::Result<Arc<Bucket>> {
        self.bucket(bucket)
    }

    fn bucket(&self, bucket: &Resource<OpenBucket>) -> wasmtime::Result<Arc<Bucket>> {
        Ok(self.table.get(bucket)?.0.clone())
    }
}

impl store::Host for ConnState {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<WitResult<Resource<OpenBucket>>> {
        let Some(bucket) = self.buckets.get(&identifier).cloned() else {
            self.outbound.refuse_bucket(&identifier);
            return Ok(Err(store::Error::AccessDenied));
        };
        Ok(Ok(self.table.push(OpenBucket(bucket))?))
    }
}

impl store::HostBucket for ConnState {
    async fn get(
        &mut self,
        bucket: Resource<OpenBucket>,
        key: String,
    ) -> wasmtime::Result<WitResult<Option<Vec<u8>>>> {
        let result = self.bucket(&bucket)?.get(&key).await;
        Ok(self.answer(result))
    }

    async fn set(
        &mut self,
        bucket: Resource<OpenBucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<WitResult<()>> {
        let result = self.bucket(&bucket)?.set(&key, value).await;
        Ok(self.answer(result))
    }

    async fn delete(
        &mut self,
        bucket: Resource<OpenBucket>,
        key: String,
    ) -> wasmtime::Result<WitResult<()>> {
        let result = self.bucket(&bucket)?.delete(&key).await;
        Ok(self.answer(result))
    }

    async fn exists(
        &mut self,
        bucket: Resource<OpenBucket>,
        key: String,
    ) -> wasmtime::Result<WitResult<bool>> {
        let result = self.bucket(&bucket)?.exists(&key).await;
        Ok(self.answer(result))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<OpenBucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<WitResult<store::KeyResponse>> {
        let listed = self.bucket(&bucket)?.list_keys(cursor).await;
        Ok(self.answer(listed.map(|(keys, cursor)| store::KeyResponse { keys, cursor })))
    }

    async fn drop(&mut self, bucket: Resource<OpenBucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for ConnState {
    async fn increment(
        &mut self,
        bucket: Resource<OpenBucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<WitResult<u64>> {
        let result = self.bucket(&bucket)?.increment(&key, delta).await;
        Ok(self.answer(result))
    }
}

/// Most keys one batch call may name: each is a backend operation.
pub const MAX_BATCH: usize = 1000;

pub fn too_many_keys() -> KvError {
    limit(format!("more than {MAX_BATCH} keys in one call"))
}

impl batch::Host for ConnState {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenBucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<WitResult<Vec<Option<(String, Vec<u8>)>>>> {
        if keys.len() > MAX_BATCH {
            return Ok(self.answer(Err(too_many_keys())));
        }
        let bucket = self.bucket(&bucket)?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            match bucket.get(&key).await {
                Ok(value) => values.push(value.map(|value| (key, value))),
                Err(error) => return Ok(self.answer(Err(error))),
            }
        }
        Ok(Ok(values))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<OpenBucket>,
        entries: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<WitResult<()>> {
        if entries.len() > MAX_BATCH {
            return Ok(self.answer(Err(too_many_keys())));
        }
        let bucket = self.bucket(&bucket)?;
        for (key, value) in entries {
            if let Err(error) = bucket.set(&key, value).await {
                return Ok(self.answer(Err(error)));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<OpenBucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<WitResult<()>> {
        if keys.len() > MAX_BATCH {
            return Ok(self.answer(Err(too_many_keys())));
        }
        let bucket = self.bucket(&bucket)?;
        for key in keys {
            if let Err(error) = bucket.delete(&key).await {
                return Ok(self.answer(Err(error)));
            }
        }
        Ok(Ok(()))
    }
}

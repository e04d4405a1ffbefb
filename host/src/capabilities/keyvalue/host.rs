//! What a connection holds of `wasi:keyvalue`, and the calls on it.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::{Bucket, Granted, KvError, KvResult, MAX_BATCH, OpenBucket, too_many_keys};
use crate::capabilities::denials::{Denials, Logged, TARGET};
use crate::ops::untrusted::Untrusted;

/// What a plugin is told when an operation fails.
type WitResult<T> = std::result::Result<T, store::Error>;

/// One connection's key-value state: the buckets its service is granted.
/// (The buckets it opened are resources in the store's table.)
pub struct KeyValueCtx {
    granted: Arc<Granted>,
    denials: Arc<Denials>,
}

impl KeyValueCtx {
    pub fn new(granted: Arc<Granted>, denials: Arc<Denials>) -> Self {
        Self { granted, denials }
    }

    /// Refuses to open bucket `name`, which the service was not granted.
    fn refuse_bucket(&self, name: &str) {
        if let Some(Logged { service, conn }) = self.denials.count(|c| &c.keyvalue_denied) {
            tracing::warn!(
                target: TARGET,
                service,
                conn,
                bucket = %Untrusted(name),
                "key-value bucket denied: not in the service's grant"
            );
        }
    }

    /// Records that the plugin reached a limit.
    fn limit_hit(&self, problem: &str) {
        if let Some(Logged { service, conn }) = self.denials.count(|c| &c.keyvalue_limit_hits) {
            tracing::warn!(target: TARGET, service, conn, "key-value limit reached: {problem}");
        }
    }
}

/// What a key-value call works on.
pub struct KeyValueCtxView<'a> {
    pub ctx: &'a KeyValueCtx,
    pub table: &'a mut ResourceTable,
}

/// Implemented once by the store's data, to reach the view.
pub trait KeyValueView: Send + 'static {
    fn keyvalue(&mut self) -> KeyValueCtxView<'_>;
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValueCtxView<'a>;
}

/// Links the generated `wasi:keyvalue` calls (store, atomics, batch).
pub(super) fn add_to_linker<T: KeyValueView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKeyValue>(linker, T::keyvalue)?;
    atomics::add_to_linker::<T, HasKeyValue>(linker, T::keyvalue)?;
    batch::add_to_linker::<T, HasKeyValue>(linker, T::keyvalue)
}

impl KeyValueCtxView<'_> {
    /// What the plugin is told of `result`; a limit it reached is also
    /// counted and logged.
    pub fn answer<T>(&self, result: KvResult<T>) -> WitResult<T> {
        result.map_err(|error| {
            if let KvError::Limit(problem) = &error {
                self.ctx.limit_hit(problem);
            }
            store::Error::Other(error.to_string())
        })
    }

    /// The bucket behind a plugin's handle.
    pub fn bucket(&self, bucket: &Resource<OpenBucket>) -> wasmtime::Result<Arc<Bucket>> {
        Ok(self.table.get(bucket)?.0.clone())
    }
}

impl store::Host for KeyValueCtxView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<WitResult<Resource<OpenBucket>>> {
        let Some(bucket) = self.ctx.granted.get(&identifier).cloned() else {
            self.ctx.refuse_bucket(&identifier);
            return Ok(Err(store::Error::AccessDenied));
        };
        Ok(Ok(self.table.push(OpenBucket(bucket))?))
    }
}

impl store::HostBucket for KeyValueCtxView<'_> {
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

impl atomics::Host for KeyValueCtxView<'_> {
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

impl batch::Host for KeyValueCtxView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenBucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<WitResult<Vec<Option<(String, Vec<u8>)>>>> {
        if keys.len() > MAX_BATCH {
            return Ok(self.answer(Err(too_many_keys())));
        }
        let bucket = self.bucket(&bucket)?;
        let values = bucket.get_many(keys).await;
        Ok(self.answer(values))
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

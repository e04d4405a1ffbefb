//! Key-value buckets: state that outlives a connection and is shared by
//! every connection of the services granted the bucket (`grants.keyvalue`
//! in the host's config file, `--allow-keyvalue NAME` on its command line).
//!
//! The host keeps buckets in memory, in a file or in Redis, as the operator
//! chose; a plugin sees the same `wasi:keyvalue` either way. Keys are at
//! most 1 KiB and values at most 1 MiB; a bucket also has a key limit.

use crate::bindings::wasi::keyvalue::{atomics, batch, store};

/// An open bucket.
pub struct Bucket(store::Bucket);

impl Bucket {
    /// Opens bucket `name`; fails unless the service was granted it.
    pub fn open(name: &str) -> crate::Result<Bucket> {
        store::open(name)
            .map(Bucket)
            .map_err(|error| describe(&format!("opening bucket {name:?}"), error))
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &str) -> crate::Result<Option<Vec<u8>>> {
        self.0.get(key).map_err(|error| describe("get", error))
    }

    /// The values of `keys`, in order (`None` where a key has none).
    pub fn get_many(&self, keys: &[String]) -> crate::Result<Vec<Option<Vec<u8>>>> {
        let found = batch::get_many(&self.0, keys).map_err(|error| describe("get", error))?;
        Ok(found
            .into_iter()
            .map(|entry| entry.map(|(_, value)| value))
            .collect())
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> crate::Result {
        self.0
            .set(key, value)
            .map_err(|error| describe("set", error))
    }

    /// Removes `key`; removing a key that has no value is not an error.
    pub fn delete(&self, key: &str) -> crate::Result {
        self.0
            .delete(key)
            .map_err(|error| describe("delete", error))
    }

    /// Whether `key` has a value.
    pub fn exists(&self, key: &str) -> crate::Result<bool> {
        self.0
            .exists(key)
            .map_err(|error| describe("exists", error))
    }

    /// Adds `delta` to the counter at `key` (a decimal integer; a missing
    /// key counts as 0) and returns the new value, atomically.
    pub fn increment(&self, key: &str, delta: u64) -> crate::Result<u64> {
        atomics::increment(&self.0, key, delta).map_err(|error| describe("increment", error))
    }
}

fn describe(what: &str, error: store::Error) -> crate::Error {
    match error {
        store::Error::NoSuchStore => format!("{what}: no such bucket").into(),
        store::Error::AccessDenied => format!("{what}: access denied").into(),
        store::Error::Other(message) => format!("{what}: {message}").into(),
    }
}

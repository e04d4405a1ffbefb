//! Buckets in this process's memory, gone at exit: the default backend.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Backend, KvResult, PAGE, add, bucket_full, limit, page};

pub struct Memory {
    entries: Mutex<Entries>,
    max_keys: u64,
    /// Keys and values together.
    max_bytes: u64,
}

#[derive(Default)]
struct Entries {
    map: BTreeMap<String, Vec<u8>>,
    /// Keys and values together.
    bytes: u64,
}

impl Memory {
    pub fn new(max_keys: u64, max_bytes: u64) -> Self {
        Self {
            entries: Mutex::default(),
            max_keys,
            max_bytes,
        }
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        // Every change keeps the entries consistent before anything that
        // could panic, so a poisoned lock holds good data.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn put(&self, entries: &mut Entries, key: &str, value: Vec<u8>) -> KvResult<()> {
        let old = entries.map.get(key).map(|old| key.len() + old.len());
        if old.is_none() && entries.map.len() as u64 >= self.max_keys {
            return Err(bucket_full(self.max_keys));
        }
        let bytes = entries.bytes - old.unwrap_or(0) as u64 + (key.len() + value.len()) as u64;
        if bytes > self.max_bytes {
            return Err(limit(format!("bucket full: {} bytes", self.max_bytes)));
        }
        entries.bytes = bytes;
        entries.map.insert(key.to_string(), value);
        Ok(())
    }
}

#[async_trait]
impl Backend for Memory {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        Ok(self.entries().map.get(key).cloned())
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> KvResult<()> {
        self.put(&mut self.entries(), key, value)
    }

    async fn delete(&self, key: &str) -> KvResult<()> {
        let mut entries = self.entries();
        if let Some(old) = entries.map.remove(key) {
            entries.bytes -= (key.len() + old.len()) as u64;
        }
        Ok(())
    }

    async fn exists(&self, key: &str) -> KvResult<bool> {
        Ok(self.entries().map.contains_key(key))
    }

    async fn list_keys(&self, cursor: Option<u64>) -> KvResult<(Vec<String>, Option<u64>)> {
        let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        let entries = self.entries();
        let keys: Vec<String> = entries.map.keys().skip(skip).take(PAGE).cloned().collect();
        let more = entries.map.len() > skip + keys.len();
        Ok(page(skip, keys, more))
    }

    async fn increment(&self, key: &str, delta: u64) -> KvResult<u64> {
        let mut entries = self.entries();
        let new = add(entries.map.get(key).map(Vec::as_slice), delta)?;
        self.put(&mut entries, key, new.to_string().into_bytes())?;
        Ok(new)
    }
}

//! Buckets in an embedded redb database file: each write is committed
//! durably before it returns, so data survives a restart and a `kill -9`.
//! Each bucket is a table of its own, so several may share a file.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Backend, KvError, KvResult, PAGE, add, bucket_full, other, page};

pub struct File {
    db: Arc<redb::Database>,
    table: Arc<str>,
    max_keys: u64,
}

type Table<'a> = TableDefinition<'a, &'static str, &'static [u8]>;

impl File {
    /// Opens (or creates) the database at `path`, and its folder.
    pub async fn open(path: &Path, table: &str, max_keys: u64) -> Result<Self> {
        let path = path.to_path_buf();
        let db = tokio::task::spawn_blocking(move || {
            if let Some(folder) = path.parent() {
                std::fs::create_dir_all(folder)
                    .with_context(|| format!("cannot create {}", folder.display()))?;
            }
            redb::Database::create(&path).with_context(|| format!("cannot open {}", path.display()))
        })
        .await??;
        Ok(Self {
            db: Arc::new(db),
            table: table.into(),
            max_keys,
        })
    }

    /// Runs `work` on the database, off the async workers (a commit waits
    /// for the disk).
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redb::Database, Table<'_>) -> Result<T> + Send + 'static,
    ) -> KvResult<T> {
        let (db, table) = (self.db.clone(), self.table.clone());
        tokio::task::spawn_blocking(move || work(&db, TableDefinition::new(&table)))
            .await
            .map_err(other)?
            .map_err(|error| match error.downcast::<KvError>() {
                Ok(error) => error,
                Err(error) => other(format!("{error:#}")),
            })
    }

    /// Writes `key` in one committed transaction: `value` gives its new
    /// value from the old one.
    async fn write<T: Send + 'static>(
        &self,
        key: &str,
        value: impl FnOnce(Option<&[u8]>) -> KvResult<(Vec<u8>, T)> + Send + 'static,
    ) -> KvResult<T> {
        let (key, max_keys) = (key.to_string(), self.max_keys);
        self.run(move |db, table| {
            let write = db.begin_write()?;
            let answer = {
                let mut table = write.open_table(table)?;
                let old = table.get(key.as_str())?.map(|old| old.value().to_vec());
                if old.is_none() && table.len()? >= max_keys {
                    return Err(bucket_full(max_keys).into());
                }
                let (new, answer) = value(old.as_deref())?;
                table.insert(key.as_str(), new.as_slice())?;
                answer
            };
            write.commit()?;
            Ok(answer)
        })
        .await
    }
}

#[async_trait]
impl Backend for File {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        let key = key.to_string();
        self.run(move |db, table| {
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

    async fn set(&self, key: &str, value: Vec<u8>) -> KvResult<()> {
        self.write(key, move |_| Ok((value, ()))).await
    }

    async fn delete(&self, key: &str) -> KvResult<()> {
        let key = key.to_string();
        self.run(move |db, table| {
            let write = db.begin_write()?;
            write.open_table(table)?.remove(key.as_str())?;
            write.commit()?;
            Ok(())
        })
        .await
    }

    async fn exists(&self, key: &str) -> KvResult<bool> {
        Ok(self.get(key).await?.is_some())
    }

    async fn list_keys(&self, cursor: Option<u64>) -> KvResult<(Vec<String>, Option<u64>)> {
        let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        let (keys, more) = self
            .run(move |db, table| {
                let read = db.begin_read()?;
                let table = match read.open_table(table) {
                    Ok(table) => table,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), false)),
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
        Ok(page(skip, keys, more))
    }

    async fn increment(&self, key: &str, delta: u64) -> KvResult<u64> {
        self.write(key, move |old| {
            let new = add(old, delta)?;
            Ok((new.to_string().into_bytes(), new))
        })
        .await
    }
}

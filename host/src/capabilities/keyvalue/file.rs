//! Buckets in an embedded redb database file: each write is committed
//! durably before it returns, so data survives a restart and a `kill -9`.
//! Each bucket is a table of its own, so several may share a file.
//!
//! A write that fails on the disk (it is full, say) leaves redb refusing
//! every later transaction until the database is opened again; so after
//! one, the bucket reopens its file, and the writes after it succeed once
//! the disk has room (the soak's disk-full fault found this).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Backend, KvError, KvResult, PAGE, add, bucket_full, other, page};

pub struct File {
    db: Arc<Database>,
    table: Arc<str>,
    max_keys: u64,
}

/// The open database, and where its file is, to open it again after a
/// failed write. `None` while it could not be opened again.
struct Database {
    path: Box<Path>,
    open: Mutex<Option<Arc<redb::Database>>>,
}

/// How long reopening waits for the operations still using the database
/// (redb refuses to open a file twice).
const REOPEN_WAIT: Duration = Duration::from_secs(5);

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
            let db = create(&path)?;
            anyhow::Ok(Database {
                path: path.into(),
                open: Mutex::new(Some(Arc::new(db))),
            })
        })
        .await??;
        Ok(Self {
            db: Arc::new(db),
            table: table.into(),
            max_keys,
        })
    }

    /// Runs `work` on the database, off the async workers (a commit waits
    /// for the disk); reopens the database after a failed write.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redb::Database, Table<'_>) -> Result<T> + Send + 'static,
    ) -> KvResult<T> {
        let (db, table) = (self.db.clone(), self.table.clone());
        tokio::task::spawn_blocking(move || {
            let open = db.current()?;
            let result = work(&open, TableDefinition::new(&table));
            if let Err(error) = &result
                && needs_reopening(error)
            {
                drop(open);
                if let Err(reopening) = db.reopen() {
                    tracing::warn!(path = %db.path.display(), "{reopening:#}");
                }
            }
            result
        })
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

impl Database {
    /// The database, opened again first if a failed write closed it.
    fn current(&self) -> Result<Arc<redb::Database>> {
        if let Some(db) = self.slot().as_ref() {
            return Ok(db.clone());
        }
        self.reopen()?;
        self.slot()
            .clone()
            .ok_or_else(|| anyhow!("{} is not open", self.path.display()))
    }

    /// Closes the database and opens it again, once the operations still
    /// using it are done; new ones wait meanwhile.
    fn reopen(&self) -> Result<()> {
        let mut slot = self.slot();
        let deadline = Instant::now() + REOPEN_WAIT;
        while slot.as_ref().is_some_and(|db| Arc::strong_count(db) > 1) {
            if Instant::now() > deadline {
                anyhow::bail!("cannot reopen {}: still in use", self.path.display());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        *slot = None;
        *slot = Some(Arc::new(create(&self.path)?));
        Ok(())
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<redb::Database>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn create(path: &Path) -> Result<redb::Database> {
    redb::Database::create(path).with_context(|| format!("cannot open {}", path.display()))
}

/// Whether `error` is one after which redb refuses every transaction until
/// the database is opened again: a failed read or write of its file, or
/// the refusal itself.
fn needs_reopening(error: &anyhow::Error) -> bool {
    let storage = |error: &redb::StorageError| {
        matches!(
            error,
            redb::StorageError::Io(_) | redb::StorageError::PreviousIo
        )
    };
    let wrapped = error
        .downcast_ref::<redb::StorageError>()
        .or_else(|| match error.downcast_ref() {
            Some(redb::TransactionError::Storage(error)) => Some(error),
            _ => None,
        })
        .or_else(|| match error.downcast_ref() {
            Some(redb::CommitError::Storage(error)) => Some(error),
            _ => None,
        })
        .or_else(|| match error.downcast_ref() {
            Some(redb::TableError::Storage(error)) => Some(error),
            _ => None,
        });
    wrapped.is_some_and(storage)
}

//! Buckets in a Redis server, shared by every host that names it: the
//! scale-out backend. A bucket's keys are `portico:BUCKET:KEY`, so several
//! buckets (and other users) may share a server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Backend, KvResult, PAGE, other};

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis connections a bucket keeps. Each carries many commands at once
/// (pipelined); a few of them keep one large value from holding up every
/// other command behind it.
const POOL_SIZE: usize = 4;

pub struct Redis {
    /// The pool: each reconnects when its connection breaks. Commands take
    /// them in turn.
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    prefix: String,
}

impl Redis {
    /// Connects to the server at `url` (`redis://HOST:PORT/DB`).
    pub async fn connect(url: &str, bucket: &str) -> Result<Self> {
        let client =
            redis::Client::open(url).with_context(|| format!("{url:?} is not a Redis URL"))?;
        // Start-up fails at once if the server is not there (the manager
        // would retry for seconds first).
        tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| anyhow!("no answer in {CONNECT_TIMEOUT:?}"))
            .and_then(|connected| Ok(connected?))
            .with_context(|| format!("cannot connect to Redis at {url}"))?;
        // A server that stops answering fails the plugin's call instead of
        // holding it until the idle timeout; one that went away is tried
        // again at least every second.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(1));
        let connections = (0..POOL_SIZE)
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot connect to Redis at {url}"))?;
        Ok(Self {
            connections,
            next: AtomicUsize::new(0),
            prefix: format!("portico:{bucket}:"),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> KvResult<T> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % POOL_SIZE;
        command
            .query_async(&mut self.connections[turn].clone())
            .await
            .map_err(|error| other(format!("Redis: {error}")))
    }
}

#[async_trait]
impl Backend for Redis {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        self.query(redis::cmd("GET").arg(self.key(key))).await
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> KvResult<()> {
        self.query(redis::cmd("SET").arg(self.key(key)).arg(value))
            .await
    }

    async fn delete(&self, key: &str) -> KvResult<()> {
        self.query::<u64>(redis::cmd("DEL").arg(self.key(key)))
            .await
            .map(drop)
    }

    async fn exists(&self, key: &str) -> KvResult<bool> {
        self.query(redis::cmd("EXISTS").arg(self.key(key))).await
    }

    /// Pages by Redis's `SCAN` cursor.
    async fn list_keys(&self, cursor: Option<u64>) -> KvResult<(Vec<String>, Option<u64>)> {
        let (next, keys): (u64, Vec<String>) = self
            .query(
                redis::cmd("SCAN")
                    .arg(cursor.unwrap_or(0))
                    .arg("MATCH")
                    .arg(format!("{}*", self.prefix))
                    .arg("COUNT")
                    .arg(PAGE),
            )
            .await?;
        let keys = keys
            .into_iter()
            .filter_map(|key| key.strip_prefix(&self.prefix).map(str::to_string))
            .collect();
        Ok((keys, (next != 0).then_some(next)))
    }

    async fn increment(&self, key: &str, delta: u64) -> KvResult<u64> {
        let delta = i64::try_from(delta).map_err(|_| other("increment too large"))?;
        let value: i64 = self
            .query(redis::cmd("INCRBY").arg(self.key(key)).arg(delta))
            .await?;
        u64::try_from(value).map_err(|_| other("counter is negative"))
    }
}

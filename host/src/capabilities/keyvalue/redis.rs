//! Buckets in a Redis server, shared by every host that names it: the
//! scale-out backend. A bucket's keys are `portico:BUCKET:KEY`, so several
//! buckets (and other users) may share a server.
//!
//! `max-keys` holds across every host: a bucket counts its keys in
//! `portico:BUCKET`, and the writes that may add a key or remove one are
//! small Lua scripts, so the check and the write are one atomic step on
//! the server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Backend, KvError, KvResult, PAGE, bucket_full, other};

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis connections a bucket keeps. Each carries many commands at once
/// (pipelined); a few of them keep one large value from holding up every
/// other command behind it.
const POOL_SIZE: usize = 4;

/// The error the scripts answer when a new key would pass `max-keys`.
const BUCKET_FULL: &str = "portico-bucket-full";

/// Runs the write `ARGV[3]` (`SET` or `INCRBY`) on `KEYS[1]` with
/// `ARGV[1]`, counting a new key in `KEYS[2]` unless that would pass
/// `ARGV[2]`.
const WRITE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('INCR', KEYS[2]) > tonumber(ARGV[2]) then
    redis.call('DECR', KEYS[2])
    return redis.error_reply('portico-bucket-full')
  end
end
return redis.call(ARGV[3], KEYS[1], ARGV[1])
"#;

/// Deletes `KEYS[1]`, uncounting it from `KEYS[2]` if it was there.
const DELETE: &str = r#"
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('DECR', KEYS[2])
end
return 0
"#;

/// Counts the keys matching `ARGV[1]` into `KEYS[1]`, unless another host
/// has: run as a host opens the bucket, so a bucket written before counts
/// existed, or whose count was lost, is counted again.
const COUNT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local cursor, count = '0', 0
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = page[1]
  count = count + #page[2]
until cursor == '0'
redis.call('SET', KEYS[1], count)
return count
"#;

pub struct Redis {
    /// The pool: each reconnects when its connection breaks. Commands take
    /// them in turn.
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    prefix: String,
    /// Where the bucket counts its keys: not under `prefix`, so never one
    /// of them.
    count: String,
    max_keys: u64,
    write: redis::Script,
    delete: redis::Script,
}

impl Redis {
    /// Connects to the server at `url` (`redis://HOST:PORT/DB`), and counts
    /// the bucket's keys if no host has yet.
    pub async fn connect(url: &str, bucket: &str, max_keys: u64) -> Result<Self> {
        let client =
            redis::Client::open(url).with_context(|| format!("{url:?} is not a Redis URL"))?;
        // Start-up fails at once if the server is not there (the manager
        // would retry for seconds first).
        let mut first =
            tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
                .await
                .map_err(|_| anyhow!("no answer in {CONNECT_TIMEOUT:?}"))
                .and_then(|connected| Ok(connected?))
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
        let prefix = format!("portico:{bucket}:");
        let count = format!("portico:{bucket}");
        redis::Script::new(COUNT)
            .key(&count)
            .arg(format!("{prefix}*"))
            .invoke_async::<u64>(&mut first)
            .await
            .with_context(|| {
                format!("cannot count the keys of bucket {bucket} in Redis at {url}")
            })?;
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
            prefix,
            count,
            max_keys,
            write: redis::Script::new(WRITE),
            delete: redis::Script::new(DELETE),
        })
    }

    fn connection(&self) -> ConnectionManager {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % POOL_SIZE;
        self.connections[turn].clone()
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> KvResult<T> {
        command
            .query_async(&mut self.connection())
            .await
            .map_err(|error| self.failed(error))
    }

    /// Runs a script on one key and the bucket's count.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &mut redis::ScriptInvocation<'_>,
    ) -> KvResult<T> {
        script
            .invoke_async(&mut self.connection())
            .await
            .map_err(|error| self.failed(error))
    }

    /// Runs the write `command` on `key` with `arg`, within `max-keys`.
    async fn write<T: redis::FromRedisValue>(
        &self,
        command: &str,
        key: &str,
        arg: impl redis::ToRedisArgs,
    ) -> KvResult<T> {
        self.run(
            self.write
                .key(self.key(key))
                .key(&self.count)
                .arg(arg)
                .arg(self.max_keys)
                .arg(command),
        )
        .await
    }

    fn failed(&self, error: redis::RedisError) -> KvError {
        // Redis 7 answers the script's error as `ERR portico-bucket-full`;
        // older servers pass it on as it is.
        if [error.code(), error.detail()].contains(&Some(BUCKET_FULL)) {
            return bucket_full(self.max_keys);
        }
        other(format!("Redis: {error}"))
    }
}

#[async_trait]
impl Backend for Redis {
    async fn get(&self, key: &str) -> KvResult<Option<Vec<u8>>> {
        self.query(redis::cmd("GET").arg(self.key(key))).await
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> KvResult<()> {
        self.write("SET", key, value).await
    }

    async fn delete(&self, key: &str) -> KvResult<()> {
        self.run::<u64>(self.delete.key(self.key(key)).key(&self.count))
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
        let value: i64 = self.write("INCRBY", key, delta).await?;
        u64::try_from(value).map_err(|_| other("counter is negative"))
    }
}

//! The file backend's verifier: writes unique keys with SET through the
//! redis-kv service on the file bucket, keeps every key the host
//! acknowledged with `+OK`, and reads earlier ones back as it goes. At the
//! end, once the host has been killed and started again, every
//! acknowledged key must be there with its value: an acknowledged write
//! that is gone is data lost, which no fault explains.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::record::{Part, Record};

const WRITE_EVERY: Duration = Duration::from_millis(100);
/// One read-back for this many writes.
const READ_BACK_EVERY: u64 = 10;
const TIMEOUT: Duration = Duration::from_secs(5);
/// GETs sent together in the final check.
const BATCH: usize = 100;

/// What the verifier knows: every acknowledged write, and every read that
/// did not give back what was written.
#[derive(Default)]
pub struct Ledger {
    acknowledged: Mutex<Vec<(String, String)>>,
    wrong_reads: Mutex<Vec<String>>,
}

impl Ledger {
    pub fn acknowledged(&self) -> Vec<(String, String)> {
        lock(&self.acknowledged).clone()
    }

    pub fn wrong_reads(&self) -> Vec<String> {
        lock(&self.wrong_reads).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A connection speaking RESP2.
pub struct Resp {
    stream: BufReader<TcpStream>,
}

impl Resp {
    pub async fn connect(addr: SocketAddr) -> Result<Resp> {
        let stream = TcpStream::connect(addr).await.context("connect")?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            stream: BufReader::new(stream),
        })
    }

    fn command(words: &[&str]) -> Vec<u8> {
        let mut bytes = format!("*{}\r\n", words.len()).into_bytes();
        for word in words {
            bytes.extend(format!("${}\r\n{word}\r\n", word.len()).as_bytes());
        }
        bytes
    }

    async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            bail!("the host closed the connection");
        }
        Ok(line.trim_end().to_string())
    }

    /// SET `key` `value`; fails with the host's error reply if any.
    pub async fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let request = Resp::command(&["SET", key, value]);
        self.stream.get_mut().write_all(&request).await?;
        match self.line().await? {
            reply if reply == "+OK" => Ok(()),
            reply => bail!("SET {key}: {reply}"),
        }
    }

    /// GET each of `keys`, sent together; `None` for a key not there.
    pub async fn get_many(&mut self, keys: &[&str]) -> Result<Vec<Option<String>>> {
        let mut requests = Vec::new();
        for key in keys {
            requests.extend(Resp::command(&["GET", key]));
        }
        self.stream.get_mut().write_all(&requests).await?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let header = self.line().await?;
            let Some(length) = header.strip_prefix('$') else {
                bail!("GET {key}: {header}");
            };
            let Ok(length) = usize::try_from(length.parse::<i64>()?) else {
                values.push(None);
                continue;
            };
            let mut value = vec![0; length + 2];
            self.stream.read_exact(&mut value).await?;
            value.truncate(length);
            values.push(Some(String::from_utf8_lossy(&value).into_owned()));
        }
        Ok(values)
    }
}

/// Writes and reads back until `stop`, reconnecting after any error.
pub async fn verify(
    addr: SocketAddr,
    ledger: Arc<Ledger>,
    record: Arc<Record>,
    stop: CancellationToken,
) {
    let mut written = 0u64;
    while !stop.is_cancelled() {
        let served = tokio::select! {
            served = write_and_read(addr, &mut written, &ledger, &record) => served,
            () = stop.cancelled() => return,
        };
        if let Err(error) = served {
            record.error(Part::KvFile, format!("verifier: {error:#}"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One connection's writes and read-backs.
async fn write_and_read(
    addr: SocketAddr,
    written: &mut u64,
    ledger: &Ledger,
    record: &Record,
) -> Result<()> {
    let mut resp = tokio::time::timeout(TIMEOUT, Resp::connect(addr))
        .await
        .context("connect timed out")??;
    loop {
        *written += 1;
        let key = format!("soak:{written}");
        let value = format!("value-{written}-{}", written.wrapping_mul(2_654_435_761));
        tokio::time::timeout(TIMEOUT, resp.set(&key, &value))
            .await
            .context("SET timed out")??;
        record.done(Part::KvFile, 1);
        let acknowledged = {
            let mut acknowledged = lock(&ledger.acknowledged);
            acknowledged.push((key, value));
            acknowledged.len()
        };
        if written.is_multiple_of(READ_BACK_EVERY) {
            // An earlier key, a different one each time.
            let index = (*written as usize).wrapping_mul(7919) % acknowledged;
            let (key, value) = lock(&ledger.acknowledged)[index].clone();
            let got = tokio::time::timeout(TIMEOUT, resp.get_many(&[&key]))
                .await
                .context("GET timed out")??;
            if got.first() != Some(&Some(value.clone())) {
                let what = format!("GET {key}: {got:?} instead of {value:?}");
                lock(&ledger.wrong_reads).push(what.clone());
                record.error(Part::KvFile, what);
            }
        }
        tokio::time::sleep(WRITE_EVERY).await;
    }
}

/// Reads every acknowledged key back; returns a description of each one
/// missing or changed.
pub async fn check_all(addr: SocketAddr, ledger: &Ledger) -> Result<Vec<String>> {
    let mut resp = Resp::connect(addr).await?;
    let mut lost = Vec::new();
    for batch in ledger.acknowledged().chunks(BATCH) {
        let keys: Vec<&str> = batch.iter().map(|(key, _)| key.as_str()).collect();
        let values = tokio::time::timeout(TIMEOUT, resp.get_many(&keys))
            .await
            .context("GET timed out")??;
        for ((key, value), got) in batch.iter().zip(values) {
            if got.as_ref() != Some(value) {
                lost.push(format!("{key}: {got:?} instead of {value:?}"));
            }
        }
    }
    Ok(lost)
}

//! A Redis server over a key-value bucket: speaks RESP2, so `redis-cli`,
//! `redis-benchmark` and Redis client libraries work against it. Commands:
//! PING, ECHO, GET, SET (with EX), DEL, EXISTS, INCR, MGET, and CONFIG GET
//! (every setting empty); anything else gets an error reply. The data lives in the bucket named by the `bucket`
//! setting (default `cache`), which the service must be granted.
//!
//! Between commands, when no pipelined request is waiting, the connection
//! hibernates: the host drops the instance and wakes a fresh one when the
//! next command arrives. A Redis connection keeps no state of its own
//! here, so the state is only its format byte.

use std::io::{self, BufReader, Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use portico_guest_sdk::hibernation::{self, WakeReason};
use portico_guest_sdk::keyvalue::Bucket;
use portico_guest_sdk::{Connection, Handler, Input, config};

mod resp;

/// The hibernation state: this build's format byte, and nothing else.
const STATE: [u8; 1] = [1];

struct RedisKv;

impl Handler for RedisKv {
    fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
        if hibernation::woken().is_some_and(|wake| wake.reason == WakeReason::Draining) {
            return Ok(());
        }
        let name = config::get("bucket")?.unwrap_or_else(|| "cache".into());
        let bucket = Bucket::open(&name)?;
        let (input, output) = conn.split();
        let mut requests = BufReader::new(Requests {
            input,
            at_start: false,
        });
        let mut replies = io::BufWriter::new(output);
        let mut may_hibernate = true;
        loop {
            // Pipelined requests are answered together.
            if requests.buffer().is_empty() {
                replies.flush()?;
                requests.get_mut().at_start = may_hibernate;
            }
            match resp::read_request(&mut requests) {
                Ok(Some(request)) => execute(&bucket, &request, &mut replies)?,
                Ok(None) => break,
                // Nothing more has come: give the instance back until it
                // does (or, if the host will not have it, wait here).
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if hibernation::hibernate(&STATE, None).is_ok() {
                        return Ok(());
                    }
                    may_hibernate = false;
                }
                Err(error) => return Err(error.into()),
            }
        }
        replies.flush()?;
        Ok(())
    }
}

/// The client's requests, whose first read at the start of a request does
/// not wait: it fails with `WouldBlock` when nothing has come, which tells
/// `run` that the connection is idle.
struct Requests<'a, 'b> {
    input: &'a mut Input<'b>,
    at_start: bool,
}

impl Read for Requests<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match std::mem::take(&mut self.at_start) {
            true => self.input.try_read(buf),
            false => self.input.read(buf),
        }
    }
}

enum Reply {
    Simple(&'static str),
    Bulk(Option<Vec<u8>>),
    Integer(u64),
    Array(Vec<Option<Vec<u8>>>),
    Error(String),
}

fn execute(bucket: &Bucket, request: &[Vec<u8>], out: &mut impl Write) -> io::Result<()> {
    let command = String::from_utf8_lossy(&request[0]).to_ascii_uppercase();
    let args = &request[1..];
    let reply = match run(bucket, &command, args) {
        Ok(reply) => reply,
        Err(error) => Reply::Error(format!("ERR {error}")),
    };
    write_reply(out, &reply)
}

fn run(bucket: &Bucket, command: &str, args: &[Vec<u8>]) -> portico_guest_sdk::Result<Reply> {
    let key = |i: usize| -> portico_guest_sdk::Result<String> {
        let arg = args.get(i).ok_or("wrong number of arguments")?;
        Ok(String::from_utf8(arg.clone()).map_err(|_| "keys must be UTF-8")?)
    };
    Ok(match (command, args.len()) {
        ("PING", 0) => Reply::Simple("PONG"),
        ("PING" | "ECHO", 1) => Reply::Bulk(Some(args[0].clone())),
        ("GET", 1) => Reply::Bulk(get(bucket, &key(0)?)?),
        ("SET", 2) => {
            bucket.set(&key(0)?, &args[1])?;
            bucket.delete(&expiry_key(&key(0)?))?;
            Reply::Simple("OK")
        }
        ("SET", 4) if args[2].eq_ignore_ascii_case(b"EX") => {
            let seconds: u64 = std::str::from_utf8(&args[3])
                .ok()
                .and_then(|text| text.parse().ok())
                .filter(|seconds| *seconds > 0)
                .ok_or("invalid expire time in 'set' command")?;
            bucket.set(&key(0)?, &args[1])?;
            let expires = now_ms() + seconds * 1000;
            bucket.set(&expiry_key(&key(0)?), expires.to_string().as_bytes())?;
            Reply::Simple("OK")
        }
        ("DEL" | "EXISTS", n) if n > 0 => {
            let mut count = 0;
            for i in 0..n {
                let key = key(i)?;
                if get(bucket, &key)?.is_some() {
                    count += 1;
                    if command == "DEL" {
                        bucket.delete(&key)?;
                        bucket.delete(&expiry_key(&key))?;
                    }
                }
            }
            Reply::Integer(count)
        }
        ("INCR", 1) => Reply::Integer(bucket.increment(&key(0)?, 1).map_err(|error| {
            // Answer as Redis does for a value that is not a counter, but
            // say so when the bucket is full.
            let error = error.to_string();
            if error.contains("bucket full") {
                error
            } else {
                "value is not an integer or out of range".to_string()
            }
        })?),
        ("MGET", n) if n > 0 => {
            let values = (0..n)
                .map(|i| get(bucket, &key(i)?))
                .collect::<Result<_, _>>()?;
            Reply::Array(values)
        }
        // redis-benchmark and some clients read a server setting or two
        // first; every one is empty here.
        ("CONFIG", 2) if args[0].eq_ignore_ascii_case(b"GET") => {
            Reply::Array(vec![Some(args[1].clone()), Some(Vec::new())])
        }
        _ => Reply::Error(format!(
            "ERR unknown command or wrong number of arguments for '{}'",
            command.to_lowercase()
        )),
    })
}

/// The value of `key`, unless it has expired (then it is removed).
fn get(bucket: &Bucket, key: &str) -> portico_guest_sdk::Result<Option<Vec<u8>>> {
    let expiry = expiry_key(key);
    let [value, expires] = <[_; 2]>::try_from(bucket.get_many(&[key.to_string(), expiry.clone()])?)
        .map_err(|_| "the bucket answered the wrong number of values")?;
    let expired = expires
        .and_then(|ms| String::from_utf8(ms).ok()?.parse::<u64>().ok())
        .is_some_and(|ms| ms <= now_ms());
    if expired {
        bucket.delete(key)?;
        bucket.delete(&expiry)?;
        return Ok(None);
    }
    Ok(value)
}

/// Where a key's expiry time (Unix milliseconds) is kept: a key no client
/// can name, since clients' keys never contain NUL.
fn expiry_key(key: &str) -> String {
    format!("\0expires\0{key}")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.as_millis() as u64)
}

fn write_reply(out: &mut impl Write, reply: &Reply) -> io::Result<()> {
    match reply {
        Reply::Simple(text) => write!(out, "+{text}\r\n"),
        Reply::Error(text) => write!(out, "-{}\r\n", text.replace(['\r', '\n'], " ")),
        Reply::Integer(n) => write!(out, ":{n}\r\n"),
        Reply::Bulk(value) => write_bulk(out, value.as_deref()),
        Reply::Array(values) => {
            write!(out, "*{}\r\n", values.len())?;
            values
                .iter()
                .try_for_each(|value| write_bulk(out, value.as_deref()))
        }
    }
}

fn write_bulk(out: &mut impl Write, value: Option<&[u8]>) -> io::Result<()> {
    match value {
        None => out.write_all(b"$-1\r\n"),
        Some(value) => {
            write!(out, "${}\r\n", value.len())?;
            out.write_all(value)?;
            out.write_all(b"\r\n")
        }
    }
}

portico_guest_sdk::export!(RedisKv);

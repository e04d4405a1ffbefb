//! The redis-kv example plugin's request parser (RESP2 arrays and inline
//! commands), built for the host: what a Redis client meets first.
//!
//! Properties: no panic and no allocation beyond the argument bounds; the
//! same requests come out however the bytes are split into reads; each
//! request written back as a RESP array reads back the same.

#![no_main]

use std::io::{self, BufReader, Read};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[path = "../../plugins/redis-kv/src/resp.rs"]
mod resp;

#[derive(Arbitrary, Debug)]
struct Input {
    /// The sizes of the reads the client's bytes arrive in, in turn.
    reads: Vec<u8>,
    bytes: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let whole = requests(BufReader::new(&input.bytes[..]));
    let split = requests(BufReader::with_capacity(
        64,
        Pieces {
            bytes: &input.bytes,
            reads: &input.reads,
            turn: 0,
        },
    ));
    assert_eq!(whole, split, "the split changed the requests");
    for request in whole.iter().filter_map(|result| result.as_ref().ok()) {
        assert!(!request.is_empty() && request.len() <= resp::MAX_ARGS);
        assert!(request.iter().all(|arg| arg.len() <= resp::MAX_ARG_BYTES));
        let again = requests(BufReader::new(&encode(request)[..]));
        assert_eq!(
            again,
            [Ok(request.clone())],
            "{request:?} did not read back"
        );
    }
});

/// Every request in the input, up to the first error (as its kind and
/// text, so that two runs compare).
fn requests(mut input: impl io::BufRead) -> Vec<Result<Vec<Vec<u8>>, String>> {
    let mut found = Vec::new();
    loop {
        match resp::read_request(&mut input) {
            Ok(Some(request)) => found.push(Ok(request)),
            Ok(None) => return found,
            Err(error) => {
                found.push(Err(format!("{:?}: {error}", error.kind())));
                return found;
            }
        }
    }
}

/// `request` as a RESP array of bulk strings, as clients send it.
fn encode(request: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", request.len()).into_bytes();
    for arg in request {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Bytes read in the sizes `reads` gives, in turn (at least one byte each).
struct Pieces<'a> {
    bytes: &'a [u8],
    reads: &'a [u8],
    turn: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self
            .reads
            .get(self.turn)
            .map_or(usize::MAX, |&n| usize::from(n).max(1));
        self.turn += 1;
        let n = size.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

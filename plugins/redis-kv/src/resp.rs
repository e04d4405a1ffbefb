//! Reading clients' requests: RESP2 arrays of bulk strings, or inline
//! commands. Apart from the plugin so that it can be fuzzed on the host
//! (`fuzz/fuzz_targets/redis_resp.rs`): it is what a client meets first.

use std::io::{self, BufRead, Read};

/// Largest request, in arguments, and largest argument, in bytes (larger
/// than the host's 1 MiB value limit, which then answers for itself).
pub const MAX_ARGS: usize = 1024;
pub const MAX_ARG_BYTES: usize = 4 << 20;

/// Reads one request: a RESP array of bulk strings, or an inline command
/// (`PING\r\n`). `None` once the client has closed.
pub fn read_request(input: &mut impl BufRead) -> io::Result<Option<Vec<Vec<u8>>>> {
    loop {
        let mut line = Vec::new();
        if input
            .by_ref()
            .take(MAX_ARG_BYTES as u64)
            .read_until(b'\n', &mut line)?
            == 0
        {
            return Ok(None);
        }
        let line = trim_line(&line);
        let Some(count) = line.strip_prefix(b"*") else {
            let words: Vec<Vec<u8>> = line
                .split(|byte| byte.is_ascii_whitespace())
                .filter(|word| !word.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            if words.is_empty() {
                continue;
            }
            return Ok(Some(words));
        };
        let count = number(count).filter(|n| (1..=MAX_ARGS).contains(n));
        let count = count.ok_or_else(|| protocol("invalid multibulk length"))?;
        let mut args = Vec::with_capacity(count);
        for _ in 0..count {
            let mut header = Vec::new();
            input.by_ref().take(64).read_until(b'\n', &mut header)?;
            let len = trim_line(&header)
                .strip_prefix(b"$")
                .and_then(number)
                .filter(|len| *len <= MAX_ARG_BYTES)
                .ok_or_else(|| protocol("invalid bulk length"))?;
            let mut arg = vec![0; len + 2];
            input.read_exact(&mut arg)?;
            arg.truncate(len);
            args.push(arg);
        }
        return Ok(Some(args));
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn number(text: &[u8]) -> Option<usize> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn protocol(problem: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("Protocol error: {problem}"),
    )
}

//! Reading a request's head: the request line and headers, with the
//! `httparse` crate. Apart from the plugin so that it can be fuzzed on the
//! host (`fuzz/fuzz_targets/http_head.rs`): it is what a client meets
//! first.

use std::io;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The parts of a request this server acts on.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub keep_alive: bool,
    pub body_len: usize,
}

/// The request whose head starts `received`, and the head's length; `None`
/// while the head is incomplete. A head that cannot be parsed, is too
/// large, or asks for what this server does not do is an `InvalidData`
/// error.
pub fn parse(received: &[u8]) -> io::Result<Option<(Request, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(received) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) if received.len() <= MAX_HEAD_BYTES => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(invalid("request head too large")),
        Err(error) => return Err(invalid(&error.to_string())),
    };
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if header("transfer-encoding").is_some() {
        return Err(invalid("chunked bodies are not supported"));
    }
    let body_len = match header("content-length") {
        Some(len) => len.parse().map_err(|_| invalid("bad content-length"))?,
        None => 0,
    };
    let keep_alive = match (parsed.version, header("connection").as_deref()) {
        (_, Some("close")) => false,
        (Some(0), connection) => connection == Some("keep-alive"),
        _ => true,
    };
    let request = Request {
        method: parsed.method.unwrap_or_default().to_string(),
        path: parsed.path.unwrap_or_default().to_string(),
        keep_alive,
        body_len,
    };
    Ok(Some((request, head_len)))
}

pub fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

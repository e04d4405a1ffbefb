//! http-hello: a minimal HTTP/1.1 server, to show that a plugin can speak a
//! real protocol over its one connection.
//!
//! `GET /` answers with a small page, and `GET /whoami` with what the host
//! told the plugin of the connection: the client's address, and what TLS
//! established; any other path is 404, any other method 405. Connections stay open for further requests (HTTP/1.1
//! keep-alive) until the client asks to close or stays quiet for
//! [`IDLE_TIMEOUT`]. A request that does not parse gets 400 and the
//! connection is closed.

use std::io::{self, Read, Write};
use std::time::Duration;

use portico_guest_sdk::{Connection, Handler, Input};

use head::Request;

mod head;

/// How long an open connection may wait for its next request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body accepted (and ignored).
const MAX_BODY_BYTES: usize = 64 * 1024;

const PAGE: &str = "<!doctype html>\n<title>Portico</title>\n<h1>Hello from Portico</h1>\n<p>Served by a fresh WebAssembly instance for this connection.</p>\n";

struct HttpHello;

impl Handler for HttpHello {
    fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
        conn.set_read_timeout(Some(IDLE_TIMEOUT));
        let whoami = whoami(conn);
        let (input, output) = conn.split();
        let mut received = Vec::with_capacity(4096);
        loop {
            let request = match next_request(input, &mut received) {
                Ok(Some(request)) => request,
                Ok(None) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::TimedOut => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                    return respond(output, "400 Bad Request", "bad request\n", false);
                }
                Err(error) => return Err(error.into()),
            };
            if request.body_len > MAX_BODY_BYTES {
                return respond(output, "413 Content Too Large", "body too large\n", false);
            }
            skip_body(input, &mut received, request.body_len)?;
            match (request.method.as_str(), request.path.as_str()) {
                ("GET", "/") => respond(output, "200 OK", PAGE, request.keep_alive)?,
                ("GET", "/whoami") => respond(output, "200 OK", &whoami, request.keep_alive)?,
                ("GET", _) => respond(output, "404 Not Found", "not found\n", request.keep_alive)?,
                _ => respond(
                    output,
                    "405 Method Not Allowed",
                    "only GET\n",
                    request.keep_alive,
                )?,
            }
            if !request.keep_alive {
                return Ok(());
            }
        }
    }
}

/// What the host told of the connection, a `name: value` line each.
fn whoami(conn: &Connection) -> String {
    let mut lines = vec![
        format!(
            "peer: {}",
            conn.peer_addr().map(|a| a.to_string()).unwrap_or_default()
        ),
        format!("proxied: {}", conn.proxied()),
    ];
    if let Some(tls) = conn.tls() {
        lines.push(format!(
            "tls: {} {}",
            tls.protocol_version, tls.cipher_suite
        ));
        lines.push(format!("sni: {}", tls.server_name.unwrap_or_default()));
        lines.push(format!("alpn: {}", tls.alpn_protocol.unwrap_or_default()));
        if let Some(cert) = tls.client_certificate {
            lines.push(format!("client-subject: {}", cert.subject));
            lines.push(format!(
                "client-names: {}",
                cert.subject_alt_names.join(", ")
            ));
        }
    }
    lines.join("\n") + "\n"
}

/// Reads until `received` holds a whole request head, then parses and
/// removes it. `None` means the client closed between requests; a head
/// that cannot be parsed is an `InvalidData` error.
fn next_request(input: &mut Input, received: &mut Vec<u8>) -> io::Result<Option<Request>> {
    loop {
        if let Some((request, head_len)) = head::parse(received)? {
            received.drain(..head_len);
            return Ok(Some(request));
        }
        if read_more(input, received)? == 0 {
            return match received.is_empty() {
                true => Ok(None),
                false => Err(head::invalid("connection closed inside a request")),
            };
        }
    }
}

/// Discards a request body of `len` bytes, part of which may already be in
/// `received`.
fn skip_body(input: &mut Input, received: &mut Vec<u8>, len: usize) -> io::Result<()> {
    while received.len() < len {
        if read_more(input, received)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    received.drain(..len);
    Ok(())
}

fn read_more(input: &mut Input, received: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0; 4096];
    let n = input.read(&mut chunk)?;
    received.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn respond(
    output: &mut impl Write,
    status: &str,
    body: &str,
    keep_alive: bool,
) -> portico_guest_sdk::Result {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    // Only the page is HTML; errors and /whoami are lines of text.
    let content_type = if body == PAGE {
        "text/html"
    } else {
        "text/plain"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}; charset=utf-8\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    );
    output.write_all(response.as_bytes())?;
    output.flush()?;
    Ok(())
}

portico_guest_sdk::export!(HttpHello);

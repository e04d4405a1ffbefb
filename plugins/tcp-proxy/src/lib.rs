//! TCP proxy: forwards each connection to the upstream server named by the
//! `upstream` setting (`HOST:PORT`), both ways, until both sides are done.
//! The service must be granted that upstream (`grants.outbound`).

use std::io::{self, Write};
use std::time::Duration;

use portico_guest_sdk::net::{TcpStream, wait_readable};
use portico_guest_sdk::{Connection, Handler, config};

struct Proxy;

impl Handler for Proxy {
    fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
        let upstream = config::get("upstream")?.ok_or("the `upstream` setting is missing")?;
        let mut server = TcpStream::connect(&upstream, Duration::from_secs(5))
            .map_err(|error| format!("connecting to {upstream}: {error}"))?;
        let (client_in, client_out) = conn.split();
        let mut buf = vec![0; 64 * 1024];
        let mut client_done = false;
        loop {
            // Once the client has finished sending, only the server's
            // answers are left to wait for.
            let ready = if client_done {
                wait_readable(&[&server])
            } else {
                wait_readable(&[&server, &*client_in])
            };
            if ready.contains(&0) {
                match would_block(server.try_read(&mut buf))? {
                    Some(0) => return Ok(()),
                    Some(n) => client_out.write_all(&buf[..n])?,
                    None => {}
                }
            }
            if ready.contains(&1) {
                match would_block(client_in.try_read(&mut buf))? {
                    Some(0) => {
                        server.shutdown_write()?;
                        client_done = true;
                    }
                    Some(n) => server.write_all(&buf[..n])?,
                    None => {}
                }
            }
        }
    }
}

/// A non-blocking read's result, with "nothing yet" as `None`.
fn would_block(read: io::Result<usize>) -> io::Result<Option<usize>> {
    match read {
        Ok(n) => Ok(Some(n)),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(error) => Err(error),
    }
}

portico_guest_sdk::export!(Proxy);

//! {{name}}: a Portico plugin written as a plain program. The host serves
//! it as inetd would, once per connection: stdin reads the client, stdout
//! writes to it, stderr goes to the host's log, and the connection ends
//! when `main` returns.
//!
//! The environment holds the connection's addresses (`TCPREMOTEIP`,
//! `TCPREMOTEPORT`, as tcpserver names them) and every setting given with
//! `host --setting KEY=VALUE`. This one echoes: change `main` to make it
//! yours.

use std::io::{self, Write};

fn main() -> io::Result<()> {
    let client = std::env::var("TCPREMOTEIP").unwrap_or_default();
    eprintln!("serving {client}");
    let mut stdout = io::stdout().lock();
    io::copy(&mut io::stdin().lock(), &mut stdout)?;
    stdout.flush()
}

//! A plugin with no SDK at all: a WASI program with a `main`. Portico
//! serves it as inetd would: its stdin reads the connection, its stdout
//! writes to it, and what it prints to stderr goes to the host's log.
//!
//! Its arguments are the words of the service's `args` setting, and its
//! environment holds every setting plus the client's address
//! (`TCPREMOTEIP`, `TCPREMOTEPORT`, as tcpserver sets them). Any language
//! that builds a WASI 0.2 command can serve connections the same way.

use std::io::{self, Write};

fn main() -> io::Result<()> {
    let client = std::env::var("TCPREMOTEIP").unwrap_or_default();
    eprintln!("serving {client}");
    let mut stdout = io::stdout().lock();
    // Any arguments are a banner, written before the echo.
    let banner: Vec<String> = std::env::args().skip(1).collect();
    if !banner.is_empty() {
        writeln!(stdout, "{}", banner.join(" "))?;
        stdout.flush()?;
    }
    io::copy(&mut io::stdin().lock(), &mut stdout)?;
    Ok(())
}

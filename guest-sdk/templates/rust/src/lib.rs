//! {{name}}: a Portico plugin. The host calls `run` once per accepted
//! connection, in a fresh instance of this plugin, and closes the
//! connection when it returns.
//!
//! This one echoes every byte back until the client closes: change `run`
//! to make it yours. `Connection` is `std::io::Read` and `Write`, so
//! `BufReader::lines`, `io::copy` and `write!` work as on a `TcpStream`.

use portico_guest_sdk::{Connection, Handler};

struct Plugin;

impl Handler for Plugin {
    fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
        let (input, output) = conn.split();
        std::io::copy(input, output)?;
        // An `Err` closes the connection and the host logs its message:
        // `return Err("what went wrong".into());`
        Ok(())
    }
}

portico_guest_sdk::export!(Plugin);

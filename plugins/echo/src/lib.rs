//! Echo: sends every byte back until the client closes, as in POCO's
//! classic TCPServer example. The smallest useful Portico plugin.

use portico_guest_sdk::{Connection, Handler};

struct Echo;

impl Handler for Echo {
    fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
        let (input, output) = conn.split();
        std::io::copy(input, output)?;
        Ok(())
    }
}

portico_guest_sdk::export!(Echo);

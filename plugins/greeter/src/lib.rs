//! Greeter: a line protocol whose words come from the operator's
//! `--config` flags. It shows how a plugin reads its settings.
//!
//! - `banner` (default `hello`): sent when a client connects.
//! - `greeting` (default `hello,`): each line the client sends is answered
//!   with `<greeting> <line>`.
//! - `quit` (default `quit`): the line that ends the session.
//!
//! The line `fail` ends it with an error instead, to show how a plugin
//! reports one: the host logs it as the connection's outcome. The line
//! `crash` panics, to show what the host logs of a crash (a trap).
//!
//! ```text
//! $ host --plugin greeter.wasm --config banner="welcome to portico" --config greeting=hi
//! $ nc 127.0.0.1 9000
//! welcome to portico
//! ada
//! hi ada
//! quit
//! bye
//! ```

use std::io::{BufRead, BufReader, Write};

use portico_guest_sdk::{Connection, Handler, config};

struct Greeter;

impl Handler for Greeter {
    fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
        let banner = config::get("banner")?.unwrap_or_else(|| "hello".into());
        let greeting = config::get("greeting")?.unwrap_or_else(|| "hello,".into());
        let quit = config::get("quit")?.unwrap_or_else(|| "quit".into());

        let (input, output) = conn.split();
        writeln!(output, "{banner}")?;
        for line in BufReader::new(input).lines() {
            let line = line?;
            let name = line.trim();
            if name == quit {
                writeln!(output, "bye")?;
                break;
            }
            if name == "fail" {
                return Err("the client asked to fail".into());
            }
            if name == "crash" {
                panic!("the client asked to crash");
            }
            writeln!(output, "{greeting} {name}")?;
        }
        Ok(())
    }
}

portico_guest_sdk::export!(Greeter);

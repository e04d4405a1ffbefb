//! A WASI command (a program with `main`) that reads one line from stdin
//! and does what it says:
//! - `env`: writes its arguments and environment, one per line, then ends;
//! - `exit N`: exits with status N (WASI 0.2 carries 0 or 1);
//! - `panic`: panics (a trap);
//! - `spin`: computes forever (the CPU budget must stop it);
//! - anything else: writes it back, then echoes the rest of stdin.

use std::io::{self, BufRead, Write};

fn main() -> io::Result<()> {
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    let mut line = String::new();
    input.read_line(&mut line)?;
    match line.trim_end() {
        "env" => {
            for argument in std::env::args() {
                writeln!(output, "arg {argument}")?;
            }
            for (name, value) in std::env::vars() {
                writeln!(output, "env {name}={value}")?;
            }
        }
        "panic" => panic!("asked to panic"),
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        command => match command.strip_prefix("exit ") {
            Some(status) => std::process::exit(status.parse().unwrap_or(1)),
            None => {
                output.write_all(line.as_bytes())?;
                output.flush()?;
                io::copy(&mut input, &mut output)?;
            }
        },
    }
    Ok(())
}

//! A WASI command (a program with `main`) that reads one line from stdin
//! and does what it says:
//! - `env`: writes its arguments and environment, one per line, then ends;
//! - `exit N`: exits with status N (WASI 0.2 carries 0 or 1);
//! - `panic`: panics (a trap);
//! - `spin`: computes forever (the CPU budget must stop it);
//! - `many-stdout N`: opens N stdout handles, writing all each allows
//!   without waiting, keeping them open, then echoes the rest of stdin;
//! - `unflushed N`: writes N bytes of `x` without ever flushing, and exits
//!   as soon as the last write is accepted;
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
        command if command.starts_with("many-stdout ") => {
            let count: usize = command["many-stdout ".len()..].parse().unwrap_or(0);
            let mut handles = Vec::new();
            for _ in 0..count {
                let stdout = wasip2::cli::stdout::get_stdout();
                if let Ok(permit) = stdout.check_write() {
                    let _ = stdout.write(&vec![b'x'; permit as usize]);
                }
                handles.push(stdout);
            }
            io::copy(&mut input, &mut io::sink())?;
        }
        command if command.starts_with("unflushed ") => {
            let mut left: usize = command["unflushed ".len()..].parse().unwrap_or(0);
            let stdout = wasip2::cli::stdout::get_stdout();
            while left > 0 {
                let permit = stdout
                    .check_write()
                    .map_err(|_| io::ErrorKind::BrokenPipe)? as usize;
                if permit == 0 {
                    stdout.subscribe().block();
                    continue;
                }
                let n = permit.min(left);
                stdout
                    .write(&vec![b'x'; n])
                    .map_err(|_| io::ErrorKind::BrokenPipe)?;
                left -= n;
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

//! A plugin for the tests: the client's first line says what to do, and
//! every way a third-party plugin can go wrong is one line away.
//!
//! `echo` echoes the rest of the connection; the other commands misbehave
//! (trap, panic, fail, exit, spin, exhaust memory or stack, flood, spam)
//! or try what the sandbox forbids and report the outcome to the client.

use std::io::{self, BufRead, BufReader, Write};
use std::time::Duration;

use portico_guest_sdk::{Connection, Handler};

struct Misbehave;

impl Handler for Misbehave {
    fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
        let info = format!("{} {} {}", conn.id(), conn.peer_addr()?, conn.local_addr()?);
        let (input, output) = conn.split();
        let mut input = BufReader::new(input);
        let mut line = String::new();
        input.read_line(&mut line)?;
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("");
        let arg = words.next().unwrap_or("");
        match command {
            "echo" => {
                writeln!(output, "ok")?;
                io::copy(&mut input, output)?;
            }
            "trap" => trap(),
            "panic" => panic!("asked to panic"),
            "error" => return Err("asked to fail".into()),
            "exit" => std::process::exit(arg.parse().unwrap_or(1)),
            "abort" => std::process::abort(),
            "return" => {}
            "print" => {
                println!("{arg} on stdout");
                eprintln!("{arg} on stderr");
            }
            "loop" => spin(false),
            "print-loop" => spin(true),
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                }
            }
            "recurse" => {
                writeln!(output, "{}", recurse(1))?;
            }
            "flood" => {
                let chunk = vec![b'x'; 64 * 1024];
                loop {
                    output.write_all(&chunk)?;
                }
            }
            "spam-log" => loop {
                println!("spam spam spam spam spam spam spam spam");
            },
            "sleep" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "config" => {
                let value = portico_guest_sdk::config::get(arg)?;
                writeln!(output, "{}", value.unwrap_or_else(|| "<unset>".into()))?;
            }
            "info" => writeln!(output, "{info}")?,
            "open-file" => report(
                output,
                std::fs::read(if arg.is_empty() { "/etc/passwd" } else { arg }),
            )?,
            "connect" => report(output, std::net::TcpStream::connect(arg))?,
            "lookup" => report(output, std::net::ToSocketAddrs::to_socket_addrs(&(arg, 80)))?,
            "env" => {
                let vars: Vec<_> = std::env::vars().collect();
                let args: Vec<_> = std::env::args().collect();
                writeln!(output, "env={} args={}", vars.len(), args.len())?;
            }
            other => return Err(format!("unknown command {other:?}").into()),
        }
        Ok(())
    }
}

/// Executes wasm's `unreachable` instruction.
#[cfg(target_family = "wasm")]
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_family = "wasm"))]
fn trap() -> ! {
    unreachable!("only the wasm build of this plugin is used")
}

/// Computes for ever, optionally printing now and then.
fn spin(print: bool) -> ! {
    let mut n: u64 = 0;
    loop {
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1);
        if print && n.is_multiple_of(50_000_000) {
            println!("still spinning");
        }
        std::hint::black_box(n);
    }
}

/// Recurses until the stack overflows.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 32]);
    recurse(frame[31] + 1) + frame[0]
}

/// Tells the client whether a forbidden operation was `allowed` or `denied`.
fn report<T>(output: &mut impl Write, result: io::Result<T>) -> io::Result<()> {
    match result {
        Ok(_) => writeln!(output, "allowed"),
        Err(error) => writeln!(output, "denied: {error}"),
    }
}

portico_guest_sdk::export!(Misbehave);

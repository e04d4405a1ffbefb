//! A plugin for the tests: the client's first line says what to do, and
//! every way a third-party plugin can go wrong is one line away.
//!
//! `echo` echoes the rest of the connection; the other commands misbehave
//! (trap, panic, fail, exit, spin, exhaust memory or stack, flood, spam,
//! forge log lines, ask host calls for huge amounts) or try what the
//! sandbox forbids and report the outcome to the client.
//!
//! `hibernate N [MS]` hibernates with a state of N bytes (waking after MS
//! milliseconds, if given); the woken instance says `woke REASON BYTES`
//! and reads the next command. `hibernate-loop` hibernates and wakes at
//! once, for ever. `hibernate-reading` hibernates until the client sends,
//! takes what came, and hibernates again, until the client leaves.
//! `subscribe-hibernate TOPIC` subscribes and hibernates;
//! each message wakes it to take what waits and hibernate again, until the
//! client leaves.
//!
//! Code also runs at instantiation, before `run`: the settings `init`
//! (`spin` or `sleep`) and `init-after-ms` (a Unix time in milliseconds)
//! make every instance created from then on spin or sleep for ever in
//! `_initialize`, which is how a plugin passes the host's start-up check
//! and then hangs every connection.

use std::io::{self, BufRead, BufReader, Write};
use std::time::Duration;

use portico_guest_sdk::bindings::wasi;
use portico_guest_sdk::hibernation::{self, WakeReason};
use portico_guest_sdk::{Connection, Handler};

/// An error message that, logged raw, would read as a second host line
/// claiming a connection ended well.
const FORGED: &str = "fine\n2026-01-01T00:00:00.000000Z  INFO portico_host::server: \
                      closed conn=424242 elapsed_ms=0 bytes_in=0 bytes_out=0 outcome=\"ok\"";

/// The state of a connection that hibernates and wakes without end.
const LOOP_STATE: &[u8] = b"loop";
/// The state of a connection that wakes for what its client sends.
const READING_STATE: &[u8] = b"reading";
/// The state of a connection that wakes for its subscription's messages.
const SUBSCRIBED_STATE: &[u8] = b"subscribed";

struct Misbehave;

impl Handler for Misbehave {
    fn run(conn: &mut Connection) -> portico_guest_sdk::Result {
        let info = format!("{} {} {}", conn.id(), conn.peer_addr()?, conn.local_addr()?);
        let (input, output) = conn.split();
        if let Some(wake) = hibernation::woken() {
            if wake.state == LOOP_STATE {
                hibernation::hibernate(LOOP_STATE, Some(Duration::ZERO))?;
                return Ok(());
            }
            if wake.state == READING_STATE {
                let mut buf = [0; 4096];
                if wake.reason != WakeReason::ClientData || input.try_read(&mut buf)? == 0 {
                    return Ok(());
                }
                hibernation::hibernate(READING_STATE, None)?;
                return Ok(());
            }
            if wake.state == SUBSCRIBED_STATE {
                if wake.reason != WakeReason::Message {
                    return Ok(());
                }
                for subscription in &wake.subscriptions {
                    while subscription.try_receive().is_some() {}
                }
                hibernation::hibernate(SUBSCRIBED_STATE, None)?;
                return Ok(());
            }
            let reason = match wake.reason {
                WakeReason::ClientData => "client-data",
                WakeReason::ClientClosed => "client-closed",
                WakeReason::Message => "message",
                WakeReason::Timer => "timer",
                WakeReason::Draining => "draining",
            };
            writeln!(output, "woke {reason} {}", wake.state.len())?;
        }
        let mut input = BufReader::new(input);
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("");
        let arg = words.next().unwrap_or("");
        let number = arg.parse::<u64>().unwrap_or(1);
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
            "scan" => {
                let open = (1..=u16::try_from(number).unwrap_or(u16::MAX))
                    .filter(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok())
                    .count();
                writeln!(output, "connected to {open} of {number} ports")?;
            }
            "hoard" => {
                let mut held = Vec::new();
                let error = loop {
                    match std::net::TcpStream::connect(arg) {
                        Ok(stream) => held.push(stream),
                        Err(error) => break error,
                    }
                };
                writeln!(output, "held {}: {error}", held.len())?;
                // Keeps them until the client says otherwise.
                input.read_line(&mut String::new())?;
            }
            "fill-bucket" => {
                let bucket = portico_guest_sdk::keyvalue::Bucket::open(arg)?;
                let value = vec![7; 1 << 20];
                let mut stored = 0;
                let error = loop {
                    match bucket.set(&format!("{}-{stored}", info), &value) {
                        Ok(()) => stored += 1,
                        Err(error) => break error,
                    }
                };
                writeln!(output, "stored {stored}: {error}")?;
            }
            "open-bucket" => report(
                output,
                portico_guest_sdk::keyvalue::Bucket::open(arg).map_err(io::Error::other),
            )?,
            "publish-every" => {
                // `publish-every TOPIC MS`: a message every MS milliseconds,
                // twenty in all.
                let pause = Duration::from_millis(
                    words.next().and_then(|ms| ms.parse().ok()).unwrap_or(100),
                );
                for _ in 0..20 {
                    portico_guest_sdk::pubsub::publish(arg, b"wake up")?;
                    std::thread::sleep(pause);
                }
                writeln!(output, "published")?;
            }
            "publish-loop" => loop {
                let _ = portico_guest_sdk::pubsub::publish(arg, &[b'x'; 1024]);
            },
            "subscribe-idle" => {
                let _subscription = portico_guest_sdk::pubsub::subscribe(arg)?;
                writeln!(output, "subscribed")?;
                // Never reads what arrives; waits for the client instead.
                input.read_line(&mut String::new())?;
            }
            "subscribe-many" => {
                let mut held = Vec::new();
                let error = loop {
                    match portico_guest_sdk::pubsub::subscribe(&format!("{arg}.{}", held.len())) {
                        Ok(subscription) => held.push(subscription),
                        Err(error) => break error,
                    }
                };
                writeln!(output, "subscribed {}: {error}", held.len())?;
            }
            "connect-loop" => loop {
                let _ = std::net::TcpStream::connect(arg);
            },
            "env" => {
                let vars: Vec<_> = std::env::vars().collect();
                let args: Vec<_> = std::env::args().collect();
                writeln!(output, "env={} args={}", vars.len(), args.len())?;
            }
            "forge-error" => return Err(FORGED.into()),
            "huge-error" => return Err("E".repeat((number as usize) << 20).into()),
            "print-controls" => {
                println!("cr\rvt\x0bff\x0cesc\x1b[31mred ls\u{2028}ps\u{2029}nel\u{85}end");
                println!("{FORGED}");
                writeln!(output, "printed")?;
            }
            "streams" => {
                // Each stdout handle is a new stream; each holds an
                // unfinished line.
                let line = vec![b'x'; 4000];
                let streams: Vec<_> = (0..number)
                    .map(|_| {
                        let stream = wasi::cli::stdout::get_stdout();
                        let _ = stream.write(&line);
                        stream
                    })
                    .collect();
                writeln!(output, "holding {}", streams.len())?;
                io::copy(&mut input, &mut io::sink())?;
            }
            "stdout-chunk" => {
                // One write far past what check-write permits.
                let chunk = vec![b'\n'; (number as usize) << 20];
                let stdout = wasi::cli::stdout::get_stdout();
                let written = stdout.write(&chunk);
                writeln!(output, "wrote: {written:?}")?;
            }
            "random" => {
                let bytes = wasi::random::random::get_random_bytes(number);
                writeln!(output, "got {}", bytes.len())?;
            }
            "poll-many" => {
                let timer = wasi::clocks::monotonic_clock::subscribe_duration(0);
                let list = vec![&timer; number as usize];
                let ready = wasi::io::poll::poll(&list);
                writeln!(output, "ready {}", ready.len())?;
            }
            "zero-timer" => loop {
                wasi::clocks::monotonic_clock::subscribe_duration(0).block();
            },
            "dirty" => {
                // Touches every page of `number` MiB, then returns.
                let mut heap = vec![0u8; (number as usize) << 20];
                for page in heap.chunks_mut(4096) {
                    page[0] = 1;
                }
                std::hint::black_box(&heap);
                writeln!(output, "dirtied {number} MiB")?;
            }
            "hold-pollable" => hold_pollable(output)?,
            "hibernate" => {
                let state = vec![b'x'; number as usize];
                let wake_after = words.next().and_then(|ms| ms.parse().ok());
                match hibernation::hibernate(&state, wake_after.map(Duration::from_millis)) {
                    Ok(()) => writeln!(output, "hibernating")?,
                    Err(error) => writeln!(output, "refused: {error}")?,
                }
            }
            "subscribe-hibernate" => {
                let _subscription = portico_guest_sdk::pubsub::subscribe(arg)?;
                hibernation::hibernate(SUBSCRIBED_STATE, None)?;
                writeln!(output, "hibernating")?;
            }
            "compute" => {
                // Sorts 2^N pseudo-random numbers (a memory-bound workload)
                // and says how long it took, timed inside the plugin.
                let started = std::time::Instant::now();
                let mut seed = 0x2545_f491_4f6c_dd1d_u64;
                let mut numbers: Vec<u32> = (0..1usize << number)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u32
                    })
                    .collect();
                numbers.sort_unstable();
                let took = started.elapsed().as_micros();
                writeln!(
                    output,
                    "computed {} in {took} us",
                    numbers[numbers.len() / 2]
                )?;
            }
            "hibernate-reading" => {
                hibernation::hibernate(READING_STATE, None)?;
                writeln!(output, "hibernating")?;
            }
            "hibernate-loop" => {
                hibernation::hibernate(LOOP_STATE, Some(Duration::ZERO))?;
                writeln!(output, "hibernating")?;
            }
            other => return Err(format!("unknown command {other:?}").into()),
        }
        Ok(())
    }
}

/// Writes until the host holds output the client has not taken yet, logs
/// how much was written, and returns while holding a pollable of the output
/// stream: the host must still deliver every byte.
fn hold_pollable(output: &mut portico_guest_sdk::Output) -> io::Result<()> {
    let stream = output.wasi_stream();
    let chunk = vec![b'h'; 64 * 1024];
    let mut written = 0;
    loop {
        let permit = stream.check_write().map_err(io::Error::other)?;
        if permit == 0 {
            break;
        }
        let len = chunk.len().min(permit as usize);
        stream.write(&chunk[..len]).map_err(io::Error::other)?;
        written += len;
    }
    eprintln!("wrote {written} bytes");
    std::mem::forget(stream.subscribe());
    Ok(())
}

/// Runs when each instance is created: spins or sleeps for ever if the
/// settings say so and the time has come (see the crate doc).
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    let setting = |key| portico_guest_sdk::config::get(key).ok().flatten();
    let Some(init) = setting("init") else { return };
    let armed_at: u128 = setting("init-after-ms")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    if now < armed_at {
        return;
    }
    match init.as_str() {
        "spin" => spin(false),
        "sleep" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => {}
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

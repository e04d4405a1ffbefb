//! `portico-bench`: Portico's echo plugin against a native tokio echo
//! server and POCO's TCPServer echo, in the same run, on the same machine,
//! with the same load generator, with shared cores and pinned (`echo`).
//! Then the echo in each plugin language (`runtimes`), the capabilities
//! against real Redis (`capabilities`), and TLS termination against a
//! native tokio-rustls server (`tls`).
//!
//! Run it with `cargo xtask bench`; BENCHMARKS.md holds the latest results.
//!
//! `portico-bench soak` is the other long run: the host for minutes under
//! mixed load, hostile plugins and scheduled faults, held to the targets
//! in RELIABILITY.md (`cargo xtask soak --minutes N`).

mod capabilities;
mod capacity;
mod compare;
mod density;
mod echo;
mod hibernation;
mod inproc;
mod instructions;
mod load;
mod native;
mod pin;
mod runtimes;
mod server;
mod soak;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::server::Launch;

#[derive(Parser)]
#[command(about = "Benchmark Portico against native tokio and POCO echo servers")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The `host` binary to benchmark (built with --release).
    #[arg(long, default_value = "target/release/host")]
    host: PathBuf,
    /// The echo plugin.
    #[arg(long, default_value = "target/wasm32-wasip2/release/echo.wasm")]
    plugin: PathBuf,
    /// POCO's echo server, built from bench/poco/echo.cpp.
    #[arg(long, default_value = "target/poco-echo")]
    poco: PathBuf,
    /// The plugin languages whose echo the runtime scenario measures (each
    /// `LANGUAGE-echo.wasm` beside the echo plugin, as `cargo xtask
    /// plugins` builds them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rust,c,go,python,javascript"
    )]
    languages: Vec<String>,
    /// Rounds; each runs every scenario on both servers.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// How long each load scenario runs, in seconds.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Idle connections held open for the memory figures.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Most connections the capacity scenario opens (it stops at the
    /// host's ceiling, or where the load generator runs out of files).
    #[arg(long, default_value_t = 1_000_000)]
    capacity_connections: usize,
    /// Requests per redis-benchmark test, against the redis-kv and
    /// tcp-proxy plugins and a real redis-server.
    #[arg(long, default_value_t = 100_000)]
    redis_requests: u64,
    /// Run only the TLS comparison.
    #[arg(long)]
    tls_only: bool,
    /// Run only the hibernation scenario.
    #[arg(long)]
    hibernation_only: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the native baseline server (the benchmark starts it itself).
    NativeEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Run the native TLS baseline server (the benchmark starts it itself).
    NativeTlsEcho {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Drive a running echo server with one scenario and print its rate,
    /// for profiling a server under a steady load (`conn`: connections per
    /// second, `ping-pong`: MiB/s, `streaming`: flow-controlled MiB/s).
    Load {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        scenario: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Count the host's user-space instructions per connection and per 4 KiB
    /// round trip with callgrind, and hold them to a committed baseline:
    /// fails if either grew, or shrank, by more than 5%.
    Instructions {
        /// The baseline file (`per_connection = N`, `per_round_trip = N`).
        #[arg(long, default_value = "bench/instructions.txt")]
        baseline: PathBuf,
        /// Write the figures counted as the new baseline instead.
        #[arg(long)]
        update: bool,
    },
    /// Compare builds of the host (or one build with different environment
    /// variables) side by side in one run, with native tokio beside them:
    /// server CPU per connection and per 4 KiB round trip, page faults,
    /// rates; pinned, medians of `--rounds`. With `--instructions`, also
    /// each variant's instruction counts, as the guard counts them.
    Compare {
        /// `NAME=PATH[,KEY=VALUE...]`: a host binary, and environment
        /// variables to run it with. Repeat for each build.
        #[arg(
            long = "variant",
            value_name = "NAME=PATH[,KEY=VALUE...]",
            required = true
        )]
        variants: Vec<String>,
        #[arg(long)]
        instructions: bool,
        /// Also hold this many idle connections, for memory per idle
        /// connection and memory left 5 s after they close.
        #[arg(long, default_value_t = 0)]
        idle: usize,
    },
    /// Run the TLS load generator (the benchmark starts it itself): prints
    /// handshakes per second, or MiB per second.
    /// Hibernated chat members held by several hosts on one port.
    Density {
        #[arg(long, default_value_t = 100_000)]
        members: usize,
        #[arg(long, default_value_t = 6)]
        hosts: usize,
    },
    /// A client process of `density`: opens chat members and holds them.
    HoldMembers {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        source: std::net::Ipv4Addr,
        #[arg(long)]
        first_room: usize,
    },
    TlsClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        mode: String,
        #[arg(long)]
        seconds: u64,
    },
    /// The soak: the release host with several services under mixed load,
    /// hostile plugins and scheduled faults for N minutes; fails if a
    /// target is missed (see RELIABILITY.md). Run it with `cargo xtask
    /// soak --minutes N`; it mounts a tmpfs, so it runs as root.
    Soak {
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// The `host` binary (built with --release).
        #[arg(long, default_value = "target/release/host")]
        host: PathBuf,
        /// The folder of the built plugins (`cargo xtask plugins`: the Go
        /// echo too).
        #[arg(long, default_value = "target/wasm32-wasip2/release")]
        plugin_dir: PathBuf,
        /// Where the summary, plots, metrics and host log go.
        #[arg(long, default_value = "target/soak")]
        out: PathBuf,
        /// Kill Redis once without opening a fault window: a check of the
        /// soak itself, which must then count the errors as lost and fail.
        #[arg(long)]
        unannounced_redis_kill: bool,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    match &args.command {
        Some(Command::NativeEcho { listen }) => return native::serve(*listen),
        Some(Command::NativeTlsEcho { listen, cert, key }) => {
            return tls::serve(*listen, cert, key);
        }
        Some(Command::Load {
            addr,
            scenario,
            seconds,
        }) => return load::drive(*addr, scenario, Duration::from_secs(*seconds)),
        Some(Command::TlsClient {
            addr,
            mode,
            seconds,
        }) => return tls::client(*addr, mode, *seconds),
        Some(Command::Compare {
            variants,
            instructions,
            idle,
        }) => return compare_builds(&args, variants, *instructions, *idle),
        Some(Command::Density { members, hosts }) => {
            let chat = args.plugin.with_file_name("chat.wasm");
            let density = density::measure(&args.host, &chat, *members, *hosts)?;
            density::report(&density);
            return Ok(());
        }
        Some(Command::HoldMembers {
            addr,
            count,
            source,
            first_room,
        }) => return density::hold(*addr, *count, *source, *first_room),
        Some(Command::Instructions { baseline, update }) => {
            return guard_instructions(&args, baseline, *update);
        }
        Some(Command::Soak {
            minutes,
            host,
            plugin_dir,
            out,
            unannounced_redis_kill,
        }) => {
            let options = soak::Options {
                minutes: *minutes,
                host: host.clone(),
                plugin_dir: plugin_dir.clone(),
                out: out.clone(),
                unannounced_redis_kill: *unannounced_redis_kill,
            };
            if !soak::run(&options)? {
                anyhow::bail!("the soak missed targets (see above)");
            }
            return Ok(());
        }
        None => {}
    }
    let files = rlimit::increase_nofile_limit(u64::MAX)?;
    let plugin_dir = args.plugin.parent().unwrap_or(std::path::Path::new("."));
    if args.tls_only {
        let (portico, native) = tls::measure(&args.host, plugin_dir, args.rounds, args.seconds)?;
        tls::report(&portico, &native);
        return Ok(());
    }
    let launch = Launch {
        host: args.host.clone(),
        plugin: args.plugin.clone(),
        poco: args.poco.clone(),
        max_connections: args.idle_connections as u32 + 256,
        max_hibernated: 0,
    };
    let duration = Duration::from_secs(args.seconds);
    let sleepy = plugin_dir.join("sleepy_echo.wasm");
    if args.hibernation_only {
        let results = hibernation::measure(&launch, &sleepy, args.idle_connections, duration)?;
        hibernation::report(&results, args.idle_connections);
        return Ok(());
    }
    let echo = echo::measure(&launch, args.rounds, duration, args.idle_connections)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let inproc = runtime.block_on(inproc::measure(&args.plugin, 2000))?;
    let startup = server::startup_times(&launch)?;
    let runtimes = runtimes::measure(&args.host, plugin_dir, &args.languages, duration)?;
    let client_files = usize::try_from(files.saturating_sub(1024)).unwrap_or(usize::MAX);
    let held = runtime.block_on(capacity::measure(
        &args.host,
        &args.plugin,
        args.capacity_connections.min(client_files),
    ))?;

    println!(
        "portico-bench: {} rounds, {} s per scenario, {} idle connections",
        args.rounds, args.seconds, args.idle_connections
    );
    echo::report(&echo, args.rounds, args.seconds, args.idle_connections);
    report_startup(&inproc, startup);
    runtimes::report(&runtimes, args.seconds);
    capacity::report(&held);
    let hibernated = hibernation::measure(&launch, &sleepy, args.idle_connections, duration)?;
    hibernation::report(&hibernated, args.idle_connections);
    let redis = capabilities::measure(&args.host, plugin_dir, args.redis_requests)?;
    capabilities::report(&redis, args.redis_requests);
    let (portico_tls, native_tls) =
        tls::measure(&args.host, plugin_dir, args.rounds, args.seconds)?;
    tls::report(&portico_tls, &native_tls);
    Ok(())
}

fn report_startup(inproc: &inproc::Instantiation, (cold, warm): (Duration, Duration)) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!("Start-up and instantiation (Portico)");
    println!("| metric | value | target |");
    println!("| --- | ---: | --- |");
    println!(
        "| instantiate (store + WASI context + instance), us | {:.1} | <= 15 |",
        inproc.instantiate_us
    );
    println!(
        "| empty connection served in-process, us | {:.1} | |",
        inproc.empty_run_us
    );
    println!(
        "| start-up to `listening on`, compile cache empty, ms | {:.1} | |",
        ms(cold)
    );
    println!(
        "| start-up to `listening on`, compile cache warm, ms | {:.1} | <= 20 |",
        ms(warm)
    );
}

/// Counts the instructions and holds them to `baseline`, or writes them
/// there with `update`.
fn compare_builds(
    args: &Args,
    specs: &[String],
    count_instructions: bool,
    idle: usize,
) -> Result<()> {
    let variants = specs
        .iter()
        .map(|spec| compare::Variant::parse(spec))
        .collect::<Result<Vec<_>>>()?;
    rlimit::increase_nofile_limit(u64::MAX)?;
    compare::run(&args.plugin, &variants, args.rounds, args.seconds, idle)?;
    if count_instructions {
        println!();
        println!("| server | instructions per connection | per 4 KiB round trip |");
        println!("| --- | ---: | ---: |");
        for variant in &variants {
            let Some(host) = &variant.host else { continue };
            let counted = instructions::count(host, &args.plugin, &variant.env)?;
            println!(
                "| {} | {:.0} | {:.0} |",
                variant.name, counted.per_connection, counted.per_round_trip
            );
        }
    }
    Ok(())
}

fn guard_instructions(args: &Args, baseline: &Path, update: bool) -> Result<()> {
    let measured = instructions::count(&args.host, &args.plugin, &[])?;
    println!(
        "instructions per connection: {:.0}\ninstructions per 4 KiB round trip: {:.0}",
        measured.per_connection, measured.per_round_trip
    );
    if update {
        return instructions::write_baseline(baseline, measured);
    }
    let problems = instructions::compare(measured, instructions::read_baseline(baseline)?);
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    Ok(())
}

//! The soak from start to verdict: set up the files, the tmpfs, the peer
//! servers and the host; start every client, attacker and fault; sample
//! each window; stop; kill the host and read the file bucket back through
//! a fresh one; judge and write the report.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::admin::Admin;
use super::chat::{self, Room};
use super::config::{Ports, Setup};
use super::faults::{self, ECHO_PLUGINS, Faults};
use super::hostile::{self, Tally, Targets};
use super::kv_file::{self, Ledger};
use super::procs::{Host, Peer, SpentCpu, Tmpfs};
use super::record::{Part, Record, Verdict, WINDOW};
use super::report::{self, Ending};
use super::sample::{EchoFigures, Resources, Sample};
use super::{Cores, Options, echo_load, plot, summary, tls_load, tools};
use crate::server::{Server, children_cpu, command_on, process_cpu};

/// The file bucket's disk: room for every write of a 30-minute run.
const DISK_SIZE: &str = "16m";
/// How long after the config is written the spinners service's instances
/// start to spin: time for the host to start and pass its start-up check,
/// which must not meet the attack.
const ARM_AFTER: Duration = Duration::from_secs(20);
/// How often the host's resources are read within a window.
const RESOURCES_EVERY: Duration = Duration::from_secs(1);
/// Lost errors printed at the end; summary.md lists more.
const PRINTED_LOST: usize = 20;

/// Runs the soak; returns whether every judged target was met.
pub fn run(options: &Options) -> Result<bool> {
    super::check_programs()?;
    rlimit::increase_nofile_limit(u64::MAX)?;
    let cores = Cores::pick();
    crate::pin::pin_current_thread(cores.clients)?;
    std::fs::create_dir_all(&options.out)?;
    let out = options.out.canonicalize()?;
    let token = super::prepare_files(&out)?;
    // Declared first, so dropped last: after the host that holds its file.
    let disk = Tmpfs::mount(&out.join("kv-disk"), DISK_SIZE)?;
    let ports = Ports::pick()?;
    // Shared with the faults that kill them; kept here so that they serve
    // the restarted host at the end too.
    let redis = Arc::new(Mutex::new(Peer::redis(ports.redis, cores.clients)?));
    let nats = Arc::new(Mutex::new(Peer::nats(ports.nats, cores.clients)?));
    let mut setup = Setup {
        ports,
        plugin_dir: options
            .plugin_dir
            .canonicalize()
            .with_context(|| format!("the plugin folder {}", options.plugin_dir.display()))?,
        out: out.clone(),
        kv_file_db: disk.dir.join("durable.db"),
        spin_from_ms: 0,
    };
    warm_cache(&options.host, &setup, cores)?;
    setup.spin_from_ms = super::unix_ms_after(ARM_AFTER)?;
    setup.write(ECHO_PLUGINS[0])?;
    let log = out.join("host.log");
    let host = Host::start(&options.host, &setup.config_path(), cores.host, &log)?;
    let runtime = cores.layout.client_runtime()?;
    let run_for = Duration::from_secs(options.minutes * 60);
    println!(
        "soak: {} minutes; host pid {} ({}); out {}",
        options.minutes,
        host.pid,
        cores.layout.name(),
        out.display()
    );
    let context = Soak {
        options,
        setup,
        token,
        cores,
        run_for,
    };
    let collected = runtime.block_on(drive(&context, &host, &redis, &nats))?;
    let host_cpu = host.kill();
    let ending = runtime.block_on(read_back(&context, &collected.ledger, run_for));
    finish(&out, &context, &collected, &ending, host_cpu.total_s())
}

/// What the soak runs with.
struct Soak<'a> {
    options: &'a Options,
    setup: Setup,
    token: String,
    cores: Cores,
    run_for: Duration,
}

/// What the run leaves for the verdict.
struct Collected {
    record: Arc<Record>,
    samples: Vec<Sample>,
    ledger: Arc<Ledger>,
    tally: Arc<Tally>,
}

/// Compiles the Go echo into the compile cache before the soak, so that
/// the first reload to it loads a compiled plugin as every later one
/// does, rather than spend seconds compiling on the host's core in the
/// middle of the measurement (start-up and compile times are the
/// benchmark's business).
fn warm_cache(host: &Path, setup: &Setup, cores: Cores) -> Result<()> {
    let mut command = command_on(host, cores.host);
    command
        .arg("--plugin")
        .arg(setup.plugin(ECHO_PLUGINS[1]))
        .args(["--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(setup.out.join("cache"))
        .env("PORTICO_LOG", "warn");
    drop(Server::spawn(
        command,
        "the host, warming its compile cache",
    )?);
    Ok(())
}

/// Starts everything, samples every window for the run's length, and
/// stops everything.
async fn drive(
    context: &Soak<'_>,
    host: &Host,
    redis: &Arc<Mutex<Peer>>,
    nats: &Arc<Mutex<Peer>>,
) -> Result<Collected> {
    let record = Arc::new(Record::new());
    let stop = CancellationToken::new();
    let admin = Admin {
        addr: host.admin,
        token: context.token.clone(),
    };
    let spent = |peer: &Arc<Mutex<Peer>>| {
        peer.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .spent
            .clone()
    };
    let peers_spent = [spent(redis), spent(nats)];
    let faults = Arc::new(Faults {
        record: record.clone(),
        setup: context.setup.clone(),
        admin: admin.clone(),
        host_pid: host.pid,
        echo: context.setup.ports.echo,
        kv_file: context.setup.ports.kv_file,
        redis: redis.clone(),
        nats: nats.clone(),
        disk: context
            .setup
            .kv_file_db
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        unannounced_redis_kill: context.options.unannounced_redis_kill,
    });
    let ledger = Arc::new(Ledger::default());
    let tally = Arc::new(Tally::default());
    let mut tasks = spawn_clients(context, &record, &ledger, &tally, &stop)?;
    let probe = spawn_echo_probe(context, &record, &stop);
    tasks.push(tokio::spawn(faults::inject_all(
        faults.clone(),
        context.run_for,
        stop.clone(),
    )));
    println!("{}", report::header());
    let samples = sample_windows(context, host.pid, &admin, &record, &peers_spent).await;
    stop.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    let _ = tokio::task::spawn_blocking(move || probe.join()).await;
    Ok(Collected {
        record,
        samples: samples?,
        ledger,
        tally,
    })
}

/// Every client but the echo probe, and the attackers, as tasks.
fn spawn_clients(
    context: &Soak,
    record: &Arc<Record>,
    ledger: &Arc<Ledger>,
    tally: &Arc<Tally>,
    stop: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>> {
    let ports = &context.setup.ports;
    let cpu = context.cores.clients;
    let (r, s) = (record, stop);
    let mut tasks = vec![
        tokio::spawn(tools::wrk(ports.http, cpu, r.clone(), s.clone())),
        tokio::spawn(tools::redis_benchmark(
            ports.redis_kv,
            Part::RedisKv,
            cpu,
            r.clone(),
            s.clone(),
        )),
        tokio::spawn(tools::redis_benchmark(
            ports.proxy,
            Part::Proxy,
            cpu,
            r.clone(),
            s.clone(),
        )),
        tokio::spawn(kv_file::verify(
            ports.kv_file,
            ledger.clone(),
            r.clone(),
            s.clone(),
        )),
    ];
    let room = Arc::new(Room::default());
    for member in 0..chat::MEMBERS {
        tasks.push(tokio::spawn(chat::member(
            ports.chat,
            member,
            room.clone(),
            r.clone(),
            s.clone(),
        )));
    }
    tasks.push(tokio::spawn(chat::sweep(room, r.clone(), s.clone())));
    let connector = crate::tls::connector()?;
    for _ in 0..tls_load::CLIENTS {
        tasks.push(tokio::spawn(tls_load::handshakes(
            ports.tls,
            connector.clone(),
            r.clone(),
            s.clone(),
        )));
    }
    let targets = Targets {
        hostile: ports.hostile,
        spinners: ports.spinners,
    };
    let attackers = std::thread::available_parallelism().map_or(1, |n| n.get());
    for index in 0..attackers {
        tasks.push(tokio::spawn(hostile::attacker(
            index,
            targets,
            tally.clone(),
            r.clone(),
            s.clone(),
        )));
    }
    Ok(tasks)
}

/// The echo probe, on a thread and runtime of its own (on the clients'
/// core), so that its round trips wait on nothing the other clients do in
/// the process.
fn spawn_echo_probe(
    context: &Soak,
    record: &Arc<Record>,
    stop: &CancellationToken,
) -> std::thread::JoinHandle<()> {
    let (addr, cpu) = (context.setup.ports.echo, context.cores.clients);
    let (record, stop) = (record.clone(), stop.clone());
    std::thread::spawn(move || {
        // Left on any core if pinning fails: the figures are only noisier.
        let _ = crate::pin::pin_current_thread(cpu);
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            record.problem("the echo probe's runtime could not be built");
            return;
        };
        runtime.block_on(async {
            let clients: Vec<_> = (0..echo_load::HELD_CONNECTIONS + echo_load::CYCLING_CONNECTIONS)
                .map(|index| {
                    let held = index < echo_load::HELD_CONNECTIONS;
                    tokio::spawn(echo_load::client(
                        addr,
                        index,
                        held,
                        record.clone(),
                        stop.clone(),
                    ))
                })
                .collect();
            for client in clients {
                let _ = client.await;
            }
        });
    })
}

/// CPU used by this process and its reaped children (the load generators
/// that ran to their end), but for the peer servers killed by faults.
fn load_cpu_s(peers_spent: &[SpentCpu]) -> f64 {
    let own = process_cpu(std::process::id()).map_or(0.0, |cpu| cpu.total_s());
    let peers: f64 = peers_spent
        .iter()
        .map(|spent| spent.total().total_s())
        .sum();
    own + children_cpu().total_s() - peers
}

/// Samples each window until the run's end, printing its line.
async fn sample_windows(
    context: &Soak<'_>,
    pid: u32,
    admin: &Admin,
    record: &Record,
    peers_spent: &[SpentCpu],
) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    let windows = (context.run_for.as_secs() / WINDOW.as_secs()).max(1) as usize;
    let mut host_before = process_cpu(pid)?.total_s();
    let mut load_before = load_cpu_s(peers_spent);
    for window in 0..windows {
        let (from, to) = (WINDOW * window as u32, WINDOW * (window as u32 + 1));
        let resources = resources_over_window(pid, record, to).await?;
        let metrics = admin.metrics().await.unwrap_or_else(|error| {
            record.problem(format!("scraping /metrics: {error:#}"));
            Default::default()
        });
        let (host_now, load_now) = (process_cpu(pid)?.total_s(), load_cpu_s(peers_spent));
        let seconds = WINDOW.as_secs_f64();
        let errors = record.errors();
        let in_window = errors
            .iter()
            .filter(|error| error.from >= from && error.from < to);
        let lost = in_window
            .clone()
            .filter(|error| matches!(record.judge(error), Verdict::Lost))
            .map(|error| error.count)
            .sum();
        let sample = Sample {
            at: record.now(),
            resources,
            host_cpu: (host_now - host_before) / seconds,
            clients_cpu: (load_now - load_before) / seconds,
            echo: EchoFigures::of(&record.take_echo_round_trips()),
            done: Part::ALL
                .iter()
                .map(|&part| (part, record.done_in(window, part)))
                .collect(),
            errors: in_window.map(|error| error.count).sum(),
            lost,
            faults: faults_started(record, from, to),
            echo_faulted: record.fault_touching(Part::Echo, from, to),
            metrics,
        };
        (host_before, load_before) = (host_now, load_now);
        println!("{}", report::window_line(&sample));
        samples.push(sample);
    }
    Ok(samples)
}

/// The host's resources read every second until `to`, averaged: an
/// instant's RSS moves by a hundred MiB as memory hogs come and go, and
/// ten readings a window make the flatness check see the trend rather
/// than where one reading fell.
async fn resources_over_window(pid: u32, record: &Record, to: Duration) -> Result<Resources> {
    let mut readings = Vec::new();
    loop {
        let left = to.saturating_sub(record.now());
        tokio::time::sleep(left.min(RESOURCES_EVERY)).await;
        readings.push(Resources::read(pid)?);
        if left <= RESOURCES_EVERY {
            return Ok(Resources::mean(&readings));
        }
    }
}

fn faults_started(record: &Record, from: Duration, to: Duration) -> Vec<&'static str> {
    record
        .faults()
        .iter()
        .filter(|window| window.start >= from && window.start < to)
        .map(|window| window.fault.name())
        .collect()
}

/// Starts a fresh host on the same config (the spinners' attack armed
/// anew, after its start-up check) and reads back every acknowledged
/// write through it.
async fn read_back(context: &Soak<'_>, ledger: &Ledger, run: Duration) -> Ending {
    let mut ending = Ending {
        run,
        acknowledged: ledger.acknowledged().len(),
        lost_writes: Err(String::new()),
        wrong_reads: ledger.wrong_reads(),
    };
    let restarted = async {
        let mut setup = context.setup.clone();
        setup.spin_from_ms = super::unix_ms_after(ARM_AFTER)?;
        setup.write(last_echo_plugin(&setup)?)?;
        let log = setup.out.join("host.log");
        let host = Host::start(
            &context.options.host,
            &setup.config_path(),
            context.cores.host,
            &log,
        )
        .context("starting the host again after its SIGKILL")?;
        let lost = kv_file::check_all(setup.ports.kv_file, ledger).await;
        drop(host);
        lost
    };
    ending.lost_writes = restarted.await.map_err(|error| format!("{error:#}"));
    ending
}

/// The echo plugin the config file names now (the last reload's).
fn last_echo_plugin(setup: &Setup) -> Result<&'static str> {
    let text = std::fs::read_to_string(setup.config_path())?;
    Ok(ECHO_PLUGINS
        .into_iter()
        .rev()
        .find(|plugin| text.contains(&format!("/{plugin}\"")))
        .unwrap_or(ECHO_PLUGINS[0]))
}

/// Judges the run, writes `summary.md`, `metrics.tsv` and the plots, and
/// prints the verdict; returns whether every judged target was met.
fn finish(
    out: &Path,
    context: &Soak,
    collected: &Collected,
    ending: &Ending,
    host_cpu_s: f64,
) -> Result<bool> {
    let samples = &collected.samples;
    let targets = report::targets(samples, &collected.record, ending);
    let seconds = context.run_for.as_secs_f64();
    let inputs = summary::Inputs {
        samples,
        record: &collected.record,
        ending,
        targets: &targets,
        host_cpu: host_cpu_s / seconds,
        load_cpu: samples.iter().map(|sample| sample.clients_cpu).sum::<f64>()
            / samples.len().max(1) as f64,
        attacks_launched: collected.tally.launched.load(Relaxed),
        attacks_cut_off: collected.tally.cut_off.load(Relaxed),
        cores: context.cores.layout.name(),
    };
    let (text, met) = summary::write(&inputs);
    std::fs::write(out.join("summary.md"), &text)?;
    let mut tsv = String::from("seconds\tseries\tvalue\n");
    for sample in samples {
        for (series, value) in &sample.metrics {
            let _ = writeln!(tsv, "{:.1}\t{series}\t{value}", sample.at.as_secs_f64());
        }
    }
    std::fs::write(out.join("metrics.tsv"), tsv)?;
    let plots = plot::write_all(out, samples)?;
    print_verdict(&inputs, &plots, out);
    Ok(met)
}

fn print_verdict(inputs: &summary::Inputs, plots: &[std::path::PathBuf], out: &Path) {
    let (table, met) = report::targets_table(inputs.targets);
    println!("\n{table}");
    let lost: Vec<_> = inputs
        .record
        .errors()
        .into_iter()
        .filter(|error| matches!(inputs.record.judge(error), Verdict::Lost))
        .collect();
    for error in lost.iter().take(PRINTED_LOST) {
        let (at, part) = (error.from.as_secs_f64(), error.part.name());
        println!("lost: {at:.1} s {part}: {}", error.what);
    }
    if lost.len() > PRINTED_LOST {
        println!(
            "lost: and {} more (see summary.md)",
            lost.len() - PRINTED_LOST
        );
    }
    if let Some(last) = inputs.samples.last() {
        let mut metrics = String::new();
        summary::final_metrics(&mut metrics, &last.metrics, false);
        println!("{metrics}");
    }
    let plots: Vec<String> = plots
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    println!(
        "summary: {}; plots: {}",
        out.join("summary.md").display(),
        plots.join(", ")
    );
    println!(
        "soak: {}",
        if met {
            "every judged target met"
        } else {
            "TARGETS MISSED"
        }
    );
}

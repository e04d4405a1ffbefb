//! Clients nobody here wrote: `wrk` against http-hello and
//! `redis-benchmark` against redis-kv and through tcp-proxy, each run in
//! consecutive 10 s windows. Neither says when an error happened, so a
//! window's errors span the whole run that reported them (see
//! [`Record::error_over`]).
//!
//! They run at nice 10 on the load generators' core: they share it with
//! our echo clients, whose round trips are the latency probe, and the
//! probe's wake-ups should not wait behind them.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::record::{Part, Record, WINDOW};

/// Connections each tool keeps.
const CONNECTIONS: &str = "4";
/// Requests per redis-benchmark test before it reports a rate, which is
/// how completed requests are counted (a test cut short at the window's
/// end is not).
const REDIS_REQUESTS: u64 = 2_000;

/// A load generator's command: at nice 10, on core `cpu` if given.
pub fn load_command(program: &str, cpu: Option<usize>) -> Command {
    let mut command = Command::new("nice");
    command.args(["-n", "10"]);
    if let Some(cpu) = cpu {
        command.args(["taskset", "-c", &cpu.to_string()]);
    }
    command.arg(program);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `wrk` against http-hello in consecutive windows until `stop`.
pub async fn wrk(
    addr: SocketAddr,
    cpu: Option<usize>,
    record: Arc<Record>,
    stop: CancellationToken,
) {
    let url = format!("http://{addr}/");
    let seconds = format!("{}s", WINDOW.as_secs());
    while !stop.is_cancelled() {
        let from = record.now();
        let mut command = load_command("wrk", cpu);
        command.args([
            "-t1",
            "-c",
            CONNECTIONS,
            "-d",
            &seconds,
            "--timeout",
            "5s",
            &url,
        ]);
        let output = tokio::select! {
            output = command.output() => output,
            () = stop.cancelled() => return,
        };
        let to = record.now();
        let output = match output {
            Ok(output) => output,
            Err(error) => {
                record.error_over(Part::Http, from, to, format!("wrk: {error}"), 1);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let text = String::from_utf8_lossy(&output.stdout);
        let report = WrkReport::parse(&text);
        record.done(Part::Http, report.requests);
        if !output.status.success() || report.requests == 0 {
            let stderr = String::from_utf8_lossy(&output.stderr);
            record.error_over(
                Part::Http,
                from,
                to,
                format!("wrk failed: {text}{stderr}"),
                1,
            );
        } else if report.errors > 0 {
            let what = format!("wrk: {}", report.error_lines.join("; "));
            record.error_over(Part::Http, from, to, what, report.errors);
        }
    }
}

/// What one `wrk` run reported.
#[derive(Debug, Default)]
struct WrkReport {
    requests: u64,
    errors: u64,
    error_lines: Vec<String>,
}

impl WrkReport {
    fn parse(text: &str) -> WrkReport {
        let mut report = WrkReport::default();
        for line in text.lines().map(str::trim) {
            if let Some((count, _)) = line.split_once(" requests in ") {
                report.requests = count.trim().parse().unwrap_or(0);
            } else if let Some(errors) = line.strip_prefix("Socket errors:") {
                // "connect 0, read 0, write 0, timeout 0"
                report.errors += errors
                    .split(',')
                    .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
                report.error_lines.push(line.to_string());
            } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
                report.errors += count.trim().parse::<u64>().unwrap_or(0);
                report.error_lines.push(line.to_string());
            }
        }
        report
    }
}

/// Runs `redis-benchmark` (SET and GET on 10,000 random keys, looping)
/// against `addr` for `part` in consecutive windows until `stop`. A run
/// that ends by itself has failed; its error is recorded and another is
/// started, until the window's end.
pub async fn redis_benchmark(
    addr: SocketAddr,
    part: Part,
    cpu: Option<usize>,
    record: Arc<Record>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let window_end = record.now() + WINDOW;
        while record.now() < window_end {
            let from = record.now();
            let child = benchmark_command(addr, cpu).spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(error) => {
                    record.error_over(part, from, from, format!("redis-benchmark: {error}"), 1);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let output = tokio::spawn(read_output(&mut child));
            let left = window_end.saturating_sub(record.now());
            let ended = tokio::select! {
                status = child.wait() => Some(status),
                () = tokio::time::sleep(left) => None,
                () = stop.cancelled() => return,
            };
            if ended.is_none() {
                let _ = child.kill().await;
            }
            let (stdout, stderr) = output.await.unwrap_or_default();
            let tests = stdout.matches("requests per second").count() as u64;
            record.done(part, tests * REDIS_REQUESTS);
            if let Some(status) = ended {
                let status = status.map_or_else(|error| error.to_string(), |s| s.to_string());
                let what = format!("redis-benchmark ended ({status}): {}", stderr.trim());
                record.error_over(part, from, record.now(), what, 1);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn benchmark_command(addr: SocketAddr, cpu: Option<usize>) -> Command {
    let mut command = load_command("redis-benchmark", cpu);
    command
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args([
            "-c",
            CONNECTIONS,
            "-t",
            "set,get",
            "-d",
            "16",
            "-r",
            "10000",
        ])
        .args(["-n", &REDIS_REQUESTS.to_string(), "-l", "-q"]);
    command
}

/// Reads all that `child` writes to stdout and stderr, as it writes it
/// (a full pipe would stop it), until it ends.
fn read_output(child: &mut Child) -> impl Future<Output = (String, String)> + use<> {
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    async move { tokio::join!(read_all(stdout), read_all(stderr)) }
}

async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes).await;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether `program` runs at all, checked before the soak starts.
pub fn available(program: &Path) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::WrkReport;

    /// wrk's report as it prints it, with errors of every kind.
    #[test]
    fn wrk_errors_are_summed() {
        let text = "Running 10s test @ http://127.0.0.1:8080/\n  1 threads and 4 connections\n  \
                    81770 requests in 10.00s, 18.56MB read\n  \
                    Socket errors: connect 1, read 2, write 0, timeout 3\n  \
                    Non-2xx or 3xx responses: 4\nRequests/sec:  8177.00\n";
        let report = WrkReport::parse(text);
        assert_eq!(report.requests, 81770);
        assert_eq!(report.errors, 10);
        assert_eq!(report.error_lines.len(), 2);
    }

    /// A clean run prints no error line at all.
    #[test]
    fn a_clean_wrk_run_has_no_errors() {
        let report = WrkReport::parse("  81770 requests in 1.10s, 18.56MB read\n");
        assert_eq!((report.requests, report.errors), (81770, 0));
    }
}

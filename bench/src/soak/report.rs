//! The soak's verdict: a table line per window as it goes, then the
//! targets, each met or missed (or, for a run too short to judge, only
//! reported), and a summary in markdown for the out folder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::record::{Fault, Part, Record, ReloadCheck, Verdict, WINDOW};
use super::sample::Sample;

/// The echo probe's bound in a window with no fault touching echo: the
/// load suite's (`tests/load/main.rs`, `LATENCY_BOUND`).
pub const LATENCY_BOUND: Duration = Duration::from_millis(10);
/// Largest change allowed between the first and the last span's mean of
/// each resource.
const FLAT_WITHIN: f64 = 0.05;
/// Runs shorter than this report how flat the resources stayed without
/// holding them to [`FLAT_WITHIN`]: a minute holds six samples, and the
/// alternation of two echo builds alone moves memory by more than 5%
/// between any two of them.
const FLAT_JUDGED_FROM: Duration = Duration::from_secs(10 * 60);

pub fn header() -> String {
    format!(
        "{:>6} {:>8} {:>5} {:>4} {:>6} {:>7} {:>5} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>5} {:>5} {:>5} {:>4} {:>4}  faults",
        "t(s)",
        "RSS MiB",
        "fds",
        "thr",
        "maps",
        "VM GiB",
        "host%",
        "load%",
        "echo rt",
        "p99 ms",
        "max ms",
        "http",
        "kv",
        "proxy",
        "chat",
        "tls",
        "kvfil",
        "err",
        "lost"
    )
}

pub fn window_line(sample: &Sample) -> String {
    let done = |part: Part| {
        sample
            .done
            .iter()
            .find(|(p, _)| *p == part)
            .map_or(0, |(_, n)| *n)
    };
    let resources = &sample.resources;
    format!(
        "{:>6.0} {:>8.1} {:>5} {:>4} {:>6} {:>7.2} {:>5.0} {:>5.0} {:>7} {:>7.2} {:>7.1} {:>7} {:>7} {:>7} {:>5} {:>5} {:>5} {:>4} {:>4}  {}{}",
        sample.at.as_secs_f64(),
        resources.rss_kib as f64 / 1024.0,
        resources.fds,
        resources.threads,
        resources.maps,
        resources.vm_size_kib as f64 / (1024.0 * 1024.0),
        sample.host_cpu * 100.0,
        sample.clients_cpu * 100.0,
        sample.echo.round_trips,
        ms(sample.echo.p99),
        ms(sample.echo.max),
        done(Part::Http),
        done(Part::RedisKv),
        done(Part::Proxy),
        done(Part::Chat),
        done(Part::Tls),
        done(Part::KvFile),
        sample.errors,
        sample.lost,
        sample.faults.join(" "),
        if sample.echo_faulted {
            " (echo p99 exempt)"
        } else {
            ""
        },
    )
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// One target and how the run did.
pub struct Target {
    pub name: String,
    /// `None` when the run only reports it.
    pub met: Option<bool>,
    pub detail: String,
}

/// What the run ends with, besides the samples and the record.
pub struct Ending {
    pub run: Duration,
    /// Acknowledged writes, and the ones missing or changed after the
    /// host was killed and started again (or why that check failed).
    pub acknowledged: usize,
    pub lost_writes: Result<Vec<String>, String>,
    pub wrong_reads: Vec<String>,
}

/// Every target, judged.
pub fn targets(samples: &[Sample], record: &Record, ending: &Ending) -> Vec<Target> {
    let lost: u64 = record
        .errors()
        .iter()
        .filter(|error| matches!(record.judge(error), Verdict::Lost))
        .map(|error| error.count)
        .sum();
    let mut targets = vec![Target {
        name: "zero legitimate connections lost outside fault windows".into(),
        met: Some(lost == 0),
        detail: format!("{lost} operations lost"),
    }];
    let (data_met, data_detail) = match &ending.lost_writes {
        Ok(lost) => (
            lost.is_empty() && ending.wrong_reads.is_empty() && ending.acknowledged > 0,
            format!(
                "{} acknowledged writes; {} missing or changed after the host's SIGKILL and restart; {} wrong reads during the run",
                ending.acknowledged,
                lost.len(),
                ending.wrong_reads.len()
            ),
        ),
        Err(why) => (false, format!("the final check failed: {why}")),
    };
    targets.push(Target {
        name: "no data lost from the file backend across kills".into(),
        met: Some(data_met),
        detail: data_detail,
    });
    targets.extend(flatness(samples, ending.run));
    targets.push(reloads_target(&record.reloads()));
    targets.push(latency_target(samples));
    let problems = record.problems();
    targets.push(Target {
        name: "every fault injected, every attack cut off, every vanished client closed".into(),
        met: Some(problems.is_empty()),
        detail: match problems.first() {
            None => "yes".into(),
            Some((at, what)) => format!(
                "{} problems; first at {:.0} s: {what}",
                problems.len(),
                at.as_secs_f64()
            ),
        },
    });
    targets
}

/// The warm-up and the span compared at each end: for 30 minutes and
/// more, the first ten minutes after the warm-up against the last ten;
/// shorter runs compare thirds of what follows the warm-up.
pub fn spans(run: Duration) -> (Duration, Duration) {
    let warm_up = WINDOW.max(run / 10);
    let span = if run >= Duration::from_secs(30 * 60) {
        Duration::from_secs(10 * 60)
    } else {
        run.saturating_sub(warm_up) / 3
    };
    (warm_up, span)
}

fn flatness(samples: &[Sample], run: Duration) -> Vec<Target> {
    let (warm_up, span) = spans(run);
    let judged = run >= FLAT_JUDGED_FROM;
    let mean = |from: Duration, to: Duration, index: usize| {
        let values: Vec<f64> = samples
            .iter()
            .filter(|sample| sample.at >= from && sample.at <= to)
            .map(|sample| sample.resources.flat_series()[index].1)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let names = samples
        .first()
        .map(|sample| sample.resources.flat_series().map(|(name, _)| name));
    let Some(names) = names else {
        return vec![];
    };
    names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let first = mean(warm_up, warm_up + span, index);
            let last = mean(run.saturating_sub(span), run + WINDOW, index);
            let (met, detail) = match (first, last) {
                (Some(first), Some(last)) => {
                    let change = (last - first) / first;
                    let detail = format!(
                        "{first:.2} over {:.0}-{:.0} s, {last:.2} over the last {:.0} s: {:+.1}%",
                        warm_up.as_secs_f64(),
                        (warm_up + span).as_secs_f64(),
                        span.as_secs_f64(),
                        change * 100.0
                    );
                    (change.abs() <= FLAT_WITHIN, detail)
                }
                _ => (false, "too few samples".into()),
            };
            Target {
                name: format!("{name} flat (within 5%)"),
                met: judged.then_some(met),
                detail: match judged {
                    true => detail,
                    false => {
                        format!("{detail} (reported only: runs under 10 minutes are not judged)")
                    }
                },
            }
        })
        .collect()
}

fn reloads_target(reloads: &[ReloadCheck]) -> Target {
    let failed: Vec<&ReloadCheck> = reloads
        .iter()
        .filter(|check| check.problem.is_some())
        .collect();
    let slowest = reloads
        .iter()
        .map(|check| check.took)
        .max()
        .unwrap_or_default();
    let mut detail = format!(
        "{} reloads, {} failed; slowest {:.0} ms from request to new digest and fresh echo",
        reloads.len(),
        failed.len(),
        ms(slowest)
    );
    if let Some(check) = failed.first() {
        let _ = write!(
            detail,
            "; first failure at {:.0} s ({} to {}): {}",
            check.at.as_secs_f64(),
            check.via,
            check.plugin,
            check.problem.as_deref().unwrap_or("")
        );
    }
    Target {
        name: "every reload took effect".into(),
        met: Some(!reloads.is_empty() && failed.is_empty()),
        detail,
    }
}

fn latency_target(samples: &[Sample]) -> Target {
    let held: Vec<&Sample> = samples
        .iter()
        .filter(|sample| !sample.echo_faulted)
        .collect();
    let over: Vec<&&Sample> = held
        .iter()
        .filter(|sample| sample.echo.round_trips == 0 || sample.echo.p99 >= LATENCY_BOUND)
        .collect();
    let worst = held
        .iter()
        .map(|sample| sample.echo.p99)
        .max()
        .unwrap_or_default();
    let mut detail = format!(
        "{} windows held to it, {} over; worst p99 {:.2} ms",
        held.len(),
        over.len(),
        ms(worst)
    );
    for sample in over.iter().take(5) {
        let _ = write!(
            detail,
            "; {:.0} s: {:.2} ms",
            sample.at.as_secs_f64(),
            ms(sample.echo.p99)
        );
    }
    Target {
        name: format!(
            "echo p99 under {} ms in every window with no fault on echo",
            LATENCY_BOUND.as_millis()
        ),
        met: Some(!held.is_empty() && over.is_empty()),
        detail,
    }
}

/// Errors by part and verdict: `(part, fault or None for lost) -> count`.
pub fn error_tally(record: &Record) -> BTreeMap<(Part, Option<Fault>), u64> {
    let mut tally = BTreeMap::new();
    for error in record.errors() {
        let fault = match record.judge(&error) {
            Verdict::Explained(fault) => Some(fault),
            Verdict::Lost => None,
        };
        *tally.entry((error.part, fault)).or_default() += error.count;
    }
    tally
}

/// The targets as a markdown table, and whether all that are judged were
/// met.
pub fn targets_table(targets: &[Target]) -> (String, bool) {
    let mut text = String::from("| target | result | detail |\n| --- | --- | --- |\n");
    for target in targets {
        let result = match target.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "reported",
        };
        let _ = writeln!(text, "| {} | {result} | {} |", target.name, target.detail);
    }
    let all_met = targets.iter().all(|target| target.met != Some(false));
    (text, all_met)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::spans;

    /// 30 minutes: the first ten minutes after a 3-minute warm-up against
    /// the last ten; one minute: thirds after a one-window warm-up.
    #[test]
    fn flatness_compares_ten_minutes_of_a_long_run_and_thirds_of_a_short_one() {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(spans(minutes(30)), (minutes(3), minutes(10)));
        assert_eq!(
            spans(minutes(1)),
            (Duration::from_secs(10), Duration::from_secs(50) / 3)
        );
    }
}

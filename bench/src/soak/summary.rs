//! The summary the soak writes to its out folder (`summary.md`) and prints:
//! the targets, the resources at each end, every fault with what it
//! explained, every lost error, the reloads, the CPU each side used, the
//! attacks, and the final value of every series on `/metrics`.

use std::fmt::Write as _;

use super::admin::Metrics;
use super::record::{Part, Record, Verdict};
use super::report::{self, Ending, Target};
use super::sample::Sample;

/// Everything a summary is written from.
pub struct Inputs<'a> {
    pub samples: &'a [Sample],
    pub record: &'a Record,
    pub ending: &'a Ending,
    pub targets: &'a [Target],
    /// Shares of one core over the run.
    pub host_cpu: f64,
    pub load_cpu: f64,
    pub attacks_launched: u64,
    pub attacks_cut_off: u64,
    pub cores: String,
}

/// The summary in markdown; whether every judged target was met.
pub fn write(inputs: &Inputs) -> (String, bool) {
    let mut text = format!(
        "# Soak summary\n\n{:.1} minutes; {}.\n\n## Targets\n\n",
        inputs.ending.run.as_secs_f64() / 60.0,
        inputs.cores
    );
    let (table, all_met) = report::targets_table(inputs.targets);
    text.push_str(&table);
    let _ = writeln!(
        text,
        "\nResult: {}.\n",
        if all_met {
            "every judged target met"
        } else {
            "**targets missed**"
        }
    );
    resources(&mut text, inputs.samples);
    faults(&mut text, inputs.record);
    errors(&mut text, inputs.record);
    let _ = writeln!(
        text,
        "## CPU and attacks\n\nHost: {:.0}% of one core over the run; load generators (our \
         clients, wrk, redis-benchmark): {:.0}%.\n\nAttacks launched: {}; cut off by the host: {}.\n",
        inputs.host_cpu * 100.0,
        inputs.load_cpu * 100.0,
        inputs.attacks_launched,
        inputs.attacks_cut_off
    );
    windows(&mut text, inputs.samples);
    if let Some(last) = inputs.samples.last() {
        final_metrics(&mut text, &last.metrics, true);
    }
    (text, all_met)
}

fn resources(text: &mut String, samples: &[Sample]) {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return;
    };
    text.push_str("## Host resources\n\n| resource | first sample | last sample | max |\n| --- | ---: | ---: | ---: |\n");
    for (index, (name, start)) in first.resources.flat_series().iter().enumerate() {
        let end = last.resources.flat_series()[index].1;
        let max = samples
            .iter()
            .map(|sample| sample.resources.flat_series()[index].1)
            .fold(f64::MIN, f64::max);
        let _ = writeln!(text, "| {name} | {start:.2} | {end:.2} | {max:.2} |");
    }
    let threads = |sample: &Sample| sample.resources.threads;
    let _ = writeln!(
        text,
        "| threads | {} | {} | {} |\n",
        threads(first),
        threads(last),
        samples.iter().map(threads).max().unwrap_or(0)
    );
}

fn faults(text: &mut String, record: &Record) {
    text.push_str(
        "## Faults\n\n| fault | from (s) | to (s) | what happened |\n| --- | ---: | ---: | --- |\n",
    );
    for window in record.faults() {
        let _ = writeln!(
            text,
            "| {} | {:.1} | {} | {} |",
            window.fault.name(),
            window.start.as_secs_f64(),
            window
                .end
                .map_or("open".into(), |end| format!("{:.1}", end.as_secs_f64())),
            window.note
        );
    }
    let reloads = record.reloads();
    let _ = writeln!(text, "\n{} reloads:\n", reloads.len());
    text.push_str(
        "| at (s) | via | plugin | took (ms) | problem |\n| ---: | --- | --- | ---: | --- |\n",
    );
    for check in reloads {
        let _ = writeln!(
            text,
            "| {:.1} | {} | {} | {:.0} | {} |",
            check.at.as_secs_f64(),
            check.via,
            check.plugin,
            check.took.as_secs_f64() * 1e3,
            check.problem.as_deref().unwrap_or("")
        );
    }
    let problems = record.problems();
    if !problems.is_empty() {
        text.push_str("\nProblems:\n\n");
        for (at, what) in problems {
            let _ = writeln!(text, "- {:.1} s: {what}", at.as_secs_f64());
        }
    }
    text.push('\n');
}

fn errors(text: &mut String, record: &Record) {
    text.push_str(
        "## Client errors\n\n| client | explained (by fault) | lost |\n| --- | --- | ---: |\n",
    );
    let tally = report::error_tally(record);
    for part in Part::ALL {
        let explained: Vec<String> = tally
            .iter()
            .filter_map(|((p, fault), count)| {
                (*p == part)
                    .then_some(*fault)
                    .flatten()
                    .map(|f| format!("{count} ({})", f.name()))
            })
            .collect();
        let lost = tally.get(&(part, None)).copied().unwrap_or(0);
        let _ = writeln!(
            text,
            "| {} | {} | {lost} |",
            part.name(),
            explained.join(", ")
        );
    }
    let lost: Vec<_> = record
        .errors()
        .into_iter()
        .filter(|error| matches!(record.judge(error), Verdict::Lost))
        .collect();
    if !lost.is_empty() {
        text.push_str("\nLost (no fault explains them):\n\n");
        for error in lost.iter().take(50) {
            let _ = writeln!(
                text,
                "- {:.1}-{:.1} s, {}: {} ({})",
                error.from.as_secs_f64(),
                error.to.as_secs_f64(),
                error.part.name(),
                error.what.replace('\n', " "),
                error.count
            );
        }
        if lost.len() > 50 {
            let _ = writeln!(text, "- and {} more", lost.len() - 50);
        }
    }
    text.push('\n');
}

fn windows(text: &mut String, samples: &[Sample]) {
    let _ = writeln!(text, "## Windows\n\n```text\n{}", report::header());
    for sample in samples {
        let _ = writeln!(text, "{}", report::window_line(sample));
    }
    text.push_str("```\n\n");
}

/// Every series of the last scrape; with `all` false, the zero ones and
/// histogram buckets are only counted.
pub fn final_metrics(text: &mut String, metrics: &Metrics, all: bool) {
    let _ = writeln!(text, "## Final /metrics\n\n```text");
    let mut skipped = 0;
    for (series, value) in metrics {
        if !all && (*value == 0.0 || series.contains("_bucket{")) {
            skipped += 1;
            continue;
        }
        let _ = writeln!(text, "{series} {value}");
    }
    if skipped > 0 {
        let _ = writeln!(
            text,
            "({skipped} more series at 0 or histogram buckets: see summary.md)"
        );
    }
    text.push_str("```\n");
}

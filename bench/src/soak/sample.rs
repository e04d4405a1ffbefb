//! One sample of the host every window: what `/proc` says of its memory,
//! files, threads and mappings (the mean of a reading a second), the CPU
//! it and the load generators used, the echo probe's round trips, and a
//! scrape of `/metrics`.

use std::time::Duration;

use anyhow::{Context, Result};

use super::admin::Metrics;
use super::record::Part;

/// The host's resources at one moment, from `/proc/PID`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resources {
    pub rss_kib: u64,
    pub vm_size_kib: u64,
    pub threads: u64,
    pub fds: u64,
    pub maps: u64,
}

impl Resources {
    pub fn read(pid: u32) -> Result<Resources> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .context("reading the host's /proc status (has it exited?)")?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
            Ok(line
                .split_whitespace()
                .nth(1)
                .context("an empty status field")?
                .parse()?)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?
            .lines()
            .count() as u64;
        Ok(Resources {
            rss_kib: field("VmRSS:")?,
            vm_size_kib: field("VmSize:")?,
            threads: field("Threads:")?,
            fds,
            maps,
        })
    }

    /// The mean of `readings`, field by field (zero for none).
    pub fn mean(readings: &[Resources]) -> Resources {
        let count = readings.len().max(1) as u64;
        let mean = |field: fn(&Resources) -> u64| readings.iter().map(field).sum::<u64>() / count;
        Resources {
            rss_kib: mean(|r| r.rss_kib),
            vm_size_kib: mean(|r| r.vm_size_kib),
            threads: mean(|r| r.threads),
            fds: mean(|r| r.fds),
            maps: mean(|r| r.maps),
        }
    }

    /// The resources that must stay flat, by name, as numbers.
    pub fn flat_series(&self) -> [(&'static str, f64); 4] {
        [
            ("RSS (MiB)", self.rss_kib as f64 / 1024.0),
            ("open files", self.fds as f64),
            ("mappings", self.maps as f64),
            ("VmSize (GiB)", self.vm_size_kib as f64 / (1024.0 * 1024.0)),
        ]
    }
}

/// The echo probe's round trips in one window.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoFigures {
    pub round_trips: usize,
    pub p99: Duration,
    pub max: Duration,
}

impl EchoFigures {
    /// From one window's round trips, sorted.
    pub fn of(sorted: &[Duration]) -> EchoFigures {
        EchoFigures {
            round_trips: sorted.len(),
            p99: crate::load::quantile(sorted, 0.99),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

/// Everything measured in one window.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When the sample was taken, from the soak's start.
    pub at: Duration,
    pub resources: Resources,
    /// Shares of one core over the window.
    pub host_cpu: f64,
    pub clients_cpu: f64,
    pub echo: EchoFigures,
    /// Operations each part completed in the window.
    pub done: Vec<(Part, u64)>,
    /// Client errors recorded in the window, and how many no fault
    /// explains so far.
    pub errors: u64,
    pub lost: u64,
    /// Faults that started in the window.
    pub faults: Vec<&'static str>,
    /// Whether a fault touching echo overlaps the window, so that its
    /// p99 is not held to the bound.
    pub echo_faulted: bool,
    pub metrics: Metrics,
}

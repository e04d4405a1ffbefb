//! The text of a config file being checked, and the reading of its single
//! values (numbers, durations, addresses, networks) against their bounds.
//!
//! Apart from the tables' meaning ([`super::check`]) because every table
//! reads its values the same way, and every problem must come out as the
//! same one line: `PATH:LINE: KEY: PROBLEM`.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow};
use ipnet::IpNet;
use toml::Spanned;

use super::defaults::{Bounds, DurationBounds};

/// A config file's path and text: what turns a value's span into the line
/// an error names.
pub(super) struct Document<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Document<'_> {
    /// The line, counted from 1, where `span` starts.
    pub(super) fn line(&self, span: Range<usize>) -> usize {
        let start = span.start.min(self.text.len());
        self.text[..start].matches('\n').count() + 1
    }

    pub(super) fn error(
        &self,
        span: Range<usize>,
        key: &str,
        problem: impl std::fmt::Display,
    ) -> anyhow::Error {
        anyhow!(
            "{}:{}: {key}: {problem}",
            self.path.display(),
            self.line(span)
        )
    }

    pub(super) fn count(&self, value: &Spanned<i64>, key: &str, bounds: Bounds) -> Result<u32> {
        bounds
            .check(*value.get_ref())
            .map_err(|problem| self.error(value.span(), key, problem))
    }

    pub(super) fn duration(
        &self,
        text: &Spanned<String>,
        key: &str,
        bounds: DurationBounds,
    ) -> Result<Duration> {
        let duration = humantime::parse_duration(text.get_ref()).map_err(|error| {
            self.error(
                text.span(),
                key,
                format!(
                    "{:?} is not a duration: {error} (write durations like 500ms, 10s or 5m)",
                    text.get_ref()
                ),
            )
        })?;
        bounds
            .check(duration)
            .map_err(|problem| self.error(text.span(), key, problem))
    }

    pub(super) fn address(&self, text: &Spanned<String>, key: &str) -> Result<SocketAddr> {
        text.get_ref().parse().map_err(|_| {
            self.error(
                text.span(),
                key,
                format!(
                    "{:?} is not an address: write IP:PORT, or [IPv6]:PORT",
                    text.get_ref()
                ),
            )
        })
    }

    pub(super) fn networks(&self, texts: &[Spanned<String>], key: &str) -> Result<Vec<IpNet>> {
        texts
            .iter()
            .map(|text| {
                let written = text.get_ref();
                // A bare address is a network of one.
                written
                    .parse::<IpNet>()
                    .or_else(|_| written.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        self.error(
                            text.span(),
                            key,
                            format!(
                                "{written:?} is not a network: write it as CIDR, like 10.0.0.0/8"
                            ),
                        )
                    })
            })
            .collect()
    }
}

//! The host's admin endpoint, spoken with plain HTTP/1.1 over a socket:
//! `/metrics` scraped into a map of every series, and `POST /reload` with
//! the admin token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one admin request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Every series of one scrape, by its name and labels as written
/// (`portico_connections_total{service="echo"}`).
pub type Metrics = BTreeMap<String, f64>;

#[derive(Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    pub token: String,
}

impl Admin {
    pub async fn metrics(&self) -> Result<Metrics> {
        let (status, body) = self.request("GET", "/metrics", false).await?;
        if status != 200 {
            bail!("GET /metrics answered {status}: {body}");
        }
        Ok(parse(&body))
    }

    /// Asks for a reload; returns the host's answer, or fails with it.
    pub async fn reload(&self) -> Result<String> {
        let (status, body) = self.request("POST", "/reload", true).await?;
        if status != 200 {
            bail!("POST /reload answered {status}: {}", body.trim());
        }
        Ok(body)
    }

    async fn request(&self, method: &str, path: &str, with_token: bool) -> Result<(u16, String)> {
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            let authorization = match with_token {
                true => format!("Authorization: Bearer {}\r\n", self.token),
                false => String::new(),
            };
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\n{authorization}\
                 Content-Length: 0\r\nConnection: close\r\n\r\n",
                self.addr
            );
            stream.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            anyhow::Ok(String::from_utf8_lossy(&answer).into_owned())
        };
        let answer = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {path}: no answer within {TIMEOUT:?}"))??;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("{method} {path}: a malformed answer {head:?}"))?;
        Ok((status, body.to_string()))
    }
}

/// The samples of a Prometheus text exposition (comments skipped).
fn parse(text: &str) -> Metrics {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` with every label in `labels` (`service="echo"`),
/// summed over the series that match.
pub fn sum(metrics: &Metrics, name: &str, labels: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            series_name == name && labels.iter().all(|label| rest.contains(label))
        })
        .map(|(_, value)| value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::{parse, sum};

    #[test]
    fn series_are_kept_by_name_and_labels_and_summed_by_label() {
        let metrics = parse(
            "# HELP portico_connections_total Connections.\n\
             # TYPE portico_connections_total counter\n\
             portico_connections_total{service=\"echo\"} 3\n\
             portico_connections_total{service=\"echo-tls\"} 5\n\
             portico_connections_closed_total{service=\"echo\",outcome=\"idle\"} 1\n\
             portico_connections_closed_total{service=\"echo\",outcome=\"ok\"} 7\n",
        );
        assert_eq!(metrics.len(), 4);
        assert_eq!(
            sum(&metrics, "portico_connections_total", &["service=\"echo\""]),
            3.0
        );
        let closed = "portico_connections_closed_total";
        assert_eq!(sum(&metrics, closed, &["service=\"echo\""]), 8.0);
        assert_eq!(sum(&metrics, closed, &["outcome=\"idle\""]), 1.0);
    }
}

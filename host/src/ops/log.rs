//! The host's text log line, made cheaper on the hot path. At the default
//! level a connection logs two lines, `accepted` and `closed`: 15% of the
//! host's user-space instructions per connection. [`LineFormat`] writes the
//! same line as tracing-subscriber's full formatter does without colours
//! (`TIMESTAMP LEVEL TARGET: MESSAGE FIELDS`), without the styling and span
//! lookups it makes for every line even when colours are off (1,800
//! instructions per connection). Most of what remains is the fields'
//! formatting (BENCHMARKS.md, "Per-connection CPU: the experiments").

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The full formatter's line, without colours: RFC 3339 timestamp, level,
/// target, message and fields. Spans are not shown (the host opens none).
pub struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if SystemTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            Level::ERROR => " ERROR ",
            Level::WARN => "  WARN ",
            Level::INFO => "  INFO ",
            Level::DEBUG => " DEBUG ",
            Level::TRACE => " TRACE ",
        })?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// Prints `line` to stdout, where the host says where it listens. A
/// stdout nobody reads any more (a closed pipe) is no reason to stop
/// serving: the line is dropped.
pub fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// An error as one line, for a start-up error's last words or a refused
/// reload's log line: each cause once (some repeat their source in their
/// own text, as redis's and async-nats's do), causes that span lines
/// (wasmparser's, say) kept to one, and the control characters a plugin's
/// names can bring into a cause escaped.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if !message.ends_with(&cause) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&cause);
        }
    }
    let one_line: Vec<&str> = message.lines().map(str::trim).collect();
    super::untrusted::without_controls(&one_line.join(" ")).into_owned()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Lines written to memory, to compare.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// Logs the same events through `subscriber`, as the host's lines look.
    fn logged(subscriber: impl Subscriber + Send + Sync, lines: &Lines) -> String {
        tracing::subscriber::with_default(subscriber, || {
            let peer: std::net::SocketAddr = "127.0.0.1:5555".parse().unwrap();
            tracing::info!(target: "portico_host::server", service = "echo", conn = 7, %peer, "accepted");
            tracing::warn!(target: "portico_host::server", error = "a \"quoted\"\nline", "closed");
            tracing::error!("cannot start: {}", "reason");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        // The timestamps differ; all after them must not.
        text.lines()
            .map(|line| line.split_once(' ').map_or(line, |(_, rest)| rest))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn writes_what_the_full_formatter_writes_without_colours() {
        let (full, ours) = (Lines::default(), Lines::default());
        let full_text = logged(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(full.clone())
                .finish(),
            &full,
        );
        let our_text = logged(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .event_format(LineFormat)
                .with_writer(ours.clone())
                .finish(),
            &ours,
        );
        assert_eq!(our_text.lines().count(), 3, "{our_text}");
        assert_eq!(our_text, full_text);
    }
}

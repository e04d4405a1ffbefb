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

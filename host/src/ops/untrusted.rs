//! Text a plugin controls, made safe to log.
//!
//! A plugin's stdout and stderr, the error string `run` returns, trap
//! messages and the function names in a wasm backtrace all come from a third
//! party. Logged raw, a newline in them starts what reads as a line of the
//! host's own log (`... INFO portico_host::server: closed conn=7
//! outcome="ok"`), an escape sequence repaints the operator's terminal, and
//! a 32 MiB string becomes a 32 MiB log record. So each goes to the log
//! through [`Untrusted`]: quoted, with quotes, backslashes, every control
//! character, Unicode line and paragraph separators and bidirectional
//! overrides escaped, and cut at [`MAX_LOGGED_BYTES`].

use std::borrow::Cow;
use std::fmt::{self, Write};

/// Most bytes of one piece of plugin text that reach the log.
pub const MAX_LOGGED_BYTES: usize = 4096;

/// Plugin-controlled text, displayed quoted and escaped, with at most
/// [`MAX_LOGGED_BYTES`] between the quotes (escapes count as what they
/// take: a string of control characters grows up to sixfold), and the number of
/// bytes of text cut after it.
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        let mut shown = 0;
        let mut kept = text.len();
        f.write_char('"')?;
        for (at, c) in text.char_indices() {
            let escape = needs_escape(c);
            let width = match escape {
                true => c.escape_default().len(),
                false => c.len_utf8(),
            };
            if shown + width > MAX_LOGGED_BYTES {
                kept = at;
                break;
            }
            shown += width;
            match escape {
                true => write!(f, "{}", c.escape_default())?,
                false => f.write_char(c)?,
            }
        }
        f.write_char('"')?;
        if kept < text.len() {
            write!(f, " [{} more bytes cut]", text.len() - kept)?;
        }
        Ok(())
    }
}

/// `value` as text, formatted only as far as [`MAX_LOGGED_BYTES`] (a wasm
/// backtrace can run to megabytes), with ` [cut]` at the end if it went
/// further.
pub fn displayed(value: &dyn fmt::Display) -> String {
    let mut out = Capped(String::new());
    if write!(out, "{value}").is_err() {
        let kept = out.0.floor_char_boundary(MAX_LOGGED_BYTES);
        out.0.truncate(kept);
        out.0.push_str(" [cut]");
    }
    out.0
}

/// A string that refuses writes once it holds more than
/// [`MAX_LOGGED_BYTES`], which makes `write!` stop formatting.
struct Capped(String);

impl Write for Capped {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.push_str(s);
        if self.0.len() > MAX_LOGGED_BYTES {
            return Err(fmt::Error);
        }
        Ok(())
    }
}

/// `text` with every character that could end or repaint a line escaped,
/// as [`Untrusted`] does, but unquoted and with quotes and backslashes as
/// they are: for a line of the host's own words that quotes causes a
/// plugin wrote (wasmparser's errors name the plugin's imports and
/// exports, and a name may hold any character).
pub fn without_controls(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| needs_escape(c) && !matches!(c, '"' | '\\');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match unsafe_char(c) {
            true => escaped.extend(c.escape_default()),
            false => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Whether `c` could end a log line, fake a field's end, or change how the
/// rest of a line is displayed.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '"' | '\\'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_could_end_or_repaint_a_line() {
        let shown = Untrusted("a\nb\rc\x0bd\x1b[31me\u{85}f\u{2028}g\u{202e}h\"i\\j").to_string();
        assert_eq!(
            shown,
            r#""a\nb\rc\u{b}d\u{1b}[31me\u{85}f\u{2028}g\u{202e}h\"i\\j""#
        );
    }

    #[test]
    fn stops_formatting_past_the_bound() {
        struct Endless;
        impl fmt::Display for Endless {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                loop {
                    f.write_str("frame\n")?;
                }
            }
        }
        let shown = displayed(&Endless);
        assert!(shown.len() <= MAX_LOGGED_BYTES + 6 && shown.ends_with(" [cut]"));
    }

    #[test]
    fn without_controls_leaves_quotes_and_plain_text() {
        assert_eq!(without_controls("plain `name` \"x\""), "plain `name` \"x\"");
        assert_eq!(
            without_controls("bl\u{1}\0\u{1b}[2J\u{202e}ush"),
            "bl\\u{1}\\u{0}\\u{1b}[2J\\u{202e}ush"
        );
    }

    /// Found by the `untrusted` fuzz target: 990 bytes of control
    /// characters were shown as 4,571.
    #[test]
    fn escapes_count_against_the_bound() {
        let text = "\u{1}".repeat(990);
        let shown = Untrusted(&text).to_string();
        let kept = MAX_LOGGED_BYTES / "\\u{1}".len();
        assert_eq!(
            shown,
            format!(
                "\"{}\" [{} more bytes cut]",
                "\\u{1}".repeat(kept),
                990 - kept
            )
        );
    }

    #[test]
    fn cuts_long_text_on_a_character_boundary() {
        let text = format!("{}é{}", "x".repeat(MAX_LOGGED_BYTES - 1), "y".repeat(10));
        let shown = Untrusted(&text).to_string();
        assert_eq!(
            shown,
            format!(
                "\"{}\" [12 more bytes cut]",
                "x".repeat(MAX_LOGGED_BYTES - 1)
            )
        );
    }
}

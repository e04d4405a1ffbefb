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

use std::fmt::{self, Write};

/// Most bytes of one piece of plugin text that reach the log.
pub const MAX_LOGGED_BYTES: usize = 4096;

/// Plugin-controlled text, displayed quoted, escaped and cut at
/// [`MAX_LOGGED_BYTES`], with the number of bytes cut after it.
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        let kept = text.floor_char_boundary(MAX_LOGGED_BYTES);
        f.write_char('"')?;
        for c in text[..kept].chars() {
            if needs_escape(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
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

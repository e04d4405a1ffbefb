//! Text from a plugin (its output lines, the error `run` returns, trap
//! messages, backtraces) made safe for the log by `ops::untrusted`.
//!
//! Properties: the output holds no control, bidirectional or line or
//! paragraph separator character, is at most the bound (with its quotes
//! and the note of what was cut), and reads back as the start of the text,
//! with the rest counted as cut.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_host::ops::untrusted::{MAX_LOGGED_BYTES, Untrusted, displayed};

/// The longest note of cut bytes: ` [N more bytes cut]`.
const LONGEST_NOTE: usize = " [18446744073709551615 more bytes cut]".len();

fuzz_target!(|text: &str| {
    let shown = Untrusted(text).to_string();
    assert!(
        shown.len() <= MAX_LOGGED_BYTES + 2 + LONGEST_NOTE,
        "{} bytes shown for {} bytes of text",
        shown.len(),
        text.len()
    );
    assert!(
        !shown.chars().any(is_dangerous),
        "{shown:?} holds a character that ends or repaints a line"
    );
    let (quoted, cut) = match shown.rsplit_once(" [") {
        Some((quoted, note)) if note.ends_with(" more bytes cut]") => {
            let count = note.trim_end_matches(" more bytes cut]");
            (quoted, count.parse::<usize>().expect("a count of bytes"))
        }
        _ => (shown.as_str(), 0),
    };
    let inner = quoted
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{shown:?} is not quoted"));
    let kept = unescape(inner);
    assert!(
        text.starts_with(&kept),
        "{kept:?} is not the start of {text:?}"
    );
    assert_eq!(
        kept.len() + cut,
        text.len(),
        "bytes kept and cut in {shown:?}"
    );

    let formatted = displayed(&text);
    assert!(formatted.len() <= MAX_LOGGED_BYTES + " [cut]".len());
});

/// Whether `c` could end a log line, or change how the rest of one reads.
fn is_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Reads back `char::escape_default`'s escapes, the only ones the output
/// holds.
fn unescape(escaped: &str) -> String {
    let mut text = String::new();
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            assert!(c != '"', "an unescaped quote in {escaped:?}");
            text.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => text.push('\n'),
            Some('r') => text.push('\r'),
            Some('t') => text.push('\t'),
            Some(c @ ('\\' | '"' | '\'')) => text.push(c),
            Some('u') => {
                let code: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                let code = u32::from_str_radix(&code, 16).expect("hex digits");
                text.push(char::from_u32(code).expect("a character"));
            }
            other => panic!("an unknown escape {other:?} in {escaped:?}"),
        }
    }
    text
}

//! The config file, TOML of any shape: what an operator writes by hand.
//!
//! Properties: no panic, and every problem is one line that names the
//! file and the line, `portico.toml:LINE: ...`, with no control character
//! (a value echoed into the error must not start a second line or repaint
//! a terminal).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portico_host::config::Config;
use portico_host::ops::log::error_line;

fuzz_target!(|text: &str| {
    let Err(error) = Config::parse(Path::new("/srv/portico.toml"), text) else {
        return;
    };
    let line = error_line(&error);
    let rest = line
        .strip_prefix("/srv/portico.toml:")
        .unwrap_or_else(|| panic!("{line:?} does not name the file"));
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    assert!(
        digits > 0 && rest[digits..].starts_with(": "),
        "{line:?} does not name the line"
    );
    assert!(
        !line.chars().any(char::is_control),
        "{line:?} holds a control character"
    );
});

//! The `host` binary: parses flags and hands over to [`portico_host::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = portico_host::cli::Args::parse();
    portico_host::init_logging();
    match portico_host::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

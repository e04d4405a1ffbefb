//! The `host` binary: parses flags and hands over to [`portico_host::run`].
//! A start-up error is one line on stderr and exit status 2.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match portico_host::cli::Args::try_parse() {
        Ok(args) => args,
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            // clap's message spans lines (the problem, then usage); the
            // problem, on one line, is what an operator's log needs.
            let rendered = error.render().to_string();
            let problem: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{} (see host --help)", problem.join(" "));
            return ExitCode::from(2);
        }
    };
    if let Some(portico_host::cli::Command::New(new)) = &args.command {
        return new_project(new);
    }
    let started = portico_host::net::inherited::from_predecessor()
        .and_then(|()| portico_host::net::inherited::from_systemd())
        .and_then(|sockets| args.config(sockets))
        .and_then(|(config, source)| {
            portico_host::init_logging(config.log_format);
            portico_host::run(config, source)
        });
    match started {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", portico_host::ops::log::error_line(&error));
            ExitCode::from(2)
        }
    }
}

/// `host new`: writes the project and says what to do next.
fn new_project(new: &portico_host::cli::NewArgs) -> ExitCode {
    match portico_host::scaffold::write_project(Path::new(""), &new.name, new.lang) {
        Ok(dir) => {
            println!(
                "wrote {dir}: build it with `cd {dir} && ./build.sh` (see {dir}/README.md for \
                 the tools it needs), then serve it with `host --plugin {name}.wasm`",
                dir = dir.display(),
                name = new.name,
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", portico_host::ops::log::error_line(&error));
            ExitCode::from(2)
        }
    }
}

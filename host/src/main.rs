//! The `host` binary: parses flags and hands over to [`portico_host::run`].
//! A start-up error is one line on stderr and exit status 2.

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
    let started = args.config().and_then(|(config, source)| {
        portico_host::init_logging(config.log_format);
        portico_host::run(config, source)
    });
    match started {
        Ok(code) => code,
        Err(error) => {
            // Some causes repeat their source in their own text (redis's,
            // async-nats's): each is said once.
            let mut message = String::new();
            for cause in error.chain().map(ToString::to_string) {
                if !message.ends_with(&cause) {
                    if !message.is_empty() {
                        message.push_str(": ");
                    }
                    message.push_str(&cause);
                }
            }
            // Some causes (wasmparser's, say) span lines; keep it to one.
            let one_line: Vec<&str> = message.lines().map(str::trim).collect();
            eprintln!("error: {}", one_line.join(" "));
            ExitCode::from(2)
        }
    }
}

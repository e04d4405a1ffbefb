//! What the benchmark's tests run: the `portico-bench` and `host` binaries
//! of this build, and the plugins `cargo xtask test` built.

use std::path::PathBuf;

pub struct Built {
    pub bench: PathBuf,
    pub host: PathBuf,
    /// The folder of the built plugins (`echo.wasm`, ...).
    pub plugins: PathBuf,
}

pub fn built() -> Built {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_portico-bench"));
    // `cargo test --workspace` builds the host into the same folder: the
    // host's own tests need it.
    let host = bench.with_file_name("host");
    assert!(
        host.is_file(),
        "{} is missing: run the tests with `cargo xtask test`",
        host.display()
    );
    let plugins = std::env::var_os("PORTICO_PLUGIN_DIR")
        .expect("PORTICO_PLUGIN_DIR is unset: run the tests with `cargo xtask test`");
    Built {
        bench,
        host,
        plugins: PathBuf::from(plugins),
    }
}

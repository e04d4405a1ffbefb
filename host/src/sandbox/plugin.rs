//! Loading a plugin: read, compile and validate it once at start, and keep
//! it pre-instantiated so each connection only pays for instantiation.
//!
//! A plugin is one of two kinds, told apart by what it exports:
//! - a handler, exporting `run` from the `portico:plugin/handler` world: it
//!   borrows the connection's streams and reads its details;
//! - a WASI command, exporting `wasi:cli/run` (any program built for WASI
//!   0.2, such as a Rust or C `main`), served as inetd serves one: stdin
//!   reads the connection, stdout writes to it, and its arguments and
//!   environment come from the service's settings.
//!
//! Every way a plugin file can be wrong ends here, before the host listens,
//! as one error that names the file and the problem.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::error::Context;
use wasmtime::{Engine, Result, Store, bail, format_err};
use wasmtime_wasi::p2::bindings::{Command, CommandPre};

use super::bindings::{Handler, HandlerPre};
use super::cache::{self, Cache, Key};
use super::engine::pool_hint;
use super::store::{self, ConnState, PROVIDED};
use crate::capabilities::settings::SettingsCtx;

/// A plugin compiled, checked against the `portico:plugin/handler` world
/// or `wasi:cli/command`, and linked against the host's imports, ready to
/// instantiate.
pub struct Plugin {
    entry: Entry,
    /// The settings from `--config`, shared by every instance.
    pub(crate) settings: SettingsCtx,
    /// A command's arguments: its file name, then the words of the `args`
    /// setting.
    arguments: Arc<[String]>,
    /// The SHA-256 of the plugin file, in hex.
    pub digest: String,
    /// Whether the compiled code came from the compile cache.
    pub from_cache: bool,
}

/// How a plugin is entered.
enum Entry {
    /// `run` from the `portico:plugin/handler` world.
    Handler(HandlerPre<ConnState>),
    /// `wasi:cli/run`: a WASI command, its stdio on the connection.
    Command(CommandPre<ConnState>),
}

/// A plugin instantiated for one connection.
pub(crate) enum Instance {
    Handler(Handler),
    Command(Command),
}

/// The name of the setting whose words are a command's arguments.
pub const ARGS_SETTING: &str = "args";

/// The first bytes of any WebAssembly binary.
const WASM_MAGIC: &[u8] = b"\0asm";
/// The version field that follows the magic in a core module; components
/// carry a different one.
const CORE_MODULE_VERSION: &[u8] = &[1, 0, 0, 0];

impl Plugin {
    /// Reads the plugin file at `path`.
    pub fn read(path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))
    }

    /// Loads the plugin `bytes`, read from `path`, with `config` as its
    /// settings; the compiled code comes from `cache` when it holds it, and
    /// goes there when not.
    pub fn load(
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
        settings: &BTreeMap<String, String>,
        cache: Option<&Cache>,
    ) -> Result<Self> {
        let name = path.display();
        check_kind_of_file(&name, bytes)?;
        let (component, digest, from_cache) = compile(engine, &name, bytes, cache)?;
        let kind = entry_kind(engine, &component).with_context(|| format!("plugin {name}"))?;
        let entry = link(engine, &name, &component, kind)?;
        Ok(Self {
            entry,
            settings: SettingsCtx::new(settings),
            arguments: command_arguments(path, settings),
            digest,
            from_cache,
        })
    }

    /// Whether the plugin is a WASI command, served on its stdio.
    pub fn is_command(&self) -> bool {
        matches!(self.entry, Entry::Command(_))
    }

    /// A command's arguments: its file name, then the words of the `args`
    /// setting; `None` for a handler.
    pub(crate) fn command_arguments(&self) -> Option<&[String]> {
        self.is_command().then_some(&*self.arguments)
    }

    /// Instantiates the plugin in `store`.
    pub(crate) async fn instantiate(&self, store: &mut Store<ConnState>) -> Result<Instance> {
        Ok(match &self.entry {
            Entry::Handler(pre) => Instance::Handler(pre.instantiate_async(store).await?),
            Entry::Command(pre) => Instance::Command(pre.instantiate_async(store).await?),
        })
    }

    /// The engine the plugin was compiled for.
    pub fn engine(&self) -> &Engine {
        match &self.entry {
            Entry::Handler(pre) => pre.engine(),
            Entry::Command(pre) => pre.engine(),
        }
    }
}

/// Refuses a file that is no component, saying what to do about it.
fn check_kind_of_file(name: &impl std::fmt::Display, bytes: &[u8]) -> Result<()> {
    if !bytes.starts_with(WASM_MAGIC) {
        bail!(
            "plugin {name} is not a WebAssembly file: {}",
            what_it_is(bytes)
        );
    }
    if bytes.get(4..8) == Some(CORE_MODULE_VERSION) {
        bail!(
            "plugin {name} is a core WebAssembly module, not a component: build Rust \
             for the wasm32-wasip2 target; for a WASI preview 1 module (C, Go, ...) run \
             `wasm-tools component new {name} --adapt ADAPTER -o plugin.wasm`, with \
             ADAPTER wasi_snapshot_preview1.reactor.wasm for a handler or \
             wasi_snapshot_preview1.command.wasm for a program with `main` (from the \
             crate wasi-preview1-component-adapter-provider or wasmtime's releases)"
        );
    }
    Ok(())
}

/// What a file that is not WebAssembly seems to be, and what to do.
fn what_it_is(bytes: &[u8]) -> &'static str {
    const NATIVE: &[&[u8]] = &[
        b"\x7fELF",          // Linux and most Unixes
        b"\xcf\xfa\xed\xfe", // macOS, 64-bit
        b"\xce\xfa\xed\xfe", // macOS, 32-bit
        b"\xca\xfe\xba\xbe", // macOS, universal
        b"MZ",               // Windows
    ];
    let start = &bytes[..bytes.len().min(1024)];
    if bytes.is_empty() {
        "it is empty"
    } else if NATIVE.iter().any(|magic| bytes.starts_with(magic)) {
        "it is a native library or program. Build the plugin for WebAssembly: \
         `cargo build --release --target wasm32-wasip2` in Rust, or the build.sh of a \
         project `host new` wrote"
    } else if is_text(start) {
        "it is text, a source file perhaps. Build it first: `host new --lang LANG NAME` \
         writes a project whose build.sh makes NAME.wasm (LANG: rust, python, javascript, \
         c, go or command)"
    } else {
        "it does not start with WebAssembly's magic bytes (\\0asm)"
    }
}

/// Whether `start`, the first bytes of a file, reads as UTF-8 text (cut
/// perhaps in the middle of a character).
fn is_text(start: &[u8]) -> bool {
    !start.contains(&0)
        && match std::str::from_utf8(start) {
            Ok(_) => true,
            Err(error) => error.error_len().is_none(),
        }
}

/// The compiled component, from `cache` when it holds it; its file's
/// SHA-256; and whether it came from the cache.
fn compile(
    engine: &Engine,
    name: &impl std::fmt::Display,
    bytes: &[u8],
    cache: Option<&Cache>,
) -> Result<(Component, String, bool)> {
    // The SHA-256 is for operators only (logs, metrics); the cache is
    // keyed by a faster hash, so it is computed beside the loading.
    let (digest, loaded) = std::thread::scope(|scope| {
        let digest = scope.spawn(|| cache::digest(bytes));
        let loaded = match cache {
            Some(cache) => {
                let key = Key::of(engine, bytes);
                match cache.load(engine, &key) {
                    Some(component) => Ok((component, true)),
                    None => cache.compile(engine, bytes, &key).map(|c| (c, false)),
                }
            }
            None => Component::new(engine, bytes).map(|c| (c, false)),
        };
        (digest.join(), loaded)
    });
    let digest = digest.map_err(|_| format_err!("hashing plugin {name} failed"))?;
    let (component, from_cache) =
        loaded.map_err(|error| match pool_hint(&format!("{error:#}")) {
            Some(hint) => error.context(format!(
                "plugin {name} does not fit this host's limits{hint}"
            )),
            None => error.context(format!(
                "plugin {name} is not a valid WebAssembly component"
            )),
        })?;
    Ok((component, digest, from_cache))
}

/// Links `component` against everything the host provides, and checks it
/// against the world of its `kind`.
fn link(
    engine: &Engine,
    name: &impl std::fmt::Display,
    component: &Component,
    kind: Kind,
) -> Result<Entry> {
    let mut linker = Linker::new(engine);
    store::add_to_linker(&mut linker)?;
    let instance_pre = linker.instantiate_pre(component).map_err(|error| {
        let hint = missing_import_hint(&format!("{error:#}"));
        error.context(format!(
            "plugin {name} imports something this host does not provide{hint}"
        ))
    })?;
    Ok(match kind {
        Kind::Handler => Entry::Handler(HandlerPre::new(instance_pre).map_err(|error| {
            let built_against = match contract_of(engine, component) {
                Some(version) => format!("it was built against portico:plugin@{version}"),
                None => "it names no contract version (it imports nothing from \
                         portico:plugin)"
                    .into(),
            };
            error.context(format!(
                "plugin {name} exports `run` with the wrong signature: the contract's is \
                 `{RUN_SIGNATURE}` (guest-sdk/wit/handler.wit, portico:plugin@0.1.0 to \
                 @{}); {built_against}. Rebuild it with its SDK, or start from a project \
                 `host new` writes",
                super::bindings::contract_version()
            ))
        })?),
        Kind::Command => {
            Entry::Command(CommandPre::new(instance_pre).with_context(|| {
                format!("plugin {name} does not match the wasi:cli/command world")
            })?)
        }
    })
}

/// A command's arguments: its file name, then the words of the `args`
/// setting.
fn command_arguments(path: &Path, settings: &BTreeMap<String, String>) -> Arc<[String]> {
    let program = path
        .file_stem()
        .map_or("plugin".into(), |stem| stem.to_string_lossy().into_owned());
    std::iter::once(program)
        .chain(
            settings
                .get(ARGS_SETTING)
                .into_iter()
                .flat_map(|args| args.split_whitespace().map(str::to_string)),
        )
        .collect()
}

/// A hint at the fix for a failed link, from wasmtime's error text, which
/// names the missing import in backticks (`wasi:http/types@0.2.3`).
fn missing_import_hint(error: &str) -> String {
    let Some(import) = error.split('`').nth(1) else {
        return String::new();
    };
    let package = import.split('/').next().unwrap_or(import);
    let package = package.split('@').next().unwrap_or(package);
    if let Some((_, versions)) = PROVIDED.iter().find(|(name, _)| *name == package) {
        return format!(" (`{import}`: this host provides {package} {versions})");
    }
    let offered: Vec<_> = PROVIDED.iter().map(|(name, _)| *name).collect();
    let fix = match package {
        "wasi:http" => {
            ". It serves raw TCP, without wasi:http: build a componentize-js plugin \
             with `--disable http fetch-event`"
        }
        _ => "",
    };
    format!(" (`{import}`; it provides {}){fix}", offered.join(", "))
}

/// The `run` a handler exports, as the contract writes it.
const RUN_SIGNATURE: &str = "run: func(info: connection-info, input: borrow<input-stream>, \
                             output: borrow<output-stream>) -> result<_, string>";

/// The contract version `component` was built against, as the names of
/// its `portico:plugin` imports give it.
fn contract_of(engine: &Engine, component: &Component) -> Option<String> {
    component
        .component_type()
        .imports(engine)
        .find_map(|(name, _)| {
            let interface = name.strip_prefix("portico:plugin/")?;
            Some(interface.split_once('@')?.1.to_string())
        })
}

/// What a component exports to be entered by.
enum Kind {
    Handler,
    Command,
}

/// The export `wasi:cli/run` goes by, at any 0.2 version.
const CLI_RUN: &str = "wasi:cli/run@0.2.";

/// Tells a handler from a command by its exports, naming what it exports
/// instead if it is neither.
fn entry_kind(engine: &Engine, component: &Component) -> Result<Kind> {
    let component_type = component.component_type();
    let mut names = Vec::new();
    for (name, item) in component_type.exports(engine) {
        match (name, item.ty) {
            ("run", ComponentItem::ComponentFunc(_)) => return Ok(Kind::Handler),
            ("run", _) => bail!("its export `run` is not a function"),
            (name, ComponentItem::ComponentInstance(_)) if name.starts_with(CLI_RUN) => {
                return Ok(Kind::Command);
            }
            (name, _) => names.push(format!("`{name}`")),
        }
    }
    let found = match names.is_empty() {
        true => "nothing".to_string(),
        false => names.join(", "),
    };
    bail!(
        "it exports {found}, but a plugin exports either `{RUN_SIGNATURE}` (the \
         portico:plugin/handler world of guest-sdk/wit; in Rust, portico-guest-sdk's \
         `export!`) or `wasi:cli/run@0.2.x` (a WASI command: a program with a `main`)"
    )
}

#[cfg(test)]
mod tests {
    use super::missing_import_hint;

    #[test]
    fn a_missing_import_is_answered_with_what_the_host_provides() {
        let http = "component imports instance `wasi:http/types@0.2.3`, but a matching \
                    implementation was not found in the linker";
        let hint = missing_import_hint(http);
        assert!(
            hint.contains("`wasi:http/types@0.2.3`; it provides wasi:io"),
            "{hint}"
        );
        assert!(hint.contains("--disable http fetch-event"), "{hint}");
        let keyvalue = "component imports instance `wasi:keyvalue/store@0.2.0-draft2`, but ...";
        assert_eq!(
            missing_import_hint(keyvalue),
            " (`wasi:keyvalue/store@0.2.0-draft2`: this host provides wasi:keyvalue \
             0.2.0-draft (store, atomics, batch))"
        );
        assert_eq!(missing_import_hint("no name in here"), "");
    }
}

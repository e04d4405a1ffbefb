//! A plugin's bytes, through everything the host does with them before the
//! first instance: the memory-init choice, compiling (wasmtime fuzzes its
//! own compiler; this covers what the host adds), the check of the file's
//! kind, of its exports and imports, and the error messages.
//!
//! An input that starts with the wasm magic is taken as a plugin file as
//! it is (the corpus holds the example plugins); any other is the seed of
//! a valid component made by `wasm-smith`, around a random core module.
//!
//! Properties: no panic; a plugin refused is one line that names the file
//! and holds no control character, whatever names the plugin gave its
//! imports and exports.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portico_host::config::defaults::default_limits;
use portico_host::ops::log::error_line;
use portico_host::sandbox::plugin::Plugin;
use portico_host::sandbox::{MemoryInit, engine};
use wasm_encoder::{ComponentSectionId, InstanceSection, RawSection};
use wasmtime::Engine;

/// One engine for each memory-init choice, made once: a few slots each.
static ENGINES: LazyLock<[Engine; 2]> = LazyLock::new(|| {
    let limits = portico_host::config::Limits {
        max_connections: 2,
        ..default_limits()
    };
    [MemoryInit::Copy, MemoryInit::Map].map(|init| engine(&limits, init).expect("an engine"))
});

fuzz_target!(|data: &[u8]| {
    let bytes = match data.starts_with(b"\0asm") {
        true => data.to_vec(),
        false => match generated_component(data) {
            Some(bytes) => bytes,
            None => return,
        },
    };
    let engine = match MemoryInit::of(&bytes) {
        MemoryInit::Copy => &ENGINES[0],
        MemoryInit::Map => &ENGINES[1],
    };
    let path = Path::new("fuzzed.wasm");
    if let Err(error) = Plugin::load(engine, path, &bytes, &BTreeMap::new(), None) {
        let line = error_line(&anyhow::Error::from(error));
        assert!(
            line.contains("plugin fuzzed.wasm"),
            "{line:?} does not name the file"
        );
        assert!(
            !line.chars().any(char::is_control),
            "{line:?} holds a control character"
        );
    }
});

/// A component that embeds a core module `wasm-smith` makes from `seed`,
/// and instantiates it.
fn generated_component(seed: &[u8]) -> Option<Vec<u8>> {
    let mut unstructured = arbitrary::Unstructured::new(seed);
    let config = wasm_smith::Config {
        max_imports: 0,
        ..unstructured.arbitrary().ok()?
    };
    let module = wasm_smith::Module::new(config, &mut unstructured).ok()?;
    let mut component = wasm_encoder::Component::new();
    component.section(&RawSection {
        id: ComponentSectionId::CoreModule.into(),
        data: &module.to_bytes(),
    });
    let mut instances = InstanceSection::new();
    instances.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    component.section(&instances);
    Some(component.finish())
}

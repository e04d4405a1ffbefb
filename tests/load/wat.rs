//! Hostile plugins written in WAT, for attacks Rust cannot express: a core
//! start function, function names made to forge log lines. Each is a core
//! module made a component for the `portico:plugin/handler` world by
//! wit-component, as `wasm-tools component new` would.

use std::path::PathBuf;

/// What every plugin module here starts with: a memory, a bump allocator
/// for the host to lower `run`'s strings with, and the functions that drop
/// the borrowed streams.
const PRELUDE: &str = r#"
  (import "wasi:io/streams@0.2.12" "[resource-drop]input-stream" (func $drop-input (param i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $drop-output (param i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 3)))
    (local.get $at))
"#;

/// `run`'s core signature: the connection info (id, peer and local address
/// as pointer and length), the two stream handles; it returns a pointer to
/// its `result<_, string>`.
pub const RUN: &str = r#"(func (export "run") (param i64 i32 i32 i32 i32 i32 i32) (result i32)"#;

/// A `run` that drops its streams and returns `ok`: the area at 0 is zero.
pub const RUN_OK: &str = r#"(func (export "run") (param i64 i32 i32 i32 i32 i32 i32) (result i32)
    (call $drop-input (local.get 5))
    (call $drop-output (local.get 6))
    (i32.const 0))"#;

/// Writes a component made of [`PRELUDE`] and `body` to a temporary file
/// named after `name`, and returns its path.
pub fn component(name: &str, body: &str) -> PathBuf {
    let wat = format!("(module {PRELUDE} {body})");
    let mut module = wat::parse_str(&wat).expect("valid WAT");
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk/wit"))
        .expect("the plugin contract parses");
    let world = resolve
        .select_world(&[package], Some("handler"))
        .expect("the handler world");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("embed the world");
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .expect("a module wit-component accepts")
        .encode()
        .expect("a component");
    let path = std::env::temp_dir().join(format!("portico-{name}-{}.wasm", std::process::id()));
    std::fs::write(&path, component).expect("write the component");
    path
}

//! Gathers what `host new` writes into a plugin project, so that the
//! binary carries it and a project needs nothing from this repository:
//! the contract (`guest-sdk/wit`), each language's SDK and template
//! (`guest-sdk/...`), and the contract's C and Go bindings, generated here
//! from the contract as `wit-bindgen c` and `wit-bindgen go` write them.
//!
//! Writes `$OUT_DIR/project_files.rs`: one `&[(path, bytes)]` constant per
//! folder, each file `include_bytes!`-ed, so cargo rebuilds when one changes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Folders of `guest-sdk` whose files a project may hold, and the
/// constant each becomes.
const FOLDERS: &[(&str, &str)] = &[
    ("wit", "CONTRACT"),
    ("src", "RUST_SDK"),
    ("c", "C_SDK"),
    ("python", "PYTHON_SDK"),
    ("js", "JAVASCRIPT_SDK"),
    ("go/portico", "GO_SDK"),
    ("go/runtime", "GO_RUNTIME"),
    ("templates/rust", "RUST_TEMPLATE"),
    ("templates/command", "COMMAND_TEMPLATE"),
    ("templates/python", "PYTHON_TEMPLATE"),
    ("templates/javascript", "JAVASCRIPT_TEMPLATE"),
    ("templates/c", "C_TEMPLATE"),
    ("templates/go", "GO_TEMPLATE"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let sdk = manifest.join("../guest-sdk");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    println!("cargo::rerun-if-changed={}", sdk.display());

    let mut code = String::new();
    for (folder, constant) in FOLDERS {
        let dir = sdk.join(folder);
        println!("cargo::rerun-if-changed={}", dir.display());
        embed(&mut code, constant, &dir);
    }
    let c = out.join("c-bindings");
    bindings(wit_bindgen_c::Opts::default().build(), &sdk.join("wit"), &c);
    embed(&mut code, "C_BINDINGS", &c);
    let go = out.join("go-bindings");
    bindings(
        wit_bindgen_go::Opts::default().build(),
        &sdk.join("wit"),
        &go,
    );
    embed(&mut code, "GO_BINDINGS", &go);
    std::fs::write(out.join("project_files.rs"), code).expect("writing project_files.rs");
}

/// Appends to `code` a constant `name` listing every file under `dir`
/// (none if it does not exist), by its path relative to `dir`.
fn embed(code: &mut String, name: &str, dir: &Path) {
    let mut files = Vec::new();
    collect(dir, &mut files);
    files.sort();
    writeln!(code, "pub const {name}: &[(&str, &[u8])] = &[").unwrap();
    for file in files {
        let relative = file.strip_prefix(dir).expect("under dir");
        writeln!(
            code,
            "    ({:?}, include_bytes!({:?})),",
            relative.to_str().expect("UTF-8 file names"),
            file.canonicalize().expect("an existing file")
        )
        .unwrap();
    }
    writeln!(code, "];").unwrap();
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("a readable folder").path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        // What Python and editors leave beside the sources.
        if name == "__pycache__" || name.starts_with('.') && name != ".gitignore" {
            continue;
        }
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// Writes what `generator` makes of the contract's `handler` world to `dir`.
fn bindings(mut generator: Box<dyn wit_bindgen_core::WorldGenerator>, wit: &Path, dir: &Path) {
    let mut resolve = wit_bindgen_core::wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(wit).expect("the contract parses");
    let world = resolve
        .select_world(&[package], Some("handler"))
        .expect("the contract has a handler world");
    let mut files = wit_bindgen_core::Files::default();
    generator
        .generate(&mut resolve, world, &mut files)
        .expect("bindings generate");
    let _ = std::fs::remove_dir_all(dir);
    for (name, contents) in files.iter() {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a file has a folder")).unwrap();
        std::fs::write(&path, contents).expect("writing bindings");
    }
}

//! `host new --lang LANG NAME`: writes a plugin project that builds on its
//! own, outside this repository.
//!
//! Everything a project holds is carried in the binary (gathered by
//! `build.rs`): the contract it builds against, its language's SDK, the
//! contract's bindings where the language needs them generated (C, Go), the
//! preview 1 adapter of this host's wasmtime where the language builds
//! preview 1 modules (C, Go), and a template: an echo handler, a `build.sh`
//! that builds `NAME.wasm` with the language's own tools, and a README
//! naming those tools. A plugin author's first five minutes should need
//! nothing but this and the tools.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::sandbox::bindings::contract_version;

mod files {
    include!(concat!(env!("OUT_DIR"), "/project_files.rs"));
}

/// The languages `host new` writes projects in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// A handler in Rust, with the portico-guest-sdk crate.
    Rust,
    /// A handler in Python, built with componentize-py.
    Python,
    /// A handler in JavaScript, built with componentize-js.
    #[value(alias = "js")]
    Javascript,
    /// A handler in C, built with clang and wasi-libc.
    C,
    /// A handler in Go, built with Go's `wasip1` port.
    Go,
    /// A WASI command in Rust: a `main` whose stdin and stdout are the
    /// connection, served as inetd serves one.
    Command,
}

/// A file of the project: where it goes, and what it holds.
struct File {
    path: PathBuf,
    contents: Vec<u8>,
}

/// Writes the project `name` in `language` into a new folder `parent/name`,
/// and returns that folder.
pub fn write_project(parent: &Path, name: &str, language: Language) -> Result<PathBuf> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists: choose another name, or remove it",
            dir.display()
        );
    }
    let files = project(name, language);
    // Written aside and renamed once whole, so that a failure leaves no
    // half project behind.
    let partial = parent.join(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    for file in &files {
        let path = partial.join(&file.path);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot create {}", folder.display()))?;
        }
        std::fs::write(&path, &file.contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        if file.path.file_name().is_some_and(|file| file == "build.sh") {
            make_executable(&path)?;
        }
    }
    std::fs::rename(&partial, &dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A project's name becomes a folder, a file, a crate and a service name:
/// lower-case letters, digits, `-` and `_`, starting with a letter.
fn check_name(name: &str) -> Result<()> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "{name:?} cannot name a plugin: use lower-case letters, digits, `-` and `_`, \
             starting with a letter (at most 64)"
        );
    }
    Ok(())
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

/// Every file of the project `name` in `language`.
fn project(name: &str, language: Language) -> Vec<File> {
    let mut project = Vec::new();
    let mut add = |folder: &str, files: &[(&str, &[u8])]| {
        for (path, contents) in files {
            project.push(File {
                path: Path::new(folder).join(path),
                contents: contents.to_vec(),
            });
        }
    };
    let template = match language {
        Language::Rust => {
            add("portico-guest-sdk/src", files::RUST_SDK);
            add("portico-guest-sdk/wit", files::CONTRACT);
            files::RUST_TEMPLATE
        }
        Language::Command => files::COMMAND_TEMPLATE,
        Language::Python => {
            add("wit", files::CONTRACT);
            add("", files::PYTHON_SDK);
            files::PYTHON_TEMPLATE
        }
        Language::Javascript => {
            add("wit", files::CONTRACT);
            add("", files::JAVASCRIPT_SDK);
            files::JAVASCRIPT_TEMPLATE
        }
        Language::C => {
            add("wit", files::CONTRACT);
            add("", files::C_SDK);
            add("bindings", files::C_BINDINGS);
            add("", ADAPTER);
            files::C_TEMPLATE
        }
        Language::Go => {
            add("wit", files::CONTRACT);
            add("", files::GO_BINDINGS);
            add("portico", files::GO_SDK);
            add("runtime", files::GO_RUNTIME);
            add("", ADAPTER);
            files::GO_TEMPLATE
        }
    };
    let mut project: Vec<File> = project
        .into_iter()
        .filter(|file| !is_sdk_readme(file))
        .collect();
    for (path, contents) in template {
        project.push(File {
            path: PathBuf::from(fill(path, name)),
            contents: match std::str::from_utf8(contents) {
                Ok(text) => fill(text, name).into_bytes(),
                Err(_) => contents.to_vec(),
            },
        });
    }
    if language == Language::Go {
        point_go_runtime_here(&mut project);
    }
    project
}

/// The adapter that makes a WASI preview 1 module a component, from the
/// wasmtime version this host runs.
const ADAPTER: &[(&str, &[u8])] = &[(
    "wasi_snapshot_preview1.reactor.wasm",
    wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
)];

/// An SDK folder's own README speaks of this repository; the project's
/// README (from the template) speaks of the project.
fn is_sdk_readme(file: &File) -> bool {
    file.path
        .file_name()
        .is_some_and(|name| name == "README.md")
}

/// A template's `{{name}}`, `{{crate}}` (the name as Rust writes an
/// identifier) and `{{contract}}`, filled in.
fn fill(text: &str, name: &str) -> String {
    text.replace("{{name}}", name)
        .replace("{{crate}}", &name.replace('-', "_"))
        .replace("{{contract}}", contract_version())
        .replace("{{host}}", env!("CARGO_PKG_VERSION"))
}

/// The Go bindings import their runtime package from the Go module proxy;
/// the project carries it in `runtime/`, so it builds offline.
fn point_go_runtime_here(project: &mut [File]) {
    for file in project {
        if file.path == Path::new("go.mod") {
            file.contents
                .extend_from_slice(b"\nreplace go.bytecodealliance.org/pkg => ./runtime\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_must_be_usable_as_a_file_and_a_crate() {
        for good in ["echo", "line-upper", "a1_b"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Echo", "1st", "../x", "a b", "a.b", &"x".repeat(65)] {
            let error = check_name(bad).unwrap_err().to_string();
            assert!(error.contains("cannot name a plugin"), "{error}");
        }
    }

    /// Every language's project has a build.sh and a README, and the
    /// placeholders are all filled.
    #[test]
    fn every_project_is_complete() {
        use clap::ValueEnum;
        for language in Language::value_variants() {
            let files = project("hello-world", *language);
            for needed in ["build.sh", "README.md"] {
                assert!(
                    files.iter().any(|file| file.path == Path::new(needed)),
                    "{language:?}: no {needed}"
                );
            }
            for file in &files {
                let text = String::from_utf8_lossy(&file.contents);
                for placeholder in ["{{name}}", "{{crate}}", "{{contract}}", "{{host}}"] {
                    assert!(
                        !text.contains(placeholder)
                            && !file.path.to_string_lossy().contains(placeholder),
                        "{language:?}: {} keeps {placeholder}",
                        file.path.display()
                    );
                }
            }
        }
    }
}

//! The host's layout, checked from its source: what lib.rs's walk-through
//! promises a newcomer stays true as features land.
//!
//! - No import circles among the host's modules (files): each names the
//!   circle it finds. A module's use of its own children (a folder's
//!   mod.rs declaring, re-exporting and calling them) is ownership, not an
//!   import, so a child may use what its parent defines.
//! - Folders are layers, and every import between two of them points down
//!   [`LAYERS`].
//! - No file over [`MAX_FILE_LINES`] lines and no function over
//!   [`MAX_FN_LINES`].
//!
//! Imports are read from the code itself, comments and strings aside:
//! `crate::`, `super::` and `self::` paths, in `use` lines and in the
//! body, each resolved to the module file it names. Test modules at the end
//! of a file are left out: what a test imports is no part of the design.
//!
//! Run it alone with `cargo test -p portico-host --test layout`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The host's folders from the top layer down; the files directly in
/// `host/src` (lib.rs, main.rs, cli.rs) stand above them all.
const LAYERS: &[&str] = &["server", "sandbox", "config", "capabilities", "net", "ops"];

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 80;

/// One module file: its path from `host/src`, its module path
/// (`["sandbox", "plugin"]`), and its code without comments, strings and
/// trailing test module.
struct Module {
    file: String,
    path: Vec<String>,
    code: String,
    lines: usize,
}

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn modules() -> Vec<Module> {
    let root = source_root();
    let mut files = Vec::new();
    collect(&root, &mut files);
    files
        .into_iter()
        .filter(|file| !file.ends_with("main.rs") || file.parent() != Some(root.as_path()))
        .map(|file| {
            let text = std::fs::read_to_string(&file).expect("a source file reads");
            let relative = file.strip_prefix(&root).expect("under src");
            let mut path: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
                path.pop();
            }
            let code = strip(&text);
            let code = match code.find("#[cfg(test)]\nmod tests") {
                Some(at) => code[..at].to_string(),
                None => code,
            };
            Module {
                file: relative.to_string_lossy().into_owned(),
                path,
                code,
                lines: text.lines().count(),
            }
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the source folder reads")
        .map(|entry| entry.expect("a folder entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// `text` with comments, string and character literals blanked out (their
/// line breaks kept, so that line counts stay right).
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let rest = &chars[i..];
        if rest.starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if rest.starts_with(&['/', '*']) {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i..].starts_with(&['/', '*']) {
                    depth += 1;
                    i += 2;
                } else if chars[i..].starts_with(&['*', '/']) {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if rest[0] == 'r' && matches!(rest.get(1), Some('"' | '#')) && !is_ident(&chars, i) {
            let hashes = rest[1..].iter().take_while(|c| **c == '#').count();
            if rest.get(1 + hashes) != Some(&'"') {
                out.push('r');
                i += 1;
                continue;
            }
            i += 2 + hashes;
            out.push_str("\"\"");
            while i < chars.len() {
                if chars[i] == '"' && chars[i + 1..].iter().take(hashes).all(|c| *c == '#') {
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if rest[0] == '"' {
            out.push_str("\"\"");
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
            i += 1;
        } else if rest[0] == '\'' && is_char_literal(rest) {
            let len = if rest[1] == '\\' {
                rest[2..]
                    .iter()
                    .position(|c| *c == '\'')
                    .map_or(2, |at| at + 3)
            } else {
                3
            };
            out.push_str("' '");
            i += len;
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    out
}

fn is_ident(chars: &[char], at: usize) -> bool {
    at > 0 && (chars[at - 1].is_alphanumeric() || chars[at - 1] == '_')
}

/// Whether `rest` starts a character literal (`'a'`, `'\n'`), not a
/// lifetime (`'a`).
fn is_char_literal(rest: &[char]) -> bool {
    match rest.get(1) {
        Some('\\') => true,
        Some(_) => rest.get(2) == Some(&'\''),
        None => false,
    }
}

/// Every path the module's code names from `crate`, `super` or `self`,
/// made absolute, with `use` groups (`use crate::a::{b, c::d}`) expanded.
fn named_paths(module: &Module) -> Vec<Vec<String>> {
    let code = &module.code;
    let mut paths = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    // The module path at each position: inline `mod NAME {` blocks nest.
    let mut nesting: Vec<(usize, String)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if nesting.last().is_some_and(|(at, _)| *at == depth) {
                    nesting.pop();
                }
            }
            _ => {}
        }
        if !is_ident(&bytes, i) {
            let word: String = bytes[i..]
                .iter()
                .take_while(|c| c.is_alphanumeric() || **c == '_')
                .collect();
            if word == "mod" {
                let after: String = bytes[i + 3..].iter().take(80).collect();
                let name: String = after
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let tail = after.trim_start()[name.len()..].trim_start();
                if tail.starts_with('{') {
                    nesting.push((depth, name));
                }
            }
            if matches!(word.as_str(), "crate" | "super" | "self") {
                let end = path_end(&bytes, i);
                let text: String = bytes[i..end].iter().collect();
                let mut here = module.path.clone();
                here.extend(nesting.iter().map(|(_, name)| name.clone()));
                for path in expand(&text) {
                    if let Some(path) = absolute(&here, &path) {
                        paths.push(path);
                    }
                }
                i = end;
                continue;
            }
            if !word.is_empty() {
                i += word.len();
                continue;
            }
        }
        i += 1;
    }
    paths
}

/// Where the path starting at `start` ends: after its last segment or its
/// closing group brace.
fn path_end(chars: &[char], start: usize) -> usize {
    let mut i = start;
    let mut depth = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            ':' if chars.get(i + 1) == Some(&':') => {
                i += 2;
                continue;
            }
            _ if c.is_alphanumeric() || c == '_' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        if depth == 0 && c == '}' {
            return i + 1;
        }
        i += 1;
    }
    i
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand(text: &str) -> Vec<Vec<String>> {
    let Some(open) = text.find('{') else {
        return vec![segments(text)];
    };
    let prefix = segments(&text[..open]);
    let inner = &text[open + 1..text.rfind('}').unwrap_or(text.len())];
    let mut items = Vec::new();
    let (mut depth, mut from) = (0, 0);
    for (at, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[from..at]);
                from = at + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[from..]);
    items
        .into_iter()
        .filter(|item| !item.trim().is_empty())
        .flat_map(expand)
        .map(|tail| {
            let mut path = prefix.clone();
            path.extend(tail.into_iter().filter(|segment| segment != "self"));
            path
        })
        .collect()
}

fn segments(text: &str) -> Vec<String> {
    text.split("::")
        .map(|segment| segment.split_whitespace().next().unwrap_or("").to_string())
        .filter(|segment| !segment.is_empty())
        .collect()
}

/// `path` as seen from module `here`, from the crate root; `None` if it
/// names no item.
fn absolute(here: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base = here.to_vec();
    let mut rest = path;
    match rest.first()?.as_str() {
        "crate" => {
            base.clear();
            rest = &rest[1..];
        }
        "self" => rest = &rest[1..],
        "super" => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    // `pub(crate)`, `pub(super)`, `&self`: a keyword alone names nothing.
    if rest.is_empty() {
        return None;
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The deepest module `path` names, and its file.
fn file_of<'a>(
    files: &'a BTreeMap<Vec<String>, String>,
    path: &[String],
) -> Option<(&'a [String], &'a String)> {
    (0..=path.len())
        .rev()
        .find_map(|len| files.get_key_value(&path[..len]))
        .map(|(module, file)| (module.as_slice(), file))
}

/// Every import between two files, with the path that makes it.
fn imports(modules: &[Module]) -> BTreeMap<(String, String), String> {
    let files: BTreeMap<Vec<String>, String> = modules
        .iter()
        .map(|module| (module.path.clone(), module.file.clone()))
        .collect();
    let mut edges = BTreeMap::new();
    for module in modules {
        for path in named_paths(module) {
            let Some((target_path, target)) = file_of(&files, &path) else {
                continue;
            };
            // A module owns its children: declaring, re-exporting and
            // dispatching to them is what a folder's mod.rs is for.
            if !target_path.starts_with(&module.path) {
                edges
                    .entry((module.file.clone(), target.clone()))
                    .or_insert_with(|| path.join("::"));
            }
        }
    }
    edges
}

/// The import circles among `edges`: each strongly connected set of two
/// or more files.
fn circles(edges: &BTreeMap<(String, String), String>) -> Vec<BTreeSet<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(file) = stack.pop() {
            for to in next.get(file).into_iter().flatten() {
                if seen.insert(*to) {
                    stack.push(to);
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&str, BTreeSet<&str>> =
        next.keys().map(|file| (*file, reaches(file))).collect();
    let mut found: Vec<BTreeSet<String>> = Vec::new();
    for (file, reached) in &reach {
        let circle: BTreeSet<String> = reached
            .iter()
            .filter(|other| reach.get(*other).is_some_and(|back| back.contains(file)))
            .map(|other| other.to_string())
            .collect();
        if circle.len() > 1 && !found.contains(&circle) {
            found.push(circle);
        }
    }
    found
}

fn layer(file: &str) -> Option<usize> {
    let folder = file.split('/').next()?;
    LAYERS.iter().position(|layer| *layer == folder)
}

#[test]
fn no_module_imports_itself_back_through_others() {
    let edges = imports(&modules());
    assert!(
        edges.len() > 50,
        "the import reader found only {} imports: it is broken",
        edges.len()
    );
    let circles = circles(&edges);
    let described: Vec<String> = circles
        .iter()
        .map(|circle| {
            let ties: Vec<String> = edges
                .iter()
                .filter(|((from, to), _)| circle.contains(from) && circle.contains(to))
                .map(|((from, to), path)| format!("{from} -> {to} ({path})"))
                .collect();
            ties.join(", ")
        })
        .collect();
    assert!(
        described.is_empty(),
        "import circles:\n{}",
        described.join("\n")
    );
}

#[test]
fn imports_between_folders_point_down_the_layers() {
    let edges = imports(&modules());
    let upward: Vec<String> = edges
        .iter()
        .filter(|((from, to), _)| match (layer(from), layer(to)) {
            (Some(from), Some(to)) => to < from,
            (Some(_), None) => true,
            _ => false,
        })
        .map(|((from, to), path)| format!("{from} -> {to} ({path})"))
        .collect();
    assert!(
        upward.is_empty(),
        "imports up the layers {LAYERS:?}:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_file_or_function_is_too_long_to_read() {
    let mut long = Vec::new();
    for module in modules() {
        if module.lines > MAX_FILE_LINES {
            long.push(format!("{}: {} lines", module.file, module.lines));
        }
        for (name, line, lines) in functions(&module.code) {
            if lines > MAX_FN_LINES {
                long.push(format!("{}:{line}: fn {name}: {lines} lines", module.file));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_FILE_LINES} lines a file or {MAX_FN_LINES} a function:\n{}",
        long.join("\n")
    );
}

/// Each function in `code` with a body: its name, first line and length in
/// lines.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let line_at = |at: usize| chars[..at].iter().filter(|c| **c == '\n').count() + 1;
    let mut found = Vec::new();
    let mut i = 0;
    while i + 3 < chars.len() {
        let starts_fn = chars[i..].starts_with(&['f', 'n', ' ']) && !is_ident(&chars, i);
        if !starts_fn {
            i += 1;
            continue;
        }
        let name: String = chars[i + 3..]
            .iter()
            .take_while(|c| c.is_alphanumeric() || **c == '_')
            .collect();
        // The body opens at the first `{` outside brackets and generic
        // arguments; a `;` first means a declaration without one.
        let mut j = i + 3;
        let mut nesting = 0i32;
        let body = loop {
            match chars.get(j) {
                None => break None,
                Some('(' | '[' | '<') => nesting += 1,
                Some(')' | ']') => nesting -= 1,
                Some('>') if chars.get(j - 1) != Some(&'-') && chars.get(j - 1) != Some(&'=') => {
                    nesting -= 1
                }
                Some(';') if nesting <= 0 => break None,
                Some('{') if nesting <= 0 => break Some(j),
                _ => {}
            }
            j += 1;
        };
        let Some(open) = body else {
            i = j;
            continue;
        };
        let mut depth = 0;
        let mut close = open;
        for (k, c) in chars.iter().enumerate().skip(open) {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = k;
                        break;
                    }
                }
                _ => {}
            }
        }
        let first = line_at(i);
        found.push((name, first, line_at(close) - first + 1));
        i += 3;
    }
    found
}

//! The workspace's dependency rule, checked: inside each crate, the modules of one folder never
//! form an import circle, and no source file is longer than a reader can hold.
//!
//! A module's uses are read from its source: every `crate::a::b` path (also in `use crate::{a, b}`
//! lists) and every `super::x` path written at a file's top level (inside an inline `mod tests`,
//! `super` is the file's own module). A use of the module itself, one of its ancestors or one of
//! its descendants says nothing about layers (a folder's `mod.rs` re-exports its children, and
//! children see their parent); any other use is an edge between two siblings: the children of the
//! deepest folder holding both, on the way to each. Each folder's sibling graph must be acyclic.
//!
//! Run alone with `cargo test -p lab-support --test layers`. It lives in lab-support, not in the
//! lab tool: an integration test of a binary crate makes `cargo test` relink that binary, and
//! `cargo lab test` is that binary, running.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest source file the layout allows.
const MAX_LINES: usize = 600;

/// The crates whose `src/` trees are checked, relative to the workspace root: all three, the `lab`
/// tool's layers included (see CONTRIBUTING.md, "Architecture").
const CRATES: [&str; 3] = ["lab-support", "lab-model", "lab"];

type Module = Vec<String>;

/// One module's file, and the uses found in it: the path used and the line it is on.
struct Source {
    file: PathBuf,
    module: Module,
    uses: Vec<(Module, usize)>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `lib.rs` and `main.rs` are the crate root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Module = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_string()),
    }
    parts
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths written after `prefix` (`crate::` or `super::`) on a line: `a::b::C` gives
/// `[a, b, C]`, and `a::{b::C, d}` gives `[a, b, C]` and `[a, d]`.
fn paths_after(line: &str, prefix: &str) -> Vec<Module> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let before_ok = at == 0 || !is_ident(rest[..at].chars().last().unwrap());
        rest = &rest[at + prefix.len()..];
        if !before_ok {
            continue;
        }
        found.extend(expand(rest, Vec::new()));
    }
    found
}

/// Reads one path (with any `{...}` list) from the start of `text`, after the segments in `head`.
fn expand(text: &str, head: Module) -> Vec<Module> {
    if let Some(list) = text.strip_prefix('{') {
        let end = matching_brace(list).unwrap_or(list.len());
        return split_top_level(&list[..end]).into_iter().flat_map(|item| expand(item.trim(), head.clone())).collect();
    }
    let ident: String = text.chars().take_while(|&c| is_ident(c)).collect();
    if ident.is_empty() {
        return if head.is_empty() { vec![] } else { vec![head] };
    }
    let mut path = head;
    path.push(ident.clone());
    match text[ident.len()..].strip_prefix("::") {
        Some(more) => expand(more, path),
        None => vec![path],
    }
}

fn matching_brace(text: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Every file under `src` with the modules it uses, resolved to the deepest module they name.
fn read_src(src: &Path) -> Vec<Source> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no Rust files under {}", src.display());
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
    let mut sources = Vec::new();
    for file in files {
        let module = module_of(src, &file);
        let text = std::fs::read_to_string(&file).unwrap();
        let mut uses = Vec::new();
        // The indentation of the inline `mod x {` we are in, if any.
        let mut inline: Option<usize> = None;
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let indent = line.len() - line.trim_start().len();
            if let Some(at) = inline {
                if indent == at && line.trim_start().starts_with('}') {
                    inline = None;
                }
            } else if code.trim_start().trim_start_matches("pub(crate) ").trim_start_matches("pub ").starts_with("mod ")
                && code.trim_end().ends_with('{')
            {
                inline = Some(indent);
            }
            for path in paths_after(code, "crate::") {
                uses.push((path, n + 1));
            }
            if inline.is_none() && !module.is_empty() {
                for path in paths_after(code, "super::") {
                    let mut full = module[..module.len() - 1].to_vec();
                    full.extend(path);
                    uses.push((full, n + 1));
                }
            }
        }
        let uses = uses
            .into_iter()
            .filter_map(|(path, line)| {
                let target = (0..=path.len()).rev().map(|k| path[..k].to_vec()).find(|p| modules.contains(p))?;
                Some((target, line))
            })
            .collect();
        sources.push(Source { file, module, uses });
    }
    sources
}

/// For each folder (a module), its children's edges: child -> children it uses, with one place
/// each edge comes from.
fn sibling_edges(sources: &[Source]) -> BTreeMap<Module, BTreeMap<String, BTreeMap<String, String>>> {
    let mut levels: BTreeMap<Module, BTreeMap<String, BTreeMap<String, String>>> = BTreeMap::new();
    for s in sources {
        for (target, line) in &s.uses {
            let common = s.module.iter().zip(target).take_while(|(a, b)| a == b).count();
            if common == s.module.len() || common == target.len() {
                continue; // itself, an ancestor or a descendant
            }
            let place = format!("{}:{line}", s.file.strip_prefix(root()).unwrap_or(&s.file).display());
            levels
                .entry(s.module[..common].to_vec())
                .or_default()
                .entry(s.module[common].clone())
                .or_default()
                .entry(target[common].clone())
                .or_insert(place);
        }
    }
    levels
}

/// A circle in `edges`, as the list of its nodes, if there is one.
fn find_circle(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut circle = stack[from..].to_vec();
                    circle.push(next.clone());
                    return Some(circle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn circles_in(krate: &str) -> Vec<String> {
    let sources = read_src(&root().join(krate).join("src"));
    let mut problems = Vec::new();
    for (folder, edges) in sibling_edges(&sources) {
        if let Some(circle) = find_circle(&edges) {
            let steps: Vec<String> =
                circle.windows(2).map(|w| format!("{} -> {} ({})", w[0], w[1], edges[&w[0]][&w[1]])).collect();
            let name = if folder.is_empty() { "crate".to_string() } else { format!("crate::{}", folder.join("::")) };
            problems.push(format!("{krate}: an import circle among the modules of {name}: {}", steps.join(", ")));
        }
    }
    problems
}

#[test]
fn no_import_circle_in_any_crate() {
    let problems: Vec<String> = CRATES.iter().flat_map(|k| circles_in(k)).collect();
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn no_source_file_over_the_limit() {
    let mut long = Vec::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root().join(krate).join("src"), &mut files);
        rust_files(&root().join(krate).join("tests"), &mut files);
        for f in files {
            let lines = std::fs::read_to_string(&f).unwrap().lines().count();
            if lines > MAX_LINES {
                long.push(format!("{}: {lines} lines", f.strip_prefix(root()).unwrap_or(&f).display()));
            }
        }
    }
    assert!(long.is_empty(), "files over {MAX_LINES} lines (split them by concept):\n{}", long.join("\n"));
}

/// The checker itself: it sees a circle through a `use crate::{..}` list and a sibling `super::`
/// path, and ignores parents, children and inline test modules.
#[test]
fn the_checker_finds_a_planted_circle() {
    let dir = std::env::temp_dir().join(format!("lab-layers-{}", std::process::id()));
    let src = dir.join("planted/src");
    std::fs::create_dir_all(src.join("f")).unwrap();
    let write = |rel: &str, text: &str| std::fs::write(src.join(rel), text).unwrap();
    write("lib.rs", "pub mod a;\npub mod b;\npub mod f;\nuse crate::a::X;\n");
    write("a.rs", "use crate::{f::g::Y, error};\n");
    write("f/mod.rs", "pub mod g;\npub mod h;\npub use self::g::Y;\n");
    write("f/g.rs", "use super::h::Z;\nuse super::*;\n");
    write("f/h.rs", "use crate::f::Y;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n");
    write("b.rs", "pub struct B;\n");
    let edges = |files: &[(&str, &str)]| {
        for (rel, text) in files {
            write(rel, text);
        }
        sibling_edges(&read_src(&src))
    };
    // g -> h (sibling super::), h -> f (its parent: not an edge), a -> f: no circle yet.
    let levels = edges(&[]);
    assert!(levels[&vec!["f".to_string()]]["g"].contains_key("h"));
    assert!(levels.values().all(|e| find_circle(e).is_none()));
    // f::h uses crate::a, and a uses f: a circle at the crate's top level.
    let levels = edges(&[("f/h.rs", "use crate::a;\n")]);
    assert_eq!(find_circle(&levels[&Vec::new()]), Some(vec!["a".to_string(), "f".to_string(), "a".to_string()]));
    let _ = std::fs::remove_dir_all(&dir);
}

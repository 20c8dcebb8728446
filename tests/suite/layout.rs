//! The shape of the code (issue 21): in no crate of the workspace does a module import another
//! that imports it back, directly or round a loop, except core's messaging layer, which its
//! docs describe as one layer. Read from the sources' `crate::` paths (a directory module,
//! `child/`, counts as one module; `lib.rs`, which re-exports, is not one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates of the workspace, by their `src` directory.
const CRATES: [&str; 6] = ["core", "parent", "master", "select", "utils", "."];

/// The one cycle allowed: core's messaging layer (`core/src/lib.rs`, "one layer, since the
/// documented API ties them together").
const CORE_MESSAGING: [&str; 5] = ["context", "message", "receiver", "router", "stream"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The crate's modules (`src/<m>.rs` or `src/<m>/`) and the files of each.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "bin" {
                modules.entry(name).or_default().extend(files(&path));
            }
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            modules.entry(name).or_default().push(path);
        }
    }
    modules
}

/// The modules of `known` that `text` names as `crate::<m>` or in `crate::{<m>::.., ..}`,
/// outside comments.
fn imports(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let ident =
        |s: &str| -> String { s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // Not `mitogen_crate::` or the like: the word must start there.
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        let mut names = vec![ident(rest)];
        if let Some(group) = rest.strip_prefix('{') {
            // The top-level items of the group: `{a::X, b::{Y, Z}, c}`.
            let (mut depth, mut start) = (0, 0);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        names.push(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        }
        found.extend(names.into_iter().filter(|n| known.contains(n)));
    }
    found
}

/// The import graph of the crate at `src`: module -> the modules it imports.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, files)| {
            let mut deps = BTreeSet::new();
            for f in files {
                deps.extend(imports(&std::fs::read_to_string(f).unwrap(), &known));
            }
            deps.remove(name);
            (name.clone(), deps)
        })
        .collect()
}

/// The strongly connected components of more than one module (Tarjan's algorithm): each is a
/// set of modules that import each other round a loop.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.graph[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.insert(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mut found = Vec::new();
    for krate in CRATES {
        let src = workspace().join(krate).join("src");
        for cycle in cycles(&graph(&src)) {
            let allowed: BTreeSet<String> = CORE_MESSAGING.iter().map(|m| m.to_string()).collect();
            if krate == "core" && cycle == allowed {
                continue;
            }
            found.push(format!("{krate}: {cycle:?}"));
        }
    }
    assert!(found.is_empty(), "modules that import each other round a loop: {found:#?}");
}

#[test]
fn the_check_sees_a_loop_and_ignores_comments() {
    let known: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    assert_eq!(imports("use crate::b::X; // crate::c\n/// [`crate::c`]", &known), ["b".to_owned()].into());
    assert_eq!(imports("mitogen_crate::a; x", &known), BTreeSet::new());
    assert_eq!(imports("use crate::{\n    a::X,\n    c::{Y, Z},\n};", &known), ["a".to_owned(), "c".to_owned()].into());
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), ["b".to_owned()].into()),
        ("b".to_owned(), ["c".to_owned()].into()),
        ("c".to_owned(), ["a".to_owned()].into()),
    ]
    .into();
    assert_eq!(cycles(&graph), vec![known.clone()]);
}

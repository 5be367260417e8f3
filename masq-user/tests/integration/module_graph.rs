//! masq-user's structure, checked from its sources: the modules depend on each other as a tree
//! (no cycle), and only `pinned` opens, reads or writes the dataplane's maps, for the daemon,
//! the CLI and the metrics alike. Test code and the lab-only modules (the lab and the bench,
//! built only with feature `lab`) are left out.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Built only with feature `lab`: they may use anything.
const LAB_ONLY: &[&str] = &["bench", "frames", "lab", "progkit", "tun_relay"];

/// What opens a map or reaches into the loaded object's maps.
const MAP_ACCESS: &[&str] =
    &["MapData::from_pin", "Map::from_map_data", ".map_mut(", ".maps_mut(", ".take_map("];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a source file belongs to: its first path component under src/.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The file's lines without comments and without items under `#[cfg(test)]`.
fn product_code(text: &str) -> Vec<&str> {
    let mut kept = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the next item: up to its closing brace, or its `;`.
            let mut depth = 0i32;
            for item in lines.by_ref() {
                depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
                if depth <= 0 && (item.contains('}') || item.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        kept.push(line);
    }
    kept
}

/// The top-level modules a piece of code names as `crate::x`, also inside `crate::{x, y::z}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        // `masq_user::crate::` cannot occur; skip `$crate::` of macros.
        if code[..at].ends_with('$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        found.insert(first_ident(&group[start..i]));
                        start = i + 1;
                        if c == '}' {
                            break;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
        } else {
            found.insert(first_ident(rest));
        }
    }
    found.remove("");
    found
}

fn first_ident(s: &str) -> String {
    s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

struct Tree {
    deps: BTreeMap<String, BTreeSet<String>>,
    map_access: Vec<String>,
}

fn read_tree() -> Tree {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut map_access = Vec::new();
    for file in files {
        let module = module_of(&src, &file);
        if LAB_ONLY.contains(&module.as_str()) || module == "bin" || file.ends_with("tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        let code = product_code(&text).join("\n");
        let mut used = crate_paths(&code);
        used.remove(&module);
        deps.entry(module.clone()).or_default().extend(used);
        if module != "pinned" {
            for pattern in MAP_ACCESS {
                if code.contains(pattern) {
                    map_access.push(format!("{}: {pattern}", file.display()));
                }
            }
        }
    }
    Tree { deps, map_access }
}

/// A cycle through the graph, if there is one.
fn find_cycle(deps: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in deps.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, deps, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    deps.keys().find_map(|node| visit(node, deps, &mut done, &mut Vec::new()))
}

#[test]
fn the_modules_depend_on_each_other_as_a_tree() {
    let tree = read_tree();
    for key in ["config", "pinned", "daemon", "inspect", "metrics", "main"] {
        assert!(tree.deps.contains_key(key), "module {key} not found: {:?}", tree.deps.keys());
    }
    assert!(tree.deps["daemon"].contains("pinned"), "the daemon's map writes go through pinned");
    assert!(tree.deps["config"].iter().all(|d| d == "host"), "config: {:?}", tree.deps["config"]);
    let graph: Vec<String> = tree.deps.iter().map(|(m, d)| format!("{m} -> {d:?}")).collect();
    if let Some(cycle) = find_cycle(&tree.deps) {
        panic!("module cycle {}\n{}", cycle.join(" -> "), graph.join("\n"));
    }
}

#[test]
fn only_pinned_opens_or_writes_the_maps() {
    let tree = read_tree();
    assert!(
        tree.map_access.is_empty(),
        "maps reached outside pinned.rs:\n{}",
        tree.map_access.join("\n")
    );
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    let code =
        "use crate::{\n    config::{A, B},\n    pinned,\n};\nlet x = crate::state::pid_file(p);";
    assert_eq!(crate_paths(code), BTreeSet::from(["config", "pinned", "state"].map(String::from)));
    let text = "use crate::a;\n// crate::doc\n#[cfg(test)]\nmod tests {\n    use crate::b;\n}\nfn f() { crate::c::g() }";
    let code = product_code(text).join("\n");
    assert_eq!(crate_paths(&code), BTreeSet::from(["a", "c"].map(String::from)));
    let deps = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(find_cycle(&deps), Some(vec!["a".into(), "b".into(), "a".into()]));
}

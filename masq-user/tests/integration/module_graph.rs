//! The workspace's structure, checked from its sources: masq-user's modules depend on each other
//! as a tree (no cycle), and only `pinned` opens, reads or writes the dataplane's maps, for the
//! daemon, the CLI and the metrics alike (test code and the lab-only modules, built only with
//! feature `lab`, left out); every file's imports come in three groups, std, other crates, this
//! crate (what stable rustfmt cannot enforce).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Built only with feature `lab`: they may use anything.
const LAB_ONLY: &[&str] = &["bench", "frames", "lab", "progkit", "seed", "tun_relay"];

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

/// Import groups in order: std, other crates (the workspace's own included), this crate.
fn import_group(path: &str, child_modules: &BTreeSet<String>) -> u8 {
    let first = first_ident(path);
    match first.as_str() {
        "std" | "core" | "alloc" => 0,
        "crate" | "super" | "self" => 2,
        m if child_modules.contains(m) => 2,
        _ => 1,
    }
}

/// Where a file's leading imports break the grouping: out of order, two groups with no blank
/// line between them, or a blank line inside a group.
fn import_faults(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let child_modules: BTreeSet<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("pub mod ").or_else(|| l.strip_prefix("mod ")))
        .map(first_ident)
        .collect();
    let mut faults = Vec::new();
    let (mut last, mut blank) = (None::<u8>, false);
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let path = line.strip_prefix("pub use ").or_else(|| line.strip_prefix("use "));
        if let Some(path) = path {
            let group = import_group(path, &child_modules);
            match last {
                Some(prev) if group < prev => faults.push(format!("line {}: out of order", i + 1)),
                Some(prev) if group > prev && !blank => {
                    faults.push(format!("line {}: no blank line before this group", i + 1))
                }
                Some(prev) if group == prev && blank => {
                    faults.push(format!("line {}: blank line inside a group", i + 1))
                }
                _ => {}
            }
            last = Some(group);
            blank = false;
            while !lines[i].trim_end().ends_with(';') && i + 1 < lines.len() {
                i += 1;
            }
        } else if line.trim().is_empty() {
            blank = true;
        } else if last.is_some()
            && !(line.starts_with("#[") || line.starts_with("//") || line.starts_with("mod "))
        {
            break;
        }
        i += 1;
    }
    faults
}

#[test]
fn imports_come_in_three_groups_std_other_crates_this_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in ["masq-user/src", "masq-user/tests", "masq-common/src", "masq-ebpf/src", "xtask/src"]
    {
        sources(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "sources found: {}", files.len());
    let faults: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = fs::read_to_string(f).unwrap();
            let rel = f.strip_prefix(root).unwrap().display().to_string();
            import_faults(&text).into_iter().map(move |fault| format!("{rel}: {fault}"))
        })
        .collect();
    assert!(
        faults.is_empty(),
        "imports not grouped std / other crates / this crate:\n{}",
        faults.join("\n")
    );
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    let grouped = "mod a;\n\nuse std::fs;\n\nuse aya::{\n    Ebpf,\n};\nuse tokio::x;\n\nuse a::b;\nuse crate::c;\n";
    assert!(import_faults(grouped).is_empty(), "{:?}", import_faults(grouped));
    assert_eq!(import_faults("use crate::c;\nuse std::fs;\n").len(), 1);
    assert_eq!(import_faults("use std::fs;\nuse aya::x;\n").len(), 1);
    assert_eq!(import_faults("use aya::x;\n\nuse tokio::y;\n").len(), 1);
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

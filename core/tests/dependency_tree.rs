//! Architecture invariant: the core is IO-free. If tokio, hyper, mio or
//! fastwebsockets ever enter its dependency tree, this test fails.
//!
//! Reads the workspace's committed Cargo.lock (no network, no cargo call) and
//! walks hubbub-core's dependencies transitively.

use std::collections::{BTreeMap, BTreeSet};

const FORBIDDEN: &[&str] = &[
    "tokio",
    "hyper",
    "mio",
    "fastwebsockets",
    "socket2",
    "rand",
    "getrandom",
];

fn lock_packages() -> BTreeMap<String, Vec<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");
    let lock =
        std::fs::read_to_string(path).expect("Cargo.lock is committed at the workspace root");
    let mut packages = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let mut name = None;
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in block.lines().map(str::trim) {
            if let Some(v) = line.strip_prefix("name = ") {
                name = Some(v.trim_matches('"').to_owned());
            } else if line.starts_with("dependencies = [") {
                in_deps = true;
            } else if in_deps && line.starts_with(']') {
                in_deps = false;
            } else if in_deps {
                // `"name"` or `"name version"` or `"name version (source)"`
                let dep = line.trim_matches(|c| c == '"' || c == ',');
                deps.push(dep.split(' ').next().unwrap_or(dep).to_owned());
            }
        }
        if let Some(name) = name {
            packages.entry(name).or_insert_with(Vec::new).extend(deps);
        }
    }
    packages
}

#[test]
fn core_depends_on_no_io_runtime() {
    let packages = lock_packages();
    let mut seen = BTreeSet::new();
    let mut stack = vec!["hubbub-core".to_owned()];
    while let Some(pkg) = stack.pop() {
        if !seen.insert(pkg.clone()) {
            continue;
        }
        if let Some(deps) = packages.get(&pkg) {
            stack.extend(deps.iter().cloned());
        }
    }
    assert!(
        seen.contains("serde_json"),
        "the walk found core's real dependencies: {seen:?}"
    );
    let bad: Vec<_> = seen
        .iter()
        .filter(|p| FORBIDDEN.contains(&p.as_str()))
        .collect();
    assert!(
        bad.is_empty(),
        "hubbub-core must stay IO-free, but depends on {bad:?}"
    );
}

#[test]
fn the_lock_walk_would_notice_a_forbidden_crate() {
    // The transport does depend on tokio: the same walk from it must find it,
    // or the test above could pass vacuously.
    let packages = lock_packages();
    let mut seen = BTreeSet::new();
    let mut stack = vec!["hubbub".to_owned()];
    while let Some(pkg) = stack.pop() {
        if seen.insert(pkg.clone()) {
            stack.extend(packages.get(&pkg).into_iter().flatten().cloned());
        }
    }
    assert!(seen.contains("tokio") && seen.contains("fastwebsockets"));
}

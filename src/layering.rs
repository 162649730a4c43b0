//! The crate's module layering, checked by a test (in the spirit of rust-analyzer's "tidy" tests):
//! every `crate::X` path (and `super::` path that leaves its top-level module) in `src/` must point
//! to a module in a strictly lower layer of [`LAYERS`]. Two modules of one layer may not use each
//! other, so no pair of modules imports each other and there is no cycle of any length.
//!
//! The compiler accepts cycles between modules of one crate; this test is what makes a cycle (or
//! a front end reaching into the FFI layer) fail `cargo test`. A new top-level module must be
//! placed in [`LAYERS`] before the test passes, so its place is a decision, not an accident.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules of `src/`, top layer first. A module may use only modules of later layers.
const LAYERS: &[&[&str]] = &[
    // The fuzz targets' entry points (`fuzz/`, `tests/fuzz_corpora.rs`): they drive the decoders
    // of every layer below; nothing in the crate uses them.
    &["fuzzing"],
    // The composition root: configuration, the OpenVINO runtime, shards and listeners.
    &["server"],
    // The OpenVINO engine: implements `shard::engine::Engine` for compiled models (the only
    // module that calls OpenVINO). Above every front end, so none of them can name it.
    &["ov"],
    // Front ends over the shards: gRPC method dispatch, the REST URL table and its JSON.
    &["service", "rest"],
    // Protocols: the gRPC transport (knows no TF-Serving or KServe), the TF-Serving and KServe
    // protobuf front ends.
    &["grpc", "tfs", "kserve"],
    // Sequences, routing, the mesh and the step logic; protocol-free.
    &["shard"],
    &["metrics"],
    &["catalog", "snapshot"],
    // Protocol-neutral pieces shared by every front end.
    &["sequence", "signature"],
    // `tune` (the `seqcore tune` subcommand) judges the machine for the shard CPUs the server's
    // placement plan picks, so it sits above `plan`; nothing in the server uses it.
    &["tune"],
    // The placement plan: shard -> CPU, a pure function of `topology`'s `Machine` and the flags
    // of `config`; the server runs on it, the shards carry its JSON only (not this module).
    &["plan"],
    // `tls`: certificate material and the per-shard TLS acceptors both protocols use.
    &["request", "error", "proto", "sched", "topology", "tls"],
    &["log"],
    &["config"],
    // Wire status vocabularies (gRPC codes, HTTP statuses) shared by `error` and the protocols.
    &["status"],
];

/// Uses that break the layering on purpose, each with its reason. Keep this list short.
const EXCEPTIONS: &[(&str, &str, &str)] = &[];
/// One use of another top-level module: where, and which module.
#[derive(Debug)]
struct Use {
    file: String,
    line: usize,
    from: String,
    to: String,
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer_of: BTreeMap<&str, usize> =
        LAYERS.iter().enumerate().flat_map(|(i, l)| l.iter().map(move |m| (*m, i))).collect();

    let mut errors = Vec::new();
    let mut modules = Vec::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap_or(&file);
        let Some(path) = module_path(rel) else { continue };
        if path[0] == "layering" {
            continue; // this test, not part of the crate's layering
        }
        let top = path[0].clone();
        if !modules.contains(&top) {
            modules.push(top.clone());
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let shown = format!("src/{}", rel.display());
        for u in uses(&shown, &path, &strip_comments_and_strings(&text)) {
            if u.to == u.from || EXCEPTIONS.iter().any(|&(f, a, b)| f == u.file && a == u.from && b == u.to) {
                continue;
            }
            match (layer_of.get(u.from.as_str()), layer_of.get(u.to.as_str())) {
                (Some(a), Some(b)) if a < b => {}
                (Some(_), Some(_)) => errors.push(format!(
                    "{}:{}: `{}` uses `crate::{}`, which is not in a lower layer (see LAYERS in src/layering.rs)",
                    u.file, u.line, u.from, u.to
                )),
                _ => {} // an unplaced module is reported below
            }
        }
    }
    for m in &modules {
        if !layer_of.contains_key(m.as_str()) {
            errors.push(format!("module `{m}` is not placed in LAYERS (src/layering.rs)"));
        }
    }
    for m in layer_of.keys() {
        if !modules.iter().any(|x| x == m) {
            errors.push(format!("LAYERS names `{m}`, which is not a module of src/"));
        }
    }
    assert!(errors.is_empty(), "layering violations:\n{}", errors.join("\n"));
}

/// The checker itself: a cycle, a grouped use, `super::` out of a module and a path in a
/// comment or string.
#[test]
fn the_checker_sees_what_it_must() {
    let text = strip_comments_and_strings(
        "use crate::{error::Kind, ov::PortInfo};\n\
         // use crate::rest::x;\n\
         let s = \"crate::tfs::x\";\n\
         fn f() -> crate::kserve::Echo { todo!() }\n\
         use super::catalog::Catalog;\n\
         mod tests { use super::*; }\n\
         crate::log!(Info, \"x\");\n",
    );
    let found: Vec<(String, usize)> =
        uses("src/x.rs", &["x".to_string()], &text).into_iter().map(|u| (u.to, u.line)).collect();
    let expect = [("error", 1), ("ov", 1), ("kserve", 4), ("catalog", 5), ("log", 7)];
    let expect: Vec<(String, usize)> = expect.iter().map(|&(m, l)| (m.to_string(), l)).collect();
    assert_eq!(found, expect);
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// The module path of a file under `src/` (`rest/tfs.rs` → `[rest, tfs]`, `rest/mod.rs` →
/// `[rest]`); `None` for the crate roots (`lib.rs` declares modules; `main.rs` is another crate).
fn module_path(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    Some(parts)
}

/// Every reference to another top-level module in `text` (already stripped of comments and
/// strings): `crate::X`, `$crate::X`, each item of `crate::{X, Y}`, and `super::` paths that
/// leave the file's top-level module (inline `mod m { ... }` blocks are followed, so a test
/// module's `use super::*` stays where it is).
fn uses(file: &str, path: &[String], text: &str) -> Vec<Use> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut line = 1;
    let mut depth = 0usize;
    // Inline modules open at the current position: (name, brace depth inside them).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
        }
        if c == b'{' {
            depth += 1;
            if let Some(m) = pending_mod.take() {
                inline.push((m, depth));
            }
        } else if c == b'}' {
            if inline.last().is_some_and(|&(_, d)| d == depth) {
                inline.pop();
            }
            depth = depth.saturating_sub(1);
        } else if c == b';' {
            pending_mod = None; // `mod m;` declares a file module, not an inline one
        }
        if !is_ident_start(c) || (i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let word = ident_at(b, i);
        let after = i + word.len();
        if word == "mod" {
            let j = skip_ws(b, after);
            if j < b.len() && is_ident_start(b[j]) {
                pending_mod = Some(ident_at(b, j).to_string());
            }
        } else if (word == "crate" || word == "super") && b[after..].starts_with(b"::") {
            // Resolve the path's first segments to an absolute module path.
            let mut here: Vec<String> = path.to_vec();
            here.extend(inline.iter().map(|(m, _)| m.clone()));
            let mut j = after;
            if word == "crate" {
                here.clear();
            } else {
                here.pop();
                while b[j..].starts_with(b"::super") && !b.get(j + 7).copied().is_some_and(is_ident) {
                    here.pop();
                    j += 7;
                }
            }
            j += 2;
            let mut targets = Vec::new();
            if !here.is_empty() {
                targets.push(here[0].clone());
            } else if b.get(j) == Some(&b'{') {
                targets.extend(group_heads(b, j));
            } else if b.get(j).copied().is_some_and(is_ident_start) {
                targets.push(ident_at(b, j).to_string());
            }
            for to in targets {
                if to != "self" && to != "*" && to != path[0] {
                    out.push(Use { file: file.to_string(), line, from: path[0].clone(), to });
                }
            }
        }
        i = after;
    }
    out
}

/// The first identifier of each item of the group that opens at `b[open] == '{'`.
fn group_heads(b: &[u8], open: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (k, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'{' => {
                depth += 1;
                expect_head = depth == 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => expect_head = true,
            _ if expect_head && depth == 1 && is_ident_start(c) => {
                out.push(ident_at(b, k).to_string());
                expect_head = false;
            }
            _ => {}
        }
    }
    out
}

/// `text` with comments and the contents of string and char literals blanked out (newlines are
/// kept, so line numbers stay right).
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |c: u8| if c == b'\n' { b'\n' } else { b' ' };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut nest = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    nest += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    nest -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if nest == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if (rest.starts_with(b"r#") || rest.starts_with(b"r\"")) && (i == 0 || !is_ident(b[i - 1])) {
            // Raw string: r"..." or r#"..."#, with as many #s at the end as at the start.
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            if rest.get(1 + hashes) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let close = format!("\"{}", "#".repeat(hashes)).into_bytes();
            let start = i + 2 + hashes;
            let end =
                b[start..].windows(close.len()).position(|w| w == close.as_slice()).map_or(b.len(), |p| start + p);
            out.extend(b[i..start].iter().map(|&c| blank(c)));
            out.extend(b[start..end].iter().map(|&c| blank(c)));
            let stop = (end + close.len()).min(b.len());
            out.extend(b[end..stop].iter().map(|&c| blank(c)));
            i = stop;
        } else if b[i] == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    out.push(b' ');
                    i += 1;
                }
                out.push(blank(b[i]));
                i += 1;
            }
            if i < b.len() {
                out.push(b' ');
                i += 1;
            }
        } else if b[i] == b'\'' && (rest.get(2) == Some(&b'\'') || rest.get(1) == Some(&b'\\')) {
            // A char literal ('x' or '\n', '\''), not a lifetime.
            out.push(b' ');
            i += 1;
            if b[i] == b'\\' {
                out.push(b' ');
                i += 1;
            }
            while i < b.len() && b[i] != b'\'' {
                out.push(b' ');
                i += 1;
            }
            if i < b.len() {
                out.push(b' ');
                i += 1;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b'*'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn ident_at(b: &[u8], i: usize) -> &str {
    if b[i] == b'*' {
        return "*";
    }
    let end = b[i..].iter().position(|&c| !is_ident(c)).map_or(b.len(), |p| i + p);
    std::str::from_utf8(&b[i..end]).unwrap_or("")
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

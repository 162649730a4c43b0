//! Replays every fuzz corpus (`fuzz/corpus/<target>/*`: the seeds, what fuzzing kept, and every
//! input that once failed, named after its fix) through the same `seqcore::fuzzing` entry point
//! the fuzz target calls, so `make test` checks the targets' invariants (agreement of the
//! Predict paths, no panic, accepted requests fit their model, encodings round-trip) on all of
//! them without cargo-fuzz, nightly features or libFuzzer. See docs/fuzzing.md.

use std::path::Path;

#[test]
fn every_corpus_replays_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failures = Vec::new();
    for (target, run) in seqcore::fuzzing::TARGETS {
        let source = root.join(format!("../fuzz_targets/{target}.rs"));
        assert!(source.is_file(), "fuzz target {target} has no {}", source.display());
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "the corpus of fuzz target {target} ({}) is empty", dir.display());
        for file in &files {
            let data = std::fs::read(file).unwrap();
            // One panic must not hide the others: each input is run on its own.
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failures.push(file.display().to_string());
            }
        }
        eprintln!("fuzz corpus {target}: {} inputs", files.len());
    }
    // Every corpus directory is a target: a directory without one is a corpus nobody replays.
    for entry in std::fs::read_dir(&root).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(seqcore::fuzzing::TARGETS.iter().any(|(t, _)| *t == name), "fuzz/corpus/{name} is no target");
    }
    assert!(failures.is_empty(), "inputs that fail their fuzz target's invariants:\n{}", failures.join("\n"));
}

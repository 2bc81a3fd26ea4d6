//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) and crash regression
//! (`fuzz/regressions/<target>/`) through the same property functions the `cargo fuzz` targets run, so a
//! fixed crash stays fixed on every `cargo test`, without nightly or libFuzzer. See FUZZING.md.

use std::path::{Path, PathBuf};

use gatehouse::fuzzing;

// The fuzz targets run on the same allocator, so the allocation bound is checked here too.
#[global_allocator]
static ALLOC: fuzzing::CountingAlloc = fuzzing::CountingAlloc;

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs one target over its corpus and regressions; returns how many inputs it replayed.
fn replay(target: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let run = fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, run)| *run)
        .unwrap_or_else(|| panic!("no fuzzing function for {target}"));
    let mut count = 0;
    for kind in ["corpus", "regressions"] {
        for path in files(&root.join(kind).join(target)) {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} violates a property", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn every_target_has_a_corpus_directory_and_a_fuzz_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, _) in fuzzing::TARGETS {
        assert!(
            !files(&root.join("corpus").join(target)).is_empty(),
            "fuzz/corpus/{target} is empty"
        );
        assert!(
            root.join("fuzz_targets")
                .join(format!("{target}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{target}.rs is missing"
        );
    }
}

#[test]
fn tm20_frame_corpus_holds_its_properties() {
    assert!(replay("tm20_frame") > 0);
}

#[test]
fn tm20_command_corpus_holds_its_properties() {
    assert!(replay("tm20_command") > 0);
}

#[test]
fn ocpp_frame_corpus_holds_its_properties() {
    assert!(replay("ocpp_frame") > 0);
}

#[test]
fn ocpp_message_corpus_holds_its_properties() {
    assert!(replay("ocpp_message") > 0);
}

#[test]
fn ocpp_action_corpus_holds_its_properties() {
    assert!(replay("ocpp_action") > 0);
}

#[test]
fn sxdm_envelope_corpus_holds_its_properties() {
    assert!(replay("sxdm_envelope") > 0);
}

#[test]
fn events_op_corpus_holds_its_properties() {
    assert!(replay("events_op") > 0);
}

#[test]
fn ws_frames_corpus_holds_its_properties() {
    assert!(replay("ws_frames") > 0);
}

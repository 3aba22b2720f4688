//! Replays the checked-in fuzz corpus on stable, so CI covers the fuzz targets without
//! nightly. `SLUICE_WRITE_CORPUS=1` regenerates the seed inputs.

use std::fs;
use std::path::PathBuf;

use sluice_storage::{BatchBuilder, Compression, batch::NewRecord};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| fs::read(p).expect("corpus file"))
        .collect()
}

/// Seed inputs: valid batches with each codec, a tail-torn log, and junk.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, codec) in [
        ("none", Compression::None),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let mut b = BatchBuilder::new(codec);
        for i in 0..20u8 {
            b.push(NewRecord {
                key: Some(&[i % 3]),
                value: (i % 5 != 0).then_some(&[i; 30][..]),
                timestamp: i64::from(i),
                headers: &[(b"h", Some(b"v"))],
            });
        }
        out.push((format!("batch-{name}"), b.build().expect("batch").to_vec()));
    }
    let one = out[0].1.clone();
    let mut log = [one.clone(), one.clone()].concat();
    log.truncate(log.len() - 7);
    out.push(("torn-log".into(), log));
    out.push(("zeros".into(), vec![0; 200]));
    out.push(("junk".into(), (0..=255u8).collect()));
    out
}

#[test]
fn fuzz_corpus_replays_without_panics() {
    if std::env::var_os("SLUICE_WRITE_CORPUS").is_some() {
        for target in ["decode_batch", "recover_segment", "validate_batch"] {
            fs::create_dir_all(corpus_dir(target)).expect("mkdir");
            for (name, bytes) in seeds() {
                fs::write(corpus_dir(target).join(name), bytes).expect("write seed");
            }
        }
    }
    let decode = inputs("decode_batch");
    let recover = inputs("recover_segment");
    let validate = inputs("validate_batch");
    assert!(
        decode.len() >= 6 && recover.len() >= 6 && validate.len() >= 6,
        "corpus is checked in"
    );
    validate
        .iter()
        .for_each(|input| sluice_storage::fuzzing::validate_batch(input));
    decode
        .iter()
        .for_each(|input| sluice_storage::fuzzing::decode_batch(input));
    recover
        .iter()
        .for_each(|input| sluice_storage::fuzzing::recover_segment(input));
}

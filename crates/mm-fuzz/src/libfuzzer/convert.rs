//! libFuzzer's files in the scenario format and back: a crash artifact as a reproducer `vmm
//! replay` runs, a libFuzzer corpus as `vmm fuzz --corpus` entries, and those entries as a
//! libFuzzer corpus. Both directories are input from other processes: every file is read with
//! a size cap, and one that cannot be read is skipped and reported, never fatal.
#![forbid(unsafe_code)]

use super::{input, settings};
use crate::corpus::{fnv1a, CorpusDir, Entry, Reader, MAX_ENTRY_BYTES};
use crate::repro::Reproducer;
use bounded_io::files::{read_capped, write_output, FileError, Naming};
use mm_scenario::file::MAX_FILE_BYTES;
use shared_mm::abi::MAX_BATCH;
use std::path::{Path, PathBuf};

/// Prefixes of the files libFuzzer writes when an input fails, before the SHA-1 of the input.
const ARTIFACT_PREFIXES: [&str; 6] = [
    "crash-",
    "leak-",
    "timeout-",
    "oom-",
    "slow-unit-",
    "minimized-from-",
];

/// Whether `path` has a name libFuzzer gives its files: a crash (or other) artifact, or a
/// corpus entry, named by the input's SHA-1 in hex.
pub fn is_libfuzzer_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let hash = ARTIFACT_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    hash.len() == 40 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The input at `path` as a reproducer: its operations, and the target's settings in the
/// header (the seeded bugs are the command line's to give). Read up to the cap of scenario
/// files.
pub fn load_input(path: &Path) -> Result<Reproducer, FileError> {
    let bytes = read_capped(path, MAX_FILE_BYTES)?;
    Ok(Reproducer {
        header: settings(&[]),
        ops: input::decode(&bytes),
    })
}

/// What a conversion did.
#[derive(Debug, Default)]
pub struct Converted {
    /// Files read.
    pub read: usize,
    /// Files written (a libFuzzer input longer than a batch becomes several entries).
    pub written: usize,
    /// Files skipped, and why.
    pub skipped: Vec<(PathBuf, FileError)>,
}

/// The regular files of `dir` whose names do not start with `.` (temporaries), in name order.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    let io = |source| FileError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        if !name.to_string_lossy().starts_with('.') {
            names.push(dir.join(name));
        }
    }
    names.sort();
    Ok(names)
}

/// Writes every libFuzzer input in `inputs` into `entries` as `vmm fuzz --corpus` entries: its
/// operations, a batch of at most [`MAX_BATCH`] each. Inputs larger than an entry file may be
/// are skipped.
pub fn to_entries(inputs: &Path, entries: &Path) -> Result<Converted, FileError> {
    let out = CorpusDir::open(entries)?;
    let mut converted = Converted::default();
    for path in files_in(inputs)? {
        let bytes = match read_capped(&path, MAX_ENTRY_BYTES) {
            Ok(bytes) => bytes,
            Err(e) => {
                converted.skipped.push((path, e));
                continue;
            }
        };
        converted.read += 1;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let header = [("converted-from".into(), format!("libFuzzer input {name}"))];
        for ops in input::decode(&bytes).chunks(MAX_BATCH) {
            let entry = Entry {
                ops: ops.to_vec(),
                new_edges: None,
            };
            out.save(&header, &entry)?;
            converted.written += 1;
        }
    }
    Ok(converted)
}

/// Writes every `vmm fuzz --corpus` entry in `entries` into `inputs` as a libFuzzer input that
/// decodes to its operations, named by their hash. Entries that do not parse are skipped, with
/// a warning each.
pub fn to_inputs(entries: &Path, inputs: &Path) -> Result<Converted, FileError> {
    // Opening a missing directory would create it: an input directory must exist.
    files_in(entries)?;
    let dir = CorpusDir::open(entries)?;
    std::fs::create_dir_all(inputs).map_err(|source| FileError::Io {
        path: inputs.to_path_buf(),
        source,
    })?;
    let mut converted = Converted::default();
    for (entry, _) in Reader::default().scan(&dir)? {
        converted.read += 1;
        let bytes = input::encode(&entry.ops);
        let path = inputs.join(format!("{:016x}", fnv1a(&bytes)));
        write_output(&path, &bytes, Naming::Chosen)?;
        converted.written += 1;
    }
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::abi::Op;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mm-fuzz-convert-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn libfuzzer_names_are_recognised() {
        let sha = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
        for name in [
            format!("crash-{sha}"),
            format!("timeout-{sha}"),
            format!("slow-unit-{sha}"),
            sha.to_string(),
        ] {
            assert!(is_libfuzzer_name(&Path::new("fuzz/artifacts").join(name)));
        }
        for name in ["crash-1234", "repro-seed1-1.txt", "crash-", "x.scn"] {
            assert!(!is_libfuzzer_name(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn a_corpus_converts_both_ways_with_its_operations() {
        let (entries, inputs, back) = (scratch("entries"), scratch("inputs"), scratch("back"));
        let dir = CorpusDir::open(&entries).unwrap();
        let batches = [
            vec![
                Op::CreateSpace,
                Op::TouchWrite {
                    space: 1,
                    addr: 0x1234_5678_9000,
                    value: u64::MAX,
                },
            ],
            vec![Op::Fork { space: 7 }],
        ];
        for ops in &batches {
            let entry = Entry {
                ops: ops.clone(),
                new_edges: None,
            };
            dir.save(&[], &entry).unwrap();
        }
        std::fs::write(entries.join("broken.scn"), "frobnicate\n").unwrap();
        let there = to_inputs(&entries, &inputs).unwrap();
        assert_eq!((there.read, there.written), (2, 2));
        // A libFuzzer input of its own, longer than a batch, and one too large to be an entry.
        let long = vec![0u8; 4 * (MAX_BATCH + 3)];
        std::fs::write(inputs.join("long"), &long).unwrap();
        let huge = vec![0u8; MAX_ENTRY_BYTES as usize + 1];
        std::fs::write(inputs.join("huge"), huge).unwrap();
        let back_again = to_entries(&inputs, &back).unwrap();
        let decoded = input::decode(&long);
        let long_entries = decoded.len().div_ceil(MAX_BATCH);
        assert!(long_entries > 1);
        assert_eq!(back_again.read, 3);
        assert_eq!(back_again.written, 2 + long_entries);
        assert_eq!(back_again.skipped.len(), 1);
        let mut found: Vec<Vec<Op>> = Reader::default()
            .scan(&CorpusDir::open(&back).unwrap())
            .unwrap()
            .into_iter()
            .map(|(entry, _)| entry.ops)
            .collect();
        let mut expected = batches.to_vec();
        expected.extend(decoded.chunks(MAX_BATCH).map(<[Op]>::to_vec));
        // Entries are named by their operations: the long input's equal batches are one file.
        for all in [&mut found, &mut expected] {
            all.sort_by_key(|ops| format!("{ops:?}"));
            all.dedup();
        }
        let lengths = |all: &[Vec<Op>]| all.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(lengths(&found), lengths(&expected));
        assert!(found == expected, "the entries differ");
        assert!(to_inputs(&scratch("missing"), &inputs).is_err());
        for dir in [entries, inputs, back] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

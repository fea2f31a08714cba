//! The fuzz corpus on disk: batches that reached new guest edges, one scenario file each, named
//! by a hash of its operations, in a directory that any number of campaigns share.
//!
//! The convention is libFuzzer's and AFL's sync directory: every campaign writes its own finds
//! into the directory and now and then reads what the others wrote. Files are written to a
//! temporary name and renamed ([`write_output`]), so a reader sees a whole entry or none;
//! a file whose name starts with `.` is such a temporary and is skipped. The directory is
//! input from other processes, maybe other machines: every file is read with a size cap, and
//! only if it is a regular file; one that is not, or does not parse, is skipped with a
//! warning, never fatal.

use bounded_io::files::{read_capped, write_output, FileError, Naming};
use mm_scenario::format::{Scenario, Step};
use shared_mm::abi::{Op, MAX_BATCH};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The comment an entry starts with.
const TITLE: &str = "vmm fuzz corpus entry: a batch that reached new guest edges";
/// Entries end in this; other files in the directory are left alone.
const EXTENSION: &str = "scn";
/// The largest entry file read: a full batch of 1024 operations is about 80 KiB.
pub const MAX_ENTRY_BYTES: u64 = 1 << 20;
/// The most entries one job takes from the directory; more are left unread.
pub const MAX_ENTRIES: usize = 10_000;

/// FNV-1a, 64 bits: a hash that stays the same on every machine and Rust version, so that two
/// campaigns that find the same batch write the same file.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Header key: how many counters the kernel that found the entry has.
const COUNTERS_KEY: &str = "counters";
/// Header key: the edges (counter indices) the entry reached first, as `3,17-20,96`.
const EDGES_KEY: &str = "new-edges";

/// The edges a batch reached first, as runs of consecutive counter indices: as compact as the
/// header line it comes from, however many edges it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEdges {
    /// The counters of the kernel they were found on.
    pub counters: usize,
    /// `(first, last)`, in increasing order, not touching, each below `counters`.
    runs: Vec<(usize, usize)>,
}

impl NewEdges {
    /// `edges` (sorted, distinct) of a kernel with `counters` counters.
    pub fn new(counters: usize, edges: &[usize]) -> NewEdges {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &edge in edges {
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == edge => *last = edge,
                _ => runs.push((edge, edge)),
            }
        }
        NewEdges { counters, runs }
    }

    /// The edges, in order.
    pub fn edges(&self) -> impl Iterator<Item = usize> + '_ {
        self.runs.iter().flat_map(|&(first, last)| first..=last)
    }

    /// The runs as text: `3,17-20,96`.
    fn text(&self) -> String {
        let run = |&(first, last): &(usize, usize)| match last - first {
            0 => first.to_string(),
            _ => format!("{first}-{last}"),
        };
        self.runs.iter().map(run).collect::<Vec<_>>().join(",")
    }

    /// Parses [`NewEdges::text`]; `None` unless every run is in order, apart from the one
    /// before it and below `counters` (so a file cannot name an edge twice, or one the kernel
    /// has not got, and the edges it names are at most `counters`).
    fn parse(text: &str, counters: usize) -> Option<NewEdges> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for run in text.split(',').filter(|r| !r.is_empty()) {
            let (first, last) = run.split_once('-').unwrap_or((run, run));
            let (first, last): (usize, usize) =
                (first.trim().parse().ok()?, last.trim().parse().ok()?);
            let after_previous = runs.last().is_none_or(|&(_, end)| first > end + 1);
            if first > last || last >= counters || !after_previous {
                return None;
            }
            runs.push((first, last));
        }
        Some(NewEdges { counters, runs })
    }
}

/// A corpus entry: a batch, and the coverage it brought when it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ops: Vec<Op>,
    /// `None` for an entry found without coverage, or written by hand.
    pub new_edges: Option<NewEdges>,
}

impl Entry {
    /// The edges this entry brings to a kernel with `counters` counters: none unless it was
    /// found on a kernel with as many (the same build, as far as the file can tell).
    pub fn edges_for(&self, counters: usize) -> impl Iterator<Item = usize> + '_ {
        self.new_edges
            .iter()
            .filter(move |e| e.counters == counters)
            .flat_map(NewEdges::edges)
    }

    fn header(&self) -> Vec<(String, String)> {
        match &self.new_edges {
            Some(edges) => vec![
                (COUNTERS_KEY.into(), edges.counters.to_string()),
                (EDGES_KEY.into(), edges.text()),
            ],
            None => Vec::new(),
        }
    }

    fn from_scenario(scenario: &Scenario) -> Entry {
        let value = |key: &str| {
            scenario
                .header
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let counters = value(COUNTERS_KEY).and_then(|n| n.parse().ok());
        let new_edges = counters.and_then(|n| NewEdges::parse(value(EDGES_KEY)?, n));
        Entry {
            ops: scenario.steps().map(|s| s.op).collect(),
            new_edges,
        }
    }
}

/// The file name and text of `entry`, after the header lines `header`.
fn entry_text(header: &[(String, String)], entry: &Entry) -> (String, String) {
    let mut lines = header.to_vec();
    lines.extend(entry.header());
    let scenario = Scenario {
        header: lines,
        batches: vec![entry
            .ops
            .iter()
            .map(|&op| Step::new(op, None, ""))
            .collect()],
    };
    let body = Scenario {
        header: Vec::new(),
        ..scenario.clone()
    };
    let name = format!("{:016x}.{EXTENSION}", fnv1a(body.to_text("").as_bytes()));
    (name, scenario.to_text(TITLE))
}

/// Why one file of the directory was skipped.
#[derive(Debug)]
pub enum SkippedEntry {
    Unreadable(FileError),
    NotText,
    Malformed(mm_scenario::format::ParseError),
    /// No operations, or more than a batch holds.
    BadLength(usize),
}

impl fmt::Display for SkippedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkippedEntry::Unreadable(e) => write!(f, "{e}"),
            SkippedEntry::NotText => f.write_str("not UTF-8 text"),
            SkippedEntry::Malformed(e) => write!(f, "{e}"),
            SkippedEntry::BadLength(n) => {
                write!(f, "{n} operations (an entry holds 1 to {MAX_BATCH})")
            }
        }
    }
}

/// The entry file at `path`.
fn read_entry(path: &Path) -> Result<Entry, SkippedEntry> {
    let bytes = read_capped(path, MAX_ENTRY_BYTES).map_err(SkippedEntry::Unreadable)?;
    let text = String::from_utf8(bytes).map_err(|_| SkippedEntry::NotText)?;
    let scenario = Scenario::parse(&text).map_err(SkippedEntry::Malformed)?;
    let entry = Entry::from_scenario(&scenario);
    if entry.ops.is_empty() || entry.ops.len() > MAX_BATCH {
        return Err(SkippedEntry::BadLength(entry.ops.len()));
    }
    Ok(entry)
}

/// A corpus directory, shared by every job of a campaign (each job keeps its own [`Reader`]).
#[derive(Debug)]
pub struct CorpusDir {
    path: PathBuf,
    /// Files already warned about, so a bad file is reported once per process.
    warned: Mutex<HashSet<String>>,
    /// Names of the entries this process wrote.
    written: Mutex<HashSet<String>>,
}

impl CorpusDir {
    /// Opens `path`, creating it if needed.
    pub fn open(path: &Path) -> Result<CorpusDir, FileError> {
        std::fs::create_dir_all(path).map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(CorpusDir {
            path: path.to_path_buf(),
            warned: Mutex::new(HashSet::new()),
            written: Mutex::new(HashSet::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many entries this process wrote.
    pub fn saved(&self) -> usize {
        self.written().len()
    }

    /// Writes `entry`, after the `header` lines, unless the directory has it already; returns
    /// its file name.
    pub fn save(&self, header: &[(String, String)], entry: &Entry) -> Result<String, FileError> {
        let (name, text) = entry_text(header, entry);
        let path = self.path.join(&name);
        if !path.exists() {
            write_output(&path, text.as_bytes(), Naming::Chosen)?;
            self.written().insert(name.clone());
        }
        Ok(name)
    }

    fn warn(&self, name: &str, why: &SkippedEntry) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.insert(name.to_string()) {
            eprintln!(
                "vmm fuzz: corpus entry {} skipped: {why}",
                self.path.join(name).display()
            );
        }
    }
}

/// One job's view of a [`CorpusDir`]: which entries it has already taken.
#[derive(Debug, Default)]
pub struct Reader {
    known: HashSet<String>,
}

impl Reader {
    /// Marks an entry this job wrote (or found in memory) as taken.
    pub fn know(&mut self, name: String) {
        self.known.insert(name);
    }

    /// How many entries this job has taken or written.
    pub fn known(&self) -> usize {
        self.known.len()
    }

    /// The entries of `dir` this job has not taken yet, in name order (so every job and
    /// machine reads a directory in the same order), at most up to [`MAX_ENTRIES`] in all; and
    /// whether this process wrote each (another job of it did).
    pub fn scan(&mut self, dir: &CorpusDir) -> Result<Vec<(Entry, bool)>, FileError> {
        let io = |source| FileError::Io {
            path: dir.path.clone(),
            source,
        };
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&dir.path).map_err(io)? {
            let entry = entry.map_err(io)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let ours = !name.starts_with('.') && name.ends_with(&format!(".{EXTENSION}"));
            if ours && !self.known.contains(&name) {
                names.push(name);
            }
        }
        names.sort();
        let room = MAX_ENTRIES.saturating_sub(self.known.len());
        let mut entries = Vec::new();
        for name in names.into_iter().take(room) {
            match read_entry(&dir.path.join(&name)) {
                Ok(entry) => entries.push((entry, dir.written().contains(&name))),
                Err(why) => dir.warn(&name, &why),
            }
            self.known.insert(name);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-corpus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn entry(n: u64) -> Entry {
        Entry {
            ops: vec![
                Op::CreateSpace,
                Op::TouchRead {
                    space: 1,
                    addr: n * 0x1000,
                },
            ],
            new_edges: Some(NewEdges::new(100, &[1, 2, 3, 7, 9, 10])),
        }
    }

    fn entries(scanned: Vec<(Entry, bool)>) -> Vec<Vec<Op>> {
        let mut ops: Vec<Vec<Op>> = scanned.into_iter().map(|(e, _)| e.ops).collect();
        ops.sort_by_key(|ops| format!("{ops:?}"));
        ops
    }

    #[test]
    fn an_entry_is_a_scenario_named_by_the_hash_of_its_operations() {
        let dir = CorpusDir::open(&scratch("name")).unwrap();
        let header = [("seed".to_string(), "3".to_string())];
        let name = dir.save(&header, &entry(1)).unwrap();
        assert_eq!(name.len(), 16 + 4, "{name}");
        let text = std::fs::read_to_string(dir.path().join(&name)).unwrap();
        assert!(text.contains("# new-edges: 1-3,7,9-10\n"), "{text}");
        let parsed = Scenario::parse(&text).unwrap();
        assert_eq!(parsed.header[0], header[0]);
        assert_eq!(Entry::from_scenario(&parsed), entry(1));
        // The same operations under another header are the same entry, written once.
        let other = [("seed".to_string(), "4".to_string())];
        assert_eq!(dir.save(&other, &entry(1)).unwrap(), name);
        assert_ne!(dir.save(&header, &entry(2)).unwrap(), name);
        assert_eq!(dir.saved(), 2);
    }

    #[test]
    fn edges_count_only_for_a_kernel_with_as_many_counters() {
        let found = entry(1);
        assert_eq!(
            found.edges_for(100).collect::<Vec<_>>(),
            [1, 2, 3, 7, 9, 10]
        );
        assert_eq!(found.edges_for(101).count(), 0);
        let parsed = |text| NewEdges::parse(text, 5).map(|e| e.edges().collect::<Vec<_>>());
        assert_eq!(parsed(""), Some(vec![]));
        assert_eq!(parsed("0,2-4"), Some(vec![0, 2, 3, 4]));
        assert_eq!(parsed("5"), None, "past the counters");
        assert_eq!(parsed("3-1"), None);
        assert_eq!(parsed("1-2,2"), None, "named twice");
        assert_eq!(parsed("3,1"), None, "out of order");
        assert_eq!(parsed("x"), None);
        // A huge range costs no memory until it is used, and is refused past the counters.
        let claimed = NewEdges::parse("0-999999999999", usize::MAX).expect("parses");
        assert_eq!(claimed.runs.len(), 1);
        assert_eq!(NewEdges::parse("0-999999999999", 932), None);
        let hand_written = Scenario::parse("# counters: 9\n# new-edges: 1-99\ncreate-space\n");
        assert_eq!(Entry::from_scenario(&hand_written.unwrap()).new_edges, None);
    }

    #[test]
    fn a_reader_takes_each_entry_once_and_skips_what_is_not_one() {
        let path = scratch("scan");
        let writer = CorpusDir::open(&path).unwrap();
        let other_process = CorpusDir::open(&path).unwrap();
        let mut reader = Reader::default();
        assert!(reader.scan(&other_process).unwrap().is_empty());
        writer.save(&[], &entry(1)).unwrap();
        writer.save(&[], &entry(2)).unwrap();
        std::fs::write(path.join("bad.scn"), "frobnicate\n").unwrap();
        std::fs::write(path.join(".half-written.scn.tmp"), "create-space\n").unwrap();
        std::fs::write(path.join("README"), "not an entry").unwrap();
        let scanned = reader.scan(&other_process).unwrap();
        assert!(scanned.iter().all(|(_, ours)| !ours));
        assert_eq!(entries(scanned), [entry(1).ops, entry(2).ops]);
        assert!(
            reader.scan(&other_process).unwrap().is_empty(),
            "taken once"
        );
        writer.save(&[], &entry(3)).unwrap();
        assert_eq!(
            entries(reader.scan(&other_process).unwrap()),
            [entry(3).ops]
        );
        // Another job of the writer's own process sees the entry as its process's.
        let mut sibling = Reader::default();
        assert!(sibling.scan(&writer).unwrap().iter().all(|(_, ours)| *ours));
    }

    #[test]
    fn an_oversized_or_empty_entry_is_skipped() {
        let path = scratch("bounds");
        let dir = CorpusDir::open(&path).unwrap();
        std::fs::write(path.join("empty.scn"), "# seed: 1\n").unwrap();
        let huge = "create-space\n".repeat(MAX_BATCH + 1);
        std::fs::write(path.join("long.scn"), huge).unwrap();
        std::fs::write(
            path.join("big.scn"),
            vec![b'#'; MAX_ENTRY_BYTES as usize + 1],
        )
        .unwrap();
        assert!(Reader::default().scan(&dir).unwrap().is_empty());
        assert!(matches!(
            read_entry(&path.join("long.scn")),
            Err(SkippedEntry::BadLength(1025))
        ));
        assert!(matches!(
            read_entry(&path.join("big.scn")),
            Err(SkippedEntry::Unreadable(FileError::TooLarge { .. }))
        ));
    }
}

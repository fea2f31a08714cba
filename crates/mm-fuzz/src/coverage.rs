//! Edge coverage of a sanitizer-coverage guest: its counters, found in the kernel ELF with the
//! `object` crate, read and zeroed in guest memory per batch.
#![forbid(unsafe_code)]

use mm_driver::driver::DriverError;
use object::elf::PT_LOAD;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{FileKind, LittleEndian, Object, ObjectSymbol};
use std::fmt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const START_SYMBOL: &str = "__start___sancov_cntrs";
const STOP_SYMBOL: &str = "__stop___sancov_cntrs";

/// Why the coverage counters of a kernel ELF cannot be located.
#[derive(Debug, PartialEq, Eq)]
pub enum CoverageError {
    /// Not a 64-bit ELF file at all (short, or another format).
    NotElf64,
    /// A 64-bit ELF the `object` crate refuses: big-endian, or headers past the end of the file.
    Malformed(object::read::Error),
    /// The stop symbol lies below the start symbol.
    Reversed { start: u64, stop: u64 },
    /// No loadable segment holds the whole counter range in bytes of the file (so a crafted
    /// ELF cannot make the host allocate more counters than the file has bytes).
    OutsideSegments { vaddr: u64, len: u64 },
}

impl fmt::Display for CoverageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoverageError::NotElf64 => f.write_str("not a 64-bit ELF file"),
            CoverageError::Malformed(e) => write!(f, "malformed ELF: {e}"),
            CoverageError::Reversed { start, stop } => write!(
                f,
                "coverage counters end ({stop:#x}) before they start ({start:#x})"
            ),
            CoverageError::OutsideSegments { vaddr, len } => write!(
                f,
                "coverage counters at {vaddr:#x} (+{len:#x}) lie outside the file bytes of every loadable segment"
            ),
        }
    }
}

impl std::error::Error for CoverageError {}

/// The guest-physical address of `[vaddr, vaddr + len)`, through the loadable segment whose
/// bytes from the file hold it (the loader puts each segment at its physical address). The
/// counters start at zero in the file, and a range checked against the file's bytes is no
/// larger than the file: sizes a crafted ELF claims (a segment's memory size, a section's
/// size) never decide how much the host allocates.
fn physical(elf: &ElfFile64<'_, LittleEndian>, vaddr: u64, len: u64) -> Option<u64> {
    let endian = elf.endian();
    let file_len = elf.data().len() as u64;
    elf.elf_program_headers().iter().find_map(|ph| {
        let (seg_vaddr, filesz) = (ph.p_vaddr(endian), ph.p_filesz(endian));
        let in_file = ph
            .p_offset(endian)
            .checked_add(filesz)
            .is_some_and(|end| end <= file_len);
        let offset = vaddr.checked_sub(seg_vaddr)?;
        let inside = offset.checked_add(len).is_some_and(|end| end <= filesz);
        (ph.p_type(endian) == PT_LOAD && in_file && inside)
            .then(|| ph.p_paddr(endian).checked_add(offset))
            .flatten()
    })
}

/// Where a coverage guest keeps its per-edge counters in guest-physical memory.
///
/// A coverage build of the guest (`guest_image::variant::GuestVariant::with_coverage`) keeps one
/// 8-bit counter per control-flow edge between `__start___sancov_cntrs` and
/// `__stop___sancov_cntrs`. The guest only increments them; the host reads them while the guest is
/// paused (in [`mm_driver::driver::Driver::next_batch`]), merges them into a [`CoverageSet`] and
/// zeroes them for the next batch: one read and one write per batch. A booted guest does not keep
/// the kernel image, so find the counters in the ELF bytes it was booted from:
///
/// ```no_run
/// # fn demo(config: &mm_driver::GuestConfig, mem: &vm_memory::GuestMemoryMmap) -> Result<(), mm_driver::driver::DriverError> {
/// use mm_fuzz::coverage::{CoverageMap, CoverageSet};
/// let map = CoverageMap::from_elf(&config.kernel).expect("an ELF").expect("a coverage build");
/// let mut seen = CoverageSet::new();
/// // After each batch, with the guest paused:
/// let new_edges = seen.merge(&map.read(mem)?);
/// map.reset(mem)?;
/// # let _ = new_edges;
/// # Ok(())
/// # }
/// ```
///
/// The counters wrap at 256, so an edge hit a multiple of 256 times within one batch reads as 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoverageMap {
    start: GuestAddress,
    len: usize,
}

impl CoverageMap {
    /// Finds the counters of the kernel ELF `elf`: the one the guest was booted from, that is
    /// [`GuestConfig::kernel`](mm_driver::GuestConfig::kernel) (a booted guest does not keep the
    /// image). `Ok(None)` when the ELF has no
    /// symbol table or no (or an empty) `__sancov_cntrs` range, as in a normal build; an error
    /// when the ELF is malformed or the counters are not in a loadable segment.
    pub fn from_elf(elf: &[u8]) -> Result<Option<CoverageMap>, CoverageError> {
        if !matches!(FileKind::parse(elf), Ok(FileKind::Elf64)) {
            return Err(CoverageError::NotElf64);
        }
        let elf = ElfFile64::<LittleEndian>::parse(elf).map_err(CoverageError::Malformed)?;
        let address = |name| elf.symbol_by_name(name).map(|s| s.address());
        let (Some(start), Some(stop)) = (address(START_SYMBOL), address(STOP_SYMBOL)) else {
            return Ok(None);
        };
        let len = stop
            .checked_sub(start)
            .ok_or(CoverageError::Reversed { start, stop })?;
        let outside = CoverageError::OutsideSegments { vaddr: start, len };
        // A range larger than the host's address space cannot lie in a segment either.
        let Ok(count) = usize::try_from(len) else {
            return Err(outside);
        };
        if count == 0 {
            return Ok(None);
        }
        let phys = physical(&elf, start, len).ok_or(outside)?;
        Ok(Some(CoverageMap {
            start: GuestAddress(phys),
            len: count,
        }))
    }

    /// Guest-physical address of the first counter.
    pub fn start(&self) -> GuestAddress {
        self.start
    }

    /// Number of counters, one per instrumented edge.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: [`CoverageMap::from_elf`] gives `None` for an empty counter range.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The counters' current values (hits since the last [`CoverageMap::reset`], modulo 256).
    /// Call it while the guest is paused.
    pub fn read(&self, mem: &GuestMemoryMmap) -> Result<Vec<u8>, DriverError> {
        let mut counters = vec![0u8; self.len];
        mem.read_slice(&mut counters, self.start)
            .map_err(|e| DriverError::Coverage(format!("reading {}: {e}", self.len)))?;
        Ok(counters)
    }

    /// Zeroes the counters. Call it while the guest is paused.
    pub fn reset(&self, mem: &GuestMemoryMmap) -> Result<(), DriverError> {
        mem.write_slice(&vec![0u8; self.len], self.start)
            .map_err(|e| DriverError::Coverage(format!("zeroing {}: {e}", self.len)))
    }
}

/// The edges ever hit, one bit per counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoverageSet {
    hit: Vec<u64>,
    covered: usize,
}

impl CoverageSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the edges whose counter is nonzero; returns how many of them were new. The set grows
    /// to the longest `counters` merged, so merge counters of one kernel only.
    pub fn merge(&mut self, counters: &[u8]) -> usize {
        self.merge_edges(counters).len()
    }

    /// Like [`CoverageSet::merge`], but returns the new edges themselves, in order.
    pub fn merge_edges(&mut self, counters: &[u8]) -> Vec<usize> {
        let words = counters.len().div_ceil(64);
        if self.hit.len() < words {
            self.hit.resize(words, 0);
        }
        let mut new = Vec::new();
        for (w, (word, chunk)) in self.hit.iter_mut().zip(counters.chunks(64)).enumerate() {
            let mask = chunk
                .iter()
                .enumerate()
                .filter(|(_, &c)| c != 0)
                .fold(0u64, |m, (i, _)| m | 1 << i);
            let mut fresh = mask & !*word;
            while fresh != 0 {
                new.push(w * 64 + fresh.trailing_zeros() as usize);
                fresh &= fresh - 1;
            }
            *word |= mask;
        }
        self.covered += new.len();
        new
    }

    /// Adds one edge (a counter's index); returns whether it was new.
    pub fn insert(&mut self, edge: usize) -> bool {
        let (word, bit) = (edge / 64, 1u64 << (edge % 64));
        if self.hit.len() <= word {
            self.hit.resize(word + 1, 0);
        }
        let new = self.hit[word] & bit == 0;
        self.hit[word] |= bit;
        self.covered += usize::from(new);
        new
    }

    /// Number of distinct edges hit so far.
    pub fn covered(&self) -> usize {
        self.covered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::boot_info::KERNEL_VIRT_BASE;

    const EHDR_SIZE: usize = 64;
    const PHDR_SIZE: usize = 56;
    const SHDR_SIZE: usize = 64;
    const SYM_SIZE: usize = 24;
    const SHT_SYMTAB: u32 = 2;
    const SHT_STRTAB: u32 = 3;

    #[test]
    fn merge_counts_only_new_edges() {
        let mut set = CoverageSet::new();
        assert_eq!(set.merge(&[0, 3, 0, 1]), 2);
        assert_eq!(set.merge(&[0, 200, 0, 1]), 0);
        assert_eq!(set.merge(&[9, 0, 0, 0]), 1);
        assert_eq!(set.merge(&[0; 4]), 0);
        assert_eq!(set.covered(), 3);
    }

    #[test]
    fn merge_edges_names_the_new_edges_and_insert_adds_one() {
        let mut set = CoverageSet::new();
        let mut counters = vec![0u8; 130];
        counters[3] = 1;
        counters[64] = 9;
        counters[129] = 1;
        assert_eq!(set.merge_edges(&counters), [3, 64, 129]);
        assert!(set.insert(5) && !set.insert(5) && !set.insert(64));
        counters[5] = 1;
        counters[6] = 1;
        assert_eq!(set.merge_edges(&counters), [6]);
        assert!(set.insert(1000));
        assert_eq!(set.covered(), 6);
    }

    #[test]
    fn merge_spans_words_and_grows() {
        let mut set = CoverageSet::new();
        let mut counters = vec![0u8; 130];
        counters[63] = 1;
        counters[64] = 1;
        counters[129] = 255;
        assert_eq!(set.merge(&counters), 3);
        assert_eq!(set.merge(&counters[..64]), 0);
        let mut longer = vec![1u8; 200];
        longer[0] = 0;
        assert_eq!(set.merge(&longer), 199 - 3);
        assert_eq!(set.covered(), 199);
    }

    /// A minimal ELF64: one PT_LOAD segment at `KERNEL_VIRT_BASE + 0x200000` (physical
    /// 0x200000, the file's first 0x1000 bytes) and a symbol table with `symbols`.
    fn elf_with(symbols: &[(&[u8], u64)]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; SYM_SIZE];
        for (name, value) in symbols {
            let mut sym = [0u8; SYM_SIZE];
            sym[..4].copy_from_slice(&(strtab.len() as u32).to_le_bytes());
            sym[8..16].copy_from_slice(&value.to_le_bytes());
            symtab.extend_from_slice(&sym);
            strtab.extend_from_slice(name);
            strtab.push(0);
        }
        let phoff = EHDR_SIZE;
        let symoff = phoff + PHDR_SIZE;
        let stroff = symoff + symtab.len();
        let shoff = stroff + strtab.len();
        let mut elf = vec![0u8; (shoff + 3 * SHDR_SIZE).max(0x1000)];
        elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        elf[0x34..0x36].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        elf[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        // The string table also names the sections (all with the empty name at offset 0).
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        let ph = &mut elf[phoff..phoff + PHDR_SIZE];
        ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[16..24].copy_from_slice(&(KERNEL_VIRT_BASE + 0x20_0000).to_le_bytes());
        ph[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        ph[32..40].copy_from_slice(&0x1000u64.to_le_bytes());
        ph[40..48].copy_from_slice(&0x1000u64.to_le_bytes());
        elf[symoff..stroff].copy_from_slice(&symtab);
        elf[stroff..shoff].copy_from_slice(&strtab);
        let sh = &mut elf[shoff + SHDR_SIZE..shoff + 2 * SHDR_SIZE];
        sh[4..8].copy_from_slice(&SHT_SYMTAB.to_le_bytes());
        sh[24..32].copy_from_slice(&(symoff as u64).to_le_bytes());
        sh[32..40].copy_from_slice(&(symtab.len() as u64).to_le_bytes());
        sh[40..44].copy_from_slice(&2u32.to_le_bytes());
        let sh = &mut elf[shoff + 2 * SHDR_SIZE..];
        sh[4..8].copy_from_slice(&SHT_STRTAB.to_le_bytes());
        sh[24..32].copy_from_slice(&(stroff as u64).to_le_bytes());
        sh[32..40].copy_from_slice(&(strtab.len() as u64).to_le_bytes());
        elf
    }

    fn counters_at(start: u64, stop: u64) -> Vec<u8> {
        elf_with(&[
            (b"_start", KERNEL_VIRT_BASE + 0x20_0000),
            (START_SYMBOL.as_bytes(), KERNEL_VIRT_BASE + start),
            (STOP_SYMBOL.as_bytes(), KERNEL_VIRT_BASE + stop),
        ])
    }

    #[test]
    fn finds_counters_at_their_physical_address() {
        let map = CoverageMap::from_elf(&counters_at(0x20_0800, 0x20_0900))
            .unwrap()
            .unwrap();
        assert_eq!((map.start(), map.len()), (GuestAddress(0x20_0800), 0x100));
    }

    #[test]
    fn normal_builds_have_no_counters() {
        assert_eq!(
            CoverageMap::from_elf(&counters_at(0x20_0800, 0x20_0800)),
            Ok(None)
        );
        assert_eq!(CoverageMap::from_elf(&elf_with(&[])), Ok(None));
        assert_eq!(
            CoverageMap::from_elf(guest_image::EMBEDDED_KERNEL),
            Ok(None)
        );
    }

    #[test]
    fn malformed_elves_are_errors() {
        let err = |elf: &[u8]| CoverageMap::from_elf(elf).unwrap_err();
        assert_eq!(err(b"hello"), CoverageError::NotElf64);
        assert_eq!(err(&[0u8; 64]), CoverageError::NotElf64);
        assert_eq!(
            err(&counters_at(0x20_0900, 0x20_0800)),
            CoverageError::Reversed {
                start: KERNEL_VIRT_BASE + 0x20_0900,
                stop: KERNEL_VIRT_BASE + 0x20_0800
            }
        );
        assert_eq!(
            err(&counters_at(0x20_0800, 0x20_1800)),
            CoverageError::OutsideSegments {
                vaddr: KERNEL_VIRT_BASE + 0x20_0800,
                len: 0x1000
            }
        );
        let truncated = err(&guest_image::EMBEDDED_KERNEL[..4096]);
        assert!(
            matches!(truncated, CoverageError::Malformed(_)),
            "{truncated}"
        );
        let mut big_endian = counters_at(0x20_0800, 0x20_0900);
        big_endian[5] = 2;
        assert!(matches!(err(&big_endian), CoverageError::Malformed(_)));
    }

    /// A segment that claims a GiB of memory, or of file, holds no counters: the host would have
    /// allocated that much to read them.
    #[test]
    fn counter_sizes_are_checked_against_the_file_before_anything_is_allocated() {
        let huge = 1u64 << 30;
        let start = 0x20_0800;
        let mut in_bss = counters_at(start, start + huge);
        let memsz = EHDR_SIZE + 40;
        in_bss[memsz..memsz + 8].copy_from_slice(&(huge + 0x1000).to_le_bytes());
        assert_eq!(
            CoverageMap::from_elf(&in_bss),
            Err(CoverageError::OutsideSegments {
                vaddr: KERNEL_VIRT_BASE + start,
                len: huge
            })
        );
        let mut past_the_file = counters_at(start, start + 0x100);
        let filesz = EHDR_SIZE + 32;
        past_the_file[filesz..filesz + 8].copy_from_slice(&huge.to_le_bytes());
        assert!(matches!(
            CoverageMap::from_elf(&past_the_file),
            Err(CoverageError::OutsideSegments { .. })
        ));
    }

    #[test]
    fn read_and_reset_touch_exactly_the_counters() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x30_0000)]).unwrap();
        let map = CoverageMap::from_elf(&counters_at(0x20_0800, 0x20_0900))
            .unwrap()
            .unwrap();
        mem.write_slice(&[7u8; 0x102], GuestAddress(0x20_07ff))
            .unwrap();
        assert_eq!(map.read(&mem).unwrap(), vec![7u8; 0x100]);
        map.reset(&mem).unwrap();
        assert_eq!(map.read(&mem).unwrap(), vec![0u8; 0x100]);
        let mut edges = [0u8; 2];
        mem.read_slice(&mut edges[..1], GuestAddress(0x20_07ff))
            .unwrap();
        mem.read_slice(&mut edges[1..], GuestAddress(0x20_0900))
            .unwrap();
        assert_eq!(edges, [7, 7]);
    }
}

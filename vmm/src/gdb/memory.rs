//! Guest memory at virtual addresses, as gdb reads and writes it: every page translated
//! through the guest's current page tables by the host's own walker ([`x86_paging::page_walk`]),
//! nothing cached between calls, page permissions ignored (as ptrace does).

use std::fmt;
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use x86_paging::page_walk::{translate, WalkError};

/// Why a virtual access stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryError {
    /// No present mapping for this address.
    NotMapped { va: u64 },
    /// The page tables could not be walked (a non-canonical address, a broken table).
    Walk(WalkError),
    /// The page maps a physical address outside guest RAM.
    OutsideRam { va: u64, phys: u64 },
    /// The access runs past the top of the address space.
    Wraps,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::NotMapped { va } => write!(f, "{va:#x} is not mapped"),
            MemoryError::Walk(e) => write!(f, "{e}"),
            MemoryError::OutsideRam { va, phys } => {
                write!(f, "{va:#x} maps {phys:#x}, outside guest RAM")
            }
            MemoryError::Wraps => f.write_str("the access wraps past the top of memory"),
        }
    }
}

/// One piece of a virtual access: the guest-physical address of `va` and how many bytes from
/// there stay in the same page.
fn piece<M: GuestMemory + ?Sized>(
    mem: &M,
    cr3: u64,
    va: u64,
    want: usize,
) -> Result<(u64, usize), MemoryError> {
    let t = translate(mem, cr3, va)
        .map_err(MemoryError::Walk)?
        .ok_or(MemoryError::NotMapped { va })?;
    let page_end = u128::from(t.leaf.va) + u128::from(t.leaf.size);
    let in_page = (page_end - u128::from(va)).min(want as u128) as usize;
    Ok((t.phys, in_page))
}

/// Visits the pieces of `[va, va + len)` in order, stopping at the first error.
fn for_each_piece<M: GuestMemory + ?Sized>(
    mem: &M,
    cr3: u64,
    va: u64,
    len: usize,
    mut visit: impl FnMut(u64, std::ops::Range<usize>) -> Result<(), MemoryError>,
) -> Result<(), MemoryError> {
    let mut done = 0;
    while done < len {
        let at = va.checked_add(done as u64).ok_or(MemoryError::Wraps)?;
        let (phys, n) = piece(mem, cr3, at, len - done)?;
        visit(phys, done..done + n)?;
        done += n;
    }
    Ok(())
}

fn outside(va: u64, phys: u64) -> impl Fn(vm_memory::GuestMemoryError) -> MemoryError {
    move |_| MemoryError::OutsideRam { va, phys }
}

/// Reads `buf.len()` bytes from `va` in the address space rooted at `cr3`. Returns how many it
/// read (fewer at the first unreadable byte), or the error if it read none.
pub fn read_virtual<M: GuestMemory + ?Sized>(
    mem: &M,
    cr3: u64,
    va: u64,
    buf: &mut [u8],
) -> Result<usize, MemoryError> {
    let mut read = 0;
    let outcome = for_each_piece(mem, cr3, va, buf.len(), |phys, range| {
        let at = va + range.start as u64;
        let n = range.len();
        mem.read_slice(&mut buf[range], GuestAddress(phys))
            .map_err(outside(at, phys))?;
        read += n;
        Ok(())
    });
    match outcome {
        Err(e) if read == 0 => Err(e),
        _ => Ok(read),
    }
}

/// Writes `data` at `va` in the address space rooted at `cr3`: all of it, or (when any page is
/// unmapped or outside RAM) nothing.
pub fn write_virtual<M: GuestMemory + ?Sized>(
    mem: &M,
    cr3: u64,
    va: u64,
    data: &[u8],
) -> Result<(), MemoryError> {
    let mut pieces = Vec::new();
    for_each_piece(mem, cr3, va, data.len(), |phys, range| {
        // A piece that can be read whole lies in RAM, so writing it cannot fail half-way.
        let mut scratch = vec![0u8; range.len()];
        mem.read_slice(&mut scratch, GuestAddress(phys))
            .map_err(outside(va + range.start as u64, phys))?;
        pieces.push((phys, range));
        Ok(())
    })?;
    for (phys, range) in pieces {
        let at = va + range.start as u64;
        mem.write_slice(&data[range], GuestAddress(phys))
            .map_err(outside(at, phys))?;
    }
    Ok(())
}

/// The guest-physical address `va` maps to, for planting a software breakpoint.
pub fn physical<M: GuestMemory + ?Sized>(mem: &M, cr3: u64, va: u64) -> Result<u64, MemoryError> {
    piece(mem, cr3, va, 1).map(|(phys, _)| phys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::pte::{PageLevel, PageTableFlags as F, PAGE_SIZE_4K};
    use vm_memory::GuestMemoryMmap;
    use x86_paging::page_walk::PageTableBuilder;

    const RAM: usize = 4 << 20;

    /// Two adjacent virtual pages at 0x40_0000 on frames 0x3000 and 0x1000 (out of order), then
    /// a hole at 0x40_2000.
    fn setup() -> (GuestMemoryMmap, u64) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
        let mut b = PageTableBuilder::new(&mem, (1 << 20)..(RAM as u64)).unwrap();
        let flags = F::WRITABLE;
        b.map(0x40_0000, 0x3000, PAGE_SIZE_4K, PageLevel::Pt, flags)
            .unwrap();
        b.map(0x40_1000, 0x1000, PAGE_SIZE_4K, PageLevel::Pt, flags)
            .unwrap();
        let cr3 = b.cr3();
        (mem, cr3)
    }

    #[test]
    fn a_read_follows_each_page_to_its_own_frame() {
        let (mem, cr3) = setup();
        mem.write_slice(b"ab", GuestAddress(0x3ffe)).unwrap();
        mem.write_slice(b"cd", GuestAddress(0x1000)).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(read_virtual(&mem, cr3, 0x40_0ffe, &mut buf), Ok(4));
        assert_eq!(&buf, b"abcd");
    }

    #[test]
    fn a_read_stops_at_the_first_unmapped_byte() {
        let (mem, cr3) = setup();
        let mut buf = [0u8; 16];
        assert_eq!(read_virtual(&mem, cr3, 0x40_1ff8, &mut buf), Ok(8));
        assert_eq!(
            read_virtual(&mem, cr3, 0x40_2000, &mut buf),
            Err(MemoryError::NotMapped { va: 0x40_2000 })
        );
        let non_canonical = 0x8000_0000_0000;
        assert!(matches!(
            read_virtual(&mem, cr3, non_canonical, &mut buf),
            Err(MemoryError::Walk(WalkError::NonCanonical { .. }))
        ));
    }

    #[test]
    fn a_write_lands_in_every_page_or_in_none() {
        let (mem, cr3) = setup();
        write_virtual(&mem, cr3, 0x40_0fff, b"xy").unwrap();
        let mut two = [0u8; 2];
        mem.read_slice(&mut two[..1], GuestAddress(0x3fff)).unwrap();
        mem.read_slice(&mut two[1..], GuestAddress(0x1000)).unwrap();
        assert_eq!(&two, b"xy");
        // Runs into the hole: nothing is written, not even the mapped part.
        assert_eq!(
            write_virtual(&mem, cr3, 0x40_1fff, b"zz"),
            Err(MemoryError::NotMapped { va: 0x40_2000 })
        );
        let mut one = [0u8; 1];
        mem.read_slice(&mut one, GuestAddress(0x1fff)).unwrap();
        assert_eq!(one, [0]);
        assert_eq!(physical(&mem, cr3, 0x40_1234), Ok(0x1234));
    }
}

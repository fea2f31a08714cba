//! Loads the guest kernel ELF into guest memory with linux-loader, after checking its headers.
#![forbid(unsafe_code)]

use crate::error::BootError;
use linux_loader::loader::{elf::Elf, KernelLoader};
use shared_mm::boot_info::KERNEL_PHYS_BASE;
use std::io::Cursor;
use vm_memory::GuestMemoryMmap;

const PT_LOAD: u32 = 1;

/// Where the kernel landed.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: u64,
    pub phys_start: u64,
    pub phys_end: u64,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4-byte slice"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8-byte slice"))
}

/// One loadable segment: `memsz` bytes at guest-physical `paddr`, the first `filesz` of them
/// from file offset `offset` (the rest zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// Where a kernel image goes: its entry point and its loadable segments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub entry: u64,
    pub segments: Vec<Segment>,
}

/// Checks that `image` is an x86_64 ELF executable whose loadable segments fit in
/// `[KERNEL_PHYS_BASE, ram_size)` and whose entry point lies in the file bytes of one of them;
/// returns the physical extent of those segments.
pub fn check_elf(image: &[u8], ram_size: u64) -> Result<(u64, u64), BootError> {
    parse(image, ram_size).map(|(extent, _)| extent)
}

/// The checked [`Layout`] of `image` in RAM of `ram_size` bytes.
pub fn layout(image: &[u8], ram_size: u64) -> Result<Layout, BootError> {
    parse(image, ram_size).map(|(_, layout)| layout)
}

/// What loading a kernel image leaves in RAM: its layout and the file bytes of its segments, in
/// segment order (kept so that RAM reused by the next guest can be matched without reading it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelInRam {
    pub layout: Layout,
    bytes: Vec<u8>,
}

impl KernelInRam {
    /// What [`load_kernel`] leaves of `image`, laid out as `layout` (from [`layout`]).
    pub fn of(image: &[u8], layout: Layout) -> Self {
        let bytes = layout
            .segments
            .iter()
            .flat_map(|seg| &image[seg.offset as usize..(seg.offset + seg.filesz) as usize])
            .copied()
            .collect();
        KernelInRam { layout, bytes }
    }

    /// Whether loading `image` would leave exactly this.
    pub fn matches(&self, image: &[u8], layout: &Layout) -> bool {
        let mut at = 0usize;
        self.layout == *layout
            && layout.segments.iter().all(|seg| {
                let file = &image[seg.offset as usize..(seg.offset + seg.filesz) as usize];
                let held = self.bytes.get(at..at + file.len());
                at += file.len();
                held == Some(file)
            })
    }

    /// Whether the page at `page` holds any of the image's bytes.
    pub fn overlaps(&self, page: u64) -> bool {
        self.layout
            .segments
            .iter()
            .any(|seg| seg.filesz > 0 && page < seg.paddr + seg.filesz && seg.paddr < page + 4096)
    }
}

/// [`check_elf`]'s extent, and the layout.
fn parse(image: &[u8], ram_size: u64) -> Result<((u64, u64), Layout), BootError> {
    const EHDR_SIZE: usize = 64;
    const PHDR_SIZE: usize = 56;
    if image.len() < 4 || &image[..4] != b"\x7fELF" {
        return Err(BootError::NotElf("missing the \\x7fELF magic".into()));
    }
    if image.len() < EHDR_SIZE {
        return Err(BootError::TruncatedElf(format!(
            "{} bytes, shorter than the 64-byte ELF header",
            image.len()
        )));
    }
    if image[4] != 2 || image[5] != 1 {
        return Err(BootError::NotElf("not a 64-bit little-endian ELF".into()));
    }
    if u16_at(image, 18) != 62 {
        return Err(BootError::NotElf(format!(
            "machine {} is not x86_64 (62)",
            u16_at(image, 18)
        )));
    }
    let phoff = u64_at(image, 32);
    let phentsize = u16_at(image, 54) as usize;
    let phnum = u16_at(image, 56) as usize;
    if phentsize != PHDR_SIZE {
        return Err(BootError::NotElf(format!(
            "program header size {phentsize}, expected 56"
        )));
    }
    let table_end = phoff
        .checked_add((phnum * PHDR_SIZE) as u64)
        .filter(|&end| end <= image.len() as u64)
        .ok_or_else(|| {
            BootError::TruncatedElf(format!(
                "{phnum} program headers at offset {phoff:#x} run past the file's {} bytes",
                image.len()
            ))
        })?;
    let mut extent: Option<(u64, u64)> = None;
    let mut segments = Vec::new();
    let entry = u64_at(image, 24);
    let mut entry_loaded = false;
    for ph in image[phoff as usize..table_end as usize]
        .as_chunks::<PHDR_SIZE>()
        .0
    {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let (offset, vaddr, paddr, filesz, memsz) = (
            u64_at(ph, 8),
            u64_at(ph, 16),
            u64_at(ph, 24),
            u64_at(ph, 32),
            u64_at(ph, 40),
        );
        entry_loaded |= entry
            .checked_sub(vaddr)
            .is_some_and(|offset| offset < filesz.min(memsz));
        if offset
            .checked_add(filesz)
            .is_none_or(|end| end > image.len() as u64)
        {
            return Err(BootError::TruncatedElf(format!(
                "segment at file offset {offset:#x} (size {filesz:#x}) runs past the file's {} bytes",
                image.len()
            )));
        }
        let end = paddr.checked_add(memsz.max(filesz));
        if paddr < KERNEL_PHYS_BASE || end.is_none_or(|end| end > ram_size) {
            return Err(BootError::SegmentOutsideRam {
                paddr,
                memsz,
                ram_size,
                allowed_start: KERNEL_PHYS_BASE,
            });
        }
        let end = end.expect("checked above");
        segments.push(Segment {
            paddr,
            offset,
            filesz,
            memsz,
        });
        extent = Some(match extent {
            None => (paddr, end),
            Some((s, e)) => (s.min(paddr), e.max(end)),
        });
    }
    let extent = extent.ok_or_else(|| BootError::NotElf("no loadable segment".into()))?;
    if !entry_loaded {
        return Err(BootError::EntryOutsideSegments { entry });
    }
    Ok((extent, Layout { entry, segments }))
}

/// Checks and loads `image`; segments go to their physical addresses, entry is the ELF entry.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    image: &[u8],
    ram_size: u64,
) -> Result<LoadedKernel, BootError> {
    let (phys_start, phys_end) = check_elf(image, ram_size)?;
    let result = Elf::load(mem, None, &mut Cursor::new(image), None).map_err(BootError::Load)?;
    Ok(LoadedKernel {
        entry: result.kernel_load.0,
        phys_start,
        phys_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_in_ram_matches_only_the_same_bytes_laid_out_the_same_way() {
        let image = guest_image::EMBEDDED_KERNEL;
        let layout = layout(image, 256 << 20).expect("the embedded kernel");
        let in_ram = KernelInRam::of(image, layout.clone());
        assert!(in_ram.matches(image, &layout));
        let first = layout.segments[0];
        let mut changed = image.to_vec();
        changed[(first.offset + first.filesz - 1) as usize] ^= 1;
        assert!(!in_ram.matches(&changed, &layout));
        let mut other = layout.clone();
        other.entry += 1;
        assert!(!in_ram.matches(image, &other));
        assert!(in_ram.overlaps(first.paddr & !0xfff));
        assert!(!in_ram.overlaps(0));
    }

    #[test]
    fn an_entry_point_outside_every_segment_is_refused() {
        let layout = layout(guest_image::EMBEDDED_KERNEL, 256 << 20).expect("the embedded kernel");
        let code = layout.segments[0];
        let first_vaddr = layout.entry; // the embedded kernel starts at its first segment
        for entry in [0, first_vaddr - 1, u64::MAX, first_vaddr + code.filesz] {
            let mut image = guest_image::EMBEDDED_KERNEL.to_vec();
            image[24..32].copy_from_slice(&entry.to_le_bytes());
            match check_elf(&image, 256 << 20) {
                Err(e @ BootError::EntryOutsideSegments { .. }) => {
                    assert!(e.to_string().contains(&format!("{entry:#x}")), "{e}");
                }
                other => panic!("entry {entry:#x}: {other:?}"),
            }
        }
        let mut last_byte = guest_image::EMBEDDED_KERNEL.to_vec();
        let inside = first_vaddr + code.filesz - 1;
        last_byte[24..32].copy_from_slice(&inside.to_le_bytes());
        assert!(check_elf(&last_byte, 256 << 20).is_ok());
    }

    #[test]
    fn rejects_non_elf_and_short_headers() {
        assert!(matches!(
            check_elf(b"hello", 1 << 30),
            Err(BootError::NotElf(_))
        ));
        assert!(matches!(
            check_elf(b"\x7fELF\x02\x01", 1 << 30),
            Err(BootError::TruncatedElf(_))
        ));
    }
}

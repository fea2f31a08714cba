//! MemoryManager: the kernel's own RegionTree and page tables, the frame allocator, the heap's
//! backing, and the set of user AddressSpaces the host operates on.

use super::address_space::AddressSpace;
use super::frame_allocator::FrameAllocator;
use super::heap::HEAP;
use super::page_directory::PageDirectory;
use super::user_access::{touch, Touch, TRAMPOLINE_CODE};
use super::vmobject::VMObject;
use super::{MmError, PhysicalFrame};
use crate::arch::x86_64::physmap::{write_bytes, zero_frame};
use crate::arch::x86_64::registers::{read_cr3, write_cr3};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use shared_mm::abi::{Op, OpResult, Status, KERNEL_SPACE_BASE, MAX_SPACES};
use shared_mm::address::{VirtualAddress, VirtualRange};
use shared_mm::boot_info::{BootInfo, KERNEL_VIRT_BASE, PHYSMAP_BASE};
use shared_mm::pte::{pml4_index, PageTableFlags};
use shared_mm::region::{Access, Region};
use shared_mm::region_tree::{RegionTree, SplitMix64};

const TWO_MIB: u64 = 2 << 20;
/// Size of the kmalloc reservation in the kernel tree.
const KMALLOC_RANGE: u64 = 64 << 20;
/// Largest heap mapped into the kmalloc range at boot.
const MAX_HEAP: u64 = 16 << 20;

pub struct MemoryManager {
    frames: &'static mut FrameAllocator,
    kernel_tree: RegionTree<VMObject>,
    kernel_directory: PageDirectory,
    trampoline: PhysicalFrame,
    spaces: BTreeMap<u32, AddressSpace>,
    next_space_id: u32,
    rng: SplitMix64,
    /// The CR3 last loaded (reading CR3 is a privileged instruction: costly under emulation).
    active_cr3: u64,
}

fn reserve(
    tree: &mut RegionTree<VMObject>,
    name: &'static str,
    access: Access,
    base: u64,
    size: u64,
) -> VirtualRange {
    let region = Box::new(Region::new(name, access, None));
    match tree.place_specifically(region, VirtualAddress::new(base), size) {
        Ok(range) => range,
        Err(e) => panic!("cannot reserve {name} at {base:#x}+{size:#x}: {}", e.kind),
    }
}

impl MemoryManager {
    /// Brings up the kernel VM: reserves the direct map, the kernel image and the kmalloc range
    /// (all unbacked), switches to the kernel's own page tables and maps the heap.
    pub fn init(info: &BootInfo, frames: &'static mut FrameAllocator) -> Result<Self, MmError> {
        frames.init(info);
        let total = VirtualRange::new(
            VirtualAddress::new(KERNEL_SPACE_BASE),
            0u64.wrapping_sub(KERNEL_SPACE_BASE),
        )
        .expect("the kernel half is a valid range");
        let mut kernel_tree = RegionTree::new(total);
        reserve(
            &mut kernel_tree,
            "physmap",
            Access::READ | Access::WRITE,
            PHYSMAP_BASE,
            info.ram_size.next_multiple_of(TWO_MIB),
        );
        let image_start = info.kernel_phys_start & !(TWO_MIB - 1);
        let image_end = info.kernel_phys_end.next_multiple_of(TWO_MIB);
        reserve(
            &mut kernel_tree,
            "kernel image",
            // Code and data share the boot tables' 2 MiB pages, so the window is rwx.
            Access::READ | Access::WRITE | Access::EXECUTE,
            KERNEL_VIRT_BASE + image_start,
            image_end - image_start,
        );
        let kmalloc = Box::new(Region::new("kmalloc", Access::READ | Access::WRITE, None));
        let kmalloc = kernel_tree
            .place_anywhere(kmalloc, KMALLOC_RANGE, TWO_MIB)
            .map_err(|e| MmError::Tree(e.kind))?;

        // Every PML4 slot a kernel region spans gets its PDPT now; kernel regions are only
        // placed at boot, so the kernel half of the PML4 never changes once spaces exist.
        let kernel_slots = kernel_tree
            .iter()
            .filter_map(|r| r.range())
            .flat_map(|r| pml4_index(r.base().get())..=pml4_index(r.last().get()));
        let kernel_directory = PageDirectory::new_kernel(read_cr3(), kernel_slots, frames)?;
        // SAFETY: the new directory's kernel half is the boot tables' kernel half (plus empty
        // slots), so the kernel image, its stacks and the direct map stay mapped.
        unsafe { write_cr3(kernel_directory.cr3()) };

        let kernel_directory_cr3 = kernel_directory.cr3();
        let heap_size = MAX_HEAP.min(info.ram_size / 8) & !(TWO_MIB - 1);
        let mut mm = MemoryManager {
            frames,
            kernel_tree,
            kernel_directory,
            trampoline: PhysicalFrame(0),
            spaces: BTreeMap::new(),
            next_space_id: 1,
            rng: SplitMix64::new(info.random_seed),
            active_cr3: kernel_directory_cr3,
        };
        // The heap is mapped with 2 MiB pages: a handful of entries instead of thousands of
        // 4 KiB ones (guest code is slow to run on an emulating hypervisor, so boot stays short).
        let heap_flags = PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        for offset in (0..heap_size).step_by(TWO_MIB as usize) {
            let block = mm.frames.allocate_2m()?;
            mm.kernel_directory.map_2m(
                kmalloc.base().get() + offset,
                block,
                heap_flags,
                mm.frames,
            )?;
        }
        // SAFETY: the pages were just mapped writable in the kernel half, nothing else uses
        // them, and the kmalloc region keeps the range reserved for good.
        unsafe { HEAP.add_kmalloc(kmalloc.base().get(), heap_size as usize) };

        mm.trampoline = mm.frames.allocate()?;
        zero_frame(mm.trampoline.0);
        write_bytes(mm.trampoline.0, 0, &TRAMPOLINE_CODE);
        Ok(mm)
    }

    pub fn kernel_tree(&self) -> &RegionTree<VMObject> {
        &self.kernel_tree
    }

    pub fn kernel_cr3(&self) -> u64 {
        self.kernel_directory.cr3()
    }

    pub fn spaces(&self) -> impl Iterator<Item = &AddressSpace> {
        self.spaces.values()
    }

    pub fn space(&self, id: u32) -> Option<&AddressSpace> {
        self.spaces.get(&id)
    }

    pub fn free_frames(&self) -> usize {
        self.frames.free_count()
    }

    /// Runs `f` on space `id` with its page tables active (so `invlpg` hits its TLB entries).
    fn with_space<T>(
        &mut self,
        id: u32,
        f: impl FnOnce(&mut AddressSpace, &mut FrameAllocator, &mut SplitMix64) -> Result<T, MmError>,
    ) -> Result<T, MmError> {
        let space = self.spaces.get_mut(&id).ok_or(MmError::NoSuchSpace)?;
        if self.active_cr3 != space.cr3() {
            // SAFETY: every user directory shares the kernel half of the kernel's directory.
            unsafe { write_cr3(space.cr3()) };
            self.active_cr3 = space.cr3();
        }
        f(space, self.frames, &mut self.rng)
    }

    fn create_space(&mut self) -> Result<u32, MmError> {
        if self.spaces.len() >= MAX_SPACES {
            return Err(MmError::Tree(
                shared_mm::region_tree::RegionTreeError::NoSpace,
            ));
        }
        let id = self.next_space_id;
        let space = AddressSpace::new(id, &self.kernel_directory, self.trampoline, self.frames)?;
        self.next_space_id += 1;
        self.spaces.insert(id, space);
        Ok(id)
    }

    fn destroy_space(&mut self, id: u32) -> Result<(), MmError> {
        let space = self.spaces.remove(&id).ok_or(MmError::NoSuchSpace)?;
        if self.active_cr3 == space.cr3() {
            // SAFETY: the kernel directory maps everything the kernel uses.
            unsafe { write_cr3(self.kernel_directory.cr3()) };
            self.active_cr3 = self.kernel_directory.cr3();
        }
        space.destroy(self.frames);
        Ok(())
    }

    /// Runs one operation from the host (all but `Snapshot`, which the agent serves).
    pub fn execute(&mut self, op: Op) -> OpResult {
        let placed = |r: Result<VirtualRange, MmError>| match r {
            Ok(range) => OpResult {
                addr: range.base().get(),
                ..OpResult::ok()
            },
            Err(e) => OpResult::error(e.into()),
        };
        let done = |r: Result<(), MmError>| {
            r.map_or_else(|e| OpResult::error(e.into()), |()| OpResult::ok())
        };
        let touched =
            |r: Result<OpResult, MmError>| r.unwrap_or_else(|e| OpResult::error(e.into()));
        match op {
            Op::CreateSpace => match self.create_space() {
                Ok(id) => OpResult {
                    value: id as u64,
                    ..OpResult::ok()
                },
                Err(e) => OpResult::error(e.into()),
            },
            Op::DestroySpace { space } => done(self.destroy_space(space)),
            Op::MapAnywhere {
                space,
                size,
                align,
                access,
            } => placed(self.with_space(space, |s, _, _| s.map_anywhere(size, align, access))),
            Op::MapFixed {
                space,
                addr,
                size,
                access,
            } => placed(self.with_space(space, |s, _, _| s.map_fixed(addr, size, access))),
            Op::MapRandomized {
                space,
                size,
                align,
                access,
            } => placed(self.with_space(space, |s, _, rng| {
                s.map_randomized(size, align, access, rng)
            })),
            Op::Unmap { space, addr, size } => {
                done(self.with_space(space, |s, f, _| s.unmap(addr, size, f)))
            }
            Op::Protect {
                space,
                addr,
                size,
                access,
            } => done(self.with_space(space, |s, f, _| s.protect(addr, size, access, f))),
            Op::TouchRead { space, addr } => {
                touched(self.with_space(space, |s, f, _| Ok(touch(s, addr, Touch::Read, f))))
            }
            Op::TouchWrite { space, addr, value } => touched(
                self.with_space(space, |s, f, _| Ok(touch(s, addr, Touch::Write(value), f))),
            ),
            Op::TouchExec { space, addr } => {
                touched(self.with_space(space, |s, f, _| Ok(touch(s, addr, Touch::Execute, f))))
            }
            Op::Snapshot { .. } => OpResult::error(Status::BadOp),
        }
    }
}

//! The kernel heap: a small bootstrap arena in .bss, then the kmalloc range once it is mapped.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use linked_list_allocator::Heap;
use spin::Mutex;

/// Room for the allocations made before the kmalloc range is mapped: the frame allocator's
/// bitmap (512 KiB at the largest supported RAM) and the first regions.
const BOOTSTRAP_SIZE: usize = guest_mm::memory_manager::BOOTSTRAP_HEAP as usize;

#[repr(C, align(4096))]
struct Bootstrap([u8; BOOTSTRAP_SIZE]);

/// Backs the allocations made before the kmalloc range exists.
static mut BOOTSTRAP: Bootstrap = Bootstrap([0; BOOTSTRAP_SIZE]);

/// Two arenas; a free goes to the arena whose range holds the pointer.
pub struct KernelHeap {
    arenas: Mutex<[Heap; 2]>,
}

#[global_allocator]
pub static HEAP: KernelHeap = KernelHeap {
    arenas: Mutex::new([Heap::empty(), Heap::empty()]),
};

impl KernelHeap {
    /// Starts the bootstrap arena. Call once, first thing at boot.
    pub fn init_bootstrap(&self) {
        let mut arenas = self.arenas.lock();
        // `Heap::init` may run only once, on an empty heap: a second call must not reach it.
        assert!(arenas[0].size() == 0, "the bootstrap arena is started once");
        // SAFETY: BOOTSTRAP is a static that nothing but this arena uses, it lives forever, and
        // the arena is still empty (checked above), as `Heap::init` requires.
        unsafe { arenas[0].init((&raw mut BOOTSTRAP) as *mut u8, BOOTSTRAP_SIZE) };
    }

    /// Adds the mapped kmalloc memory at `[base, base + size)` as the main arena.
    ///
    /// # Safety
    /// Call at most once. The range must be mapped writable, used by nothing else, and stay
    /// mapped forever.
    pub unsafe fn add_kmalloc(&self, base: u64, size: usize) {
        // SAFETY: `Heap::init` needs an empty heap and memory that is valid, used by nothing else
        // and lives as long as the heap: the caller guarantees the memory, and calling at most
        // once keeps the kmalloc arena empty until now.
        unsafe { self.arenas.lock()[1].init(base as *mut u8, size) };
    }
}

// SAFETY: every path goes through the arenas' mutex; each block is returned to the arena that
// handed it out (chosen by address range).
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut arenas = self.arenas.lock();
        let [boot, kmalloc] = &mut *arenas;
        kmalloc
            .allocate_first_fit(layout)
            .or_else(|_| boot.allocate_first_fit(layout))
            .map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let mut arenas = self.arenas.lock();
        let addr = ptr as usize;
        let arena = arenas
            .iter_mut()
            .find(|h| h.size() > 0 && (h.bottom() as usize..h.top() as usize).contains(&addr))
            .expect("freed pointer belongs to no heap arena");
        // SAFETY: `GlobalAlloc::dealloc`'s contract: `ptr` is a block `alloc` returned (so not
        // null) for this layout. `alloc` takes every block from one of the two arenas, whose
        // ranges are disjoint, so the arena whose range holds `ptr` is the one that handed it out.
        unsafe { arena.deallocate(NonNull::new_unchecked(ptr), layout) };
    }
}

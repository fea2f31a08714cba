//! The simulated CPU in ring 3. It runs the few instructions the MM's user accesses use (the
//! trampoline's `mov rax, [rdi]` and `mov [rdi], rsi`, `nop`, and the `int3` that ends every
//! stay); anything else raises #UD. Every fetch and data access is translated through the TLB
//! first and through the page tables on a miss (from the deepest paging-structure-cache entry
//! that covers the address, else from CR3), and faults as the hardware raises them: #GP for a
//! non-canonical address, #PF with the architectural error code and CR2 otherwise.

use crate::ram::WrittenPages;
use guest_mm::machine::{
    PF_FETCH, PF_PRESENT, PF_RESERVED, PF_USER, PF_WRITE, VECTOR_BREAKPOINT,
    VECTOR_GENERAL_PROTECTION, VECTOR_INVALID_OPCODE, VECTOR_PAGE_FAULT,
};
use guest_mm::{UserEntry, UserTrap};
use shared_mm::pte::is_canonical;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use x86_paging::page_walk::{self, WalkError};
use x86_paging::tlb::{Access, CpuCaches, Translation};

/// Instructions one stay in ring 3 may run: the longest the MM starts is three.
const MAX_INSTRUCTIONS: usize = 16;

const PAGE: u64 = 4096;

const INT3: u8 = 0xcc;
const NOP: u8 = 0x90;
const REX_W: u8 = 0x48;
const LOAD: [u8; 3] = [0x48, 0x8b, 0x07]; // mov rax, [rdi]
const STORE: [u8; 3] = [0x48, 0x89, 0x37]; // mov [rdi], rsi

/// What one simulated CPU keeps between its stays in ring 3: the tables it walks and what it
/// caches of them. The sim has one; an SMP sim has one per CPU.
#[derive(Clone, Debug)]
pub struct CpuState {
    pub cr3: u64,
    pub caches: CpuCaches,
}

impl CpuState {
    /// A CPU on the tables at `cr3`, with nothing cached.
    pub fn new(cr3: u64) -> Self {
        CpuState {
            cr3,
            caches: CpuCaches::default(),
        }
    }
}

struct Cpu<'a> {
    mem: &'a GuestMemoryMmap,
    state: &'a mut CpuState,
    written: &'a mut WrittenPages,
    rip: u64,
    rdi: u64,
    rsi: u64,
    rax: u64,
}

/// Runs ring-3 code from `entry` until its first exception.
pub fn run(
    mem: &GuestMemoryMmap,
    state: &mut CpuState,
    written: &mut WrittenPages,
    entry: &UserEntry,
) -> UserTrap {
    let mut cpu = Cpu {
        mem,
        state,
        written,
        rip: entry.rip,
        rdi: entry.rdi,
        rsi: entry.rsi,
        rax: 0,
    };
    for _ in 0..MAX_INSTRUCTIONS {
        if let Err(trap) = cpu.step() {
            return trap;
        }
    }
    panic!(
        "ring 3 ran {MAX_INSTRUCTIONS} instructions from {:#x} without a trap",
        entry.rip
    );
}

fn trap(vector: u64, error_code: u64, fault_address: u64) -> UserTrap {
    UserTrap {
        vector,
        error_code,
        fault_address,
        rip: 0,
        rax: 0,
    }
}

fn error_code(access: Access, present: bool) -> u64 {
    let mut code = PF_USER;
    if present {
        code |= PF_PRESENT;
    }
    match access {
        Access::Read => code,
        Access::Write => code | PF_WRITE,
        Access::Fetch => code | PF_FETCH,
    }
}

impl Cpu<'_> {
    /// Runs one instruction; `Err` is the exception it raised.
    fn step(&mut self) -> Result<(), UserTrap> {
        let opcode = self.fetch(0)?;
        match opcode {
            INT3 => Err(UserTrap {
                vector: VECTOR_BREAKPOINT,
                error_code: 0,
                fault_address: 0,
                rip: self.rip + 1,
                rax: self.rax,
            }),
            NOP => {
                self.rip += 1;
                Ok(())
            }
            REX_W => {
                let insn = [opcode, self.fetch(1)?, self.fetch(2)?];
                if insn == LOAD {
                    self.rax = self.load(self.rdi)?;
                } else if insn == STORE {
                    self.store(self.rdi, self.rsi)?;
                } else {
                    return Err(self.invalid_opcode());
                }
                self.rip += 3;
                Ok(())
            }
            _ => Err(self.invalid_opcode()),
        }
    }

    fn invalid_opcode(&self) -> UserTrap {
        UserTrap {
            rip: self.rip,
            ..trap(VECTOR_INVALID_OPCODE, 0, 0)
        }
    }

    /// The instruction byte at `rip + offset`.
    fn fetch(&mut self, offset: u64) -> Result<u8, UserTrap> {
        let va = self.rip.wrapping_add(offset);
        let phys = self.translate(va, Access::Fetch)?;
        let mut byte = [0u8];
        self.read_into(phys, &mut byte);
        Ok(byte[0])
    }

    /// The physical address of `va` for `access`: the TLB's entry if it has one, else a walk of
    /// the active tables (from the paging-structure caches where they cover it), whose result
    /// is cached. A page fault drops what the CPU cached for the address.
    fn translate(&mut self, va: u64, access: Access) -> Result<u64, UserTrap> {
        if !is_canonical(va) {
            return Err(trap(VECTOR_GENERAL_PROTECTION, 0, 0));
        }
        let caches = &mut self.state.caches;
        if let Some(cached) = caches.tlb.lookup(va) {
            if cached.allows(access) {
                return Ok(cached.phys(va));
            }
            // A stale entry with fewer rights faults as it stands; the fault drops it.
            caches.fault(va);
            return Err(trap(VECTOR_PAGE_FAULT, error_code(access, true), va));
        }
        let start = caches.paging.start(self.state.cr3, va);
        let fault = |caches: &mut CpuCaches, present: bool, reserved: u64| {
            caches.fault(va);
            Err(trap(
                VECTOR_PAGE_FAULT,
                error_code(access, present) | reserved,
                va,
            ))
        };
        match page_walk::walk_from(self.mem, start, va) {
            Ok(path) => match path.translation {
                Some(found) => {
                    let translation = Translation::of(&found.leaf);
                    if !translation.allows(access) {
                        return fault(caches, true, 0);
                    }
                    caches.paging.fill(&path);
                    caches.tlb.fill(translation);
                    Ok(found.phys)
                }
                None => fault(caches, false, 0),
            },
            Err(WalkError::NonCanonical { .. }) => Err(trap(VECTOR_GENERAL_PROTECTION, 0, 0)),
            // Reserved bits, or a table outside RAM (which reads as all ones on hardware).
            Err(_) => fault(caches, true, PF_RESERVED),
        }
    }

    /// The physical addresses of the 8 bytes at `va` for `access`: one piece, or two where the
    /// access crosses a page. Both pages are translated before anything is accessed, the first
    /// byte's first (a fault on the other reports its first byte in CR2). The linear address
    /// wraps at 2^64, as on x86: 8 bytes at `0xffff_ffff_ffff_ffff` end at `0x6`, both ends
    /// canonical; an access that runs off the lower half into non-canonical addresses is #GP.
    fn data_pieces(&mut self, va: u64, access: Access) -> Result<[(u64, usize); 2], UserTrap> {
        let last = va.wrapping_add(7);
        if !is_canonical(last) {
            return Err(trap(VECTOR_GENERAL_PROTECTION, 0, 0));
        }
        let first = self.translate(va, access)?;
        let split = (PAGE - va % PAGE).min(8) as usize;
        if split == 8 {
            return Ok([(first, 8), (0, 0)]);
        }
        let second = self.translate(last & !(PAGE - 1), access)?;
        Ok([(first, split), (second, 8 - split)])
    }

    fn load(&mut self, va: u64) -> Result<u64, UserTrap> {
        let mut bytes = [0u8; 8];
        let mut at = 0;
        for (phys, len) in self.data_pieces(va, Access::Read)? {
            self.read_into(phys, &mut bytes[at..at + len]);
            at += len;
        }
        Ok(u64::from_le_bytes(bytes))
    }

    fn store(&mut self, va: u64, value: u64) -> Result<(), UserTrap> {
        let bytes = value.to_le_bytes();
        let mut at = 0;
        for (phys, len) in self.data_pieces(va, Access::Write)? {
            self.written.mark(phys, len);
            if let Err(e) = self
                .mem
                .write_slice(&bytes[at..at + len], GuestAddress(phys))
            {
                panic!("ring-3 store to physical {phys:#x}: {e}");
            }
            at += len;
        }
        Ok(())
    }

    fn read_into(&self, phys: u64, buf: &mut [u8]) {
        if let Err(e) = self.mem.read_slice(buf, GuestAddress(phys)) {
            panic!("ring-3 access to physical {phys:#x}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::pte::{PageLevel, PageTableFlags, PAGE_SIZE_4K};
    use x86_paging::page_walk::PageTableBuilder;

    const CODE: u64 = 0x1000_0000;
    const DATA: u64 = 0x40_0000;
    /// `mov rax, [rdi]; int3`.
    const LOAD_AND_TRAP: [u8; 4] = [0x48, 0x8b, 0x07, INT3];

    /// A user load of the u64 at `va` on `state`'s CPU: what it read, or the vector it raised.
    fn load(mem: &GuestMemoryMmap, state: &mut CpuState, va: u64) -> Result<u64, u64> {
        let mut written = WrittenPages::new(16 << 20);
        let entry = UserEntry {
            rip: CODE,
            rdi: va,
            rsi: 0,
        };
        let trap = run(mem, state, &mut written, &entry);
        match trap.vector {
            VECTOR_BREAKPOINT => Ok(trap.rax),
            vector => Err(vector),
        }
    }

    #[test]
    fn the_cpu_walks_a_freed_and_reused_table_it_still_caches_until_a_flush() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut tables = PageTableBuilder::new(&mem, (1 << 20)..(2 << 20)).unwrap();
        let user = PageTableFlags::USER;
        tables
            .map(CODE, 0x8000, PAGE_SIZE_4K, PageLevel::Pt, user)
            .unwrap();
        tables
            .map(DATA, 0x5000, PAGE_SIZE_4K, PageLevel::Pt, user)
            .unwrap();
        mem.write_slice(&LOAD_AND_TRAP, GuestAddress(0x8000))
            .unwrap();
        mem.write_obj(0x1111u64, GuestAddress(0x5000)).unwrap();
        let mut cpu = CpuState::new(tables.cr3());
        assert_eq!(load(&mem, &mut cpu, DATA), Ok(0x1111));
        // The MM unlinks the data's page table and frees it without a flush; the frame is
        // reused, and its second entry now maps a frame that holds 0x2222.
        let path = page_walk::walk(&mem, cpu.cr3, DATA).unwrap();
        let pde = path.entries().find(|e| e.level == PageLevel::Pd).unwrap();
        let table = pde.entry.frame();
        mem.write_obj(0u64, GuestAddress(pde.addr)).unwrap();
        mem.write_obj(0x9005u64, GuestAddress(table + 8)).unwrap();
        mem.write_obj(0x2222u64, GuestAddress(0x9000)).unwrap();
        let stale = load(&mem, &mut cpu, DATA + 0x1000);
        assert_eq!(
            stale,
            Ok(0x2222),
            "the cached PDE still leads to the reused frame"
        );
        // `invlpg` of the page drops its translation and every paging-structure-cache entry.
        cpu.caches.invlpg(DATA + 0x1000);
        let fresh = load(&mem, &mut cpu, DATA + 0x1000);
        assert_eq!(
            fresh,
            Err(VECTOR_PAGE_FAULT),
            "after the flush the walk starts at CR3"
        );
    }
}

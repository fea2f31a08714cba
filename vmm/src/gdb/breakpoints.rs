//! Breakpoints and watchpoints: the four debug-register slots (DR0-DR3 with DR7) first,
//! software `int3` breakpoints only where the backend runs them (see `probe`), and the
//! `kvm_guest_debug` that arms them. Where the backend fires no data breakpoints, a write
//! watchpoint still takes its slot but is watched by single-stepping the guest and comparing
//! the value after every instruction. The guest's own `int3`s (its way back from ring 3) reach
//! its IDT untouched: #BP is intercepted only while a software breakpoint is planted, and a #BP
//! that is not one of them is given back to the guest.

use gdbstub::target::ext::breakpoints::WatchKind;
use kvm_bindings::{
    kvm_guest_debug, kvm_guest_debug_arch, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_INJECT_BP, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP,
};
use std::collections::BTreeMap;

/// The debug-register slots x86 has.
pub const SLOTS: usize = 4;

/// DR6: B0-B3, which slots fired.
const DR6_HITS: u64 = 0xf;
/// DR6: BS, a single step.
const DR6_STEP: u64 = 1 << 14;
/// DR7: LE and GE, exact data breakpoints.
const DR7_EXACT: u64 = 0b11 << 8;

/// Who asked for an execute slot: gdb's `break` (Z0, placed in a slot first) or `hbreak` (Z1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Break,
    HardwareBreak,
}

/// How a data slot watches its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watching {
    /// In a debug register.
    Register,
    /// By single-stepping: `last` is the value seen after the last instruction (`None` while
    /// the bytes are not mapped).
    Stepping { last: Option<u64> },
}

/// What one slot watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    Execute(Origin),
    /// A piece of watchpoint `watch` (the range gdb asked for), `len` bytes at the slot address.
    Data {
        kind: WatchKind,
        len: u64,
        watch: (u64, u64),
        how: Watching,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    addr: u64,
    what: Use,
}

impl Slot {
    /// This slot's enable, R/W and LEN bits of DR7.
    fn dr7_bits(&self, index: usize) -> u64 {
        let (rw, len) = match self.what {
            Use::Execute(_) => (0b00, 0b00),
            Use::Data {
                how: Watching::Stepping { .. },
                ..
            } => return 0,
            Use::Data { kind, len, .. } => {
                let rw = match kind {
                    WatchKind::Write => 0b01,
                    // x86 has no read-only watch: read watchpoints fire on writes too.
                    WatchKind::Read | WatchKind::ReadWrite => 0b11,
                };
                let len = match len {
                    1 => 0b00,
                    2 => 0b01,
                    8 => 0b10,
                    _ => 0b11,
                };
                (rw, len)
            }
        };
        (1 << (2 * index)) | (rw << (16 + 4 * index)) | (len << (18 + 4 * index))
    }
}

/// What stopped the guest, from DR6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hit {
    Breakpoint,
    Watch { kind: WatchKind, addr: u64 },
    Step,
}

/// A planted `int3`: where, and the byte it replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planted {
    pub phys: u64,
    pub saved: u8,
}

/// Every breakpoint and watchpoint gdb has inserted.
#[derive(Debug, Default)]
pub struct Breakpoints {
    slots: [Option<Slot>; SLOTS],
    /// Software breakpoints by virtual address.
    software: BTreeMap<u64, Planted>,
    /// gdb's single step also blocks interrupts (`KVM_GUESTDBG_BLOCKIRQ`, where KVM has it): with
    /// an irqchip, an interrupt taken during a step would otherwise push the trap flag KVM set
    /// into the handler's frame, and its `iretq` would give the guest a #DB of its own.
    block_interrupts_on_step: bool,
}

/// The aligned 1-, 2-, 4- or 8-byte pieces that cover `[addr, addr + len)`, as debug registers
/// watch them; `None` for an empty range or one past the top of memory.
fn watch_pieces(addr: u64, len: u64) -> Option<Vec<(u64, u64)>> {
    let end = addr.checked_add(len).filter(|_| len > 0)?;
    let mut pieces = Vec::new();
    let mut at = addr;
    while at < end {
        let size = [8, 4, 2, 1]
            .into_iter()
            .find(|&s| at.is_multiple_of(s) && at + s <= end)
            .expect("a 1-byte piece always fits");
        pieces.push((at, size));
        at += size;
    }
    Some(pieces)
}

impl Breakpoints {
    /// Single steps block interrupts from now on (see the field).
    pub fn block_interrupts_on_step(&mut self) {
        self.block_interrupts_on_step = true;
    }

    fn free_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.is_none()).count()
    }

    fn take_slot(&mut self, slot: Slot) -> bool {
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(free) => {
                *free = Some(slot);
                true
            }
            None => false,
        }
    }

    /// Puts an execute breakpoint at `addr` in a free slot; `false` when all four are taken.
    pub fn add_execute(&mut self, addr: u64, origin: Origin) -> bool {
        self.take_slot(Slot {
            addr,
            what: Use::Execute(origin),
        })
    }

    /// Frees the slot of the execute breakpoint at `addr`; `false` if there is none.
    pub fn remove_execute(&mut self, addr: u64, origin: Origin) -> bool {
        let wanted = Some(Slot {
            addr,
            what: Use::Execute(origin),
        });
        match self.slots.iter_mut().find(|s| **s == wanted) {
            Some(slot) => {
                *slot = None;
                true
            }
            None => false,
        }
    }

    /// Watches `[addr, addr + len)` with as many slots as its aligned pieces need, each `how`;
    /// `false`, with nothing taken, when they are not free.
    pub fn add_watch(&mut self, addr: u64, len: u64, kind: WatchKind, how: Watching) -> bool {
        let Some(pieces) = watch_pieces(addr, len) else {
            return false;
        };
        if pieces.len() > self.free_slots() {
            return false;
        }
        for (at, size) in pieces {
            let what = Use::Data {
                kind,
                len: size,
                watch: (addr, len),
                how,
            };
            self.take_slot(Slot { addr: at, what });
        }
        true
    }

    /// Frees every slot of the watchpoint gdb inserted as `(addr, len, kind)`.
    pub fn remove_watch(&mut self, addr: u64, len: u64, kind: WatchKind) -> bool {
        let mut found = false;
        for slot in &mut self.slots {
            if let Some(Slot {
                what: Use::Data { kind: k, watch, .. },
                ..
            }) = slot
            {
                if *k == kind && *watch == (addr, len) {
                    *slot = None;
                    found = true;
                }
            }
        }
        found
    }

    /// Whether a watchpoint is watched by single-stepping.
    pub fn needs_stepping(&self) -> bool {
        self.slots.iter().flatten().any(|slot| {
            matches!(
                slot.what,
                Use::Data {
                    how: Watching::Stepping { .. },
                    ..
                }
            )
        })
    }

    /// Reads every stepped watch's value now (`read(addr, len)`, `None` when unmapped) and
    /// returns the first that changed since the last look, as a hit.
    pub fn stepped_change(&mut self, mut read: impl FnMut(u64, u64) -> Option<u64>) -> Option<Hit> {
        let mut hit = None;
        for slot in self.slots.iter_mut().flatten() {
            if let Use::Data {
                kind,
                len,
                how: Watching::Stepping { last },
                ..
            } = &mut slot.what
            {
                let now = read(slot.addr, *len);
                if now != *last {
                    *last = now;
                    hit = hit.or(Some(Hit::Watch {
                        kind: *kind,
                        addr: slot.addr,
                    }));
                }
            }
        }
        hit
    }

    pub fn plant(&mut self, va: u64, planted: Planted) {
        self.software.insert(va, planted);
    }

    pub fn unplant(&mut self, va: u64) -> Option<Planted> {
        self.software.remove(&va)
    }

    /// Takes every software breakpoint out, to restore their bytes.
    pub fn unplant_all(&mut self) -> Vec<Planted> {
        std::mem::take(&mut self.software).into_values().collect()
    }

    /// Forgets every slot (gdb detached).
    pub fn clear_slots(&mut self) {
        self.slots = [None; SLOTS];
    }

    pub fn is_planted(&self, va: u64) -> bool {
        self.software.contains_key(&va)
    }

    /// What to hand `KVM_SET_GUEST_DEBUG`: the slots in DR0-DR3 and DR7, #BP intercepted only
    /// while a software breakpoint is planted, the trap flag for a single step; all off (the
    /// guest runs undisturbed) when nothing is asked.
    pub fn guest_debug(&self, step: bool) -> kvm_guest_debug {
        let mut arch = kvm_guest_debug_arch::default();
        let mut dr7 = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(slot) = slot {
                arch.debugreg[i] = slot.addr;
                dr7 |= slot.dr7_bits(i);
            }
        }
        let mut control = 0;
        if dr7 != 0 {
            arch.debugreg[7] = dr7 | DR7_EXACT;
            control |= KVM_GUESTDBG_USE_HW_BP;
        }
        if !self.software.is_empty() {
            control |= KVM_GUESTDBG_USE_SW_BP;
        }
        if step || self.needs_stepping() {
            control |= KVM_GUESTDBG_SINGLESTEP;
            // Only gdb's own steps: a watch stepped for good must let interrupts (IPIs) in, or
            // a CPU waiting for an acknowledgement would wait forever.
            if step && self.block_interrupts_on_step {
                control |= KVM_GUESTDBG_BLOCKIRQ;
            }
        }
        if control != 0 {
            control |= KVM_GUESTDBG_ENABLE;
        }
        kvm_guest_debug {
            control,
            pad: 0,
            arch,
        }
    }

    /// [`Breakpoints::guest_debug`], plus a #BP the guest gets on its next entry (its own `int3`,
    /// caught because a software breakpoint is planted).
    pub fn reinject_breakpoint(&self, step: bool) -> kvm_guest_debug {
        let mut debug = self.guest_debug(step);
        debug.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_INJECT_BP;
        debug
    }

    /// What a debug exit with this DR6 means: a slot that fired (a watchpoint before an
    /// execute breakpoint), else a single step.
    pub fn hit(&self, dr6: u64) -> Option<Hit> {
        let fired = (0..SLOTS)
            .filter(|i| dr6 & DR6_HITS & (1 << i) != 0)
            .filter_map(|i| self.slots[i]);
        let mut hit = None;
        for slot in fired {
            match slot.what {
                Use::Data { kind, .. } => {
                    return Some(Hit::Watch {
                        kind,
                        addr: slot.addr,
                    })
                }
                Use::Execute(_) => hit = Some(Hit::Breakpoint),
            }
        }
        hit.or((dr6 & DR6_STEP != 0).then_some(Hit::Step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: Watching = Watching::Register;

    #[test]
    fn breakpoints_fill_the_four_slots_and_no_more() {
        let mut b = Breakpoints::default();
        for i in 0..SLOTS as u64 {
            assert!(b.add_execute(0x1000 + i, Origin::Break));
        }
        assert!(!b.add_execute(0x2000, Origin::HardwareBreak));
        assert!(!b.add_watch(0x3000, 8, WatchKind::Write, REG));
        assert!(b.remove_execute(0x1002, Origin::Break));
        assert!(!b.remove_execute(0x1002, Origin::Break));
        assert!(
            !b.remove_execute(0x1001, Origin::HardwareBreak),
            "origin must match"
        );
        assert!(b.add_execute(0x2000, Origin::HardwareBreak));
    }

    #[test]
    fn dr7_enables_each_slot_with_its_kind_and_length() {
        let mut b = Breakpoints::default();
        assert!(b.add_execute(0xffff_ffff_8020_0000, Origin::Break));
        assert!(b.add_watch(0x7000, 8, WatchKind::Write, REG));
        assert!(b.add_watch(0x8002, 2, WatchKind::ReadWrite, REG));
        let debug = b.guest_debug(false);
        assert_eq!(
            debug.control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP,
            "no #BP intercept without software breakpoints"
        );
        let [dr0, dr1, dr2, ..] = debug.arch.debugreg;
        assert_eq!((dr0, dr1, dr2), (0xffff_ffff_8020_0000, 0x7000, 0x8002));
        let dr7 = debug.arch.debugreg[7];
        // L0 L1 L2, LE GE; slot 0 RW=00 LEN=00; slot 1 RW=01 LEN=10; slot 2 RW=11 LEN=01.
        assert_eq!(dr7, 0b01_0101 | 0x300 | (0b1001 << 20) | (0b0111 << 24));
    }

    #[test]
    fn nothing_asked_leaves_the_guest_undisturbed() {
        let mut b = Breakpoints::default();
        assert_eq!(b.guest_debug(false).control, 0);
        assert_eq!(
            b.guest_debug(true).control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP
        );
        b.plant(
            0x1000,
            Planted {
                phys: 0x1000,
                saved: 0x55,
            },
        );
        let control = b.guest_debug(false).control;
        assert_eq!(control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP);
        assert!(b.reinject_breakpoint(false).control & KVM_GUESTDBG_INJECT_BP != 0);
        assert!(b.is_planted(0x1000));
        assert_eq!(b.unplant_all().len(), 1);
        assert!(!b.is_planted(0x1000));
    }

    #[test]
    fn an_unaligned_watch_takes_one_slot_per_aligned_piece() {
        assert_eq!(
            watch_pieces(0x1003, 6),
            Some(vec![(0x1003, 1), (0x1004, 4), (0x1008, 1)])
        );
        assert_eq!(
            watch_pieces(0x1000, 16),
            Some(vec![(0x1000, 8), (0x1008, 8)])
        );
        assert_eq!(watch_pieces(0x1000, 0), None);
        assert_eq!(watch_pieces(u64::MAX, 2), None);
        let mut b = Breakpoints::default();
        assert!(b.add_execute(0x10, Origin::Break));
        assert!(b.add_execute(0x20, Origin::Break));
        // Three pieces, two free slots: refused whole.
        assert!(!b.add_watch(0x1003, 6, WatchKind::Write, REG));
        assert!(b.add_watch(0x1000, 16, WatchKind::Write, REG));
        assert!(b.remove_watch(0x1000, 16, WatchKind::Write));
        assert!(b.add_execute(0x30, Origin::Break) && b.add_execute(0x40, Origin::Break));
    }

    #[test]
    fn a_stepped_watch_arms_the_trap_flag_and_fires_when_its_value_changes() {
        let mut b = Breakpoints::default();
        let stepping = Watching::Stepping { last: Some(5) };
        assert!(b.add_watch(0x2000, 8, WatchKind::Write, stepping));
        assert!(b.needs_stepping());
        let debug = b.guest_debug(false);
        assert_eq!(debug.control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP);
        assert_eq!(
            debug.arch.debugreg[7], 0,
            "no debug register is armed for it"
        );
        assert_eq!(b.stepped_change(|_, _| Some(5)), None);
        let watch = Hit::Watch {
            kind: WatchKind::Write,
            addr: 0x2000,
        };
        assert_eq!(b.stepped_change(|_, _| Some(6)), Some(watch));
        assert_eq!(b.stepped_change(|_, _| Some(6)), None, "reported once");
        assert_eq!(
            b.stepped_change(|_, _| None),
            Some(watch),
            "unmapped is a change"
        );
        assert!(b.remove_watch(0x2000, 8, WatchKind::Write));
        assert!(!b.needs_stepping());
    }

    #[test]
    fn dr6_names_the_watchpoint_before_the_breakpoint_and_else_the_step() {
        let mut b = Breakpoints::default();
        assert!(b.add_execute(0x10, Origin::Break));
        assert!(b.add_watch(0x2000, 4, WatchKind::Write, REG));
        assert_eq!(b.hit(0b01), Some(Hit::Breakpoint));
        let watch = Hit::Watch {
            kind: WatchKind::Write,
            addr: 0x2000,
        };
        assert_eq!(b.hit(0b11), Some(watch));
        assert_eq!(b.hit(DR6_STEP | 0xffff_0ff0), Some(Hit::Step));
        assert_eq!(b.hit(0b100), None, "an empty slot does not fire");
    }
}

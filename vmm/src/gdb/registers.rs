//! What gdb sees of the vCPU: gdb's x86_64 core and SSE registers (`gdbstub_arch`), then
//! fs_base/gs_base and the control registers and EFER, described by `target.xml` and read from
//! (and written back to) the vCPU's KVM state.

use super::GdbError;
use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

/// The target description gdb asks for, in the order of [`SystemRegs`].
const TARGET_XML: &str = include_str!("target.xml");

/// Bytes of the core and SSE registers in a `g` packet (what `X86_64CoreRegs` serializes).
const CORE_LEN: usize = 0x218;
/// The 64-bit registers after them: fs_base, gs_base, cr0, cr2, cr3, cr4, cr8, efer.
const SYSTEM_REGS: usize = 8;

/// x86_64 as a system debugger sees it: `gdbstub_arch`'s `X86_64_SSE` plus the registers a
/// kernel developer needs (fs_base, gs_base, CR0, CR2, CR3, CR4, CR8, EFER).
pub enum X86_64System {}

impl Arch for X86_64System {
    type Usize = u64;
    type Registers = SystemRegs;
    type RegId = ();
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// Every register of `target.xml`, in its order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SystemRegs {
    /// rax..r15, rip, eflags, the segment selectors, x87 and SSE.
    pub core: X86_64CoreRegs,
    pub fs_base: u64,
    pub gs_base: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
}

impl SystemRegs {
    fn system(&self) -> [u64; SYSTEM_REGS] {
        [
            self.fs_base,
            self.gs_base,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.cr8,
            self.efer,
        ]
    }
}

impl Registers for SystemRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for value in self.system() {
            value
                .to_le_bytes()
                .into_iter()
                .for_each(|b| write_byte(Some(b)));
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() != CORE_LEN + 8 * SYSTEM_REGS {
            return Err(());
        }
        let (core, system) = bytes.split_at(CORE_LEN);
        self.core.gdb_deserialize(core)?;
        let mut values = system
            .as_chunks::<8>()
            .0
            .iter()
            .map(|b| u64::from_le_bytes(*b));
        let mut next = || values.next().ok_or(());
        self.fs_base = next()?;
        self.gs_base = next()?;
        self.cr0 = next()?;
        self.cr2 = next()?;
        self.cr3 = next()?;
        self.cr4 = next()?;
        self.cr8 = next()?;
        self.efer = next()?;
        Ok(())
    }
}

/// Why gdb's new register values were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOnlySelector;

/// The vCPU's registers as KVM holds them.
#[derive(Clone, Copy, Debug)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
}

/// The full x87 tag word (two bits per register, 11 = empty) from FXSAVE's abridged one.
fn full_tag(abridged: u8) -> u32 {
    (0..8)
        .filter(|i| abridged & (1 << i) == 0)
        .fold(0, |tag, i| tag | (0b11 << (2 * i)))
}

/// FXSAVE's abridged tag (one bit per register, 1 = valid) from the full tag word.
fn abridged_tag(full: u32) -> u8 {
    (0..8)
        .filter(|i| (full >> (2 * i)) & 0b11 != 0b11)
        .fold(0, |tag, i| tag | (1 << i))
}

impl VcpuState {
    pub fn read(vcpu: &VcpuFd) -> Result<VcpuState, GdbError> {
        Ok(VcpuState {
            regs: vcpu.get_regs().map_err(GdbError::kvm("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(GdbError::kvm("KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(GdbError::kvm("KVM_GET_FPU"))?,
        })
    }

    pub fn write(&self, vcpu: &VcpuFd) -> Result<(), GdbError> {
        vcpu.set_regs(&self.regs)
            .map_err(GdbError::kvm("KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(GdbError::kvm("KVM_SET_SREGS"))?;
        vcpu.set_fpu(&self.fpu)
            .map_err(GdbError::kvm("KVM_SET_FPU"))
    }

    fn gprs(&self) -> [u64; 16] {
        let r = &self.regs;
        [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ]
    }

    fn set_gprs(&mut self, v: &[u64; 16]) {
        let r = &mut self.regs;
        [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ] = *v;
    }

    /// The registers as gdb sees them.
    pub fn as_gdb(&self) -> SystemRegs {
        let (s, f) = (&self.sregs, &self.fpu);
        let mut core = X86_64CoreRegs {
            regs: self.gprs(),
            eflags: self.regs.rflags as u32,
            rip: self.regs.rip,
            mxcsr: f.mxcsr,
            ..Default::default()
        };
        let seg = &mut core.segments;
        (seg.cs, seg.ss, seg.ds, seg.es, seg.fs, seg.gs) = (
            s.cs.selector.into(),
            s.ss.selector.into(),
            s.ds.selector.into(),
            s.es.selector.into(),
            s.fs.selector.into(),
            s.gs.selector.into(),
        );
        for (st, fpr) in core.st.iter_mut().zip(&f.fpr) {
            st.copy_from_slice(&fpr[..10]);
        }
        let fpu = &mut core.fpu;
        fpu.fctrl = f.fcw.into();
        fpu.fstat = f.fsw.into();
        fpu.ftag = full_tag(f.ftwx);
        fpu.fioff = f.last_ip as u32;
        fpu.fooff = f.last_dp as u32;
        fpu.fop = f.last_opcode.into();
        for (xmm, bytes) in core.xmm.iter_mut().zip(&f.xmm) {
            *xmm = u128::from_le_bytes(*bytes);
        }
        SystemRegs {
            core,
            fs_base: s.fs.base,
            gs_base: s.gs.base,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
        }
    }

    /// Takes what gdb wrote. A changed segment selector is refused (its hidden descriptor would
    /// not follow), and nothing changes then.
    pub fn apply(&mut self, new: &SystemRegs) -> Result<(), ReadOnlySelector> {
        if new.core.segments != self.as_gdb().core.segments {
            return Err(ReadOnlySelector);
        }
        let core = &new.core;
        self.set_gprs(&core.regs);
        self.regs.rip = core.rip;
        self.regs.rflags = (self.regs.rflags & !0xffff_ffff) | u64::from(core.eflags);
        let s = &mut self.sregs;
        s.fs.base = new.fs_base;
        s.gs.base = new.gs_base;
        (s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer) =
            (new.cr0, new.cr2, new.cr3, new.cr4, new.cr8, new.efer);
        let f = &mut self.fpu;
        for (fpr, st) in f.fpr.iter_mut().zip(&core.st) {
            fpr[..10].copy_from_slice(st);
        }
        f.fcw = core.fpu.fctrl as u16;
        f.fsw = core.fpu.fstat as u16;
        f.ftwx = abridged_tag(core.fpu.ftag);
        f.last_ip = core.fpu.fioff.into();
        f.last_dp = core.fpu.fooff.into();
        f.last_opcode = core.fpu.fop as u16;
        for (bytes, xmm) in f.xmm.iter_mut().zip(&core.xmm) {
            *bytes = xmm.to_le_bytes();
        }
        f.mxcsr = core.mxcsr;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> VcpuState {
        let mut s = VcpuState {
            regs: kvm_regs {
                rax: 1,
                rsp: 0xffff_ffff_8030_0000,
                r15: 15,
                rip: 0xffff_ffff_8020_1234,
                rflags: 0x246,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            fpu: kvm_fpu {
                ftwx: 0b0000_0001,
                mxcsr: 0x1f80,
                ..Default::default()
            },
        };
        s.sregs.cs.selector = 0x08;
        s.sregs.ss.selector = 0x10;
        s.sregs.gs.base = 0x1234_5000;
        (s.sregs.cr0, s.sregs.cr3, s.sregs.cr4, s.sregs.efer) = (0x8005_0033, 0x20000, 0x20, 0xd00);
        s
    }

    #[test]
    fn the_g_packet_has_core_sse_then_system_registers() {
        let regs = state().as_gdb();
        let mut bytes = Vec::new();
        regs.gdb_serialize(|b| bytes.push(b.expect("every register is known")));
        assert_eq!(bytes.len(), CORE_LEN + 64);
        // rsp is the 8th register; rip comes right after r15.
        assert_eq!(bytes[7 * 8..8 * 8], 0xffff_ffff_8030_0000u64.to_le_bytes());
        assert_eq!(bytes[0x80..0x88], 0xffff_ffff_8020_1234u64.to_le_bytes());
        // cs, then ss, after eflags.
        assert_eq!(bytes[0x8c..0x90], 8u32.to_le_bytes());
        assert_eq!(bytes[0x90..0x94], 0x10u32.to_le_bytes());
        let system = &bytes[CORE_LEN..];
        assert_eq!(system[8..16], 0x1234_5000u64.to_le_bytes()); // gs_base
        assert_eq!(system[16..24], 0x8005_0033u64.to_le_bytes()); // cr0
        assert_eq!(system[32..40], 0x20000u64.to_le_bytes()); // cr3
        assert_eq!(system[56..64], 0xd00u64.to_le_bytes()); // efer
        let mut back = SystemRegs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, regs);
        assert!(back.gdb_deserialize(&bytes[..CORE_LEN]).is_err());
    }

    #[test]
    fn written_registers_reach_the_kvm_state() {
        let mut s = state();
        let mut regs = s.as_gdb();
        regs.core.regs[0] = 0x42; // rax
        regs.core.rip += 1;
        regs.cr3 = 0x30000;
        regs.core.fpu.ftag = 0xffff; // all empty
        s.apply(&regs).unwrap();
        assert_eq!((s.regs.rax, s.regs.rip), (0x42, 0xffff_ffff_8020_1235));
        assert_eq!((s.sregs.cr3, s.fpu.ftwx), (0x30000, 0));
        assert_eq!(s.as_gdb(), regs);
    }

    #[test]
    fn a_changed_segment_selector_is_refused() {
        let mut s = state();
        let mut regs = s.as_gdb();
        regs.core.regs[0] = 0x42;
        regs.core.segments.cs = 0x2b;
        assert_eq!(s.apply(&regs), Err(ReadOnlySelector));
        assert_eq!(s.regs.rax, 1, "nothing changes");
    }

    #[test]
    fn x87_tags_convert_both_ways() {
        assert_eq!(full_tag(0), 0xffff);
        assert_eq!(full_tag(0b1), 0xfffc);
        for abridged in [0u8, 1, 0x81, 0xff] {
            assert_eq!(abridged_tag(full_tag(abridged)), abridged);
        }
    }
}

//! `monitor cpus` and the column gdb's `info threads` shows: each vCPU's gdb thread, where it
//! is, its ring and CR3, the address space loaded there (matched against the spaces of the
//! last batch boundary), and the spaces the TLB model, replayed from the flush trace, has
//! loaded on it.
#![forbid(unsafe_code)]

use super::observer::MmView;
use super::registers::VcpuState;
use shared_mm::abi::KERNEL_SPACE;
use shared_mm::pte::ADDRESS_MASK;
use std::fmt::Write;

/// The most spaces one line names; the rest are counted (the guest decides how many exist).
const NAMED_SPACES: usize = 8;

/// One vCPU as `monitor cpus` sees it.
#[derive(Clone, Copy, Debug)]
pub struct CpuLine {
    pub cpu: u32,
    /// The thread whose stop gdb heard.
    pub stopped: bool,
    /// Its parked registers (`None`: it has not parked, e.g. after the guest's end).
    pub state: Option<VcpuState>,
}

/// The CPL: the low bits of CS in long mode.
fn ring(state: &VcpuState) -> u16 {
    state.sregs.cs.selector & 3
}

/// Every space the view knows, with its page-table root: the kernel's first.
fn known_spaces(view: &MmView) -> impl Iterator<Item = (u32, u64)> + '_ {
    let kernel = view.kernel.as_ref().map(|k| (KERNEL_SPACE, k.cr3));
    let users = view.spaces.iter().map(|s| (s.space, s.cr3));
    kernel.into_iter().chain(users)
}

fn name(space: u32) -> String {
    if space == KERNEL_SPACE {
        "kernel".into()
    } else {
        format!("space {space}")
    }
}

/// The space whose page tables `cr3` roots, as the view knows it.
fn space_of(cr3: u64, view: &MmView) -> String {
    known_spaces(view)
        .find(|(_, root)| root & ADDRESS_MASK == cr3 & ADDRESS_MASK)
        .map_or(
            "no space known at the last batch boundary".into(),
            |(s, _)| name(s),
        )
}

/// The spaces the TLB model has loaded on `cpu`, or why it cannot tell.
fn loaded_in_model(cpu: u32, view: &MmView) -> String {
    let Some(tlb) = &view.tlb else {
        return "no flush trace replayed yet".into();
    };
    let loaded: Vec<String> = known_spaces(view)
        .filter(|(_, root)| tlb.cpus_caching(root & ADDRESS_MASK).contains(cpu))
        .map(|(space, _)| name(space))
        .collect();
    match loaded.len() {
        0 => "none of the known spaces".into(),
        n if n > NAMED_SPACES => format!(
            "{} and {} more",
            loaded[..NAMED_SPACES].join(", "),
            n - NAMED_SPACES
        ),
        _ => loaded.join(", "),
    }
}

/// gdb's `info threads` text for CPU `cpu`.
pub fn extra_info(cpu: u32, state: Option<&VcpuState>, view: &MmView) -> String {
    match state {
        None => format!("cpu {cpu}, running"),
        Some(state) => {
            let cr3 = state.sregs.cr3;
            format!(
                "cpu {cpu}, ring {}, cr3 {cr3:#x} ({})",
                ring(state),
                space_of(cr3, view)
            )
        }
    }
}

/// `monitor cpus`: one line per vCPU.
pub fn listing(cpus: &[CpuLine], view: &MmView) -> String {
    let mut out = String::new();
    for line in cpus {
        let cpu = line.cpu;
        let _ = write!(out, "cpu {cpu}: thread {}", u64::from(cpu) + 1);
        if line.stopped {
            out.push_str(" (stopped here)");
        }
        let Some(state) = &line.state else {
            let _ = writeln!(out, ", not parked");
            continue;
        };
        let cr3 = state.sregs.cr3;
        let _ = writeln!(
            out,
            ", rip {:#x}, ring {}, cr3 {cr3:#x} ({}); TLB model has loaded: {}",
            state.regs.rip,
            ring(state),
            space_of(cr3, view),
            loaded_in_model(cpu, view)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::abi::SpaceRecord;

    fn state(rip: u64, cs: u16, cr3: u64) -> VcpuState {
        let mut s = VcpuState {
            regs: Default::default(),
            sregs: Default::default(),
            fpu: Default::default(),
        };
        s.regs.rip = rip;
        s.sregs.cs.selector = cs;
        s.sregs.cr3 = cr3;
        s
    }

    #[test]
    fn each_cpu_names_its_thread_ring_and_space() {
        let view = MmView {
            spaces: vec![SpaceRecord {
                space: 2,
                cr3: 0x5000,
            }],
            ..MmView::default()
        };
        let cpus = [
            CpuLine {
                cpu: 0,
                stopped: false,
                state: Some(state(0x1000, 0x8, 0x20000)),
            },
            CpuLine {
                cpu: 1,
                stopped: true,
                state: Some(state(0x40_0000, 0x1b, 0x5000)),
            },
        ];
        let out = listing(&cpus, &view);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0]
            .starts_with("cpu 0: thread 1, rip 0x1000, ring 0, cr3 0x20000 (no space known"));
        assert!(
            lines[1].starts_with(
                "cpu 1: thread 2 (stopped here), rip 0x400000, ring 3, cr3 0x5000 (space 2)"
            ),
            "{out}"
        );
        assert!(lines[1].ends_with("no flush trace replayed yet"), "{out}");
        let info = extra_info(1, cpus[1].state.as_ref(), &view);
        assert_eq!(info, "cpu 1, ring 3, cr3 0x5000 (space 2)");
    }
}

//! Several CPUs: CPU 0 has the host start the others; each comes up (GDT, IDT, x2APIC),
//! reports in over its own mailbox and then waits, halted, serving IPIs. CPU 0 then measures
//! the IPI round trip to all of them and reports it, brings the MM up and wakes them: each then
//! runs the agent loop on its own mailbox.
#![forbid(unsafe_code)]

pub mod cross_call;
mod round_trip;
pub mod shootdown;

use crate::agent;
use crate::arch::x86_64::{self as arch, apic, gdt, idt, interrupts, machine, percpu};
use crate::hypercall::{HypercallError, Mailbox};
use shared_mm::abi::Hypercall;
use shared_mm::boot_info::{BootInfo, GuestCommand};
use shared_mm::smp::CpuSet;

/// On CPU 0, after its GDT and the IDT: starts every other CPU, waits (in the host) until each
/// has reported in, then pings them all and reports the round trip.
pub fn start_others(mailbox: &mut Mailbox, cpus: u32) -> Result<(), HypercallError> {
    let apic_id = apic::enable();
    percpu::set_apic_id(apic_id);
    mailbox.call(Hypercall::StartCpus, 0, 0, [u64::from(apic_id), 0, 0, 0])?;
    let trip = round_trip::measure(CpuSet::first(cpus).without(0));
    let mut count = 0;
    for (slot, served) in mailbox
        .payload()
        .as_chunks_mut::<8>()
        .0
        .iter_mut()
        .zip(cross_call::pings_served(cpus as usize))
    {
        *slot = served.to_le_bytes();
        count += 1;
    }
    let args = [
        trip.pings as u64,
        trip.median,
        trip.tsc_read,
        u64::from(trip.targets.bits()),
    ];
    mailbox.call(Hypercall::IpiRoundTrip, count, count as usize * 8, args)?;
    Ok(())
}

/// An AP's life, from entry (its GS base is set): bring the CPU up, report in, serve IPIs.
pub fn ap_main(cpu: u32, mut mailbox: Mailbox, boot_info: &BootInfo) -> ! {
    gdt::init(cpu);
    idt::load();
    let apic_id = apic::enable();
    percpu::set_apic_id(apic_id);
    // An AP misbehaviour command names the last CPU.
    let command = GuestCommand::from_u64(boot_info.command);
    let misbehaves = u64::from(cpu) + 1 == boot_info.cpu_count;
    if misbehaves && command == Some(GuestCommand::ApSilent) {
        arch::halt_forever();
    }
    let online = [u64::from(cpu), u64::from(apic_id), 0, 0];
    if let Err(e) = mailbox.call(Hypercall::CpuOnline, 0, 0, online) {
        panic!("reporting in failed: {e:?}");
    }
    match command {
        Some(GuestCommand::ApPanic) if misbehaves => panic!("panic requested by the host"),
        Some(GuestCommand::ApTripleFault) if misbehaves => arch::triple_fault(),
        _ => serve(cpu, &mut mailbox),
    }
}

/// Waits for CPU 0's MM (serving IPIs meanwhile), joins it and runs the agent loop on this
/// CPU until the host has no more work; then serves IPIs for good.
fn serve(cpu: u32, mailbox: &mut Mailbox) -> ! {
    interrupts::wait_until(|| agent::MM.get().is_some());
    let mm = *agent::MM.get().expect("the MM is up");
    let mut mm_cpu = mm.cpu(cpu, machine::traced(cpu));
    if let Err(e) = agent::serve(mailbox, mm, &mut mm_cpu) {
        panic!("agent loop: hypercall failed: {e:?}");
    }
    interrupts::idle()
}

/// On CPU 0, once the MM is up: wakes the other `cpus - 1` CPUs, which wait for it.
pub fn mm_ready(cpus: u32) {
    for cpu in CpuSet::first(cpus).without(0).iter() {
        apic::send_ipi(percpu::apic_id(cpu), apic::WAKE_VECTOR);
    }
}

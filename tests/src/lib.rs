//! Helpers for the tests that boot real guests: configs, a hand-made ELF, console parsing. What
//! the tests boot: `docs/architecture.md`.
#![forbid(unsafe_code)]

use mm_driver::driver::IdleDriver;
use mm_driver::GuestConfig;
use shared_mm::boot_info::{GuestCommand, KERNEL_VIRT_BASE};
use std::collections::BTreeMap;
use std::time::Duration;
use vmm::{Vm, VmmError};

/// Guest RAM the tests boot with: above the guest's minimum, small enough to set up quickly.
pub const TEST_MEMORY: u64 = 64 << 20;

/// Time limit of every booting test, so a guest that never exits fails its test instead of
/// hanging the suite. A boot takes well under a second.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A config for the embedded guest that runs `command`, with the tests' memory and time limit.
pub fn config(command: GuestCommand) -> GuestConfig {
    GuestConfig {
        memory: TEST_MEMORY,
        timeout: Some(TEST_TIMEOUT),
        command,
        ..GuestConfig::new(guest_image::EMBEDDED_KERNEL.to_vec())
    }
}

/// A guest that has run to its end (successfully or not).
pub struct Finished {
    /// The VM, kept for its console and its CPUID table.
    pub vm: Vm,
    /// What [`Vm::run`] returned.
    pub status: Result<u32, VmmError>,
}

/// Creates a VM from `config` and runs it with an [`IdleDriver`] until it exits.
///
/// Returns the error of [`Vm::new`] if the VM cannot be set up. Panics if `config` has no
/// timeout: a test must never be able to hang.
pub fn boot(config: &GuestConfig) -> Result<Finished, VmmError> {
    assert!(
        config.timeout.is_some(),
        "tests must boot guests with a timeout"
    );
    let mut vm = Vm::new(config)?;
    let status = vm.run(&mut IdleDriver);
    Ok(Finished { vm, status })
}

/// Boots the embedded guest with `command` and returns the error it ended with.
///
/// Panics (failing the test) if setup fails or the guest exits normally; the console output is
/// included in the panic message.
pub fn run_error(command: GuestCommand) -> VmmError {
    let finished = boot(&config(command)).unwrap_or_else(|e| panic!("VM setup failed: {e}"));
    match finished.status {
        Ok(status) => panic!(
            "guest exited with status {status}, expected an error; console:\n{}",
            finished.vm.console_output()
        ),
        Err(e) => e,
    }
}

/// Returns the error [`Vm::new`] gives for `config`; panics if the VM is created.
pub fn setup_error(config: &GuestConfig) -> VmmError {
    match Vm::new(config) {
        Ok(_) => panic!(
            "VM setup succeeded for a {}-byte kernel and {} bytes of RAM, expected an error",
            config.kernel.len(),
            config.memory
        ),
        Err(e) => e,
    }
}

/// Size of an ELF64 file header.
const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
const PHDR_SIZE: usize = 56;

/// A minimal x86_64 ELF64 executable: the file header, one `PT_LOAD` program header that loads
/// the whole file at guest-physical `paddr` (virtual `KERNEL_VIRT_BASE + paddr`, where the VMM's
/// boot page tables map the kernel), and `code` right after the headers, which is the entry point.
pub fn minimal_elf(paddr: u64, code: &[u8]) -> Vec<u8> {
    let headers = (EHDR_SIZE + PHDR_SIZE) as u64;
    let file_size = headers + code.len() as u64;
    let vaddr = KERNEL_VIRT_BASE.wrapping_add(paddr);
    let mut elf = Vec::with_capacity(file_size as usize);
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, System V ABI, padding.
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&vaddr.wrapping_add(headers).to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no section headers
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(elf.len(), EHDR_SIZE);
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R+X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&vaddr.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&paddr.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&file_size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&file_size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    assert_eq!(elf.len() as u64, headers);
    elf.extend_from_slice(code);
    elf
}

/// The `cpu: key=value` lines the guest prints at boot, as a map from key to value.
pub fn cpu_facts(console: &str) -> BTreeMap<String, String> {
    console
        .lines()
        .filter_map(|line| line.strip_prefix("cpu: "))
        .filter_map(|fact| fact.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// Parses a number the guest printed with `{:#x}` (`0x` prefix, hexadecimal digits).
pub fn parse_hex(text: &str) -> Option<u32> {
    u32::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_elf_has_the_documented_layout() {
        let elf = minimal_elf(0x20_0000, &[0xf4]);
        assert_eq!(elf.len(), EHDR_SIZE + PHDR_SIZE + 1);
        assert_eq!(&elf[..4], b"\x7fELF");
        let u64_at = |off: usize| u64::from_le_bytes(elf[off..off + 8].try_into().unwrap());
        assert_eq!(u64_at(24), KERNEL_VIRT_BASE + 0x20_0000 + 120, "e_entry");
        assert_eq!(u64_at(EHDR_SIZE + 24), 0x20_0000, "p_paddr");
        assert_eq!(elf[120], 0xf4);
    }

    #[test]
    fn cpu_facts_reads_only_cpu_lines() {
        let console = "guest-kernel: booted\ncpu: family=0x6\ncpu: brand_string=A B=C\nother=1\n";
        let facts = cpu_facts(console);
        assert_eq!(facts.len(), 2);
        assert_eq!(facts["family"], "0x6");
        assert_eq!(facts["brand_string"], "A B=C");
        assert_eq!(parse_hex(&facts["family"]), Some(6));
        assert_eq!(parse_hex("6"), None);
    }
}

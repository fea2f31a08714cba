//! Processor identification from CPUID, reported in Intel SDM terms (Vol. 2A, CPUID).
#![forbid(unsafe_code)]

use crate::arch::x86_64::cpuid::cpuid;

/// Leaf 1 EDX feature names, bit by bit (Intel SDM Table 3-11); empty names are reserved bits.
const EDX_FEATURES: [&str; 32] = [
    "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "", "sep", "mtrr", "pge",
    "mca", "cmov", "pat", "pse36", "psn", "clfsh", "", "ds", "acpi", "mmx", "fxsr", "sse", "sse2",
    "ss", "htt", "tm", "", "pbe",
];
/// Leaf 1 ECX feature names, bit by bit (Intel SDM Table 3-10).
const ECX_FEATURES: [&str; 32] = [
    "sse3",
    "pclmulqdq",
    "dtes64",
    "monitor",
    "ds_cpl",
    "vmx",
    "smx",
    "eist",
    "tm2",
    "ssse3",
    "cnxt_id",
    "sdbg",
    "fma",
    "cmpxchg16b",
    "xtpr",
    "pdcm",
    "",
    "pcid",
    "dca",
    "sse4_1",
    "sse4_2",
    "x2apic",
    "movbe",
    "popcnt",
    "tsc_deadline",
    "aesni",
    "xsave",
    "osxsave",
    "avx",
    "f16c",
    "rdrand",
    "hypervisor",
];

fn bytes_of(regs: &[u32], out: &mut [u8]) {
    for (chunk, r) in out.chunks_mut(4).zip(regs) {
        chunk.copy_from_slice(&r.to_le_bytes());
    }
}

fn trimmed(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).unwrap_or("?").trim()
}

/// Prints one `cpu: key=value` line per fact.
pub fn report() {
    let leaf0 = cpuid(0);
    let mut vendor = [0u8; 12];
    bytes_of(&[leaf0.ebx, leaf0.edx, leaf0.ecx], &mut vendor);
    println!("cpu: vendor_id_string={}", trimmed(&vendor));

    let mut brand = [0u8; 48];
    if cpuid(0x8000_0000).eax >= 0x8000_0004 {
        for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
            let r = cpuid(leaf);
            bytes_of(
                &[r.eax, r.ebx, r.ecx, r.edx],
                &mut brand[i * 16..i * 16 + 16],
            );
        }
    }
    println!("cpu: brand_string={}", trimmed(&brand));

    let leaf1 = cpuid(1);
    let stepping = leaf1.eax & 0xf;
    let model = (leaf1.eax >> 4) & 0xf;
    let family = (leaf1.eax >> 8) & 0xf;
    let extended_model = (leaf1.eax >> 16) & 0xf;
    let extended_family = (leaf1.eax >> 20) & 0xff;
    let display_family = if family == 0xf {
        family + extended_family
    } else {
        family
    };
    let display_model = if family == 0x6 || family == 0xf {
        (extended_model << 4) + model
    } else {
        model
    };
    println!("cpu: family={family:#x}");
    println!("cpu: model={model:#x}");
    println!("cpu: stepping={stepping:#x}");
    println!("cpu: display_family={display_family:#x}");
    println!("cpu: display_model={display_model:#x}");

    print!("cpu: features_string=");
    let mut first = true;
    for (reg, names) in [(leaf1.edx, &EDX_FEATURES), (leaf1.ecx, &ECX_FEATURES)] {
        for (bit, name) in names.iter().enumerate() {
            if reg & (1 << bit) != 0 && !name.is_empty() {
                print!("{}{}", if first { "" } else { " " }, name);
                first = false;
            }
        }
    }
    println!();
}

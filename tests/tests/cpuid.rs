//! The guest's `cpu:` report matches the VMM's CPUID table, decoded here per the Intel SDM.
#![forbid(unsafe_code)]

use integration_tests::{boot, config, cpu_facts, parse_hex};
use shared_mm::boot_info::GuestCommand;
use std::collections::BTreeSet;
use vmm::arch::cpuid::leaf;

/// Named leaf-1 EDX feature bits (SDM Table 3-11), spelled as the guest prints them.
const EDX_BITS: &[(u32, &str)] = &[
    (0, "fpu"),
    (1, "vme"),
    (2, "de"),
    (3, "pse"),
    (4, "tsc"),
    (5, "msr"),
    (6, "pae"),
    (7, "mce"),
    (8, "cx8"),
    (9, "apic"),
    (11, "sep"),
    (12, "mtrr"),
    (13, "pge"),
    (14, "mca"),
    (15, "cmov"),
    (16, "pat"),
    (17, "pse36"),
    (18, "psn"),
    (19, "clfsh"),
    (21, "ds"),
    (22, "acpi"),
    (23, "mmx"),
    (24, "fxsr"),
    (25, "sse"),
    (26, "sse2"),
    (27, "ss"),
    (28, "htt"),
    (29, "tm"),
    (31, "pbe"),
];

/// Named leaf-1 ECX feature bits (SDM Table 3-10; bit 31 is the hypervisor-present bit).
const ECX_BITS: &[(u32, &str)] = &[
    (0, "sse3"),
    (1, "pclmulqdq"),
    (2, "dtes64"),
    (3, "monitor"),
    (4, "ds_cpl"),
    (5, "vmx"),
    (6, "smx"),
    (7, "eist"),
    (8, "tm2"),
    (9, "ssse3"),
    (10, "cnxt_id"),
    (11, "sdbg"),
    (12, "fma"),
    (13, "cmpxchg16b"),
    (14, "xtpr"),
    (15, "pdcm"),
    (17, "pcid"),
    (18, "dca"),
    (19, "sse4_1"),
    (20, "sse4_2"),
    (21, "x2apic"),
    (22, "movbe"),
    (23, "popcnt"),
    (24, "tsc_deadline"),
    (25, "aesni"),
    (26, "xsave"),
    (27, "osxsave"),
    (28, "avx"),
    (29, "f16c"),
    (30, "rdrand"),
    (31, "hypervisor"),
];

/// Leaf-1 bits KVM rewrites at run time (`kvm_update_cpuid_runtime`), so the guest may see them
/// differ from the table given to KVM_SET_CPUID2:
/// - `osxsave` (ECX 27) mirrors the guest's CR4.OSXSAVE, which the VMM leaves clear;
/// - `apic` (EDX 9) mirrors the enable bit of the guest's APIC base MSR.
///
/// (KVM also rewrites `monitor`, ECX 3, but only when the MISC_ENABLE_NO_MWAIT quirk is
/// disabled, which this VMM never does.)
const RUNTIME_BITS: [&str; 2] = ["osxsave", "apic"];

/// Processor signature fields of leaf 1 EAX (SDM Figure 3-6).
#[derive(Debug, PartialEq, Eq)]
struct Signature {
    stepping: u32,
    model: u32,
    family: u32,
    display_family: u32,
    display_model: u32,
}

fn signature(eax: u32) -> Signature {
    let stepping = eax & 0xf;
    let model = (eax >> 4) & 0xf;
    let family = (eax >> 8) & 0xf;
    let extended_model = (eax >> 16) & 0xf;
    let extended_family = (eax >> 20) & 0xff;
    Signature {
        stepping,
        model,
        family,
        display_family: match family {
            0xf => family + extended_family,
            _ => family,
        },
        display_model: match family {
            0x6 | 0xf => (extended_model << 4) + model,
            _ => model,
        },
    }
}

/// Registers as the little-endian ASCII string CPUID packs into them, cut at the first NUL and
/// trimmed (brand strings are padded with spaces and NULs).
fn ascii(registers: &[u32]) -> String {
    let bytes: Vec<u8> = registers.iter().flat_map(|r| r.to_le_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_owned()
}

fn feature_names(edx: u32, ecx: u32) -> BTreeSet<&'static str> {
    [(edx, EDX_BITS), (ecx, ECX_BITS)]
        .into_iter()
        .flat_map(|(reg, bits)| {
            bits.iter()
                .filter(move |(bit, _)| reg & (1 << bit) != 0)
                .map(|&(_, name)| name)
        })
        .collect()
}

fn without_runtime_bits(names: BTreeSet<&str>) -> BTreeSet<&str> {
    names
        .into_iter()
        .filter(|n| !RUNTIME_BITS.contains(n))
        .collect()
}

#[test]
fn sdm_signature_formulas() {
    // A family-6 part with an extended model (Coffee Lake, 0x906EA).
    assert_eq!(
        signature(0x0009_06ea),
        Signature {
            stepping: 0xa,
            model: 0xe,
            family: 0x6,
            display_family: 0x6,
            display_model: 0x9e
        }
    );
    // A family-0xF part with an extended family (Zen, 0x800F11).
    assert_eq!(
        signature(0x0080_0f11),
        Signature {
            stepping: 0x1,
            model: 0x1,
            family: 0xf,
            display_family: 0x17,
            display_model: 0x1
        }
    );
    // Other families ignore both extended fields.
    assert_eq!(signature(0x00ff_0534).display_model, 0x3);
    assert_eq!(signature(0x00ff_0534).display_family, 0x5);
}

#[test]
fn guest_cpu_report_matches_the_vmm_cpuid_table() {
    let finished = boot(&config(GuestCommand::Serve)).expect("VM setup");
    let console = finished.vm.console_output();
    assert_eq!(finished.status.ok(), Some(0), "console:\n{console}");
    let facts = cpu_facts(&console);
    let fact = |key: &str| -> &str {
        facts
            .get(key)
            .unwrap_or_else(|| panic!("no `cpu: {key}=` line; console:\n{console}"))
    };
    // The table KVM applied (read back after KVM_SET_CPUID2: PVM rewrites leaf-1 feature bits).
    let table = finished.vm.cpuid();
    let leaf = |function: u32| {
        leaf(table, function)
            .unwrap_or_else(|| panic!("CPUID leaf {function:#x} missing from the VMM's table"))
    };

    let [_, ebx, ecx, edx] = leaf(0);
    assert_eq!(fact("vendor_id_string"), ascii(&[ebx, edx, ecx]));

    let brand = if leaf(0x8000_0000)[0] >= 0x8000_0004 {
        ascii(&[leaf(0x8000_0002), leaf(0x8000_0003), leaf(0x8000_0004)].concat())
    } else {
        String::new()
    };
    assert_eq!(fact("brand_string"), brand);

    let [eax, _, ecx, edx] = leaf(1);
    let expected = signature(eax);
    let number = |key: &str| {
        parse_hex(fact(key)).unwrap_or_else(|| panic!("{key}={} is not 0x-hex", fact(key)))
    };
    let reported = Signature {
        stepping: number("stepping"),
        model: number("model"),
        family: number("family"),
        display_family: number("display_family"),
        display_model: number("display_model"),
    };
    assert_eq!(reported, expected, "leaf 1 eax={eax:#x}");

    let known: BTreeSet<&str> = EDX_BITS.iter().chain(ECX_BITS).map(|&(_, n)| n).collect();
    let shown: BTreeSet<&str> = fact("features_string").split_whitespace().collect();
    let unknown: Vec<_> = shown.difference(&known).collect();
    assert!(unknown.is_empty(), "unknown feature names {unknown:?}");
    assert_eq!(
        without_runtime_bits(shown),
        without_runtime_bits(feature_names(edx, ecx)),
        "leaf 1 edx={edx:#x} ecx={ecx:#x}"
    );
}

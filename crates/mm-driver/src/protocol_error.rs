//! The ways a guest can break the hypercall protocol, or leave KVM in a state the VMM cannot
//! serve: everything the guest writes is attacker-controlled, and each of these ends the run
//! with exit 103.
#![forbid(unsafe_code)]

use std::fmt;

/// How the guest broke the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The mailbox header could not be decoded.
    ShortHeader,
    /// The header's payload length does not fit the mailbox.
    PayloadTooLong { len: u32 },
    /// An unknown hypercall number.
    UnknownHypercall(u32),
    /// A record count whose records do not fit the payload (or overflow while counting).
    RecordsDoNotFit { what: &'static str, count: u64 },
    /// A record that does not decode.
    MalformedRecord { what: &'static str, index: usize },
    /// More results than any batch can hold.
    TooManyResults { count: u32 },
    /// A space id that does not fit the ABI's 32 bits.
    SpaceIdOutOfRange { id: u64 },
    /// A frame report part the ABI does not define.
    UnknownFramesPart(u64),
    /// The flush trace claims more records than its buffer holds.
    TraceCount { count: u64 },
    /// A flush-trace record that does not decode.
    MalformedTraceRecord { index: usize },
    /// KVM could not enter the guest.
    EntryFailed { reason: u64, cpu: u32 },
    /// KVM reported an internal error.
    KvmInternalError { registers: String },
    /// A vCPU exit the VMM does not serve.
    UnexpectedExit { exit: String, registers: String },
    /// A CPU other than 0 sent a snapshot or a frame report: only CPU 0 reports them.
    MmWorkOffCpu0 { cpu: u32, call: &'static str },
    /// A CPU returned results for a batch it was not running.
    UnaskedResults { cpu: u32 },
    /// A CPU other than 0 made a call only CPU 0 makes.
    Cpu0Only { cpu: u32, call: &'static str },
    /// CPU 0 reported itself online (it starts the others instead).
    Cpu0Online,
    /// CPU 0 asked to start other CPUs twice, or in a VM that has none.
    CannotStartCpus { cpus: u32 },
    /// A CPU reported in a second time.
    OnlineTwice { cpu: u32 },
    /// A CPU reported an index or APIC id that is not its own (`cpu`, as KVM created it).
    WrongIdentity {
        cpu: u32,
        claimed_cpu: u64,
        apic_id: u64,
    },
    /// CPU 0's IPI report does not cover every CPU: the targets are not all the others, or
    /// the counts are not one per CPU.
    IpiReportIncomplete { targets: u64, counts: usize },
    /// A CPU served a different number of pings than CPU 0 sent it.
    PingsUnacknowledged { cpu: u32, served: u64, sent: u64 },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ShortHeader => f.write_str("short mailbox header"),
            ProtocolError::PayloadTooLong { len } => {
                write!(f, "payload length {len} exceeds the mailbox")
            }
            ProtocolError::UnknownHypercall(n) => write!(f, "unknown hypercall number {n}"),
            ProtocolError::RecordsDoNotFit { what, count } => {
                write!(f, "{count} {what} records do not fit the payload")
            }
            ProtocolError::MalformedRecord { what, index } => {
                write!(f, "{what} record {index} is malformed")
            }
            ProtocolError::TooManyResults { count } => write!(
                f,
                "{count} results, more than a batch of {} can have",
                shared_mm::abi::MAX_BATCH
            ),
            ProtocolError::TraceCount { count } => write!(
                f,
                "flush trace claims {count} records; the buffer holds {}",
                shared_mm::trace::TRACE_CAPACITY
            ),
            ProtocolError::UnknownFramesPart(part) => {
                write!(f, "unknown frame report part {part}")
            }
            ProtocolError::SpaceIdOutOfRange { id } => {
                write!(f, "space id {id:#x} does not fit 32 bits")
            }
            ProtocolError::MalformedTraceRecord { index } => {
                write!(f, "flush trace record {index} is malformed")
            }
            ProtocolError::EntryFailed { reason, cpu } => {
                write!(
                    f,
                    "VM entry failed (hardware reason {reason:#x}, cpu {cpu})"
                )
            }
            ProtocolError::KvmInternalError { registers } => {
                write!(f, "KVM internal error; vCPU state:\n{registers}")
            }
            ProtocolError::UnexpectedExit { exit, registers } => {
                write!(f, "unexpected vCPU exit {exit}; vCPU state:\n{registers}")
            }
            ProtocolError::MmWorkOffCpu0 { cpu, call } => write!(
                f,
                "cpu {cpu} made a {call} hypercall; only cpu 0 sends snapshots and frame reports"
            ),
            ProtocolError::UnaskedResults { cpu } => {
                write!(f, "cpu {cpu} returned results for no batch it was running")
            }
            ProtocolError::Cpu0Only { cpu, call } => {
                write!(
                    f,
                    "cpu {cpu} made a {call} hypercall, which only cpu 0 makes"
                )
            }
            ProtocolError::Cpu0Online => {
                f.write_str("cpu 0 reported itself online; it starts the others instead")
            }
            ProtocolError::CannotStartCpus { cpus } => write!(
                f,
                "cpu 0 asked to start the other cpus a second time, or with none ({cpus} in all)"
            ),
            ProtocolError::OnlineTwice { cpu } => write!(f, "cpu {cpu} reported in twice"),
            ProtocolError::WrongIdentity {
                cpu,
                claimed_cpu,
                apic_id,
            } => write!(
                f,
                "cpu {cpu} reported as cpu {claimed_cpu} with APIC id {apic_id}; \
                 both should be {cpu}"
            ),
            ProtocolError::IpiReportIncomplete { targets, counts } => write!(
                f,
                "the IPI report names targets {targets:#x} with {counts} ping counts; \
                 it must name every other cpu and count for each cpu"
            ),
            ProtocolError::PingsUnacknowledged { cpu, served, sent } => write!(
                f,
                "cpu {cpu} served {served} of the {sent} pings cpu 0 sent it"
            ),
        }
    }
}

impl std::error::Error for ProtocolError {}

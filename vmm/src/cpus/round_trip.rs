//! The IPI round trip CPU 0 measured and reported: checked against the VM (every other CPU
//! pinged, and each served exactly the pings it was sent), and told as one line.
#![forbid(unsafe_code)]

use crate::error::VmmError;
use crate::hypercall::IpiReport;
use mm_driver::protocol_error::ProtocolError;
use shared_mm::smp::CpuSet;
use std::fmt;

/// An IPI round trip as the guest measured it with the TSC: CPU 0 pings every target at once
/// and halts until all have acknowledged, `pings` times.
#[derive(Clone, Debug, PartialEq)]
pub struct IpiRoundTrip {
    pub targets: CpuSet,
    pub pings: u64,
    /// The median round trip, in TSC cycles; it includes one TSC read.
    pub median_cycles: u64,
    /// The median cost of reading the TSC, in TSC cycles.
    pub tsc_read_cycles: u64,
    /// The guest's TSC frequency (KVM_GET_TSC_KHZ), if KVM reports one.
    pub tsc_khz: Option<u32>,
}

impl IpiRoundTrip {
    /// `report` from CPU 0 of a VM with `cpus` CPUs, checked: it pinged every other CPU, and
    /// each served exactly the pings it was sent (CPU 0 none).
    pub fn check(report: IpiReport, cpus: u32, tsc_khz: Option<u32>) -> Result<Self, VmmError> {
        let others = CpuSet::first(cpus).without(0);
        if report.targets != u64::from(others.bits()) || report.served.len() != cpus as usize {
            return Err(VmmError::from(ProtocolError::IpiReportIncomplete {
                targets: report.targets,
                counts: report.served.len(),
            }));
        }
        for (cpu, &served) in (0..cpus).zip(&report.served) {
            let sent = if others.contains(cpu) {
                report.pings
            } else {
                0
            };
            if served != sent {
                return Err(VmmError::from(ProtocolError::PingsUnacknowledged {
                    cpu,
                    served,
                    sent,
                }));
            }
        }
        Ok(IpiRoundTrip {
            targets: others,
            pings: report.pings,
            median_cycles: report.median,
            tsc_read_cycles: report.tsc_read,
            tsc_khz,
        })
    }

    /// `cycles` of the guest's TSC in µs, if its frequency is known.
    pub fn micros(&self, cycles: u64) -> Option<f64> {
        self.tsc_khz
            .filter(|&khz| khz > 0)
            .map(|khz| cycles as f64 * 1e3 / f64::from(khz))
    }
}

impl fmt::Display for IpiRoundTrip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = |cycles| match self.micros(cycles) {
            Some(us) => format!("{us:.1} µs ({cycles} TSC cycles)"),
            None => format!("{cycles} TSC cycles"),
        };
        let targets: Vec<String> = self.targets.iter().map(|c| c.to_string()).collect();
        write!(
            f,
            "IPI round trip from cpu 0 to halted cpu(s) {} at once: median {} over {} pings, \
             each acknowledged by every target; reading the TSC takes {}, included once",
            targets.join(","),
            time(self.median_cycles),
            self.pings,
            time(self.tsc_read_cycles)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_driver::RunError;

    fn report(targets: u64, served: Vec<u64>) -> IpiReport {
        IpiReport {
            pings: 8,
            median: 70_000,
            tsc_read: 5_000,
            targets,
            served,
        }
    }

    #[test]
    fn a_report_that_covers_every_cpu_passes_and_reads_in_microseconds() {
        let trip = IpiRoundTrip::check(report(0b1110, vec![0, 8, 8, 8]), 4, Some(2_000_000))
            .expect("complete");
        assert_eq!(trip.targets.iter().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(trip.micros(70_000), Some(35.0));
        let line = trip.to_string();
        assert!(
            line.contains("cpu(s) 1,2,3") && line.contains("35.0 µs"),
            "{line}"
        );
        let unknown = IpiRoundTrip::check(report(0b10, vec![0, 8]), 2, None).expect("complete");
        assert!(unknown.to_string().contains("median 70000 TSC cycles"));
    }

    #[test]
    fn a_report_missing_a_cpu_or_a_ping_is_refused() {
        let incomplete = [
            report(0b0110, vec![0, 8, 8, 8]),
            report(0b1110, vec![0, 8, 8]),
            report(0b1111, vec![0, 8, 8, 8]),
        ];
        for r in incomplete {
            let err = IpiRoundTrip::check(r, 4, None).expect_err("incomplete");
            assert!(
                matches!(
                    err,
                    VmmError::Run(RunError::GuestProtocol(
                        ProtocolError::IpiReportIncomplete { .. }
                    ))
                ),
                "{err}"
            );
        }
        let lost = IpiRoundTrip::check(report(0b1110, vec![0, 8, 7, 8]), 4, None);
        assert!(lost.is_err_and(|e| e.to_string().contains("cpu 2 served 7 of the 8 pings")));
        let cpu0 = IpiRoundTrip::check(report(0b1110, vec![1, 8, 8, 8]), 4, None);
        assert!(cpu0.is_err_and(|e| e.to_string().contains("cpu 0 served 1 of the 0")));
    }
}

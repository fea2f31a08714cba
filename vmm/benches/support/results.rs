//! The system bench's results as data: its rows, the machine they were measured on, and the
//! two files a run writes (JSON for programs, a Markdown table for docs/benchmarks.md).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// When a row meets its goal.
#[derive(Clone, Copy)]
pub enum Goal {
    None,
    ValueAtMost(f64),
    ValueAtLeast(f64),
    RatioAtMost(f64),
    RatioAtLeast(f64),
}

/// One line of the table. `ratio` is defined per row (see the bench's legend).
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    pub goal: Goal,
}

impl Row {
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Row {
            name: name.into(),
            value,
            unit,
            baseline: None,
            ratio: None,
            goal: Goal::None,
        }
    }

    pub fn against(mut self, baseline: f64, ratio: f64) -> Self {
        self.baseline = Some(baseline);
        self.ratio = Some(ratio);
        self
    }

    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = goal;
        self
    }

    /// The target as text and whether it is met; `None` for a row without a target.
    pub fn verdict(&self) -> Option<(String, bool)> {
        let ratio = self.ratio.unwrap_or(f64::NAN);
        Some(match self.goal {
            Goal::None => return None,
            Goal::ValueAtMost(t) => (format!("≤ {} {}", num(t), self.unit), self.value <= t),
            Goal::ValueAtLeast(t) => (format!("≥ {} {}", num(t), self.unit), self.value >= t),
            Goal::RatioAtMost(t) => (format!("ratio ≤ {}×", num(t)), ratio <= t),
            Goal::RatioAtLeast(t) => (format!("ratio ≥ {}×", num(t)), ratio >= t),
        })
    }

    fn to_json(&self) -> serde_json::Value {
        let finite = |v: f64| v.is_finite().then_some(v);
        let (target, met) = self
            .verdict()
            .map_or((None, None), |(t, m)| (Some(t), Some(m)));
        serde_json::json!({
            "name": self.name,
            "value": finite(self.value),
            "unit": self.unit,
            "baseline": self.baseline.and_then(finite),
            "ratio": self.ratio.and_then(finite),
            "target": target,
            "met": met,
        })
    }
}

/// A number with precision that suits its size, and thousands separators.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let decimals = match v.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        a if a >= 1.0 => 2,
        _ => 3,
    };
    let text = format!("{v:.decimals$}");
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        "" => format!("{sign}{grouped}"),
        f => format!("{sign}{grouped}.{f}"),
    }
}

/// The rows as one Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| name | value | unit | baseline | ratio | target | met? |\n\
         | --- | ---: | --- | ---: | ---: | --- | --- |\n",
    );
    for row in rows {
        let (target, met) = match row.verdict() {
            None => ("—".to_string(), "—"),
            Some((t, true)) => (t, "met"),
            Some((t, false)) => (t, "**missed**"),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            num(row.value),
            row.unit,
            row.baseline.map_or("—".into(), num),
            row.ratio.map_or("—".into(), |r| format!("{}×", num(r))),
            target,
            met
        );
    }
    out
}

/// Where a run writes its files unless `SYSTEM_BENCH_OUT` says: `bench/` in cargo's target
/// directory.
pub fn default_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm/ lies in the workspace");
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from)
        .join("bench")
}

/// What the bench ran on, read from the host itself (never hard-coded: the CPU differs from
/// machine to machine).
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    /// The KVM module loaded (`kvm_pvm`, `kvm_intel`, `kvm_amd`), or `unknown`.
    pub kvm_module: &'static str,
}

impl Machine {
    pub fn this() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
        let kvm_module = ["kvm_pvm", "kvm_intel", "kvm_amd"]
            .into_iter()
            .find(|m| Path::new(&format!("/sys/module/{m}")).exists())
            .unwrap_or("unknown");
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            kvm_module,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "machine: {}, {} cores, Linux {}, KVM backend {}",
            self.cpu, self.cores, self.kernel, self.kvm_module
        )
    }
}

/// One run of the bench: what ran, where, and how long it took.
pub struct Run<'a> {
    pub machine: &'a Machine,
    /// The one section run (`SYSTEM_BENCH_ONLY`), or `None` for all.
    pub only: Option<&'a str>,
    pub seconds: f64,
    pub legend: &'a str,
    /// Sections that failed part way: their rows so far are in the table.
    pub unfinished: &'a [Unfinished],
}

/// A section that failed part way (it panicked), and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Unfinished {
    pub section: String,
    pub why: String,
}

impl Unfinished {
    /// Section `section`, which panicked with `payload`.
    pub fn new(section: &str, payload: &(dyn std::any::Any + Send)) -> Self {
        let why = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        Unfinished {
            section: section.into(),
            why: why.lines().next().unwrap_or_default().to_string(),
        }
    }
}

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Section `{}` did not finish (only its rows before the failure are shown): {}",
            self.section, self.why
        )
    }
}

impl Run<'_> {
    /// Targets met and targets in all.
    pub fn score(rows: &[Row]) -> (usize, usize) {
        let judged = rows.iter().filter_map(Row::verdict);
        let (met, all) = judged.fold((0, 0), |(m, a), (_, ok)| (m + usize::from(ok), a + 1));
        (met, all)
    }

    fn json(&self, rows: &[Row]) -> String {
        let (met, all) = Self::score(rows);
        let value = serde_json::json!({
            "machine": {
                "cpu": self.machine.cpu,
                "cores": self.machine.cores,
                "kernel": self.machine.kernel,
                "kvm_module": self.machine.kvm_module,
            },
            "section": self.only,
            "seconds": self.seconds.round(),
            "targets_met": met,
            "targets": all,
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "unfinished": self.unfinished.iter().map(|u| serde_json::json!({
                "section": u.section,
                "why": u.why,
            })).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&value).expect("plain values serialize") + "\n"
    }

    fn markdown(&self, rows: &[Row]) -> String {
        let (met, all) = Self::score(rows);
        let m = self.machine;
        let scope = self.only.map_or("all sections".to_string(), |s| {
            format!("section `{s}` only")
        });
        let unfinished: String = self.unfinished.iter().map(|u| format!("\n{u}\n")).collect();
        format!(
            "Measured on {}, {} cores, Linux {}, KVM module `{}` ({scope}; {met} of {all} \
             targets met; the run took {:.0} s).\n\n{}\n{}\n{unfinished}",
            m.cpu,
            m.cores,
            m.kernel,
            m.kvm_module,
            self.seconds,
            table(rows),
            self.legend
        )
    }

    /// Writes `system.json` and `system.md` into `dir` (each whole or not at all); returns
    /// their paths.
    pub fn write(&self, rows: &[Row], dir: &Path) -> std::io::Result<[PathBuf; 2]> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join("system.json");
        let markdown = dir.join("system.md");
        for (path, text) in [(&json, self.json(rows)), (&markdown, self.markdown(rows))] {
            bounded_io::files::write_output(
                path,
                text.as_bytes(),
                bounded_io::files::Naming::Chosen,
            )
            .map_err(std::io::Error::other)?;
        }
        Ok([json, markdown])
    }
}

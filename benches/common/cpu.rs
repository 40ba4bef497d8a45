//! CPU accounting from Linux /proc (in clock ticks of 1/100 s, the USER_HZ
//! of every Linux ABI): what the bench, a path's hop, the broker and every
//! other process spent while a path was measured. On the two shared cores of
//! the development machine, throughput is set by the total CPU per message,
//! so the reports give it per process. Where /proc cannot be read, the
//! figures are `None` and the reports print "-".

use std::time::Duration;

/// CPU time (user + system) of the processes involved; `None` where it
/// cannot be read (no /proc, or no such process).
#[derive(Default, Clone, Copy)]
pub struct CpuUse {
    pub bench: Option<Duration>,
    pub hop: Option<Duration>,
    pub broker: Option<Duration>,
    /// Every other process on the machine (busy time in /proc/stat less the
    /// three above): how much else competed for the CPU.
    pub other: Option<Duration>,
}

impl CpuUse {
    /// Both added up; `None` where either is.
    pub fn add(self, other: CpuUse) -> CpuUse {
        let sum = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
        CpuUse {
            bench: sum(self.bench, other.bench),
            hop: sum(self.hop, other.hop),
            broker: sum(self.broker, other.broker),
            other: sum(self.other, other.other),
        }
    }
}

/// CPU time the whole machine spent busy (all CPUs, everything but idle and
/// iowait), from /proc/stat.
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is within user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Some(Duration::from_millis(busy * 10))
}

/// User + system CPU time of process `pid` ("self" for this one).
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start with field 3.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The pids of the visible processes whose command name (`comm`) is `comm`,
/// to find the broker's process; empty without /proc.
pub fn pids_named(comm: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.bytes().all(|b| b.is_ascii_digit())
                && std::fs::read_to_string(format!("/proc/{name}/comm"))
                    .is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// The command line of process `pid`, its arguments joined by spaces.
pub fn cmdline(pid: &str) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// Samples the CPU time of this process, a path's hop, the broker and the
/// whole machine.
pub struct CpuProbe {
    /// The pid of the process between publisher and consumer, if any.
    pub hop: Option<String>,
    /// The pids of the broker's processes (all of them added up); none when
    /// not found.
    pub broker: Vec<String>,
}

impl CpuProbe {
    pub fn sample(&self) -> [Option<Duration>; 4] {
        let broker = (!self.broker.is_empty())
            .then(|| self.broker.iter().map(|p| cpu_time(p)).sum())
            .flatten();
        [
            cpu_time("self"),
            self.hop.as_deref().and_then(cpu_time),
            broker,
            machine_busy(),
        ]
    }

    /// What was used since `before` (an earlier [`CpuProbe::sample`]).
    pub fn since(&self, before: [Option<Duration>; 4]) -> CpuUse {
        let after = self.sample();
        let delta = |i: usize| Some(after[i]?.saturating_sub(before[i]?));
        let (bench, hop, broker) = (delta(0), delta(1), delta(2));
        let other = delta(3).map(|all| {
            all.saturating_sub(bench.unwrap_or_default())
                .saturating_sub(hop.unwrap_or_default())
                .saturating_sub(broker.unwrap_or_default())
        });
        CpuUse {
            bench,
            hop,
            broker,
            other,
        }
    }
}

/// `cpu` per message over `received` messages, as the reports print it;
/// "-" where it could not be read.
pub fn cpu_per_msg(cpu: Option<Duration>, received: u64) -> String {
    match cpu {
        Some(d) => format!(
            "{:.2} µs/msg",
            d.as_secs_f64() * 1e6 / received.max(1) as f64
        ),
        None => "-".to_owned(),
    }
}

/// The 1-minute load average, to judge how much else ran.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

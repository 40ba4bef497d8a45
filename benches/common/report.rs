//! The statistics and the report, in one format for every protocol: a
//! title, the machine's load, the paths left out, one table per throughput
//! load (confirmed and received msg/s, lost, duplicated, CPU per message of
//! each process), the latency table (p50, p99, p99.9, max), per-round
//! figures, and the ratios between the paths the bench compares. Figures
//! are medians over rounds; every table flags the runs that broke something.

use std::time::Duration;

use super::cpu::cpu_per_msg;
use super::measure::Outcome;
use super::rounds::{PathResult, Plan, Results};

/// `count` per second of `elapsed`; 0 for no time at all (nothing arrived).
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    }
}

/// The `p` quantile (0 to 1, nearest rank) of `sorted` latencies in ns, in
/// µs; NaN for none.
pub fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1] as f64 / 1_000.0
}

/// The median of `values`, leaving out NaNs (a percentile of a run where
/// nothing arrived); NaN when nothing is left.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The smallest and the largest of `values`.
pub fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// `a / b`, or NaN where `b` is not positive (a path that measured nothing).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// What a bench adds to the report.
pub struct Report {
    /// The first line: the protocol, the broker and the settings.
    pub title: String,
    /// Printed after the throughput tables: what the columns mean here
    /// (where the hop's CPU goes, say).
    pub notes: Vec<String>,
    /// The paths compared, (numerator, denominator); a pair is printed
    /// where both were measured.
    pub ratios: Vec<(&'static str, &'static str)>,
    /// A throughput ratio the bench aims for under its last load:
    /// (numerator, denominator, at least).
    pub target: Option<(&'static str, &'static str, f64)>,
}

/// Each round's percentile `p` of the latency runs, their median.
fn latency_median(path: &PathResult, p: f64) -> f64 {
    let values: Vec<f64> = path.latency.iter().map(|o| o.percentile_us(p)).collect();
    median(&values)
}

/// The flag after a table row: the problems of its runs.
fn flag<'a>(outcomes: impl Iterator<Item = &'a Outcome>, loss_ok: bool) -> String {
    let problems: Vec<String> = outcomes
        .map(|o| o.problems(loss_ok).join(", "))
        .filter(|p| !p.is_empty())
        .collect();
    if problems.is_empty() {
        String::new()
    } else {
        format!("  PROBLEMS: {}", problems.join("; "))
    }
}

/// Prints the report of `results` to stdout; whether the bench passed (no
/// path failed to work, and under a strict plan no run broke anything).
pub fn print(plan: &Plan, report: &Report, results: &Results) -> bool {
    let paths = &results.paths;
    let sizes = &plan.sizes;
    let w = paths
        .iter()
        .map(|p| p.name.chars().count())
        .fold(9, usize::max);
    let numbered = |n: usize| ["i", "ii", "iii", "iv", "v"][n.min(4)];
    println!();
    println!("{}", report.title);
    let shown = |l: Option<f64>| l.map_or_else(|| "?".to_owned(), |l| format!("{l:.2}"));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cores} cores; 1-min load average {} at the start, {} at the end{}",
        shown(results.load[0]),
        shown(results.load[1]),
        if results.load[0].is_some_and(|l| l > 1.0) {
            " (other work was running before the start: figures may be noisy)"
        } else {
            ""
        }
    );
    for (why, _) in &results.skipped {
        println!("SKIPPED {why}");
    }

    for (i, load) in plan.loads.iter().enumerate() {
        println!();
        println!(
            "({}) throughput{}: {} msgs per round, {}; medians of {} round(s)",
            numbered(i),
            if load.label == "throughput" {
                String::new()
            } else {
                format!(", {}", load.label)
            },
            sizes.messages,
            load.about,
            sizes.rounds
        );
        println!(
            "{:<w$} | {:>11} | {:>10} {:>19} | {:>6} {:>7} {:>5} | {:>13} {:>13} {:>13} {:>13}",
            "path",
            "confirmed/s",
            "received/s",
            "(min - max)",
            "lost",
            "lost %",
            "dup",
            "CPU bench",
            "CPU hop",
            "CPU broker",
            "CPU other"
        );
        println!("{}", "-".repeat(w + 130));
        for r in paths {
            let runs = &r.loads[i];
            let rates = r.rates(i);
            let (lo, hi) = range(&rates);
            let sum = |f: fn(&Outcome) -> u64| runs.iter().map(f).sum::<u64>();
            let (lost, confirmed) = (sum(Outcome::lost), sum(|o| o.confirmed));
            let received = sum(|o| o.received);
            let publish: Vec<f64> = runs.iter().map(Outcome::publish_rate).collect();
            let cpu = r.cpu[i].unwrap_or_default();
            let per_msg = |d| cpu_per_msg(d, received);
            println!(
                "{:<w$} | {:>11.0} | {:>10.0} {:>19} | {:>6} {:>6.2}% {:>5} | {:>13} {:>13} {:>13} {:>13}{}",
                r.name,
                median(&publish),
                median(&rates),
                format!("({lo:.0} - {hi:.0})"),
                lost,
                100.0 * lost as f64 / confirmed.max(1) as f64,
                sum(|o| o.duplicates),
                per_msg(cpu.bench),
                per_msg(cpu.hop),
                per_msg(cpu.broker),
                per_msg(cpu.other),
                flag(runs.iter(), load.loss_ok),
            );
        }
        println!("   per round received/s (lost):");
        for r in paths {
            let rounds: Vec<String> = r.loads[i]
                .iter()
                .map(|o| format!("{:.0} ({})", o.rate(), o.lost()))
                .collect();
            println!("     {:<w$} {}", r.name, rounds.join(", "));
        }
    }
    println!("   received/s = distinct messages received / (last receive - first publish); confirmed/s = publishes the broker confirmed / (last confirm - first publish)");
    println!("   CPU = user+system time of the process over the run's rounds / messages received (10 ms ticks); bench = publisher + consumer; other = the machine's busy time less the three before it");
    for note in &report.notes {
        println!("   {note}");
    }

    println!();
    println!(
        "({}) latency: {} msgs paced at {} msg/s (publish to the consumer's receipt), {}",
        numbered(plan.loads.len()),
        sizes.latency_messages,
        sizes.rate,
        if plan.latency_each_round {
            format!(
                "every round; medians of each round's percentiles over {} round(s)",
                sizes.rounds
            )
        } else {
            "once, after the throughput rounds".to_owned()
        }
    );
    println!(
        "{:<w$} | {:>9} {:>9} {:>9} {:>9} | {:>6} {:>5}",
        "path", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "lost", "dup"
    );
    println!("{}", "-".repeat(w + 59));
    for r in paths {
        println!(
            "{:<w$} | {:>9.1} {:>9.1} {:>9.1} {:>9.1} | {:>6} {:>5}{}",
            r.name,
            latency_median(r, 0.50),
            latency_median(r, 0.99),
            latency_median(r, 0.999),
            latency_median(r, 1.0),
            r.latency.iter().map(Outcome::lost).sum::<u64>(),
            r.latency.iter().map(|o| o.duplicates).sum::<u64>(),
            flag(r.latency.iter(), false),
        );
    }
    if paths.iter().any(|r| r.latency.len() > 1) {
        println!("   per round p50/p99 µs:");
        for r in paths {
            let rounds: Vec<String> = r
                .latency
                .iter()
                .map(|o| format!("{:.0}/{:.0}", o.percentile_us(0.5), o.percentile_us(0.99)))
                .collect();
            println!("     {:<w$} {}", r.name, rounds.join(", "));
        }
    }
    let total = |f: fn(&Outcome) -> u64| -> u64 {
        paths.iter().flat_map(PathResult::outcomes).map(f).sum()
    };
    let (redelivered, stale) = (total(|o| o.redelivered), total(|o| o.stale));
    if redelivered > 0 || stale > 0 {
        println!(
            "redelivered flags seen: {redelivered}; messages of another run (or not ours) seen: {stale}"
        );
    }

    print_ratios(plan, report, paths);
    verdict(plan, results)
}

/// The ratios between the paths the bench compares: throughput under each
/// load, latency and the latency one adds over the other.
fn print_ratios(plan: &Plan, report: &Report, paths: &[PathResult]) {
    let find = |name: &str| paths.iter().find(|r| r.name == name);
    let rate = |p: &PathResult, i: usize| median(&p.rates(i));
    let pair = |a: &str, b: &str| format!("  {a} / {b}");
    let w = report
        .ratios
        .iter()
        .map(|(a, b)| pair(a, b).chars().count())
        .fold("ratios (medians)".len(), usize::max);
    println!();
    print!("{:<w$}", "ratios (medians)");
    for load in &plan.loads {
        print!(" {:>10}", load.label);
    }
    println!(" | latency p50    p99 | latency added p50 µs    p99 µs");
    for (a, b) in &report.ratios {
        let pair = pair(a, b);
        let (Some(pa), Some(pb)) = (find(a), find(b)) else {
            println!("{pair:<w$} n/a (not measured)");
            continue;
        };
        print!("{pair:<w$}");
        for i in 0..plan.loads.len() {
            print!(" {:>10.3}", ratio(rate(pa, i), rate(pb, i)));
        }
        let (la, lb) = (|p| latency_median(pa, p), |p| latency_median(pb, p));
        println!(
            " | {:>11.2} {:>6.2} | {:>+21.1} {:>+9.1}",
            ratio(la(0.5), lb(0.5)),
            ratio(la(0.99), lb(0.99)),
            la(0.5) - lb(0.5),
            la(0.99) - lb(0.99),
        );
    }
    if let Some((a, b, at_least)) = report.target {
        if let (Some(pa), Some(pb), Some(last)) =
            (find(a), find(b), plan.loads.len().checked_sub(1))
        {
            let value = ratio(rate(pa, last), rate(pb, last));
            println!(
                "  target: {a} / {b} throughput ({}) >= {at_least}: {} ({value:.3})",
                plan.loads[last].label,
                if value >= at_least { "met" } else { "NOT met" }
            );
        }
    }
}

/// Prints what failed, if anything; whether the bench passed.
fn verdict(plan: &Plan, results: &Results) -> bool {
    let broken: Vec<&str> = results
        .paths
        .iter()
        .filter(|r| {
            let loads = r.loads.iter().zip(&plan.loads);
            let mut runs = loads.flat_map(|(runs, load)| runs.iter().map(|o| (o, load.loss_ok)));
            runs.any(|(o, loss_ok)| !o.problems(loss_ok).is_empty())
                || r.latency.iter().any(|o| !o.problems(false).is_empty())
        })
        .map(|r| r.name.as_str())
        .collect();
    let mut ok = !results.skipped.iter().any(|(_, failed)| *failed);
    if !broken.is_empty() {
        println!();
        if plan.strict {
            println!(
                "FAILED: at-least-once broken or run incomplete on: {}",
                broken.join(", ")
            );
            ok = false;
        } else {
            println!("problems (flagged above) on: {}", broken.join(", "));
        }
    }
    if !ok && broken.is_empty() {
        println!();
        println!("FAILED: a path did not work (see SKIPPED)");
    }
    ok
}

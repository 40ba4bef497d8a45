//! The harness the end-to-end benches (`nats_e2e`, `jetstream_e2e`,
//! `amqp_e2e`, `mqtt_e2e`, and `amqp_client`, which compares AMQP clients)
//! share, so that every protocol is measured the same way and reported in
//! the same format. A bench supplies its paths (a
//! [`measure::Route`] each: how to consume and publish a run's messages),
//! the peer hop it compares baker-mq against and the `baker-mq` processes
//! with its arguments; the harness does the rest:
//!
//! * `stamp`: the clock, the header every payload starts with, pacing and
//!   the publishing thread;
//! * `measure`: the path traits and one measured run ([`measure::Outcome`]);
//! * `confirms`: the window of publishes awaiting the broker's confirm;
//! * `rounds`: the plan (loads, rounds, latency runs) and running it;
//! * `report`: the statistics and the report table;
//! * `overload`: the hop's memory while publishers send ten times what the
//!   instance consumes;
//! * `cpu`: CPU accounting from Linux /proc;
//! * `procs`: the child processes, the bench's entry point and its cleanup
//!   on every way out;
//! * `baker`: the `baker-mq` directory and sidecars under test;
//! * `nats`: what the two NATS benches share (URL, relay process frame);
//! * `amqp`: what the two AMQP benches share (URL, queues, the lapin
//!   load generator every AMQP path is measured with).
//!
//! Each bench includes it with `mod common;`; Cargo takes only
//! `benches/*.rs` and `benches/*/main.rs` for bench targets, so these files
//! are not ones of their own. `kv_directory` uses only the settings and
//! statistics; `directory_scale` the settings, statistics, CPU accounting,
//! processes and the `baker-mq directory`.

// Each bench uses a different part of this module; what one does not use
// would otherwise warn in its build.
#![allow(dead_code, unused_imports)]

pub mod amqp;
pub mod baker;
pub mod confirms;
pub mod cpu;
pub mod measure;
pub mod nats;
pub mod overload;
pub mod procs;
pub mod report;
pub mod rounds;
pub mod stamp;

pub use report::percentile_us;

use std::time::Duration;

/// Longest any one measured run may take.
pub const RUN_DEADLINE: Duration = Duration::from_secs(180);
/// Longest wait for a process or path to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The value of environment variable `name` parsed as a `T`, or `default`
/// when it is not set; panics on a value that does not parse, so a typo
/// never silently measures something else.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        Err(_) => default,
    }
}

/// Whether this binary was started by `cargo bench` (which passes
/// `--bench`). `cargo test --benches` does not pass it, and the benches then
/// only print a note, so test runs need no broker.
pub fn invoked_as_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A tag for the names this run creates on the broker (subjects, services,
/// vhosts): the pid and 24 random bits, so that runs never share them.
pub fn run_id() -> String {
    format!("{:x}{:06x}", std::process::id(), fastrand::u32(..1 << 24))
}

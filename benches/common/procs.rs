//! The processes a bench starts, and how a bench starts and ends.
//!
//! Every child is registered here, so that the cleanup kills them all, on
//! return, on panic (a guard's Drop), on the overall timeout (a watchdog
//! thread) and on Ctrl-C or SIGTERM; none outlives the bench. After the
//! children, the cleanup runs the bench's own hook, which deletes what it
//! created on the broker (vhosts, streams): children first, so that nothing
//! recreates what is deleted. [`bench_main`] sets all that up around a
//! bench's body. Also here: re-executing the bench binary as a relay
//! process, and running a broker's command-line tools with a time limit.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Seek};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::stamp::epoch;
use super::{env_or, invoked_as_bench, READY_TIMEOUT};

static CHILDREN: Mutex<Vec<(String, Child)>> = Mutex::new(Vec::new());

/// The registry, also when a thread panicked holding it: cleanup must run
/// exactly then.
fn children() -> std::sync::MutexGuard<'static, Vec<(String, Child)>> {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `command` with `env` set and none of the caller's other `BAKER_*`
/// variables (they would change the children's settings), and registers it
/// as `name`; its pid.
pub fn spawn_child(name: &str, mut command: Command, env: &[(&str, String)]) -> u32 {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BAKER_") {
            command.env_remove(&key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let pid = child.id();
    children().push((name.to_owned(), child));
    pid
}

/// Calls `f` on the registered child `pid`; `None` when there is none.
pub fn with_child<T>(pid: u32, f: impl FnOnce(&mut Child) -> T) -> Option<T> {
    let mut children = children();
    let (_, child) = children.iter_mut().find(|(_, c)| c.id() == pid)?;
    Some(f(child))
}

/// The exit status of child `pid` if it has exited.
pub fn child_exited(pid: u32) -> Option<ExitStatus> {
    with_child(pid, |c| c.try_wait().ok().flatten()).flatten()
}

/// Kills and reaps the child `pid`, if it is still ours.
pub fn stop_child(pid: u32) {
    let mut children = children();
    if let Some(i) = children.iter().position(|(_, c)| c.id() == pid) {
        let (name, mut child) = children.remove(i);
        let _ = child.kill();
        if let Ok(status) = child.wait() {
            eprintln!("stopped {name} ({status})");
        }
    }
}

/// Kills and reaps every registered child.
pub fn kill_children() {
    let mut children = children();
    for (name, child) in children.iter_mut() {
        let _ = child.kill();
        match child.wait() {
            Ok(status) => eprintln!("stopped {name} ({status})"),
            Err(e) => eprintln!("could not reap {name}: {e}"),
        }
    }
    children.clear();
}

/// Names of what a bench created on a broker (vhosts, streams), to delete
/// at the end: each recorded before it is created, so that a failure while
/// it is being created does not leave it behind, and taken by whoever
/// deletes first (the end of the run, or the cleanup hook).
pub struct Created(Mutex<Vec<String>>);

impl Created {
    pub const fn new() -> Created {
        Created(Mutex::new(Vec::new()))
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, name: &str) {
        self.names().push(name.to_owned());
    }

    /// The names not deleted yet, now the caller's to delete.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.names())
    }

    pub fn is_empty(&self) -> bool {
        self.names().is_empty()
    }
}

// ---------------------------------------------------------------------------
// Starting and ending a bench.

/// The bench's own cleanup, run after the children are gone.
static CLEANUP: OnceLock<fn()> = OnceLock::new();

/// Set once the bench is being aborted (timeout, signal): the main thread's
/// panics that follow (its connections die with what is deleted) are not
/// news.
static ABORTING: AtomicBool = AtomicBool::new(false);

/// Stops every child, then runs the bench's cleanup. Safe to call more than
/// once, from any thread; the hook must be too.
fn cleanup() {
    static BUSY: Mutex<()> = Mutex::new(());
    let _busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
    kill_children();
    if let Some(hook) = CLEANUP.get() {
        hook();
    }
}

/// Cleans up and exits with `code`, from the watchdog or the signal thread.
fn abort(code: i32) -> ! {
    ABORTING.store(true, Ordering::Release);
    cleanup();
    std::process::exit(code);
}

/// Runs [`cleanup`] when dropped, also while unwinding from a panic.
struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        cleanup();
    }
}

/// The entry point of an end-to-end bench named `name`: only under
/// `cargo bench` (otherwise it prints that it needs `needs` and returns, so
/// `cargo test --benches` needs no broker). Runs `body` on a tokio runtime,
/// with the cleanup (children, then `hook`) on return, panic, Ctrl-C,
/// SIGTERM, and after `BAKER_BENCH_TIMEOUT_SECS` (default
/// `default_timeout_secs`); exits with 1 when `body` says the bench failed.
pub fn bench_main<Fut: Future<Output = bool>>(
    name: &'static str,
    needs: &str,
    default_timeout_secs: u64,
    hook: fn(),
    body: impl FnOnce() -> Fut,
) {
    if !invoked_as_bench() {
        println!("{name}: needs {needs}; run it with `cargo bench --bench {name}`");
        return;
    }
    let _ = CLEANUP.set(hook);
    let timeout = Duration::from_secs(env_or("BAKER_BENCH_TIMEOUT_SECS", default_timeout_secs));
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !ABORTING.load(Ordering::Acquire) {
            default_hook(info);
        }
    }));
    // Whatever happens, the bench ends, its children die and what it created
    // on the broker goes.
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        eprintln!("{name}: overall timeout of {timeout:?} reached; aborting");
        abort(2);
    });
    // The same on Ctrl-C or SIGTERM.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        runtime.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("{name}: interrupted; cleaning up");
        abort(130);
    });
    epoch();
    let ok = {
        let _guard = CleanupGuard;
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        runtime.block_on(body())
    };
    if !ok {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Relay processes: the bench binary re-executed.

/// Starts this binary again as `name` with `env` (which selects what it
/// runs), and waits until it prints "ready" on its stdout; its pid. It is
/// expected to call [`exit_with_parent`].
pub fn spawn_self(name: &str, env: &[(&str, String)]) -> u32 {
    let mut command = Command::new(std::env::current_exe().expect("current exe"));
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    let pid = spawn_child(name, command, env);
    let stdout = with_child(pid, |child| child.stdout.take())
        .expect("relay child")
        .expect("relay stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(READY_TIMEOUT)
        .unwrap_or_else(|_| panic!("{name} did not report ready in time"));
    assert_eq!(line.trim(), "ready", "{name} failed to start");
    eprintln!("{name} ready (pid {pid})");
    pid
}

/// The relay's tokio runtime: `current_thread` (default, as baker-mq's) or
/// `multi_thread`.
pub const RELAY_RUNTIME_ENV: &str = "BAKER_BENCH_RELAY_RUNTIME";

/// The relay runtime's name, as set or by default.
pub fn relay_runtime() -> String {
    std::env::var(RELAY_RUNTIME_ENV).unwrap_or_else(|_| "current_thread".to_owned())
}

/// In a relay process: runs `body` on the runtime [`RELAY_RUNTIME_ENV`]
/// names, exiting when the parent goes away. Single-threaded by default,
/// like baker-mq's default runtime.
pub fn run_relay<F: Future>(body: F) -> F::Output {
    exit_with_parent();
    let runtime = match relay_runtime().as_str() {
        "current_thread" => tokio::runtime::Builder::new_current_thread(),
        "multi_thread" => tokio::runtime::Builder::new_multi_thread(),
        other => panic!("{RELAY_RUNTIME_ENV}={other:?}: expected current_thread or multi_thread"),
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    runtime.block_on(body)
}

/// In a process started by [`spawn_self`]: exits when the parent goes away
/// (its end of our stdin closes).
pub fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

// ---------------------------------------------------------------------------
// Command-line tools.

/// Runs `tool` with `args` (e.g. `rabbitmqctl`), for at most `timeout`; its
/// stdout, or why it failed.
pub fn run_tool(tool: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let what = format!("{tool} {}", args.join(" "));
    let mut out = tempfile::tempfile().map_err(|e| format!("{what}: temp file: {e}"))?;
    let mut err = tempfile::tempfile().map_err(|e| format!("{what}: temp file: {e}"))?;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(err.try_clone().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: no answer within {timeout:?}"));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    };
    let read = |file: &mut std::fs::File| {
        let mut text = String::new();
        let _ = file.rewind();
        let _ = file.read_to_string(&mut text);
        text
    };
    let stdout = read(&mut out);
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{what}: {status}: {}{}",
            read(&mut err).trim(),
            stdout.trim()
        ))
    }
}

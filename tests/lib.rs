//! Shared helpers of the end-to-end suite: a once-only [`init`], the leak-checking [`run`]
//! wrapper every test goes through, and bounded-wait expectation helpers.
//!
//! The leak check follows the reference suite: after each test, no thread, file descriptor or
//! child process may remain that was not there before it. The body runs on a fresh thread, so
//! its thread-local latch socket is closed when it ends. The check is exact when the test has the
//! process to itself, as under `cargo nextest run` (one process per test, the README's command)
//! or `cargo test -- --test-threads=1`; when `cargo test` runs other tests in the same process at
//! the same time, their resources are indistinguishable from a leak, so the check is skipped for
//! overlapping tests and says so on stderr.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

pub mod containers;
pub mod sshd;

static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// Install the logger once: `RUST_LOG` chooses what is printed (errors by default), and every
/// record at info level or above is also kept for [`logged`].
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let env = env_logger::Env::default().default_filter_or("error");
        let printer = env_logger::Builder::from_env(env).is_test(true).build();
        let max = printer.filter().max(log::LevelFilter::Info);
        if log::set_boxed_logger(Box::new(Capture { printer })).is_ok() {
            log::set_max_level(max);
        }
    });
}

/// Records kept for [`logged`]: the most recent ones, so a test that logs in a loop stays
/// bounded in memory.
static CAPTURED: std::sync::Mutex<VecDeque<(log::Level, String, String)>> = std::sync::Mutex::new(VecDeque::new());
const CAPTURED_MAX: usize = 100_000;

struct Capture {
    printer: env_logger::Logger,
}

/// Per-target levels a test sets with [`set_target_level`], longest prefix first.
static TARGET_LEVELS: std::sync::Mutex<Vec<(String, log::LevelFilter)>> = std::sync::Mutex::new(Vec::new());

/// Make the harness's logger take records of targets starting with `prefix` only at `level`
/// and above (as an `env_logger` directive `prefix=level` would), so a test can give contexts
/// different levels.
pub fn set_target_level(prefix: &str, level: log::LevelFilter) {
    let mut levels = TARGET_LEVELS.lock().unwrap_or_else(|e| e.into_inner());
    levels.retain(|(p, _)| p != prefix);
    levels.push((prefix.to_owned(), level));
    levels.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
}

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let levels = TARGET_LEVELS.lock().unwrap_or_else(|e| e.into_inner());
        levels
            .iter()
            .find(|(p, _)| metadata.target().starts_with(p.as_str()))
            .map_or(true, |&(_, l)| metadata.level() <= l)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Children's forwarded records and the lines methods' tools print are kept at every
        // level (a test that turns debug on can look for them); everything else from info up.
        let kept = ["mitogen::ctx::", "mitogen::stderr"];
        if record.level() <= log::Level::Info || kept.iter().any(|t| record.target().starts_with(t)) {
            let entry = (record.level(), record.target().to_owned(), record.args().to_string());
            let mut captured = CAPTURED.lock().unwrap_or_else(|e| e.into_inner());
            if captured.len() == CAPTURED_MAX {
                captured.pop_front();
            }
            captured.push_back(entry);
        }
        self.printer.log(record);
    }

    fn flush(&self) {}
}

/// Every record logged so far whose target starts with `target`, as `(level, target, message)`.
pub fn logged(target: &str) -> Vec<(log::Level, String, String)> {
    let all = CAPTURED.lock().unwrap_or_else(|e| e.into_inner());
    all.iter().filter(|(_, t, _)| t.starts_with(target)).cloned().collect()
}

/// The pids of every process on the machine whose command line is `argv`.
pub fn processes_running(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    listdir("/proc")
        .iter()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// What a process holds that a test could leak.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    fds: BTreeSet<(i32, String)>,
    threads: usize,
    children: BTreeSet<i32>,
}

fn listdir(path: &str) -> Vec<String> {
    std::fs::read_dir(path)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Our direct children, from `/proc/*/stat` (field 4 is the parent pid).
/// Every process on the machine with its parent: `(pid, ppid)` from `/proc/<pid>/stat`.
pub fn process_parents() -> Vec<(i32, i32)> {
    listdir("/proc")
        .iter()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may contain spaces: fields after the closing parenthesis.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

fn children() -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    process_parents().into_iter().filter(|&(_, ppid)| ppid == me).map(|(pid, _)| pid).collect()
}

impl Snapshot {
    /// Our direct child processes at the time of the snapshot.
    pub fn children(&self) -> &BTreeSet<i32> {
        &self.children
    }

    /// Take a snapshot of this process now.
    pub fn take() -> Snapshot {
        let fds = listdir("/proc/self/fd")
            .iter()
            .filter_map(|f| f.parse::<i32>().ok())
            .filter_map(|fd| {
                std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().map(|l| (fd, l.display().to_string()))
            })
            // The directory listing itself holds an fd for the duration of read_dir.
            .filter(|(_, l)| !l.starts_with("/proc/") || !l.ends_with("/fd"))
            .collect();
        Snapshot { fds, threads: listdir("/proc/self/task").len(), children: children() }
    }
}

/// Held shared by every test body under [`run`], and exclusively under [`run_alone`]: under
/// plain `cargo test`, which runs a crate's tests side by side in one process, a test that reads
/// or sets what is process-wide (the captured log records and the log level, the connection
/// counters, the environment, the profiler's timer) runs with no other test. Under nextest each
/// test has a process of its own, and this changes nothing.
static PROCESS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Run `body` on a fresh thread with the leak check around it. Panics (failing the test) when
/// the body panics, or when a thread, fd or child process it created is still there 30 s
/// after it returned.
#[track_caller]
pub fn run(body: impl FnOnce() + Send + 'static) {
    checked(body, false);
}

/// [`run`], with no other test of this process running meanwhile: for a test that reads or sets
/// process-wide state (captured logs and levels, connection counters, the environment, the
/// profiler).
#[track_caller]
pub fn run_alone(body: impl FnOnce() + Send + 'static) {
    checked(body, true);
}

/// `body` under the leak check, in its turn (shared with the other tests, or alone). A test
/// waiting for its turn counts as running at the same time: the leak check is skipped for the
/// one it waits for.
#[track_caller]
fn checked(body: impl FnOnce() + Send + 'static, alone: bool) {
    use std::sync::PoisonError;
    init();
    let generation = STARTED.fetch_add(1, Ordering::SeqCst);
    let alone_at_start = ACTIVE.fetch_add(1, Ordering::SeqCst) == 0;
    let _turn = match alone {
        true => (Some(PROCESS.write().unwrap_or_else(PoisonError::into_inner)), None),
        false => (None, Some(PROCESS.read().unwrap_or_else(PoisonError::into_inner))),
    };
    let before = Snapshot::take();
    let result = std::thread::Builder::new().name("test-body".into()).spawn(body).expect("spawn test body").join();
    let alone = alone_at_start && STARTED.load(Ordering::SeqCst) == generation + 1;
    let mut after = Snapshot::take();
    // Threads and children finish exiting shortly after being joined or reaped: poll, bounded
    // (well past what a loaded machine takes; the harness's own test, whose leaks are meant,
    // waits less).
    let deadline = Instant::now() + if cfg!(test) { Duration::from_secs(2) } else { Duration::from_secs(30) };
    while alone && after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = Snapshot::take();
    }
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    if !alone {
        eprintln!("leak check skipped: other tests ran in this process at the same time (use cargo nextest)");
        return;
    }
    let leaked_fds: Vec<_> = after.fds.difference(&before.fds).collect();
    let leaked_children: Vec<_> = after.children.difference(&before.children).collect();
    assert!(leaked_fds.is_empty(), "test leaked file descriptors: {leaked_fds:?}");
    assert_eq!(
        after.threads, before.threads,
        "test leaked threads ({} before, {} after)",
        before.threads, after.threads
    );
    assert!(leaked_children.is_empty(), "test leaked child processes: {leaked_children:?}");
}

/// Spin until the profiler has sampled the calling thread `n` more times (not for a
/// wall-clock window, nor for an amount of CPU time: on a loaded machine the profiler's timer
/// fires less often than the CPU time says), for at most a minute. Returns a value the
/// optimiser cannot drop. In a process that is not profiling, it spins the whole minute.
#[inline(never)]
pub fn burn_until_sampled(n: u64) -> u64 {
    let samples = mitogen::core::sys::sampler::samples_of_this_thread;
    let (start, give_up) = (samples(), Instant::now() + Duration::from_secs(60));
    let mut x = 0u64;
    while samples() - start < n && Instant::now() < give_up {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }
    x
}

/// Wait until `cond()` holds, polling every millisecond for at most `timeout`; panics naming
/// `what` if it never does. For conditions with no event to wait on (a stream's state).
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A private directory for one test, removed with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A new empty directory named after `what`, mode 0700.
    pub fn new(what: &str) -> TempDir {
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("mitogen-test-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&path).unwrap().permissions(), 0o700);
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What an area of the suite needs of this machine beyond a Rust toolchain: what the README's
/// test command sets up as root (`tests/provision.sh`, `tests/engines.sh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Root and the test accounts, keys and rules: the bootstrap (other accounts, namespaces,
    /// mounts, root's cache places) and sudo, su and doas.
    Accounts,
    /// That and the ssh keys and `sshd`: a real OpenSSH server on loopback.
    Sshd,
    /// That and the container engines the test command starts (dockerd, podman, LXC, LXD).
    Engines,
    /// That and this suite built static for `x86_64-unknown-linux-musl`, with the quickstart
    /// example beside it (`tests/run` builds them; see [`static_build`]).
    StaticBuild,
    /// That and an arm64 target: a root of one static arm64 busybox run through
    /// `qemu-aarch64-static` (binfmt_misc), and this suite built for `aarch64-unknown-linux-musl`
    /// ([`arm64`]).
    Arm64,
    /// That and this suite built for `i686-unknown-linux-musl` (32-bit x86, static), which this
    /// machine's kernel runs ([`i686_build`]).
    I686,
}

/// Whether this machine has what `needs` names. When it has not (a first `cargo test` as
/// another user, on a machine the test command has not provisioned), the test says so in one
/// line on stderr, naming the area and the reason, and returns without running: the local
/// half of the suite still runs and passes there. As root through `bash tests/run`, every
/// area is provisioned and runs.
pub fn provisioned(needs: Needs) -> bool {
    let why = unmet(needs);
    if let Some(why) = &why {
        eprintln!("skipped ({needs:?}): {why}; run `bash tests/run` as root to provision this machine");
    }
    why.is_none()
}

fn unmet(needs: Needs) -> Option<String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Some("not root".into());
    }
    let accounts = std::process::Command::new("id").arg("mitogen-other").output();
    if !accounts.is_ok_and(|o| o.status.success()) || !std::path::Path::new("/etc/sudoers.d/mitogen-test").exists() {
        return Some("the test accounts and sudo rules are missing".into());
    }
    match needs {
        Needs::Accounts => None,
        Needs::Sshd if !std::path::Path::new(&format!("{}/client_ed25519", sshd::KEYS)).exists() => {
            Some(format!("no ssh keys in {}", sshd::KEYS))
        }
        Needs::Sshd => None,
        Needs::Engines if std::env::var_os("DOCKER_HOST").is_none() => {
            Some("the container engines are not running (tests/engines.sh start)".into())
        }
        Needs::Engines => None,
        Needs::Arm64 => match arm64() {
            Some(_) => unmet(Needs::StaticBuild),
            None => Some(
                "no arm64 target or build (tests/builds.sh: MITOGEN_TEST_ARM64_ROOT, MITOGEN_TEST_ARM64_BUILD)".into(),
            ),
        },
        Needs::I686 => match i686_build() {
            Some(_) => unmet(Needs::StaticBuild),
            None => Some("no i686 build of the suite (tests/builds.sh: MITOGEN_TEST_I686_BUILD)".into()),
        },
        Needs::StaticBuild => match (static_build(), static_other_program()) {
            (Some(_), Some(_)) => unmet(Needs::Accounts),
            _ => Some("no static build of the suite (tests/run builds it: MITOGEN_TEST_STATIC_BUILD)".into()),
        },
    }
}

/// An executable file named by the environment variable `var`.
fn built(var: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(var).map(std::path::PathBuf::from).filter(|p| p.is_file())
}

/// This suite's test binary built for `x86_64-unknown-linux-musl` (static: it fits any Linux
/// x86_64), named by `MITOGEN_TEST_STATIC_BUILD`, which `tests/run` sets.
pub fn static_build() -> Option<std::path::PathBuf> {
    built("MITOGEN_TEST_STATIC_BUILD")
}

/// The arm64 target's root (entered with `chroot`, run by qemu through binfmt_misc) and this
/// suite built for `aarch64-unknown-linux-musl`: `MITOGEN_TEST_ARM64_ROOT` and
/// `MITOGEN_TEST_ARM64_BUILD`, which `tests/run` sets.
pub fn arm64() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let root = std::env::var_os("MITOGEN_TEST_ARM64_ROOT").map(std::path::PathBuf::from)?;
    Some((root.join("bin/busybox").is_file().then_some(root)?, built("MITOGEN_TEST_ARM64_BUILD")?))
}

/// This suite's test binary built for `i686-unknown-linux-musl`, named by
/// `MITOGEN_TEST_I686_BUILD`, which `tests/run` sets.
pub fn i686_build() -> Option<std::path::PathBuf> {
    built("MITOGEN_TEST_I686_BUILD")
}

/// Another program built the same way (the quickstart example), named by
/// `MITOGEN_TEST_STATIC_OTHER`: what a parent must refuse to run as this one.
pub fn static_other_program() -> Option<std::path::PathBuf> {
    built("MITOGEN_TEST_STATIC_OTHER")
}

/// A script `<dir>/my-<tool>` that appends one line to `log`, `<tool>` and its arguments (each
/// after a space, newlines in them shown as `~`), and runs `real` with them: a non-default tool
/// path whose use a test can count and whose argv it can read ([`recorded_runs`]). Executable
/// by every account; `log` is made writable by every account.
pub fn recording_wrapper(dir: &std::path::Path, tool: &str, real: &str, log: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("my-{tool}"));
    // Every account a method runs the tool as writes to it.
    if !log.exists() {
        std::fs::write(log, "").unwrap();
        std::fs::set_permissions(log, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let log = log.display();
    let script = format!(
        "#!/bin/sh\n{{ printf %s {tool}; printf ' %s' \"$@\"; }} | tr '\\n' '~' >> {log}\necho >> {log}\nexec {real} \"$@\"\n"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// What the [`recording_wrapper`]s writing to `log` ran, in order: `(tool, its arguments as
/// the line shows them)`.
pub fn recorded_runs(log: &std::path::Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|line| {
            let (tool, args) = line.split_once(' ').unwrap_or((line, ""));
            (tool.to_owned(), args.to_owned())
        })
        .collect()
}

/// The tools of [`recorded_runs`], in order.
pub fn recorded_tools(log: &std::path::Path) -> Vec<String> {
    recorded_runs(log).into_iter().map(|(tool, _)| tool).collect()
}

/// The timeout every blocking wait in the suite uses unless it tests timeouts itself.
pub const WAIT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness itself: each kind of leak makes `run` fail. One test, so it has its binary's
    /// process to itself and the check is exact under any runner.
    #[test]
    fn leak_check_catches_leaked_fds_threads_and_children() {
        let fd = std::panic::catch_unwind(|| run(|| std::mem::forget(std::fs::File::open("/dev/null").unwrap())));
        assert!(fd.is_err(), "a leaked fd is caught");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::panic::catch_unwind(move || {
            run(move || {
                std::thread::spawn(move || rx.recv_timeout(Duration::from_secs(60)));
            })
        });
        assert!(thread.is_err(), "a leaked thread is caught");
        drop(tx);
        let mut child = None;
        let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
        let s = slot.clone();
        let proc_leak = std::panic::catch_unwind(move || {
            run(move || *s.lock().unwrap() = Some(std::process::Command::new("sleep").arg("60").spawn().unwrap()))
        });
        assert!(proc_leak.is_err(), "a leaked child process is caught");
        if let Some(mut c) = slot.lock().unwrap().take() {
            c.kill().unwrap();
            c.wait().unwrap();
            child = Some(());
        }
        assert!(child.is_some());
    }
}

//! Profiling every process of a tree (Mitogen `Router.profiling`, the `profiling` connection
//! option and `MITOGEN_PROFILING`).
//!
//! A profiled process samples the stacks of its threads (the broker's, the main thread's, and
//! any other) about 99 times per second of CPU time, and on a graceful exit writes one file per
//! thread, named as Mitogen's `MITOGEN_PROFILE_FMT`:
//! `$TMPDIR/mitogen.stats.<pid>.<thread>.<unix time>.folded`. Each line is a stack, outermost
//! frame first, frames separated by `;`, then a space and the number of samples: the *folded
//! stacks* format that `inferno-flamegraph`, `flamegraph.pl` and speedscope read.
//! `mitogen::profiler` (the `mitogen-profiler` program) merges them, as `mitogen.profiler` does.
//!
//! Off, it costs nothing: no handler, no timer, no table. A child is profiled when its parent
//! asks ([`set_profile_tree`], or the `profiling` option of one connection), and asks the same
//! of its own children. The sampler is described in [`crate::sys::sampler`].

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys::sampler;

/// The file extension of profile files: folded stacks.
pub const EXTENSION: &str = "folded";

/// Whether every context this process starts from now on is profiled.
static PROFILE_TREE: AtomicBool = AtomicBool::new(false);

/// Ask for profiling in every context this process starts from now on (and theirs).
pub fn set_profile_tree(on: bool) {
    PROFILE_TREE.store(on, Ordering::Relaxed);
}

/// Whether [`set_profile_tree`] was called (in a child: whether its parent asked for profiling).
pub fn profile_tree() -> bool {
    PROFILE_TREE.load(Ordering::Relaxed)
}

/// Start profiling this process. Returns `false` if it already was.
///
/// # Errors
/// If the signal handler or timer cannot be installed.
pub fn start() -> io::Result<bool> {
    sampler::start()
}

/// In a parent about to `fork(2)` a child that will be profiled: do now what takes the dynamic
/// loader's lock (`dl_iterate_phdr(3)`), which a forked child may inherit held by a thread it
/// does not have, and `fork` does not reset. The sampler learns where the unwinder's code is,
/// and the symboliser lists the loaded objects, so the child inherits both.
pub fn prepare_fork() {
    sampler::prepare();
    backtrace::resolve(prepare_fork as *mut std::ffi::c_void, |_| {});
}

/// Whether this process is being profiled.
pub fn running() -> bool {
    sampler::running()
}

/// The path of a profile file (Mitogen's `MITOGEN_PROFILE_FMT`,
/// `/tmp/mitogen.stats.%(pid)s.%(identity)s.%(now)s.%(ext)s`): `identity` is the thread's name,
/// with anything but letters, digits, `-` and `_` made `_`.
pub fn profile_path(dir: &Path, pid: u32, identity: &str, now: u64) -> PathBuf {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let identity: String = identity.chars().map(|c| if ok(c) { c } else { '_' }).collect();
    dir.join(format!("mitogen.stats.{pid}.{identity}.{now}.{EXTENSION}"))
}

/// Stop profiling this process and write its profile into `$TMPDIR` (see [`finish_into`]).
///
/// # Errors
/// As [`finish_into`].
pub fn finish() -> io::Result<Vec<PathBuf>> {
    finish_into(&crate::sys::temp_dir())
}

/// Stop profiling this process and write one folded-stacks file per thread into `dir`, named by
/// [`profile_path`]: one for each thread that was sampled, and always one for the main thread
/// (empty if it was never sampled: a sample is taken per 10 ms of CPU time the process uses).
/// Returns the paths written, none if it was not profiling.
///
/// # Errors
/// If a file cannot be written.
pub fn finish_into(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let Some((samples, dropped)) = sampler::stop() else {
        return Ok(Vec::new());
    };
    let mut names = Symbols::default();
    // The main thread's file is written even without samples: every profiled process leaves one.
    let mut threads: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::from([("main".into(), BTreeMap::new())]);
    for sample in &samples {
        let stack = names.fold(sample);
        *threads.entry(sample.thread.clone()).or_default().entry(stack).or_default() += sample.count;
    }
    if dropped > 0 {
        // Samples the table had no room for, shown as their own stack rather than lost silently.
        *threads.entry("main".into()).or_default().entry("[dropped: profile table full]".into()).or_default() +=
            dropped;
    }
    let pid = std::process::id();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut written = Vec::new();
    for (thread, stacks) in threads {
        let path = profile_path(dir, pid, &thread, now);
        let mut out = io::BufWriter::new(std::fs::File::create(&path)?);
        for (stack, count) in stacks {
            writeln!(out, "{stack} {count}")?;
        }
        out.flush()?;
        written.push(path);
    }
    Ok(written)
}

/// Names of code addresses, each resolved once.
#[derive(Default)]
struct Symbols {
    cache: std::collections::HashMap<usize, Vec<String>>,
}

impl Symbols {
    /// `sample`'s stack as one folded line (without its count): outermost frame first, inlined
    /// functions as frames of their own.
    fn fold(&mut self, sample: &sampler::Sample) -> String {
        let mut frames: Vec<String> = Vec::new();
        for (i, &ip) in sample.ips.iter().enumerate() {
            // A return address points after its call: look up the call itself. The innermost
            // frame is the interrupted instruction.
            let lookup = if i == 0 { ip } else { ip.saturating_sub(1) };
            let names = self.cache.entry(lookup).or_insert_with(|| resolve(lookup));
            frames.extend(names.iter().cloned());
        }
        if sample.truncated {
            frames.push("[truncated]".into());
        }
        frames.reverse();
        frames.join(";")
    }
}

/// The names of the functions at `ip`, innermost inlined one first (its address in hex if it
/// has none), with `;` (the folded format's separator) made `,`.
fn resolve(ip: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut each = |symbol: &backtrace::Symbol| {
        if let Some(name) = symbol.name() {
            names.push(format!("{name:#}").replace(';', ","));
        }
    };
    if crate::globals::is_forked() {
        // A forked child may have inherited the crate's lock held by a thread it does not have.
        // SAFETY: this process's only user of the crate's symboliser is this function, run
        // once per profile by the thread that stopped the sampler.
        unsafe { backtrace::resolve_unsynchronized(ip as *mut std::ffi::c_void, &mut each) };
    } else {
        backtrace::resolve(ip as *mut std::ffi::c_void, &mut each);
    }
    if names.is_empty() {
        names.push(format!("{ip:#x}"));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spin until this thread has been sampled `n` times (not for a wall-clock window, nor
    /// for an amount of CPU time: on a loaded machine the timer fires less often than the CPU
    /// time says), for at most a minute.
    #[inline(never)]
    fn spin_here(n: u64) -> u64 {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 0u64;
        while crate::sys::sampler::samples_of_this_thread() < n && std::time::Instant::now() < give_up {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        x
    }

    #[test]
    fn a_busy_thread_shows_in_its_own_profile_file() {
        let dir = std::env::temp_dir().join(format!("mitogen-profiling-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(start().unwrap());
        assert!(running());
        assert!(!start().unwrap(), "a second start is a no-op");
        std::thread::Builder::new().name("spinner".into()).spawn(|| spin_here(5)).unwrap().join().unwrap();
        let written = finish_into(&dir).unwrap();
        assert!(!running());
        let spinner = written.iter().find(|p| p.to_string_lossy().contains(".spinner.")).expect("a spinner file");
        let name = spinner.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("mitogen.stats.{}.spinner.", std::process::id())), "{name}");
        assert!(name.ends_with(".folded"), "{name}");
        let text = std::fs::read_to_string(spinner).unwrap();
        let mut total = 0;
        for line in text.lines() {
            let (stack, count) = line.rsplit_once(' ').unwrap();
            total += count.parse::<u64>().unwrap();
            assert!(!stack.is_empty());
        }
        // The spinner ran until sampled 5 times: all of them are in its file.
        assert!(total >= 5, "{total} samples:\n{text}");
        assert!(text.contains("spin_here"), "{text}");
        assert!(!text.contains("0x0;"), "the end of the stack is no frame:\n{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

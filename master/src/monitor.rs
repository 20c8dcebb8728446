//! Child-exit callbacks (Mitogen `mitogen.master.ProcessMonitor`).

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use mitogen_core::{panic_message, Error, Result};

use mitogen_core::sys;

/// How often a process whose pidfd reported its exit, but which `waitpid` cannot reap yet, is
/// retried. Only happens when the child is ptraced by a process other than us, whose own wait
/// must come first; no other event tells us when that happened.
const UNREAPABLE_RETRY: Duration = Duration::from_millis(100);

type Callback = Box<dyn FnOnce(i32) + Send + 'static>;

/// One registered process.
struct Watch {
    pid: i32,
    pidfd: OwnedFd,
    callback: Callback,
}

/// State shared by a [`ProcessMonitor`] and its thread.
struct Shared {
    /// Registrations not yet picked up by the thread.
    incoming: Mutex<Vec<Watch>>,
    /// The read end of the wake-up pipe. Kept here, not in the thread, so writes to the pipe can
    /// never fail with `EPIPE` even if the thread has ended.
    wake_r: OwnedFd,
    /// Whether the thread is still running.
    alive: AtomicBool,
}

/// Calls back when specific child processes have exited (Mitogen
/// `mitogen.master.ProcessMonitor`).
///
/// Each monitor runs one background thread, `mitogen-process-monitor`. [`add`](Self::add)
/// registers a child's pid with a callback; once the child exits, the thread reaps it with
/// `waitpid(pid, &status, WNOHANG)` and calls the callback, on the monitor thread, with the raw
/// wait status (decode it with `std::os::unix::process::ExitStatusExt::from_raw` or the `W*`
/// macros). Callbacks should return quickly: while one runs, no other exit is reported. A
/// callback that panics is logged and does not stop the monitor.
///
/// # pidfds rather than a `SIGCHLD` handler
///
/// Mitogen installs a `SIGCHLD` handler. This implementation instead opens a pidfd
/// (`pidfd_open(2)`, Linux 5.3+) per registered process, and its thread `poll(2)`s those pidfds,
/// which become readable when their process exits, together with a wake-up pipe that signals new
/// registrations and shutdown. So:
///
/// * no process-wide signal handler is installed: signal dispositions belong to the whole
///   process, so a handler would clash with any other library's or the application's, and a
///   delivered signal interrupts system calls with `EINTR` in arbitrary threads;
/// * only the registered pids are ever waited for: a `SIGCHLD` handler does not say which child
///   exited, so it must either `waitpid(-1)`, stealing the exit status of children that other
///   code (such as [`std::process::Child::wait`]) waits for, or poll every known pid;
/// * a pidfd names one process, not a pid number, so a recycled pid cannot be confused with it
///   while the monitor holds the pidfd.
///
/// The thread neither busy-loops nor sleeps: it blocks in `poll(2)` until a pidfd or the pipe is
/// ready. Every descriptor is close-on-exec from creation.
///
/// # Dropping
///
/// Dropping the monitor closes the wake-up pipe, which makes the thread exit, and joins it (unless
/// the last reference is dropped by a callback, on the monitor thread itself, which then exits as
/// soon as the callback returns). Processes still registered are left unreaped and their callbacks
/// are dropped uncalled; their pidfds are closed.
///
/// ```no_run
/// # fn demo() -> mitogen_core::Result<()> {
/// use std::os::unix::process::ExitStatusExt;
/// use std::process::ExitStatus;
///
/// let monitor = mitogen_master::ProcessMonitor::new()?;
/// let child = std::process::Command::new("true").spawn().expect("spawn");
/// // The monitor reaps the child: never call `child.wait()` as well.
/// monitor.add(child.id() as i32, |status| {
///     println!("child exited: {}", ExitStatus::from_raw(status));
/// })?;
/// # Ok(()) }
/// ```
pub struct ProcessMonitor {
    shared: Arc<Shared>,
    /// The only write end of the wake-up pipe; closing it tells the thread to exit.
    wake_w: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl ProcessMonitor {
    /// Start a monitor and its thread.
    ///
    /// # Errors
    /// A [`GeneralError`](mitogen_core::GeneralError) when the wake-up pipe cannot be created or
    /// the thread cannot be spawned.
    pub fn new() -> Result<ProcessMonitor> {
        let (wake_r, wake_w) =
            sys::pipe(true).map_err(|e| Error::general(format!("process monitor: cannot create pipe: {e}")))?;
        let shared = Arc::new(Shared { incoming: Mutex::new(Vec::new()), wake_r, alive: AtomicBool::new(true) });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("mitogen-process-monitor".into())
            .spawn(move || run(&thread_shared))
            .map_err(|e| Error::general(format!("process monitor: cannot spawn thread: {e}")))?;
        Ok(ProcessMonitor { shared, wake_w: Some(wake_w), thread: Some(thread) })
    }

    /// Call `callback(status)` on the monitor thread once child process `pid` has exited and the
    /// monitor has reaped it; `status` is the raw wait status, as from `waitpid(2)` (Mitogen
    /// `add(pid, callback)`).
    ///
    /// The monitor owns the reaping: nothing else may wait for `pid` (do not call
    /// [`std::process::Child::wait`] on it), and registering the same pid twice calls only one of
    /// the callbacks (the other reaper finds nothing left to wait for; that is logged). A child
    /// that has already exited but is not yet reaped is reported at once.
    ///
    /// # Errors
    /// A [`GeneralError`](mitogen_core::GeneralError) saying why, when `pid` is not a process id,
    /// no process `pid` exists, `pid` is not a child of this process (or `SIGCHLD` is ignored, so
    /// children are reaped automatically), or the monitor thread has stopped. A pid recycled by
    /// another child of ours since the caller learnt it cannot be detected.
    pub fn add(&self, pid: i32, callback: impl FnOnce(i32) + Send + 'static) -> Result<()> {
        if pid <= 0 {
            return Err(Error::general(format!("cannot monitor pid {pid}: not a process id")));
        }
        if !self.shared.alive.load(Ordering::Acquire) {
            return Err(Error::general(format!("cannot monitor pid {pid}: the process monitor thread has stopped")));
        }
        let pidfd = sys::pidfd_open(pid).map_err(|e| match sys::is_errno(&e, sys::Errno::ESRCH) {
            true => Error::general(format!("cannot monitor pid {pid}: no such process")),
            false => Error::general(format!("cannot monitor pid {pid}: pidfd_open failed: {e}")),
        })?;
        // Checked after pidfd_open, so the pidfd and the check refer to the same process unless
        // it was reaped by someone else in between.
        sys::check_waitable_child(pid).map_err(|e| match sys::is_errno(&e, sys::Errno::ECHILD) {
            true => Error::general(format!(
                "cannot monitor pid {pid}: not a child of this process, already reaped, \
                 or SIGCHLD is ignored"
            )),
            false => Error::general(format!("cannot monitor pid {pid}: waitid failed: {e}")),
        })?;
        self.shared.incoming.lock().unwrap_or_else(PoisonError::into_inner).push(Watch {
            pid,
            pidfd,
            callback: Box::new(callback),
        });
        self.wake()
    }

    /// Wake the thread so it picks up new registrations.
    fn wake(&self) -> Result<()> {
        let Some(wake_w) = &self.wake_w else {
            return Ok(());
        };
        loop {
            match sys::write(wake_w.as_fd(), b"\0") {
                Ok(_) => return Ok(()),
                // The pipe is full of wake-ups the thread has yet to drain: it will wake anyway.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::general(format!("process monitor: cannot wake thread: {e}"))),
            }
        }
    }
}

impl fmt::Debug for ProcessMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessMonitor")
            .field("alive", &self.shared.alive.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl Drop for ProcessMonitor {
    fn drop(&mut self) {
        // Closing the only write end of the wake-up pipe is the stop signal: the thread reads EOF.
        drop(self.wake_w.take());
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() == std::thread::current().id() {
                // Dropped by a callback: the thread exits once the callback returns.
                return;
            }
            if thread.join().is_err() {
                log::error!("process monitor: thread panicked");
            }
        }
    }
}

/// When the thread ends, however it ends: marks the monitor dead and drops registrations it never
/// picked up, so no callback outlives the thread.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        drop(std::mem::take(&mut *self.0.incoming.lock().unwrap_or_else(PoisonError::into_inner)));
    }
}

/// The monitor thread.
fn run(shared: &Shared) {
    let _exit = ExitGuard(shared);
    let mut watches: Vec<Watch> = Vec::new();
    let mut unreapable: Vec<Watch> = Vec::new();
    loop {
        let timeout = (!unreapable.is_empty()).then_some(UNREAPABLE_RETRY);
        // Which of [wake-up pipe, watches...] are ready; the poll set borrows the watches.
        let ready: Vec<bool> = {
            let mut pfds = vec![sys::readable(shared.wake_r.as_fd())];
            pfds.extend(watches.iter().map(|w| sys::readable(w.pidfd.as_fd())));
            if let Err(e) = sys::poll(&mut pfds, timeout) {
                log::error!("process monitor: poll failed, stopping: {e}");
                return;
            }
            pfds.iter().map(sys::is_ready).collect()
        };

        if ready[0] {
            if !drain_wake_pipe(shared) {
                return;
            }
            watches.extend(shared.incoming.lock().unwrap_or_else(PoisonError::into_inner).drain(..));
        }

        // Descending, so each swap_remove moves in an entry that is not ready or was just added.
        for i in (0..ready.len() - 1).rev() {
            if ready[i + 1] {
                reap(watches.swap_remove(i), &mut unreapable);
            }
        }

        for watch in std::mem::take(&mut unreapable) {
            reap(watch, &mut unreapable);
        }
    }
}

/// Read every pending wake-up byte. Returns `false` when the thread must exit: the monitor was
/// dropped (end of file) or the pipe failed.
fn drain_wake_pipe(shared: &Shared) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match sys::read(shared.wake_r.as_fd(), &mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("process monitor: wake-up pipe failed, stopping: {e}");
                return false;
            }
        }
    }
}

/// Reap `watch`'s process, whose pidfd reported its exit, and run its callback.
fn reap(watch: Watch, unreapable: &mut Vec<Watch>) {
    let Watch { pid, pidfd, callback } = watch;
    match sys::try_wait(pid) {
        Ok(Some(status)) => {
            drop(pidfd);
            if let Err(panic) = catch_unwind(AssertUnwindSafe(move || callback(status))) {
                log::error!("process monitor: callback for pid {pid} panicked: {}", panic_message(&*panic));
            }
        }
        // Exited, but not yet waitable (ptraced by another process): retry later.
        Ok(None) => unreapable.push(Watch { pid, pidfd, callback }),
        Err(e) => log::warn!(
            "process monitor: cannot reap pid {pid} (was it reaped by other code?): {e}; \
             its callback will not be called"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::mpsc::{self, RecvTimeoutError};

    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    /// Spawn `sh -c script` and return its pid. The `Child` handle is dropped without waiting
    /// (std's `Child` never waits on drop): reaping is left to the monitor under test.
    fn spawn_sh(script: &str) -> i32 {
        let id = Command::new("sh").arg("-c").arg(script).spawn().expect("spawn sh").id();
        i32::try_from(id).unwrap()
    }

    /// A child that runs until its stdin is closed.
    fn spawn_until_stdin_closes() -> Child {
        Command::new("sh").arg("-c").arg("read x; exit 0").stdin(Stdio::piped()).spawn().expect("spawn sh")
    }

    fn pid(child: &Child) -> i32 {
        i32::try_from(child.id()).unwrap()
    }

    #[test]
    fn reports_exit_status_of_child() {
        let monitor = ProcessMonitor::new().unwrap();
        let child = spawn_sh("exit 3");
        let (tx, rx) = mpsc::channel();
        monitor.add(child, move |status| tx.send(status).unwrap()).unwrap();
        let status = ExitStatus::from_raw(rx.recv_timeout(WAIT).unwrap());
        assert_eq!(status.code(), Some(3));
    }

    #[test]
    fn reports_each_child_separately() {
        let monitor = ProcessMonitor::new().unwrap();
        let (tx, rx) = mpsc::channel();
        let children: Vec<i32> = ["exit 1", "exit 2", "kill -9 $$"].into_iter().map(spawn_sh).collect();
        for &pid in &children {
            let tx = tx.clone();
            monitor.add(pid, move |status| tx.send((pid, status)).unwrap()).unwrap();
        }
        let mut got: Vec<(i32, i32)> = (0..3).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
        got.sort_by_key(|&(pid, _)| children.iter().position(|&c| c == pid));
        let statuses: Vec<ExitStatus> = got.iter().map(|&(_, s)| ExitStatus::from_raw(s)).collect();
        assert_eq!(statuses[0].code(), Some(1));
        assert_eq!(statuses[1].code(), Some(2));
        assert_eq!(statuses[2].signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn dropped_monitor_with_pending_pid_ends_its_thread() {
        let monitor = ProcessMonitor::new().unwrap();
        let mut child = spawn_until_stdin_closes();
        let (tx, rx) = mpsc::channel::<i32>();
        monitor.add(pid(&child), move |status| tx.send(status).unwrap()).unwrap();
        let shared = Arc::clone(&monitor.shared);
        drop(monitor);
        // The thread has returned (dropping its reference) and dropped the pending callback.
        assert_eq!(Arc::strong_count(&shared), 1);
        assert!(!shared.alive.load(Ordering::Acquire));
        assert_eq!(rx.recv_timeout(WAIT), Err(RecvTimeoutError::Disconnected));
        // The monitor is gone, so reaping the child is ours again.
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn callback_may_drop_the_monitor() {
        let slot = Arc::new(Mutex::new(Some(ProcessMonitor::new().unwrap())));
        // Reaped by the monitor, never waited for here.
        #[allow(clippy::zombie_processes)]
        let mut first = spawn_until_stdin_closes();
        let mut second = spawn_until_stdin_closes();
        let (dropped_tx, dropped_rx) = mpsc::channel();
        let (pending_tx, pending_rx) = mpsc::channel::<i32>();
        {
            let guard = slot.lock().unwrap();
            let monitor = guard.as_ref().unwrap();
            let slot = Arc::clone(&slot);
            monitor
                .add(pid(&first), move |_| {
                    drop(slot.lock().unwrap().take());
                    dropped_tx.send(()).unwrap();
                })
                .unwrap();
            monitor.add(pid(&second), move |status| pending_tx.send(status).unwrap()).unwrap();
        }
        drop(first.stdin.take());
        dropped_rx.recv_timeout(WAIT).unwrap();
        // The thread exits after that callback, dropping the second, pending registration.
        assert_eq!(pending_rx.recv_timeout(WAIT), Err(RecvTimeoutError::Disconnected));
        drop(second.stdin.take());
        assert!(second.wait().unwrap().success());
    }

    #[test]
    fn panicking_callback_does_not_stop_the_monitor() {
        let monitor = ProcessMonitor::new().unwrap();
        let first_pid = spawn_sh("exit 0");
        let (ran_tx, ran_rx) = mpsc::channel();
        monitor
            .add(first_pid, move |_| {
                ran_tx.send(()).unwrap();
                panic!("callback panic (expected by the test)");
            })
            .unwrap();
        ran_rx.recv_timeout(WAIT).unwrap();
        // The first child was reaped before its callback ran.
        assert!(sys::check_waitable_child(first_pid).is_err());
        let second = spawn_sh("exit 4");
        let (tx, rx) = mpsc::channel();
        monitor.add(second, move |status| tx.send(status).unwrap()).unwrap();
        assert_eq!(ExitStatus::from_raw(rx.recv_timeout(WAIT).unwrap()).code(), Some(4));
        assert!(monitor.shared.alive.load(Ordering::Acquire));
    }

    #[test]
    fn add_rejects_what_is_not_a_child() {
        let monitor = ProcessMonitor::new().unwrap();
        let ours = i32::try_from(std::process::id()).unwrap();
        let err = monitor.add(ours, |_| ()).unwrap_err();
        assert!(err.to_string().contains("not a child"), "{err}");
        // Above any pid_max (at most 2^22).
        let err = monitor.add(i32::MAX, |_| ()).unwrap_err();
        assert!(err.to_string().contains("no such process"), "{err}");
        for bad in [0, -1] {
            let err = monitor.add(bad, |_| ()).unwrap_err();
            assert!(err.to_string().contains("not a process id"), "{err}");
        }
    }

    #[test]
    fn descriptors_are_cloexec() {
        let monitor = ProcessMonitor::new().unwrap();
        assert!(sys::is_cloexec(monitor.shared.wake_r.as_fd()).unwrap());
        assert!(sys::is_cloexec(monitor.wake_w.as_ref().unwrap().as_fd()).unwrap());
        let mut child = spawn_until_stdin_closes();
        let pidfd = sys::pidfd_open(pid(&child)).unwrap();
        assert!(sys::is_cloexec(pidfd.as_fd()).unwrap());
        drop(pidfd);
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
}
